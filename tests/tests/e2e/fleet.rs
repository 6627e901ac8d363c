//! Fleets (issue 16): packages published to real servers started here on loopback (nginx,
//! Debian's docker-registry), pulled thin into a layer, mounted by packagefs and read
//! lazily, chunk by chunk, with the faults a network brings.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::servers::{Nginx, Registry};
use e2e::{pkgtool, run_ok, wait_until, Keys, Layer, Mount, Pkg, TestTree};

/// Size of the big file: 48 chunks of 64 KiB, incompressible.
const BIG: usize = 48 * 65536;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    keys: Keys,
    _dir: tempfile::TempDir,
    pkg: PathBuf,
    big: Vec<u8>,
}

/// A signed package `app` 1.0.0 with `hello` and a 3 MiB file of noise, 64 KiB chunks.
fn fixture() -> Fixture {
    let keys = Keys::new("fleet");
    let t = TestTree::new();
    let big = noise(BIG, 1);
    t.file("hello", "hello from the repository\n");
    t.file("big", &big);
    let dir = tempfile::tempdir().unwrap();
    let pkg = Pkg::new(t.path(), "app", "1.0.0")
        .chunk_size("64K")
        .key(&keys)
        .build(dir.path().join("app-1.0.0.hpkg"));
    Fixture {
        keys,
        _dir: dir,
        pkg,
        big,
    }
}

/// The fixture, and nginx serving a fresh directory (the repository goes in `main/`).
fn served() -> (Fixture, tempfile::TempDir, Nginx) {
    let www = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(www.path());
    (fixture(), www, nginx)
}

/// Repository `name` in the directory nginx serves, as `publish` takes it.
fn repo_dir(www: &tempfile::TempDir, name: &str) -> String {
    www.path().join(name).display().to_string()
}

/// The fixture's package published into repository `name` and pulled into a new layer.
fn published_and_pulled(f: &Fixture, www: &tempfile::TempDir, nginx: &Nginx, name: &str) -> Layer {
    publish(&f.pkg, &repo_dir(www, name), &f.keys);
    let layer = Layer::new();
    let out = pull(&[&nginx.url(name)], layer.path(), &f.keys, "app");
    ok(&out);
    layer
}

/// Asserts the command succeeded, showing its stderr if not.
fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pkgtool fetch` of a layer (`DIR` or `NAME=DIR`) through chunk store `store`.
fn fetch(layer: &str, keys: &Keys, store: &Path) -> Output {
    pkgtool_out(&[
        "fetch",
        "--layer",
        layer,
        "--trusted-keys",
        &keys.trusted().display().to_string(),
        "--chunk-store",
        &store.display().to_string(),
    ])
}

fn pkgtool_out(args: &[&str]) -> Output {
    Command::new(pkgtool()).args(args).output().unwrap()
}

fn publish(pkg: &Path, repo: &str, keys: &Keys) {
    run_ok(
        Command::new(pkgtool())
            .arg("publish")
            .arg(pkg)
            .args(["--repo", repo, "--key"])
            .arg(keys.secret()),
    );
}

fn pull(repos: &[&str], layer: &Path, keys: &Keys, what: &str) -> Output {
    let mut c = Command::new(pkgtool());
    c.args(["pull", what]);
    for r in repos {
        c.args(["--repo", r]);
    }
    c.arg("--layer")
        .arg(format!("system={}", layer.display()))
        .arg("--trusted-keys")
        .arg(keys.trusted())
        .arg("--no-restart");
    c.output().unwrap()
}

fn mount(layer: &Layer, keys: &Keys, store: &Path) -> Mount {
    Mount::builder()
        .trusting(keys)
        .layer_of("system", layer)
        .arg("-o")
        .arg(format!("chunk_store={},fetch_timeout=2", store.display()))
        .start()
}

fn read_at(path: &Path, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = fs::File::open(path)?;
    f.seek(SeekFrom::Start(off))?;
    let mut b = vec![0; len];
    f.read_exact(&mut b)?;
    Ok(b)
}

fn is_thin(p: &Path) -> bool {
    fs::read(p).unwrap().starts_with(b"\x89HPKT\r\n\x1a")
}

#[test]
fn a_pulled_package_is_thin_and_reads_lazily_through_the_mount() {
    let (f, www, nginx) = served();
    // Published over HTTP PUT (nginx's dav module).
    publish(&f.pkg, &nginx.url("main"), &f.keys);
    assert!(www.path().join("main/index").is_file());
    let layer = Layer::new();
    let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app@^1");
    ok(&out);
    let installed = layer.path().join("packages/app-1.0.0.hpkg");
    assert!(is_thin(&installed));
    let whole = fs::metadata(&f.pkg).unwrap().len();
    assert!(fs::metadata(&installed).unwrap().len() < whole / 20);
    let pulled = nginx.bytes_sent("/main/blobs/");
    assert!(pulled < whole / 20, "pull moved {pulled} of {whole} bytes");

    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the repository\n"
    );
    let off = 20 * 65536 + 100;
    assert_eq!(
        read_at(&m.join("big"), off, 4096).unwrap(),
        f.big[off as usize..off as usize + 4096]
    );
    // Lazy: a few chunks moved (a coalesced window), far from the whole package.
    let served = nginx.bytes_sent("/main/blobs/") - pulled;
    assert!(served > 0);
    assert!(
        served * 5 < whole,
        "reading 4 KiB and a small file moved {served} of {whole} bytes"
    );
    // Identical chunks are never fetched twice: reading the same again (a fresh open,
    // past the kernel's cache) moves nothing.
    let _ = fs::read(m.join("hello")).unwrap();
    assert_eq!(nginx.bytes_sent("/main/blobs/") - pulled, served);
    // Every stored chunk is named by the hash of its bytes.
    let mut stored = 0;
    for sub in fs::read_dir(store.path().join("chunks")).unwrap() {
        for c in fs::read_dir(sub.unwrap().path()).unwrap() {
            let c = c.unwrap();
            let b = fs::read(c.path()).unwrap();
            assert_eq!(
                blake3::hash(&b).to_hex().as_str(),
                c.file_name().to_str().unwrap()
            );
            stored += 1;
        }
    }
    assert!(stored >= 2, "{stored} chunks stored");
}

#[test]
fn a_server_that_goes_down_costs_eio_for_missing_chunks_only_and_reads_resume() {
    let (f, www, mut nginx) = served();
    // Published into a directory nginx serves.
    let layer = published_and_pulled(&f, &www, &nginx, "main");
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    // Chunk 0 of big: its window brings chunks 1.. too.
    assert_eq!(read_at(&m.join("big"), 0, 100).unwrap(), f.big[..100]);

    nginx.kill();
    // Stored (never read through the kernel): served from the chunk store.
    let off = 65536 + 7;
    assert_eq!(
        read_at(&m.join("big"), off, 1000).unwrap(),
        f.big[off as usize..off as usize + 1000]
    );
    // Not stored: EIO, within the timeout, for each of several reads.
    for k in [40u64, 41, 44, 47] {
        let t = Instant::now();
        let r = read_at(&m.join("big"), k * 65536, 10);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO), "chunk {k}");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    }
    // One line for the outage, not one per read.
    let downs = m.log().matches("mirror is down").count();
    assert_eq!(downs, 1, "{}", m.log());

    nginx.restart();
    let off = 45 * 65536;
    assert!(
        wait_until(Duration::from_secs(30), || read_at(&m.join("big"), off, 10)
            .is_ok()),
        "reads did not resume:\n{}",
        m.log()
    );
    assert_eq!(
        read_at(&m.join("big"), off, 10).unwrap(),
        f.big[off as usize..off as usize + 10]
    );
    assert!(m.log().contains("mirror is back"), "{}", m.log());
}

#[test]
fn a_mirror_that_flips_a_byte_is_caught_and_the_next_mirror_serves() {
    let f = fixture();
    let good = tempfile::tempdir().unwrap();
    publish(
        &f.pkg,
        &good.path().join("main").display().to_string(),
        &f.keys,
    );
    // The bad mirror: the same repository (the same signed index), with a byte of the
    // package's metadata and one of its heap flipped.
    let bad = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(good.path().join("main"))
            .arg(bad.path()),
    );
    let blob = fs::read_dir(bad.path().join("main/blobs/sha256"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = fs::read(&blob).unwrap();
    let heap_at = b.len() - 136 - BIG / 2; // inside big's chunks
    b[heap_at] ^= 0x01;
    b[200] ^= 0x01; // inside the signed metadata (the manifest): pull takes the next mirror's
    fs::write(&blob, &b).unwrap();
    let bad_srv = Nginx::start(bad.path());
    let good_srv = Nginx::start(good.path());

    let layer = Layer::new();
    let out = pull(
        &[&bad_srv.url("main"), &good_srv.url("main")],
        layer.path(),
        &f.keys,
        "app",
    );
    ok(&out);
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    let data = fs::read(m.join("big")).unwrap();
    assert!(data == f.big, "wrong bytes were served");
    assert!(
        bad_srv.bytes_sent("/main/blobs/") > 0,
        "the first mirror was not asked"
    );
    assert!(
        good_srv.bytes_sent("/main/blobs/") > 0,
        "the second mirror was not used"
    );
    assert!(m.log().contains("do not match"), "{}", m.log());
    for sub in fs::read_dir(store.path().join("chunks")).unwrap() {
        for c in fs::read_dir(sub.unwrap().path()).unwrap() {
            let c = c.unwrap();
            let b = fs::read(c.path()).unwrap();
            assert_eq!(
                blake3::hash(&b).to_hex().as_str(),
                c.file_name().to_str().unwrap()
            );
        }
    }
}

#[test]
fn stale_unsigned_and_untrusted_indexes_are_refused() {
    let f = fixture();
    let www = tempfile::tempdir().unwrap();
    let repo = www.path().join("main");
    let nginx = Nginx::start(www.path());
    publish(&f.pkg, &repo.display().to_string(), &f.keys);
    let v1 = fs::read(repo.join("index")).unwrap();
    let t = TestTree::new();
    t.file("hello", "version two\n");
    let pkg2 = Pkg::new(t.path(), "app", "2.0.0")
        .key(&f.keys)
        .build(www.path().join("app-2.0.0.hpkg"));
    publish(&pkg2, &repo.display().to_string(), &f.keys);
    let layer = Layer::new();
    let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app");
    ok(&out);
    assert!(layer.path().join("packages/app-2.0.0.hpkg").is_file());
    let refused = |what: &str, needle: &str| {
        let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app@1");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: {err}");
    };
    // A mirror serving yesterday's index (v1): a rollback or freeze attack.
    fs::write(repo.join("index"), &v1).unwrap();
    refused("stale index", "older than version 2");
    // The body alone, without its signature.
    let body = &v1[v1.iter().position(|&b| b == b'\n').unwrap() + 1..];
    fs::write(repo.join("index"), body).unwrap();
    refused("unsigned index", "not a signed repository index");
    // Signed by a key the layer does not trust.
    let other = Keys::new("other");
    let other_repo = www.path().join("other");
    publish(&f.pkg, &other_repo.display().to_string(), &other);
    fs::copy(other_repo.join("index"), repo.join("index")).unwrap();
    refused("untrusted index", "not a trusted key");
    // And a package that does not match the id its index names: refused, nothing installed.
    fs::write(repo.join("index"), &v1).unwrap();
    let layer2 = Layer::new();
    let blob = fs::read_dir(repo.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .find(|e| fs::metadata(e.path()).unwrap().len() == fs::metadata(&f.pkg).unwrap().len());
    let blob = blob.unwrap().path();
    fs::copy(&pkg2, &blob).unwrap();
    let out = pull(&[&nginx.url("main")], layer2.path(), &f.keys, "app@1");
    assert!(!out.status.success());
    assert!(fs::read_dir(layer2.path().join("packages"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn fetch_makes_thin_packages_whole() {
    let (f, www, nginx) = served();
    let layer = published_and_pulled(&f, &www, &nginx, "main");
    let store = tempfile::tempdir().unwrap();
    // Fetched while the daemon serves the thin package (into a store of its own, so the
    // daemon's holds only what it read): the daemon goes on serving it, from the whole
    // file once it is there.
    let m = mount(&layer, &f.keys, store.path());
    assert_eq!(read_at(&m.join("big"), 0, 10).unwrap(), f.big[..10]);
    let ino = fs::metadata(m.join("big")).unwrap().ino();
    let fetch_store = tempfile::tempdir().unwrap();
    let out = fetch(
        &layer.path().display().to_string(),
        &f.keys,
        fetch_store.path(),
    );
    ok(&out);
    assert!(
        wait_until(Duration::from_secs(10), || m
            .log()
            .contains("now whole on disk")),
        "{}",
        m.log()
    );
    let p = layer.path().join("packages/app-1.0.0.hpkg");
    assert!(!is_thin(&p));
    assert_eq!(fs::read(&p).unwrap(), fs::read(&f.pkg).unwrap());
    let pool = fs::read_dir(layer.path().join("state/pool")).unwrap();
    for p in pool.flatten() {
        assert!(!is_thin(&p.path()), "{} is thin", p.path().display());
    }
    // The server down: the running daemon (the whole file now, though its store has only
    // what it read) and a new one with an empty store read everything.
    drop(nginx);
    assert_eq!(fs::read(m.join("big")).unwrap(), f.big, "{}", m.log());
    assert_eq!(
        fs::metadata(m.join("big")).unwrap().ino(),
        ino,
        "the inode changed"
    );
    drop(m);
    let empty = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, empty.path());
    assert_eq!(fs::read(m.join("big")).unwrap(), f.big);
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the repository\n"
    );
    assert!(!m.log().contains("refused"), "{}", m.log());
}

#[test]
fn an_oci_registry_serves_publish_pull_and_lazy_reads() {
    let f = fixture();
    let reg = Registry::start();
    let url = reg.url("packagefs/main");
    let out = Command::new(pkgtool())
        .arg("publish")
        .arg(&f.pkg)
        .args(["--repo", &url, "--key"])
        .arg(f.keys.secret())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        reg.log()
    );
    let layer = Layer::new();
    let out = pull(&[&url], layer.path(), &f.keys, "app");
    ok(&out);
    assert!(is_thin(&layer.path().join("packages/app-1.0.0.hpkg")));
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the repository\n"
    );
    let off = 30 * 65536;
    assert_eq!(
        read_at(&m.join("big"), off, 10).unwrap(),
        f.big[off as usize..off as usize + 10]
    );
    // Lazy: the registry sent the metadata and a few windows of chunks, not the package.
    let whole = fs::metadata(&f.pkg).unwrap().len();
    let sent = reg.bytes_sent("/blobs/sha256:");
    assert!(sent > 0, "{}", reg.log());
    assert!(
        sent * 3 < whole,
        "the registry sent {sent} of {whole} bytes"
    );
    drop(m);
    // An update: the publisher fetches 1.0.0 back from the registry to make the delta, a
    // layer holding 1.0.0 whole pulls the delta, and the registry's manifest keeps it.
    let (pkg2, big2) = app_1_1(&f, f._dir.path());
    publish(&pkg2, &url, &f.keys);
    let whole_layer = Layer::new();
    install_whole(&f.pkg, whole_layer.path(), &f.keys);
    let out = pull(&[&url], whole_layer.path(), &f.keys, "app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("by a delta"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = whole_layer.path().join("packages/app-1.1.0.hpkg");
    assert_eq!(fs::read(installed).unwrap(), fs::read(&pkg2).unwrap());
    let m = mount(&whole_layer, &f.keys, store.path());
    assert_eq!(fs::read(m.join("big")).unwrap(), big2);
}

#[test]
fn a_recorded_prefetch_list_is_fetched_in_the_background_after_mount() {
    let (f, www, mut nginx) = served();
    // A first start, recorded: hello and a region of big far from its start.
    let layer = published_and_pulled(&f, &www, &nginx, "first");
    let record = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let m = Mount::builder()
        .trusting(&f.keys)
        .layer_of("system", &layer)
        .arg("-o")
        .arg(format!(
            "chunk_store={},prefetch_record={}",
            store.path().display(),
            record.path().display()
        ))
        .start();
    let off = 30 * 65536 + 5;
    let _ = fs::read(m.join("hello")).unwrap();
    assert_eq!(
        read_at(&m.join("big"), off, 100).unwrap(),
        f.big[off as usize..off as usize + 100]
    );
    drop(m);
    let lists: Vec<_> = fs::read_dir(record.path()).unwrap().flatten().collect();
    assert_eq!(lists.len(), 1);
    let recorded = fs::read_to_string(lists[0].path()).unwrap();
    assert!(recorded.lines().count() >= 2, "{recorded}");

    // Shipped with the package in another repository; pulled; mounted with an empty store.
    let out = Command::new(pkgtool())
        .arg("publish")
        .arg(&f.pkg)
        .args(["--repo", &repo_dir(&www, "second"), "--key"])
        .arg(f.keys.secret())
        .arg("--prefetch")
        .arg(record.path())
        .output()
        .unwrap();
    ok(&out);
    let layer = Layer::new();
    let out = pull(&[&nginx.url("second")], layer.path(), &f.keys, "app");
    ok(&out);
    let pulled = nginx.bytes_sent("/second/blobs/");
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    // Without a read, the listed chunks arrive.
    assert!(
        wait_until(Duration::from_secs(10), || m.log().contains("prefetched")),
        "{}",
        m.log()
    );
    // Once: the package's two files (packages/ and the pool's copy) share one heap and one
    // prefetch, so nothing is fetched that the store does not then hold.
    std::thread::sleep(Duration::from_millis(800));
    let fetched = nginx.bytes_sent("/second/blobs/") - pulled;
    let stored: u64 = walk_sizes(&store.path().join("chunks"));
    assert!(fetched > 0);
    assert!(
        fetched <= stored,
        "fetched {fetched} bytes for {stored} stored:\n{}",
        m.log()
    );
    // The server gone, the first start's reads are served from the store.
    nginx.kill();
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the repository\n"
    );
    assert_eq!(
        read_at(&m.join("big"), off, 100).unwrap(),
        f.big[off as usize..off as usize + 100]
    );
    // Chunks no one listed were not fetched.
    assert!(read_at(&m.join("big"), 45 * 65536, 10).is_err());
}

/// The bytes of the regular files under `dir`.
fn walk_sizes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_sizes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// A server that answers every request with the headers of a whole answer (the length
/// asked for) and then one byte every 300 ms.
fn drip_server() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::Write;
                let mut s = s;
                let mut req = [0u8; 4096];
                let k = s.read(&mut req).unwrap_or(0);
                let req = String::from_utf8_lossy(&req[..k]).to_string();
                let len = req
                    .lines()
                    .find_map(|l| l.strip_prefix("Range: bytes="))
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| {
                        Some(b.trim().parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
                    })
                    .unwrap_or(1);
                let _ = write!(
                    s,
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {len}\r\n\r\n"
                );
                for _ in 0..100 {
                    std::thread::sleep(Duration::from_millis(300));
                    if s.write_all(b"x").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn a_slow_mirror_costs_bounded_time_then_eio_and_later_reads_do_not_wait() {
    let (f, www, mut nginx) = served();
    publish(&f.pkg, &repo_dir(&www, "main"), &f.keys);
    let slow = format!("http://127.0.0.1:{}/main", drip_server());
    let layer = Layer::new();
    let out = pull(&[&nginx.url("main"), &slow], layer.path(), &f.keys, "app");
    ok(&out);
    let store = tempfile::tempdir().unwrap();
    // fetch_timeout=1: each request at most 2 s in all, however the server drips.
    let m = Mount::builder()
        .trusting(&f.keys)
        .layer_of("system", &layer)
        .arg("-o")
        .arg(format!(
            "chunk_store={},fetch_timeout=1",
            store.path().display()
        ))
        .start();
    assert_eq!(read_at(&m.join("big"), 0, 10).unwrap(), f.big[..10]);
    nginx.kill();
    // The first mirror refuses, the second drips: EIO within the bound (2 attempts of 2 s
    // on the slow one, and the kernel may retry the read once).
    let t = Instant::now();
    let r = read_at(&m.join("big"), 40 * 65536, 10);
    assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Both are marked down now: the next reads fail at once.
    let t = Instant::now();
    for k in [42u64, 44, 46] {
        assert!(read_at(&m.join("big"), k * 65536, 10).is_err());
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // Stored chunks still read.
    assert_eq!(
        read_at(&m.join("big"), 65536, 10).unwrap(),
        f.big[65536..65546]
    );
    assert_eq!(m.log().matches("mirror is down").count(), 2, "{}", m.log());
}

#[test]
fn pull_meets_requirements_from_the_repository_with_the_install_solver() {
    let keys = Keys::new("fleet");
    let www = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(www.path());
    let repo = repo_dir(&www, "main");
    let lib = TestTree::new();
    lib.file("lib/libfoo.so", "foo 1\n");
    let app = TestTree::new();
    app.file("bin/app", "app needs foo\n");
    let d = tempfile::tempdir().unwrap();
    for (t, name, version, req) in [
        (&lib, "libfoo", "1.0.0", None),
        (&lib, "libfoo", "1.4.0", None),
        (&lib, "libfoo", "2.0.0", None),
        (&app, "app", "1.0.0", Some("^1.2")),
    ] {
        let mut p = Pkg::new(t.path(), name, version).key(&keys);
        if let Some(r) = req {
            p = p.requires("libfoo", r);
        }
        let file = p.build(d.path().join(format!("{name}-{version}.hpkg")));
        publish(&file, &repo, &keys);
    }
    let layer = Layer::new();
    let out = pull(&[&nginx.url("main")], layer.path(), &keys, "app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ok(&out);
    // The newest libfoo that meets ^1.2, not the newest libfoo.
    assert!(stdout.contains("pulling libfoo-1.4.0"), "{stdout}");
    assert!(layer.path().join("packages/libfoo-1.4.0.hpkg").is_file());
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &keys, store.path());
    assert_eq!(
        fs::read_to_string(m.join("bin/app")).unwrap(),
        "app needs foo\n"
    );
    assert_eq!(
        fs::read_to_string(m.join("lib/libfoo.so")).unwrap(),
        "foo 1\n"
    );
    drop(m);
    // A requirement nothing meets is refused as install refuses it, naming it.
    let app2 = Pkg::new(app.path(), "app", "2.0.0")
        .key(&keys)
        .requires("libbar", ">=1")
        .build(d.path().join("app-2.0.0.hpkg"));
    publish(&app2, &repo, &keys);
    let layer = Layer::new();
    let out = pull(&[&nginx.url("main")], layer.path(), &keys, "app");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("libbar"), "{err}");
}

#[test]
fn publish_refuses_another_key_and_a_version_published_with_another_id() {
    let f = fixture();
    let www = tempfile::tempdir().unwrap();
    let repo = repo_dir(&www, "main");
    publish(&f.pkg, &repo, &f.keys);
    let index = fs::read(www.path().join("main/index")).unwrap();
    // Another key may not take the repository over.
    let other = Keys::new("other");
    let out = Command::new(pkgtool())
        .arg("publish")
        .arg(&f.pkg)
        .args(["--repo", &repo, "--key"])
        .arg(other.secret())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a trusted key"),
        "{err}"
    );
    // The same name and version with other contents: refused, nothing written.
    let t = TestTree::new();
    t.file("hello", "something else\n");
    let imposter = Pkg::new(t.path(), "app", "1.0.0")
        .key(&f.keys)
        .build(www.path().join("imposter.hpkg"));
    let out = Command::new(pkgtool())
        .arg("publish")
        .arg(&imposter)
        .args(["--repo", &repo, "--key"])
        .arg(f.keys.secret())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("already published"),
        "{err}"
    );
    assert_eq!(fs::read(www.path().join("main/index")).unwrap(), index);
    assert_eq!(
        fs::read_dir(www.path().join("main/blobs/sha256"))
            .unwrap()
            .count(),
        1
    );
    // Publishing the same package again changes nothing.
    publish(&f.pkg, &repo, &f.keys);
    assert_eq!(fs::read(www.path().join("main/index")).unwrap(), index);
}

fn install_whole(pkg: &Path, layer: &Path, keys: &Keys) {
    run_ok(
        Command::new(pkgtool())
            .arg("install")
            .arg(pkg)
            .arg("--layer")
            .arg(format!("system={}", layer.display()))
            .arg("--trusted-keys")
            .arg(keys.trusted())
            .arg("--no-restart"),
    );
}

/// `app` 1.1.0: the fixture's content with a few bytes of one chunk of `big` changed.
fn app_1_1(f: &Fixture, dir: &Path) -> (PathBuf, Vec<u8>) {
    let t = TestTree::new();
    let mut big = f.big.clone();
    big[7 * 65536 + 10..7 * 65536 + 20].copy_from_slice(b"version 11");
    t.file("hello", "hello from version 1.1\n");
    t.file("big", &big);
    let pkg = Pkg::new(t.path(), "app", "1.1.0")
        .chunk_size("64K")
        .key(&f.keys)
        .build(dir.join("app-1.1.0.hpkg"));
    (pkg, big)
}

#[test]
fn an_update_over_a_whole_version_moves_a_delta_and_installs_whole() {
    let (f, www, nginx) = served();
    let repo = repo_dir(&www, "main");
    publish(&f.pkg, &repo, &f.keys);
    let (pkg2, big2) = app_1_1(&f, www.path());
    publish(&pkg2, &repo, &f.keys);
    let index = fs::read_to_string(www.path().join("main/index")).unwrap();
    assert!(index.contains("\"deltas\""), "{index}");

    let layer = Layer::new();
    install_whole(&f.pkg, layer.path(), &f.keys);
    let before = nginx.bytes_sent("/main/blobs/");
    let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app");
    let stdout = String::from_utf8_lossy(&out.stdout);
    ok(&out);
    assert!(stdout.contains("by a delta"), "{stdout}");
    let installed = layer.path().join("packages/app-1.1.0.hpkg");
    assert!(!is_thin(&installed), "installed thin, not whole");
    assert_eq!(fs::read(&installed).unwrap(), fs::read(&pkg2).unwrap());
    // One changed chunk: the delta is a small part of the package.
    let moved = nginx.bytes_sent("/main/blobs/") - before;
    let whole = fs::metadata(&pkg2).unwrap().len();
    assert!(
        moved < whole / 10,
        "the update moved {moved} of {whole} bytes"
    );
    // Whole: it reads with no repository at all.
    drop(nginx);
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from version 1.1\n"
    );
    assert_eq!(fs::read(m.join("big")).unwrap(), big2);
}

#[test]
fn a_damaged_delta_is_not_used_and_the_update_comes_thin() {
    let (f, www, nginx) = served();
    let repo = www.path().join("main");
    publish(&f.pkg, &repo.display().to_string(), &f.keys);
    let (pkg2, big2) = app_1_1(&f, www.path());
    publish(&pkg2, &repo.display().to_string(), &f.keys);
    // Every object that is neither package: the delta. Flip a byte of it.
    let sizes = [&f.pkg, &pkg2].map(|p| fs::metadata(p).unwrap().len());
    let delta = fs::read_dir(repo.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !sizes.contains(&fs::metadata(p).unwrap().len()))
        .expect("a delta object");
    let mut b = fs::read(&delta).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x40;
    fs::write(&delta, &b).unwrap();

    let layer = Layer::new();
    install_whole(&f.pkg, layer.path(), &f.keys);
    let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the delta was not used"), "{err}");
    assert!(err.contains("other bytes"), "{err}");
    let installed = layer.path().join("packages/app-1.1.0.hpkg");
    assert!(is_thin(&installed));
    let store = tempfile::tempdir().unwrap();
    let m = mount(&layer, &f.keys, store.path());
    assert_eq!(fs::read(m.join("big")).unwrap(), big2);
}

#[test]
fn an_expired_index_is_refused_until_the_publisher_signs_it_again() {
    let (f, www, nginx) = served();
    let repo = repo_dir(&www, "main");
    run_ok(
        Command::new(pkgtool())
            .arg("publish")
            .arg(&f.pkg)
            .args(["--repo", &repo, "--expires", "1s", "--key"])
            .arg(f.keys.secret()),
    );
    std::thread::sleep(Duration::from_millis(2100));
    let layer = Layer::new();
    let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an expired index was accepted");
    assert!(err.contains("expired at"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(fs::read_dir(layer.path().join("packages"))
        .unwrap()
        .next()
        .is_none());
    // Publishing with no package signs the same packages again with a new expiry.
    let out = pkgtool_out(&[
        "publish",
        "--repo",
        &repo,
        "--key",
        &f.keys.secret().display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ok(&out);
    assert!(
        stdout.contains("index version 2, 1 packages, expires"),
        "{stdout}"
    );
    let out = pull(&[&nginx.url("main")], layer.path(), &f.keys, "app");
    ok(&out);
}

/// A layer owned by nobody, in a directory others may enter, and the trusted keys beside it.
fn users_layer(f: &Fixture) -> (tempfile::TempDir, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let top = tempfile::Builder::new()
        .prefix("e2e-fleet-user-")
        .tempdir()
        .unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let keys = top.path().join("keys");
    fs::create_dir(&keys).unwrap();
    for e in fs::read_dir(f.keys.trusted()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), keys.join(e.file_name())).unwrap();
    }
    let user = top.path().join("user");
    for d in [&user, &user.join("packages")] {
        fs::create_dir_all(d).unwrap();
        std::os::unix::fs::lchown(d, Some(65534), Some(65534)).unwrap();
    }
    (top, user, keys)
}

fn pull_as_nobody(url: &str, layer: &Path, keys: &Path, repositories: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(pkgtool())
        .args(["pull", "app", "--repo", url, "--no-restart", "--layer"])
        .arg(format!("user={}", layer.display()))
        .arg("--trusted-keys")
        .arg(keys)
        .arg("--repositories")
        .arg(repositories)
        .output()
        .unwrap()
}

/// The root daemon serving layer `user` with the repository allow-list `list`.
fn mount_user(user: &Path, keys: &Path, store: &Path, list: &Path) -> Mount {
    Mount::builder()
        .trusted_keys(keys)
        .layer("user", user)
        .arg("-o")
        .arg(format!(
            "chunk_store={},repositories={}",
            store.display(),
            list.display()
        ))
        .start()
}

/// A thin package makes the root daemon connect where its source says: in a layer not owned
/// by root it may only name repositories the admin lists, or the user would get root to
/// connect anywhere (loopback services, hosts only root's firewall rules reach).
#[test]
fn a_users_layer_may_only_name_the_repositories_the_admin_allows() {
    let (f, _www, nginx) = served();
    let url = nginx.url("main");
    // With a prefetch list: a refused package must not fetch it in the background either.
    let info = run_ok(Command::new(pkgtool()).arg("info").arg(&f.pkg));
    let id = String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("id:"))
        .unwrap()
        .trim()
        .to_string();
    let lists = tempfile::tempdir().unwrap();
    let list: String = (0..40).map(|c| format!("{c}\n")).collect();
    fs::write(lists.path().join(format!("{id}.prefetch")), list).unwrap();
    run_ok(
        Command::new(pkgtool())
            .arg("publish")
            .arg(&f.pkg)
            .args(["--repo", &url, "--prefetch"])
            .arg(lists.path())
            .arg("--key")
            .arg(f.keys.secret()),
    );
    let (top, user, keys) = users_layer(&f);
    let none = top.path().join("repositories-none");
    fs::write(&none, "# no repository for users\n").unwrap();
    let allowed = top.path().join("repositories");
    fs::write(&allowed, format!("{url}\n")).unwrap();

    // The owner's pkgtool refuses it as the daemon would.
    let out = pull_as_nobody(&url, &user, &keys, &none);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pulled from an unlisted repository");
    assert!(err.contains("does not list"), "{err}");
    assert!(fs::read_dir(user.join("packages"))
        .unwrap()
        .next()
        .is_none());
    let out = pull_as_nobody(&url, &user, &keys, &allowed);
    ok(&out);
    assert!(is_thin(&user.join("packages/app-1.0.0.hpkg")));

    // The root daemon with an allow-list that does not name it: refused, nothing fetched.
    let store = tempfile::tempdir().unwrap();
    let before = nginx.bytes_sent("/main/blobs/");
    let m = mount_user(&user, &keys, store.path(), &none);
    assert!(!m.join("hello").exists(), "served:\n{}", m.log());
    assert!(
        wait_until(Duration::from_secs(5), || m.log().contains("does not list")),
        "{}",
        m.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nginx.bytes_sent("/main/blobs/"), before, "{}", m.log());
    drop(m);
    // Listed: served.
    let m = mount_user(&user, &keys, store.path(), &allowed);
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the repository\n",
        "{}",
        m.log()
    );
    // A system layer (root's) names any repository, whatever the list says.
    let layer = Layer::new();
    let out = pull(&[&url], layer.path(), &f.keys, "app");
    assert!(out.status.success());
    let m2 = Mount::builder()
        .trusting(&f.keys)
        .layer_of("system", &layer)
        .arg("-o")
        .arg(format!(
            "chunk_store={},repositories={}",
            store.path().display(),
            none.display()
        ))
        .start();
    assert_eq!(read_at(&m2.join("big"), 0, 10).unwrap(), f.big[..10]);
}

/// A boot uses whole packages only (the network is not up in the initramfs): a generation
/// with a thin package gives way to the newest earlier one that is whole, saying why, and
/// boots once `pkgtool fetch` has made it whole.
#[test]
fn a_boot_passes_over_a_generation_with_a_thin_package_until_it_is_fetched() {
    let (f, www, nginx) = served();
    let url = nginx.url("main");
    publish(&f.pkg, &url, &f.keys);
    let (pkg2, big2) = app_1_1(&f, www.path());
    publish(&pkg2, &url, &f.keys);
    let layer = Layer::new();
    install_whole(&f.pkg, layer.path(), &f.keys);
    let mut c = Command::new(pkgtool());
    c.args(["pull", "app", "--no-delta", "--repo", &url, "--no-restart"])
        .arg("--layer")
        .arg(format!("system={}", layer.path().display()))
        .arg("--trusted-keys")
        .arg(f.keys.trusted());
    run_ok(&mut c);
    assert!(is_thin(&layer.path().join("packages/app-1.1.0.hpkg")));
    let pulled = nginx.bytes_sent("/main/blobs/");
    let store = tempfile::tempdir().unwrap();
    let cmdline = www.path().join("cmdline");
    fs::write(&cmdline, "BOOT_IMAGE=/vmlinuz quiet\n").unwrap();
    let boot = || {
        Mount::builder()
            .trusting(&f.keys)
            .layer_of("system", &layer)
            .arg("-o")
            .arg(format!(
                "boot,boot_cmdline={},chunk_store={}",
                cmdline.display(),
                store.path().display()
            ))
            .start()
    };
    let m = boot();
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from the repository\n",
        "{}",
        m.log()
    );
    assert!(m.log().contains("it is thin"), "{}", m.log());
    // The boot fetched nothing.
    assert_eq!(nginx.bytes_sent("/main/blobs/"), pulled);
    drop(m);
    // Made whole, it boots.
    let out = pkgtool_out(&[
        "fetch",
        "--layer",
        &format!("system={}", layer.path().display()),
        "--trusted-keys",
        &f.keys.trusted().display().to_string(),
        "--chunk-store",
        &store.path().display().to_string(),
    ]);
    ok(&out);
    let m = boot();
    assert_eq!(
        fs::read_to_string(m.join("hello")).unwrap(),
        "hello from version 1.1\n",
        "{}",
        m.log()
    );
    assert_eq!(fs::read(m.join("big")).unwrap(), big2);
}

/// `pkgtool cat`, `extract` and `verify` read a thin package as the daemon does: chunks
/// from the chunk store, the others from its repository, each checked.
#[test]
fn cat_extract_and_verify_read_a_thin_package_through_its_repository() {
    let (f, _www, nginx) = served();
    let url = nginx.url("main");
    publish(&f.pkg, &url, &f.keys);
    let layer = Layer::new();
    let out = pull(&[&url], layer.path(), &f.keys, "app");
    assert!(out.status.success());
    let thin = layer
        .path()
        .join("packages/app-1.0.0.hpkg")
        .display()
        .to_string();
    // As a user, the store is the user's own ($XDG_CACHE_HOME), never root's.
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::lchown(home.path(), Some(65534), Some(65534)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(pkgtool())
        .args(["cat", &thin, "big"])
        .env("XDG_CACHE_HOME", home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(out.stdout, f.big);
    assert!(home.path().join("packagefs/chunks/chunks").is_dir());
    // As root, with a store named.
    let store = tempfile::tempdir().unwrap();
    let s = store.path().display().to_string();
    let x = tempfile::tempdir().unwrap();
    let dest = x.path().join("out").display().to_string();
    let out = pkgtool_out(&["extract", &thin, &dest, "--chunk-store", &s]);
    ok(&out);
    assert_eq!(fs::read(x.path().join("out/big")).unwrap(), f.big);
    let keys = f.keys.trusted().display().to_string();
    let out = pkgtool_out(&[
        "verify",
        &thin,
        "--trusted-keys",
        &keys,
        "--chunk-store",
        &s,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Stored chunks read with the repository gone; others fail in one line naming it.
    drop(nginx);
    let out = pkgtool_out(&["cat", &thin, "big", "--chunk-store", &s]);
    ok(&out);
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().display().to_string();
    let out = pkgtool_out(&["cat", &thin, "big", "--chunk-store", &e]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains(&url), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// A real update (two versions of Debian's libssl3 that bookworm, bookworm-updates and
/// bookworm-security carry, grafted): published to nginx, the repository makes the delta,
/// and a layer holding the old version pulls the new one as that delta.
#[test]
fn r16_a_real_debian_update_is_pulled_as_a_delta_through_nginx() {
    let keys = Keys::new("fleet");
    let v = e2e::debian::versions("libssl3");
    assert!(
        v.len() >= 2,
        "apt offers fewer than two versions of libssl3: {v:?}"
    );
    let www = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(www.path());
    let url = nginx.url("main");
    let repo = repo_dir(&www, "main");
    let mut pkgs = Vec::new();
    for ver in [&v[1], &v[0]] {
        let deb = e2e::debian::deb_version("libssl3", ver);
        let dir = www.path().join(format!("g-{}", pkgs.len()));
        fs::create_dir(&dir).unwrap();
        run_ok(
            Command::new(pkgtool())
                .args(["graft", "deb"])
                .arg(&deb)
                .arg("-o")
                .arg(&dir)
                .arg("--key")
                .arg(keys.secret())
                .args(["--ignore-depends", "libc6", "--quiet"]),
        );
        let pkg = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        publish(&pkg, &repo, &keys);
        pkgs.push(pkg);
    }
    let layer = Layer::new();
    install_whole(&pkgs[0], layer.path(), &keys);
    let before = nginx.bytes_sent("/main/");
    let out = pull(&[&url], layer.path(), &keys, "libssl3");
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("by a delta"), "{stdout}");
    let moved = nginx.bytes_sent("/main/") - before;
    let new = fs::read(&pkgs[1]).unwrap();
    let installed = fs::read_dir(layer.path().join("packages"))
        .unwrap()
        .flatten()
        .map(|e| fs::read(e.path()).unwrap())
        .find(|b| b.len() == new.len())
        .expect("the new version installed whole");
    assert!(installed == new, "not the published package");
    eprintln!(
        "libssl3 {} -> {}: pull moved {moved} bytes of a {}-byte package",
        v[1],
        v[0],
        new.len()
    );
    assert!(
        moved * 2 < new.len() as u64,
        "moved {moved} of {}",
        new.len()
    );
}

#[test]
fn pull_with_fetch_installs_whole_packages() {
    let (f, _www, nginx) = served();
    let url = nginx.url("main");
    publish(&f.pkg, &url, &f.keys);
    let layer = Layer::new();
    let store = tempfile::tempdir().unwrap();
    let mut c = Command::new(pkgtool());
    c.args(["pull", "app", "--fetch", "--repo", &url, "--no-restart"])
        .arg("--chunk-store")
        .arg(store.path())
        .arg("--layer")
        .arg(format!("system={}", layer.path().display()))
        .arg("--trusted-keys")
        .arg(f.keys.trusted());
    let out = run_ok(&mut c);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("app-1.0.0: whole"), "{stdout}");
    let installed = layer.path().join("packages/app-1.0.0.hpkg");
    assert_eq!(fs::read(installed).unwrap(), fs::read(&f.pkg).unwrap());
}
