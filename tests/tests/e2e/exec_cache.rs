//! r15: the exec cache (`-o exec_cache=DIR`): programs filled once into a cache file named
//! by the BLAKE3 of their bytes, then opened by FUSE passthrough (their reads never reach
//! the daemon), across remounts; a cache file changed behind the daemon's back is not
//! served and is filled again; the cache stays within its size; a cache directory that is
//! not the daemon's alone is refused.
//!
//! Whether reads reached the daemon is read from the counters it logs at unmount
//! (`passthrough_opens=`, `daemon_opens=`, `daemon_reads=`, `filled=`, `hashed=`,
//! `recorded=`). The passthrough tests run over both transports (`/dev/fuse` and the ring,
//! where the kernel has it): the backing files are registered on the connection's
//! `/dev/fuse` descriptor either way.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use std::io::Read;

use e2e::uring::Transport;
use e2e::{run_ok, run_packagefs, Mount, Pkg, Stack, TestTree};

/// The counters of the daemon's `exec cache` line at unmount, and of its `chunk cache`
/// line (prefixed `chunk_`: `chunk_loads=` is how many chunks it read and decompressed).
fn counters(m: &mut Mount) -> HashMap<String, u64> {
    let status = m.terminate();
    assert!(status.success(), "packagefs exited with {status}");
    let log = m.log();
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} in the log:\n{log}"))
            .to_owned()
    };
    let pairs = |l: String, prefix: &str| -> Vec<(String, u64)> {
        l.split_whitespace()
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((format!("{prefix}{k}"), v.parse().ok()?))
            })
            .collect()
    };
    let mut c: HashMap<String, u64> = pairs(line("passthrough_opens="), "").into_iter().collect();
    c.extend(pairs(line("chunk cache"), "chunk_"));
    c
}

fn object(cache: &Path, bytes: &[u8]) -> PathBuf {
    cache
        .join("data")
        .join(blake3::hash(bytes).to_hex().as_str())
}

/// Waits until `path` holds exactly `bytes` (the fill runs in the background).
fn wait_for_object(path: &Path, bytes: &[u8]) {
    let t0 = Instant::now();
    while std::fs::read(path).ok().as_deref() != Some(bytes) {
        assert!(
            t0.elapsed() < e2e::DEADLINE,
            "{} was not filled within {:?}",
            path.display(),
            e2e::DEADLINE
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the daemon has logged `what`.
fn wait_for_log(m: &Mount, what: &str) {
    let t0 = Instant::now();
    while !m.log().contains(what) {
        assert!(
            t0.elapsed() < e2e::DEADLINE,
            "the daemon did not log {what:?}:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Repeats `action` until the daemon has logged an open by passthrough to the cache file of
/// `bytes` (an open right after the fill may still go through the daemon: until the RELEASE
/// of the earlier opens reaches it, see passthrough.rs).
fn until_passthrough(m: &Mount, bytes: &[u8], mut action: impl FnMut()) {
    let line = format!("passthrough to {}", blake3::hash(bytes).to_hex());
    let t0 = Instant::now();
    loop {
        action();
        if m.log().contains(&line) {
            return;
        }
        assert!(t0.elapsed() < e2e::DEADLINE, "never opened by passthrough");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's log level: its counters, and a line per passthrough open.
const LOG: &str = "info,packagefs::passthrough=debug";

fn cat_stack() -> Stack {
    let t = TestTree::new();
    t.copy_from("bin/cat", "/bin/cat");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "tools");
    s
}

/// Runs `MOUNT/bin/cat FILE` and checks its output.
fn run_cat(m: &Mount, input: &Path, want: &[u8]) {
    let out = run_ok(Command::new(m.join("bin/cat")).arg(input));
    assert_eq!(out.stdout, want, "cat's output");
}

#[test]
fn r15_programs_are_served_by_passthrough_from_the_cache_across_remounts_and_a_changed_cache_file_is_refilled(
) {
    e2e::uring::each(programs_are_served_by_passthrough);
}

fn programs_are_served_by_passthrough(t: Transport) {
    let s = cat_stack();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("var/cache/exec");
    let input = dir.path().join("input");
    std::fs::write(&input, b"through the mount\n").unwrap();
    let want = b"through the mount\n";
    let cat = std::fs::read("/bin/cat").unwrap();
    let obj = object(&cache, &cat);
    let opt = format!("exec_cache={}", cache.display());

    // 1. First run: through the daemon, and queued; the cache file appears, named by the
    // program's content hash; the second run is served by passthrough.
    let mut m = s
        .builder()
        .transport(t)
        .arg("-o")
        .arg(&opt)
        .env("RUST_LOG", LOG)
        .start();
    run_cat(&m, &input, want);
    wait_for_object(&obj, &cat);
    wait_for_log(
        &m,
        &format!("exec cache: filled {}", blake3::hash(&cat).to_hex()),
    );
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700, "a root-only directory");
    until_passthrough(&m, &cat, || run_cat(&m, &input, want));
    assert!(m.log().contains(t.log_line()), "{}", m.log());
    let c = counters(&mut m);
    assert_eq!(c["filled"], 1, "{c:?}");
    assert!(c["daemon_opens"] >= 1 && c["daemon_reads"] >= 1, "{c:?}");
    assert!(c["passthrough_opens"] >= 1, "the second run: {c:?}");
    drop(m);

    // 2. A remount (as after a reboot): not hashed (the record of the daemon before says
    // the file is as it hashed it), every open is passthrough and no read reaches the
    // daemon (whose page cache is new with the mount).
    let mut m = s
        .builder()
        .transport(t)
        .arg("-o")
        .arg(&opt)
        .env("RUST_LOG", LOG)
        .start();
    run_cat(&m, &input, want);
    run_cat(&m, &input, want);
    let c = counters(&mut m);
    assert_eq!(c["hashed"], 0, "{c:?}");
    assert_eq!(c["recorded"], 1, "{c:?}");
    assert_eq!(c["filled"], 0, "{c:?}");
    assert_eq!(c["daemon_opens"], 0, "{c:?}");
    assert_eq!(c["daemon_reads"], 0, "reads went through the daemon: {c:?}");
    assert!(c["passthrough_opens"] >= 2, "{c:?}");
    drop(m);

    // 3. The cache file changed behind the daemon's back (same size): not served, the
    // program still runs right (through the daemon), and the file is filled again.
    let mut bad = cat.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&obj, &bad).unwrap();
    let mut m = s
        .builder()
        .transport(t)
        .arg("-o")
        .arg(&opt)
        .env("RUST_LOG", LOG)
        .start();
    run_cat(&m, &input, want);
    assert!(
        m.log()
            .contains("does not match its hash: removed, not served"),
        "{}",
        m.log()
    );
    wait_for_object(&obj, &cat);
    wait_for_log(
        &m,
        &format!("exec cache: filled {}", blake3::hash(&cat).to_hex()),
    );
    until_passthrough(&m, &cat, || run_cat(&m, &input, want));
    let c = counters(&mut m);
    assert_eq!(c["filled"], 1, "{c:?}");
    assert!(c["daemon_reads"] >= 1, "{c:?}");
    assert!(c["passthrough_opens"] >= 1, "{c:?}");
    assert_eq!(
        m.log().matches("does not match its hash").count(),
        1,
        "one line"
    );
}

/// Puts `bytes` at `obj` by a rename over it (another inode), with the mode and mtime the
/// cache file had: what a copy over it (`cp` to a temp name, `touch -r`, `mv`) leaves.
fn replace_by_rename(obj: &Path, bytes: &[u8]) {
    let st = std::fs::metadata(obj).unwrap();
    let tmp = obj.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(st.modified().unwrap()).unwrap();
    drop(f);
    std::fs::set_permissions(&tmp, st.permissions()).unwrap();
    std::fs::rename(&tmp, obj).unwrap();
}

#[test]
fn r15_a_kept_cache_file_is_served_unhashed_after_a_remount_unless_it_changed_since_it_was_recorded(
) {
    e2e::uring::each(kept_cache_file);
}

fn kept_cache_file(t: Transport) {
    let s = cat_stack();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("exec");
    let input = dir.path().join("input");
    let want = b"kept\n";
    std::fs::write(&input, want).unwrap();
    let cat = std::fs::read("/bin/cat").unwrap();
    let obj = object(&cache, &cat);
    let opt = format!("exec_cache={}", cache.display());
    let mount = |extra: &str| {
        s.builder()
            .transport(t)
            .arg("-o")
            .arg(format!("{opt}{extra}"))
            .env("RUST_LOG", LOG)
            .start()
    };
    let filled = format!("exec cache: filled {}", blake3::hash(&cat).to_hex());

    // Filled by a first daemon, which records it.
    let mut m = mount("");
    run_cat(&m, &input, want);
    wait_for_log(&m, &filled);
    counters(&mut m);
    drop(m);
    assert!(cache.join("verified").is_file(), "the record");

    // Untouched: the next daemon serves it at once, by passthrough, without hashing it.
    let mut m = mount("");
    assert!(
        m.log()
            .contains("1 objects, 1 of them hashed by an earlier daemon and unchanged since"),
        "{}",
        m.log()
    );
    run_cat(&m, &input, want);
    let c = counters(&mut m);
    assert_eq!((c["hashed"], c["recorded"]), (0, 1), "{c:?}");
    assert_eq!(c["daemon_reads"], 0, "{c:?}");
    assert!(c["passthrough_opens"] >= 1, "{c:?}");
    // Nor is any of its chunks read to tell whether it is a program: the cache has it.
    assert_eq!(c["chunk_loads"], 0, "{c:?}");
    drop(m);

    // Replaced by a rename of other bytes of the same size over it, its mode and mtime
    // kept: another inode than recorded, so hashed, not served, removed and refilled.
    let mut bad = cat.clone();
    let mid = bad.len() / 3;
    bad[mid] ^= 0x20;
    replace_by_rename(&obj, &bad);
    let mut m = mount("");
    run_cat(&m, &input, want);
    assert!(
        m.log()
            .contains("does not match its hash: removed, not served"),
        "{}",
        m.log()
    );
    wait_for_log(&m, &filled);
    let c = counters(&mut m);
    assert_eq!((c["hashed"], c["recorded"]), (0, 0), "{c:?}");
    assert!(c["daemon_reads"] >= 1, "served through the daemon: {c:?}");
    drop(m);
    assert_eq!(std::fs::read(&obj).unwrap(), cat, "refilled");

    // The refill was recorded: served unhashed again.
    let mut m = mount("");
    run_cat(&m, &input, want);
    let c = counters(&mut m);
    assert_eq!((c["hashed"], c["recorded"]), (0, 1), "{c:?}");
    drop(m);

    // `exec_cache_verify=full`: hashed at its first use whatever the record says.
    let mut m = mount(",exec_cache_verify=full");
    run_cat(&m, &input, want);
    run_cat(&m, &input, want);
    let c = counters(&mut m);
    assert_eq!((c["hashed"], c["recorded"]), (1, 0), "{c:?}");
    assert_eq!(c["daemon_reads"], 0, "{c:?}");
}

/// `n` bytes that look like an ELF shared object and do not compress.
fn fake_library(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    v[..4].copy_from_slice(b"\x7fELF");
    v[4] = 2; // 64-bit
    v[5] = 1; // little-endian
    v[16..18].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    v
}

#[test]
fn r15_a_cache_at_its_size_limit_evicts_what_is_not_open_and_keeps_working() {
    let a = fake_library(3 << 20, 1);
    let b = fake_library(3 << 20, 2);
    let t = TestTree::new();
    t.file("lib/liba.so", &a).file("lib/libb.so", &b);
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "libs");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("exec");
    let m = s
        .builder()
        .arg("-o")
        .arg(format!("exec_cache={},exec_cache_size=4M", cache.display()))
        .env(
            "RUST_LOG",
            "info,packagefs::exec_cache=debug,packagefs::passthrough=debug",
        )
        .start();
    let (la, lb) = (m.join("lib/liba.so"), m.join("lib/libb.so"));
    assert_eq!(std::fs::read(&la).unwrap(), a);
    wait_for_object(&object(&cache, &a), &a);
    // liba is open (by passthrough) while libb is filled: 6 MiB do not fit in 4, and the
    // only file not open, libb, goes.
    // (The open waits for the RELEASE of the read above to reach the daemon: until then,
    // opens of the file go through the daemon, see passthrough.rs.)
    let t0 = Instant::now();
    let held = loop {
        let f = std::fs::File::open(&la).unwrap();
        if m.log()
            .contains(&format!("passthrough to {}", blake3::hash(&a).to_hex()))
        {
            break f;
        }
        drop(f);
        assert!(
            t0.elapsed() < e2e::DEADLINE,
            "liba is not opened by passthrough"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(std::fs::read(&lb).unwrap(), b);
    wait_for_log(&m, &format!("evicted {}", blake3::hash(&b).to_hex()));
    assert!(object(&cache, &a).exists(), "open: kept");
    assert!(!object(&cache, &b).exists(), "evicted right after its fill");
    // Once liba is closed, libb's next fill evicts it, the least recently used.
    let mut r = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut r).unwrap();
    assert_eq!(r, a);
    drop(held);
    assert_eq!(std::fs::read(&lb).unwrap(), b);
    wait_for_object(&object(&cache, &b), &b);
    wait_for_log(&m, &format!("evicted {}", blake3::hash(&a).to_hex()));
    assert!(!object(&cache, &a).exists());
    // Both still read right, whatever is cached.
    assert_eq!(std::fs::read(&la).unwrap(), a);
    assert_eq!(std::fs::read(&lb).unwrap(), b);
    let total: u64 = std::fs::read_dir(cache.join("data"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 4 << 20, "{total} bytes in the cache");
}

#[test]
fn r15_a_cache_directory_that_is_a_symlink_or_open_to_others_is_refused_in_one_line() {
    let t = TestTree::new();
    t.file("a", "x");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "p");
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for (cache, why) in [
        (&link, "is a symlink (refused)".to_string()),
        (
            &open,
            format!(
                "has mode 0777: only its owner may enter it (chmod 700 {})",
                open.display()
            ),
        ),
    ] {
        let mut args = vec![
            "--layer".to_string(),
            format!("system={}", s.layer("system").path().display()),
            "--trusted-keys".into(),
            s.keys().trusted().display().to_string(),
            "-o".into(),
            format!("exec_cache={}", cache.display()),
        ];
        args.push(mnt.display().to_string());
        let r = run_packagefs(&args);
        assert_eq!(r.code(), 1, "{}", r.stderr);
        let want = format!("packagefs: exec cache {}: {why}\n", cache.display());
        assert!(r.stderr.ends_with(&want), "{}", r.stderr);
        assert!(!e2e::mountinfo::is_fuse_mounted(&mnt));
    }
    // Nothing was created behind the symlink.
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
}

#[test]
fn r15_a_file_open_by_passthrough_keeps_its_bytes_across_a_generation_switch() {
    e2e::uring::each(keeps_its_bytes_across_a_switch);
}

fn keeps_its_bytes_across_a_switch(t: Transport) {
    let old = fake_library(3 << 20, 7);
    let new = fake_library(3 << 20, 8);
    let s = Stack::new(&["system"]);
    let t1 = TestTree::new();
    t1.file("lib/libx.so", &old);
    s.add_pkg("system", "x1", Pkg::new(t1.path(), "x", "1.0.0"));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("exec");
    let mut m = s
        .builder()
        .transport(t)
        .arg("-o")
        .arg(format!("exec_cache={}", cache.display()))
        .env("RUST_LOG", LOG)
        .start();
    let lib = m.join("lib/libx.so");
    assert_eq!(std::fs::read(&lib).unwrap(), old);
    wait_for_object(&object(&cache, &old), &old);
    // Open by passthrough (cached now), partly read.
    let mut f = None;
    until_passthrough(&m, &old, || {
        // (Closed before the next try: an open file makes the next open go the same way.)
        drop(f.take());
        f = Some(std::fs::File::open(&lib).unwrap());
    });
    let mut f = f.unwrap();
    let mut head = vec![0u8; 100_000];
    f.read_exact(&mut head).unwrap();
    // Version 2 is dropped in and replaces version 1.
    let t2 = TestTree::new();
    t2.file("lib/libx.so", &new);
    s.add_pkg("system", "x2", Pkg::new(t2.path(), "x", "2.0.0"));
    assert!(
        e2e::wait_until(e2e::DEADLINE, || std::fs::read(&lib).ok().as_deref()
            == Some(&new[..])),
        "version 2 was not activated: {}",
        m.log()
    );
    // The open file reads its old bytes to the end, even with the page cache dropped.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(head == old, "the old bytes changed");
    drop(f);
    // The new version gets its own cache file and is served by passthrough in turn.
    wait_for_object(&object(&cache, &new), &new);
    wait_for_log(
        &m,
        &format!("exec cache: filled {}", blake3::hash(&new).to_hex()),
    );
    until_passthrough(&m, &new, || {
        assert_eq!(std::fs::read(&lib).unwrap(), new);
    });
    assert!(
        object(&cache, &old).exists(),
        "the old one stays until evicted"
    );
    let c = counters(&mut m);
    assert!(c["passthrough_opens"] >= 2, "{c:?}");
    assert_eq!(c["filled"], 2, "{c:?}");
}

#[test]
fn r15_a_daemon_killed_mid_fill_leaves_only_a_temp_file_which_the_next_one_sweeps() {
    let big = fake_library(96 << 20, 5);
    let t = TestTree::new();
    t.file("lib/libbig.so", &big);
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "big");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("exec");
    let opt = format!("exec_cache={}", cache.display());
    let mut m = s.builder().arg("-o").arg(&opt).start();
    let lib = m.join("lib/libbig.so");
    // The first read queues the fill; the daemon is killed while it writes.
    let mut f = std::fs::File::open(&lib).unwrap();
    let mut head = [0u8; 4096];
    f.read_exact(&mut head).unwrap();
    drop(f);
    let tmp = cache.join("tmp");
    assert!(
        e2e::wait_until(e2e::DEADLINE, || std::fs::read_dir(&tmp)
            .map(|d| d.count() > 0)
            .unwrap_or(false)),
        "no fill began"
    );
    m.signal(libc::SIGKILL);
    m.wait_exit(e2e::DEADLINE).expect("SIGKILL ends the daemon");
    e2e::mount::lazy_unmount(m.path());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    let obj = object(&cache, &big);
    assert!(
        !left.is_empty() && !obj.exists(),
        "killed mid-fill: a temp file, no cache file"
    );
    drop(m);
    // The next daemon sweeps the temp file, never uses it, and fills the file anew.
    let m = s.builder().arg("-o").arg(&opt).start();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "swept");
    assert!(
        m.log()
            .contains("removed 1 temp files of interrupted fills"),
        "{}",
        m.log()
    );
    assert!(std::fs::read(m.join("lib/libbig.so")).unwrap() == big);
    wait_for_object(&obj, &big);
}
