//! The "Trust" cases: what a hostile file may cost before it is refused (memory, time), a
//! FIFO among the trusted keys, a tree deep enough to make per-entry path building show,
//! and a file whose size runs past its chunk, which `verify` must catch as readers do.

use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use format::keys::SecretKey;

use crate::util::*;

/// A finished run with its cost: peak resident memory (`ru_maxrss` of exactly this child,
/// from `wait4`) and wall time.
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
    elapsed: Duration,
}

impl Measured {
    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}, peak RSS {} KiB\nstdout:\n{}\nstderr:\n{}",
            self.code, self.elapsed, self.max_rss_kib, self.stdout, self.stderr
        )
    }

    /// Exit 1 with exactly one `pkgtool: ` line on stderr that contains `needle`.
    fn assert_one_line_error(&self, needle: &str) {
        assert_eq!(self.code, Some(1), "expected exit 1\n{}", self.describe());
        assert!(
            self.stderr.starts_with("pkgtool: ")
                && self.stderr.ends_with('\n')
                && self.stderr.matches('\n').count() == 1
                && self.stderr.contains(needle),
            "expected one `pkgtool: ` line containing {needle:?}\n{}",
            self.describe()
        );
    }
}

/// Runs `pkgtool ARGS` with its address space limited to `as_limit` bytes (so a regression
/// fails the test with an allocation error instead of eating the machine), kills it if it
/// is still running after `deadline` (the test then fails, naming the hang), and measures it.
///
/// The peak RSS is that of pkgtool alone: a process forked from this test binary starts
/// with the binary's resident pages counted as its own (`ru_maxrss` keeps them through
/// exec), and other tests running beside this one made that up to 66 MB. So pkgtool is
/// started by a small launcher (`python3`), whose fork of itself is the process measured;
/// it writes that child's `ru_maxrss` to a file and exits with its status.
// The child is reaped by `wait4`, not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&std::ffi::OsStr], as_limit: u64, deadline: Duration) -> Measured {
    const LAUNCHER: &str = r#"
import ctypes, os, resource, signal, sys
limit, report = int(sys.argv[1]), sys.argv[2]
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # dies with the launcher
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(sys.argv[3], sys.argv[3:])
_, status, ru = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(str(ru.ru_maxrss))
if os.WIFSIGNALED(status):
    signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
"#;
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(LAUNCHER)
        .arg(as_limit.to_string())
        .arg(report.path())
        .arg(BIN)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn pkgtool");
    let pid = child.id() as libc::pid_t;
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let mut status = 0;
    // SAFETY: plain libc calls on our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4: {}", std::io::Error::last_os_error());
        if start.elapsed() > deadline {
            let _ = child.kill();
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            panic!(
                "pkgtool {:?} still running after {deadline:?}: killed\nstderr so far:\n{}",
                args,
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let stderr = err.join().unwrap();
    let max_rss_kib = fs::read_to_string(report.path())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("the launcher measured nothing (is python3 there?): {stderr}"));
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: out.join().unwrap(),
        stderr,
        max_rss_kib,
        elapsed,
    }
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A sparse file laid out as FORMAT.md says, claiming a TOC section of `toc_len` bytes
/// (all zero but its frame: stored raw) and `chunks` zero chunk index entries, with an
/// empty heap and a trailer whose id is not the metadata's hash, signed by `signer` (over
/// that id) or unsigned. Only the header, the manifest, the frame and the trailer are
/// written: the file costs a few KB of disk whatever it claims.
fn sparse_package(path: &Path, toc_len: u64, chunks: u64, signer: Option<&SecretKey>) {
    let manifest = br#"{"name":"giant","version":"1.0.0"}"#;
    let align8 = |x: u64| x.next_multiple_of(8);
    let m_off = 128u64;
    let t_off = align8(m_off + manifest.len() as u64);
    let i_off = align8(t_off + toc_len);
    let i_len = chunks * 56;
    let h_off = align8(i_off + i_len);
    let tr_off = h_off;
    let end = tr_off + 136;
    let mut h = [0u8; 128];
    h[..8].copy_from_slice(b"\x89HPKG\r\n\x1a");
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[12..16].copy_from_slice(&128u32.to_le_bytes());
    h[16..20].copy_from_slice(&(signer.is_some() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(64u32 * 1024).to_le_bytes());
    for (i, (off, len)) in [
        (m_off, manifest.len() as u64),
        (t_off, toc_len),
        (i_off, i_len),
        (h_off, 0),
        (tr_off, 136),
    ]
    .into_iter()
    .enumerate()
    {
        h[32 + 16 * i..40 + 16 * i].copy_from_slice(&off.to_le_bytes());
        h[40 + 16 * i..48 + 16 * i].copy_from_slice(&len.to_le_bytes());
    }
    h[120..128].copy_from_slice(&end.to_le_bytes());
    let mut frame = [0u8; 16];
    frame[8..16].copy_from_slice(&(toc_len - 16).to_le_bytes());
    let id = [0x5au8; 32];
    let mut tr = [0u8; 136];
    tr[..8].copy_from_slice(b"HPKGSIG1");
    tr[40..72].copy_from_slice(&id);
    if let Some(k) = signer {
        tr[8..40].copy_from_slice(&k.public().to_bytes());
        tr[72..136].copy_from_slice(&k.sign(&id));
    }
    let f = fs::File::create(path).unwrap();
    f.set_len(end).unwrap();
    f.write_all_at(&h, 0).unwrap();
    f.write_all_at(manifest, m_off).unwrap();
    f.write_all_at(&frame, t_off).unwrap();
    f.write_all_at(&tr, tr_off).unwrap();
}

/// Peak RSS allowed for a refused hostile file: a few MB of metadata pieces on top of
/// what pkgtool needs to start (about 5 MB).
const REFUSAL_RSS_KIB: i64 = 48 * 1024;

#[test]
fn a_sparse_file_claiming_a_6_gib_toc_is_refused_from_its_header() {
    let s = Scratch::new();
    let p = s.join("giant.hpkg");
    sparse_package(&p, 6 << 30, 0, None);
    // Today's limit on the address space keeps a regression from costing 6 GB: it then
    // fails to allocate, which is not the refusal asked for.
    let m = run_measured(&[os("info"), os(&p)], 1 << 30, Duration::from_secs(60));
    m.assert_one_line_error("exceeds the limit");
    assert!(
        m.max_rss_kib < REFUSAL_RSS_KIB,
        "refusing the file cost too much memory\n{}",
        m.describe()
    );
    assert!(
        m.elapsed < Duration::from_secs(10),
        "refusing the file took too long\n{}",
        m.describe()
    );
}

#[test]
fn a_sparse_file_claiming_a_huge_chunk_index_is_refused_from_its_header() {
    let s = Scratch::new();
    let p = s.join("giant.hpkg");
    sparse_package(&p, 16 + 32, (1 << 22) + 1, None);
    let m = run_measured(&[os("info"), os(&p)], 1 << 30, Duration::from_secs(60));
    m.assert_one_line_error("chunks exceed the limit");
    assert!(m.max_rss_kib < REFUSAL_RSS_KIB, "{}", m.describe());
}

#[test]
fn large_metadata_that_does_not_match_its_id_is_refused_before_it_is_allocated() {
    // 400 MiB of claimed TOC is within the limits: the metadata must be hashed (in
    // pieces) and found not to match before a buffer of its size is allocated.
    let s = Scratch::new();
    let p = s.join("big-lie.hpkg");
    sparse_package(&p, 400 << 20, 0, None);
    let m = run_measured(&[os("info"), os(&p)], 2 << 30, Duration::from_secs(60));
    m.assert_one_line_error("does not match the package id");
    assert!(
        m.max_rss_kib < REFUSAL_RSS_KIB,
        "the claimed metadata was allocated before its hash was checked\n{}",
        m.describe()
    );
}

#[test]
fn an_untrusted_giant_is_refused_by_install_before_its_metadata_is_read() {
    // Signed (validly, over the id it claims) by a key nobody trusts: the set commands
    // check the signer before reading the metadata, so the refusal names the key, not
    // the metadata's hash.
    let s = Scratch::new();
    let trusted = keygen(s.path(), "trusted");
    fs::create_dir(s.join("keys")).unwrap();
    fs::copy(&trusted.public, s.join("keys/trusted.pub")).unwrap();
    fs::create_dir_all(s.join("system/packages")).unwrap();
    let p = s.join("giant.hpkg");
    let stranger = SecretKey::from_seed(&[7u8; 32], "stranger");
    sparse_package(&p, 400 << 20, 0, Some(&stranger));
    let layer = format!("system={}", s.join("system").display());
    let keys = s.join("keys");
    let m = run_measured(
        &[
            os("install"),
            os(&p),
            os("--layer"),
            os(&layer),
            os("--trusted-keys"),
            os(&keys),
        ],
        2 << 30,
        Duration::from_secs(60),
    );
    assert_eq!(m.code, Some(1), "{}", m.describe());
    assert!(
        m.stderr.contains("not a trusted key") && !m.stderr.contains("metadata hash"),
        "expected a refusal of the signer, before the metadata is hashed\n{}",
        m.describe()
    );
    assert!(m.max_rss_kib < REFUSAL_RSS_KIB, "{}", m.describe());
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {p:?}"
    );
}

#[test]
fn a_fifo_among_the_trusted_keys_is_refused_not_waited_on() {
    let b = odd();
    let shared = &Fixture::shared().key;
    let s = Scratch::new();
    let keys = s.join("keys");
    fs::create_dir(&keys).unwrap();
    fs::copy(&shared.public, keys.join("shared.pub")).unwrap();
    let fifo = keys.join("zz-trap.pub");
    mkfifo(&fifo);
    let m = run_measured(
        &[os("verify"), os(&b.pkg), os("--trusted-keys"), os(&keys)],
        4 << 30,
        Duration::from_secs(20),
    );
    m.assert_one_line_error("not a regular file");
    assert!(
        m.stderr.contains(&*fifo.to_string_lossy()),
        "{}",
        m.describe()
    );
    // The same FIFO passed as the one key.
    let m = run_measured(
        &[os("verify"), os(&b.pkg), os("--key"), os(&fifo)],
        4 << 30,
        Duration::from_secs(20),
    );
    m.assert_one_line_error("not a regular file");
    // A FIFO not named `*.pub` is not looked at.
    fs::remove_file(&fifo).unwrap();
    mkfifo(&keys.join("README"));
    let m = run_measured(
        &[os("verify"), os(&b.pkg), os("--trusted-keys"), os(&keys)],
        4 << 30,
        Duration::from_secs(20),
    );
    assert_eq!(m.code, Some(0), "{}", m.describe());
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn set_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Re-seals archive bytes: the package id (BLAKE3 of the bytes before the heap) and the
/// signature over it by `key`.
fn reseal(b: &mut [u8], key: &SecretKey) {
    let heap = u64_at(b, 80) as usize;
    let id = *blake3::hash(&b[..heap]).as_bytes();
    let t = b.len() - 136;
    b[t + 8..t + 40].copy_from_slice(&key.public().to_bytes());
    b[t + 40..t + 72].copy_from_slice(&id);
    b[t + 72..t + 136].copy_from_slice(&key.sign(&id));
}

/// A package whose tree is a chain of `depth` directories, `000001/000002/...`: the real
/// writer builds `depth` sibling directories (an in-memory tree `depth` levels deep would
/// hold every node's full path), stores the TOC raw, and the TOC is then rewired so each
/// directory holds the next. Entries and dirents keep their numbers (preorder: root 0, the
/// directories 1..=depth; dirent j names entry j + 1), so only the directories' ranges,
/// parents and link counts change.
fn deep_package(path: &Path, depth: u32) {
    use format::archive::tree::Meta;
    use format::archive::writer::write_archive;
    use format::archive::{BuildOptions, Compression, Tree};
    let mut t = Tree::new();
    let root = t.root();
    for k in 1..=depth {
        t.add_dir(root, format!("{k:06}").as_bytes(), Meta::new(0o755, 1))
            .unwrap();
    }
    let m = format::manifest::Manifest::from_json(br#"{"name":"deep","version":"1.0.0"}"#).unwrap();
    let key = SecretKey::from_seed(&[3u8; 32], "deep");
    let opts = BuildOptions {
        compression: Compression::None,
        ..BuildOptions::default()
    };
    write_archive(&t, &m, Some(&key), &opts, path, &|_, _| {}).unwrap();
    let mut b = fs::read(path).unwrap();
    let toc = u64_at(&b, 48) as usize;
    assert_eq!(b[toc], 0, "the TOC is stored raw");
    let toc = toc + 16;
    let (n_inodes, n_dirents) = (u32_at(&b, toc), u32_at(&b, toc + 4));
    assert_eq!((n_inodes, n_dirents), (depth + 1, depth));
    let inode = |e: u32| toc + 32 + 48 * e as usize;
    let dirent = |j: u32| inode(n_inodes) + 12 * j as usize;
    for e in 0..=depth {
        if e < depth {
            assert_eq!(
                u32_at(&b, dirent(e) + 4),
                e + 1,
                "dirent {e} names entry {e}+1"
            );
        }
        let i = inode(e);
        let (a, n, nlink) = if e < depth { (e, 1, 3) } else { (0, 0, 2) };
        set_u32(&mut b, i + 4, nlink);
        set_u32(&mut b, i + 28, a);
        set_u32(&mut b, i + 32, n);
        set_u32(&mut b, i + 36, e.saturating_sub(1));
    }
    reseal(&mut b, &key);
    fs::write(path, &b).unwrap();
}

/// Deep enough that building every entry's path from the root shows: the paths add up
/// to 7 × 250,000² / 2 ≈ 220 GB of copying (tens of seconds); a linear walk takes a
/// fraction of a second.
const DEEP: u32 = 250_000;

#[test]
fn info_is_linear_in_the_depth_of_the_tree() {
    let s = Scratch::new();
    let p = s.join("deep.hpkg");
    deep_package(&p, DEEP);
    // The rewired archive is a good one: verify walks nothing and checks everything.
    pkgtool(["verify", "--integrity-only"]).arg(&p).ok();
    let m = run_measured(
        &[os("info"), os("--json"), os(&p)],
        4 << 30,
        Duration::from_secs(60),
    );
    assert_eq!(m.code, Some(0), "{}", m.describe());
    let v: serde_json::Value = serde_json::from_str(&m.stdout).unwrap();
    assert_eq!(v["directories"], DEEP as u64 + 1, "{}", m.describe());
    assert!(
        m.elapsed < Duration::from_secs(4),
        "info took {:?} on a tree {DEEP} levels deep",
        m.elapsed
    );
}

/// `pkgtool build --compression none` of a root with `a.txt` (100 bytes) and `b.txt`
/// (200 bytes), which share chunk 0; returns the package and its signing key.
fn two_small_files(s: &Scratch) -> (PathBuf, KeyPair) {
    let key = keygen(s.path(), "signer");
    let src = s.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a.txt"), [b'a'; 100]).unwrap();
    fs::write(src.join("b.txt"), [b'b'; 200]).unwrap();
    let m = write_manifest(s.path(), "two", "1.0.0");
    let pkg = s.join("two.hpkg");
    pkgtool(["build"])
        .arg(&src)
        .arg("-o")
        .arg(&pkg)
        .arg("--key")
        .arg(&key.secret)
        .arg("--manifest")
        .arg(&m)
        .args(["--compression", "none", "--quiet"])
        .ok();
    (pkg, key)
}

#[test]
fn verify_refuses_a_file_whose_size_runs_past_its_chunk() {
    let s = Scratch::new();
    let (pkg, key) = two_small_files(&s);
    pkgtool(["verify", "--key"]).arg(&key.public).arg(&pkg).ok();
    let mut b = fs::read(&pkg).unwrap();
    // The TOC is stored raw (no compression): frame 16 bytes, TOC header 32, then inodes
    // of 48 bytes in preorder: 0 the root, 1 a.txt, 2 b.txt. Field d (size) at 40.
    let toc = u64_at(&b, 48) as usize;
    assert_eq!(b[toc], 0, "the TOC is stored raw");
    let size_of = |e: usize| toc + 16 + 32 + 48 * e + 40;
    assert_eq!(u64_at(&b, size_of(1)), 100);
    assert_eq!(u64_at(&b, size_of(2)), 200);
    // b.txt ends where chunk 0 does (300 bytes): one byte more runs past it.
    let at = size_of(2);
    b[at..at + 8].copy_from_slice(&201u64.to_le_bytes());
    // Re-seal with the signing key, so that this is the only defect.
    reseal(&mut b, &SecretKey::load(&key.secret).unwrap());
    let bad = s.join("bad.hpkg");
    fs::write(&bad, &b).unwrap();

    for args in [
        vec![os("verify"), os("--key"), os(&key.public), os(&bad)],
        vec![os("verify"), os("--integrity-only"), os(&bad)],
    ] {
        pkgtool(&args)
            .fails(1)
            .one_line_error()
            .stderr_contains("b.txt")
            .stderr_contains("chunk 0");
    }
    // What verify says is what the readers find.
    pkgtool(["cat"])
        .arg(&bad)
        .arg("b.txt")
        .fails(1)
        .one_line_error()
        .stderr_contains("b.txt");
}
