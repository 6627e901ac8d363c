//! Test helpers: running the real `pkgtool`, scratch directories, key and manifest fixtures,
//! a `TestTree` that makes real files with odd names, modes, links, mtimes and xattrs, walks
//! of source trees, and the archives that several tests share (built once per test run).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_pkgtool");

// ---------------------------------------------------------------------------------------
// Running pkgtool

/// A `pkgtool` invocation being prepared (ripgrep's `TestCommand`).
pub struct TestCommand {
    cmd: Command,
    shown: String,
}

/// `pkgtool ARGS...`, with stdin closed and no `SOURCE_DATE_EPOCH` inherited.
pub fn pkgtool<I, S>(args: I) -> TestCommand
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.env_remove("SOURCE_DATE_EPOCH").stdin(Stdio::null());
    let mut t = TestCommand {
        cmd,
        shown: "pkgtool".to_string(),
    };
    t.args(args);
    t
}

impl TestCommand {
    /// Adds one argument.
    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        let a = a.as_ref();
        self.shown.push(' ');
        self.shown.push_str(&a.to_string_lossy());
        self.cmd.arg(a);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, k: &str, v: impl AsRef<OsStr>) -> &mut Self {
        self.shown = format!("{k}={} {}", v.as_ref().to_string_lossy(), self.shown);
        self.cmd.env(k, v);
        self
    }

    /// The underlying command, e.g. to spawn it with a pipe.
    pub fn command(&mut self) -> &mut Command {
        &mut self.cmd
    }

    /// Runs to completion; a panic (exit 101 or a panic message) always fails the test.
    pub fn run(&mut self) -> Run {
        let out = self
            .cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.shown));
        let r = Run {
            shown: self.shown.clone(),
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        };
        r.assert_no_panic();
        r
    }

    /// Runs and asserts exit status 0.
    pub fn ok(&mut self) -> Run {
        self.run().ok()
    }

    /// Runs and asserts exit status `code`.
    pub fn fails(&mut self, code: i32) -> Run {
        self.run().fails(code)
    }
}

/// A finished `pkgtool` run.
pub struct Run {
    pub shown: String,
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Run {
    fn describe(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.stdout).into_owned();
        if out.len() > 2000 {
            let mut cut = 2000;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("...");
        }
        format!(
            "command: {}\nexit: {:?}\nstdout:\n{out}\nstderr:\n{}",
            self.shown,
            self.code,
            String::from_utf8_lossy(&self.stderr)
        )
    }

    fn assert_no_panic(&self) {
        let err = self.stderr_str();
        assert!(
            self.code != Some(101)
                && !err.contains("panicked at")
                && !err.contains("RUST_BACKTRACE"),
            "pkgtool panicked\n{}",
            self.describe()
        );
        assert!(
            self.code.is_some(),
            "pkgtool was killed by a signal\n{}",
            self.describe()
        );
    }

    /// Asserts exit status 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "expected success\n{}", self.describe());
        self
    }

    /// Asserts exit status `code`.
    pub fn fails(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\n{}",
            self.describe()
        );
        self
    }

    /// Asserts that stderr contains `s`.
    pub fn stderr_contains(self, s: &str) -> Self {
        assert!(
            self.stderr_str().contains(s),
            "expected stderr to contain {s:?}\n{}",
            self.describe()
        );
        self
    }

    /// Asserts that stdout contains `s`.
    pub fn stdout_contains(self, s: &str) -> Self {
        assert!(
            self.stdout_str().contains(s),
            "expected stdout to contain {s:?}\n{}",
            self.describe()
        );
        self
    }

    /// Asserts that stderr is exactly one line that starts with `pkgtool: `.
    pub fn one_line_error(self) -> Self {
        let err = self.stderr_str();
        assert!(
            err.starts_with("pkgtool: ") && err.ends_with('\n') && err.matches('\n').count() == 1,
            "expected exactly one stderr line starting with `pkgtool: `\n{}",
            self.describe()
        );
        self
    }

    /// Stdout as UTF-8 (pkgtool escapes what it prints, so it always is).
    pub fn stdout_str(&self) -> &str {
        std::str::from_utf8(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not UTF-8 ({e})\n{}", self.describe()))
    }

    /// Stderr, lossily.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.describe()))
    }

    /// Stdout parsed as JSON Lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout_str()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("line {l:?} is not JSON ({e})\n{}", self.describe()))
            })
            .collect()
    }
}

/// Runs an external program (diff, cmp, ...) and returns its exit code and output.
pub fn run_tool(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

// ---------------------------------------------------------------------------------------
// Scratch directories

/// Where scratch directories go: the system temp dir, or `/var/tmp` when the former cannot
/// hold `user.*` xattrs (tmpfs without xattr support).
fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let probe = tempfile::NamedTempFile::new_in(&tmp).expect("create a file in the temp dir");
        if xattr::set(probe.path(), "user.pkgtool-probe", b"1").is_ok() {
            tmp
        } else {
            PathBuf::from("/var/tmp")
        }
    })
}

/// A unique scratch directory, removed (even if it holds read-only directories) on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let d = tempfile::Builder::new()
            .prefix("pkgtool-cli-")
            .tempdir_in(scratch_root())
            .expect("create scratch dir");
        Scratch { path: d.keep() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Removes a tree, first making its directories writable (so a non-root run can too).
pub fn remove_tree(p: &Path) {
    fn open_up(p: &Path) {
        let Ok(md) = fs::symlink_metadata(p) else {
            return;
        };
        if md.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(p);
    let _ = fs::remove_dir_all(p);
}

/// The directory holding the fixtures shared by all tests; removed when the process exits.
fn shared_root() -> &'static Path {
    static SHARED: OnceLock<PathBuf> = OnceLock::new();
    static REMOVE: Mutex<Option<PathBuf>> = Mutex::new(None);
    extern "C" fn remove_shared() {
        if let Ok(mut g) = REMOVE.lock() {
            if let Some(p) = g.take() {
                remove_tree(&p);
            }
        }
    }
    SHARED.get_or_init(|| {
        let p = tempfile::Builder::new()
            .prefix("pkgtool-cli-shared-")
            .tempdir_in(scratch_root())
            .expect("create shared dir")
            .keep();
        *REMOVE.lock().unwrap() = Some(p.clone());
        // SAFETY: registers a plain extern "C" function; libtest leaves through `exit`.
        unsafe { libc::atexit(remove_shared) };
        p
    })
}

/// Every non-dot entry of a directory (used to check nothing was left behind).
pub fn dir_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Asserts that no `.hpkg-*.partial` temp file or extraction temp dir is left in `dir`.
pub fn assert_no_temp_left(dir: &Path) {
    let left: Vec<String> = dir_names(dir)
        .into_iter()
        .filter(|n| n.contains(".partial") || n.starts_with(".hpkg-") || n.starts_with(".pkgtool-"))
        .collect();
    assert!(
        left.is_empty(),
        "temp files left in {}: {left:?}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------
// Keys, manifests, builds

/// A key pair written by `pkgtool keygen`, with the id it printed.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub id: String,
}

/// Runs `pkgtool keygen NAME --dir DIR` and parses the printed key id.
pub fn keygen(dir: &Path, name: &str) -> KeyPair {
    let r = pkgtool(["keygen", name, "--dir"]).arg(dir).ok();
    let id = r
        .stdout_str()
        .lines()
        .find_map(|l| l.strip_prefix("key id:"))
        .unwrap_or_else(|| panic!("no `key id:` line in {:?}", r.stdout_str()))
        .trim()
        .to_string();
    assert!(is_hex(&id, 16), "key id {id:?} is not 16 hex digits");
    KeyPair {
        secret: dir.join(format!("{name}.key")),
        public: dir.join(format!("{name}.pub")),
        id,
    }
}

pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes a minimal manifest and returns its path.
pub fn write_manifest(dir: &Path, name: &str, version: &str) -> PathBuf {
    let p = dir.join(format!("{name}-manifest.json"));
    let text = format!(
        "{{\n  \"name\": \"{name}\",\n  \"version\": \"{version}\",\n  \"summary\": \"test package\"\n}}\n"
    );
    fs::write(&p, text).unwrap();
    p
}

/// A key pair and a manifest in a directory: what `pkgtool build` needs besides the tree.
pub struct Fixture {
    _scratch: Option<Scratch>,
    pub dir: PathBuf,
    pub key: KeyPair,
    pub manifest: PathBuf,
}

impl Fixture {
    /// A fresh fixture in its own scratch directory.
    pub fn new() -> Fixture {
        let s = Scratch::new();
        let dir = s.path().to_owned();
        Fixture {
            key: keygen(&dir, "alice"),
            manifest: write_manifest(&dir, "testpkg", "1.2.3"),
            dir,
            _scratch: Some(s),
        }
    }

    /// The fixture shared by the shared archives (its key signs them).
    pub fn shared() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let dir = shared_root().join("keys");
            fs::create_dir(&dir).unwrap();
            Fixture {
                key: keygen(&dir, "shared"),
                manifest: write_manifest(&dir, "testpkg", "1.2.3"),
                dir,
                _scratch: None,
            }
        })
    }

    /// `pkgtool build SRC -o OUT --key K --manifest M --quiet`, ready for more args.
    pub fn build(&self, src: &Path, out: &Path) -> TestCommand {
        let mut c = pkgtool(["build"]);
        c.arg(src)
            .arg("-o")
            .arg(out)
            .arg("--key")
            .arg(&self.key.secret)
            .arg("--manifest")
            .arg(&self.manifest)
            .arg("--quiet");
        c
    }
}

/// A package built once per test run and shared by the tests that only read it.
pub struct Built {
    /// The source tree.
    pub src: PathBuf,
    /// The package.
    pub pkg: PathBuf,
    /// `pkgtool build` stdout.
    pub build_stdout: String,
}

fn build_shared(name: &str, src: PathBuf, extra: &[&str]) -> Built {
    let f = Fixture::shared();
    let pkg = shared_root().join(format!("{name}.hpkg"));
    let r = f.build(&src, &pkg).args(extra).ok();
    Built {
        src,
        pkg,
        build_stdout: r.stdout_str().to_string(),
    }
}

/// `/usr/share/doc`, with 64 KiB chunks (many chunks: the corruption test wants small ones).
pub fn doc() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        build_shared(
            "doc",
            PathBuf::from("/usr/share/doc"),
            &["--chunk-size", "64K"],
        )
    })
}

/// `/usr/include`, with the default options.
pub fn include() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| build_shared("include", PathBuf::from("/usr/include"), &[]))
}

/// The odd tree of [`TestTree::odd`].
pub fn odd() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let src = shared_root().join("odd");
        TestTree::odd(&src);
        build_shared("odd", src, &[])
    })
}

// ---------------------------------------------------------------------------------------
// TestTree

/// Makes a real directory tree. Modes of directories and all mtimes are applied by
/// [`TestTree::finish`], after everything exists (creating an entry changes its parent's
/// mtime, and a read-only directory must be filled before it becomes read-only).
pub struct TestTree {
    root: PathBuf,
    dir_modes: Vec<(PathBuf, u32)>,
    mtimes: BTreeMap<PathBuf, (i64, u32)>,
}

/// Mtime that [`TestTree::finish`] gives entries without an explicit one: distinct per
/// entry, with nanoseconds, around September 2020.
pub const TREE_MTIME_BASE: i64 = 1_600_000_000;

/// An mtime older than any other in the odd tree (2000-01-01 00:00:00.500000001).
pub const OLD_MTIME: (i64, u32) = (946_684_800, 500_000_001);

/// The 255-byte name in the odd tree.
pub fn long_name() -> Vec<u8> {
    let mut n = b"long-".to_vec();
    n.resize(255, b'x');
    n
}

/// Some bytes that do not compress and span several 256 KiB chunks.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

impl TestTree {
    pub fn new(root: &Path) -> TestTree {
        fs::create_dir_all(root).unwrap();
        TestTree {
            root: root.to_owned(),
            dir_modes: Vec::new(),
            mtimes: BTreeMap::new(),
        }
    }

    /// The absolute path of `rel` (bytes, so names need not be UTF-8).
    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel.as_ref()))
    }

    pub fn dir(&mut self, rel: impl AsRef<[u8]>, mode: u32) -> &mut Self {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self.dir_modes.push((p, mode));
        self
    }

    pub fn file(&mut self, rel: impl AsRef<[u8]>, contents: &[u8], mode: u32) -> &mut Self {
        let p = self.path(rel);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn symlink(&mut self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &mut Self {
        let p = self.path(rel);
        std::os::unix::fs::symlink(OsStr::from_bytes(target.as_ref()), &p)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
        self
    }

    pub fn hardlink(&mut self, rel: impl AsRef<[u8]>, existing: impl AsRef<[u8]>) -> &mut Self {
        let p = self.path(rel);
        fs::hard_link(self.path(existing), &p)
            .unwrap_or_else(|e| panic!("link {}: {e}", p.display()));
        self
    }

    pub fn fifo(&mut self, rel: impl AsRef<[u8]>) -> &mut Self {
        let c = CString::new(self.path(rel).as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
        self
    }

    pub fn xattr(&mut self, rel: impl AsRef<[u8]>, name: &str, value: &[u8]) -> &mut Self {
        let p = self.path(rel);
        xattr::set(&p, name, value)
            .unwrap_or_else(|e| panic!("set xattr {name} on {}: {e}", p.display()));
        self
    }

    pub fn mtime(&mut self, rel: impl AsRef<[u8]>, secs: i64, nsec: u32) -> &mut Self {
        self.mtimes.insert(self.path(rel), (secs, nsec));
        self
    }

    /// Applies directory modes (deepest first) and mtimes: explicit ones, and a distinct
    /// one with nanoseconds for every other entry, the root included.
    pub fn finish(&mut self) -> PathBuf {
        self.dir_modes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.as_os_str().len()));
        for (p, mode) in &self.dir_modes {
            fs::set_permissions(p, fs::Permissions::from_mode(*mode)).unwrap();
        }
        let mut all = vec![self.root.clone()];
        all.extend(walk(&self.root).into_iter().map(|e| e.path));
        for (i, p) in all.iter().enumerate() {
            let i = i as i64;
            let (s, ns) = self.mtimes.get(p).copied().unwrap_or((
                TREE_MTIME_BASE + i * 3_600 + 17,
                (123_456_789 + i as u32 * 1_000_003) % 1_000_000_000,
            ));
            set_mtime(p, s, ns);
        }
        self.root.clone()
    }

    /// The tree with every kind of entry pkgtool must carry: files (empty, large, duplicate),
    /// directories (empty, read-only, setgid, sticky), symlinks (relative, absolute,
    /// dangling, out of the tree, to a directory, a loop), hard links, setuid, xattrs, mtimes with
    /// nanoseconds (before 1970 and after 2038 too), 100 nested directories and odd names (space, newline, tab, backslash, control character, UTF-8,
    /// invalid UTF-8, leading `-`, 255 bytes).
    pub fn odd(root: &Path) -> PathBuf {
        let mut t = TestTree::new(root);
        t.file("README", b"hello, packagefs\n", 0o644)
            .file("empty", b"", 0o644)
            .file("old", b"older than SOURCE_DATE_EPOCH\n", 0o644)
            .mtime("old", OLD_MTIME.0, OLD_MTIME.1)
            .dir("dir/nested/deep", 0o755)
            .file("dir/nested/deep/file.txt", b"deep inside\n", 0o640)
            .dir("emptydir", 0o700)
            .dir("bin", 0o755)
            .file("bin/suid", b"#!/bin/sh\necho suid\n", 0o4755)
            .file("bin/sgid", b"#!/bin/sh\necho sgid\n", 0o2711)
            .dir("sgid-dir", 0o2775)
            .file("sgid-dir/f", b"in a setgid dir\n", 0o600)
            .dir("sticky", 0o1777)
            .file("sticky/f", b"in a sticky dir\n", 0o666)
            .dir("ro", 0o555)
            .file("ro/inside", b"in a read-only dir\n", 0o444)
            .dir("links", 0o755)
            .symlink("links/rel", "../README")
            .symlink("links/abs", "/etc/hostname")
            .symlink("links/dangling", "does/not/exist")
            .symlink("links/outside", "../../../../../outside-the-tree")
            .symlink("links/dirlink", "../dir")
            .symlink("links/loop", "loop-back")
            .symlink("links/loop-back", "./loop")
            .dir("hard", 0o755)
            .file("hard/a", b"one inode, three names\n", 0o644)
            .hardlink("hard/b", "hard/a")
            .hardlink("dir/hard-c", "hard/a")
            .file("hard/empty-a", b"", 0o600)
            .hardlink("hard/empty-b", "hard/empty-a")
            .dir("dup", 0o755)
            .file("dup/one", b"identical content, stored once\n", 0o644)
            .file("dup/two", b"identical content, stored once\n", 0o644)
            .dir("big", 0o755)
            .file("big/random", &pseudo_random(700 * 1024 + 3, 7), 0o644)
            .file("big/random-copy", &pseudo_random(700 * 1024 + 3, 7), 0o644)
            .file("big/zeros", &vec![0u8; 600 * 1024], 0o644)
            .dir("xattrs", 0o755)
            .file("xattrs/file", b"has xattrs\n", 0o644)
            .xattr("xattrs/file", "user.comment", b"hello")
            .xattr("xattrs/file", "user.binary", b"\x00\x01\xff\xfe binary\n")
            .xattr("xattrs/file", "user.empty", b"")
            .dir("xattrs/dir", 0o755)
            .xattr("xattrs/dir", "user.on-a-dir", b"yes")
            .xattr("", "user.on-the-root", b"root")
            .dir("names", 0o755)
            .hardlink("bin/suid-link", "bin/suid")
            .dir("time", 0o755)
            .file("time/before-1970", b"negative mtime\n", 0o644)
            .mtime("time/before-1970", -31_536_000, 250_000_000)
            .file("time/year-2100", b"after 2038\n", 0o644)
            .mtime("time/year-2100", 4_102_444_800, 999_999_999)
            .xattr("xattrs/file", "user.big", &pseudo_random(3000, 3));
        let deep: Vec<u8> = b"deep"
            .iter()
            .chain(b"/d".repeat(100).iter())
            .copied()
            .collect();
        t.dir(&deep, 0o755);
        t.file([&deep[..], b"/leaf"].concat(), b"100 levels down\n", 0o644);
        let names: Vec<Vec<u8>> = vec![
            b"with space".to_vec(),
            b"new\nline".to_vec(),
            b"tab\there".to_vec(),
            b"back\\slash".to_vec(),
            b"ctrl\x01\x7f".to_vec(),
            "ünïcödé-日本語-😀".as_bytes().to_vec(),
            b"bad-\xff\xfe-utf8".to_vec(),
            b"-leading-dash".to_vec(),
            b"--".to_vec(),
            b"quote\"'".to_vec(),
            long_name(),
        ];
        for (i, n) in names.iter().enumerate() {
            let mut rel = b"names/".to_vec();
            rel.extend_from_slice(n);
            let mut contents = format!("file number {i} named ").into_bytes();
            contents.extend_from_slice(n);
            t.file(&rel, &contents, 0o644);
        }
        t.dir(b"names/dir\nwith\\odd name", 0o755)
            .file(
                b"names/dir\nwith\\odd name/\xc3",
                b"truncated UTF-8 name\n",
                0o644,
            )
            .symlink(b"names/link to \xff", b"target with\nnewline");
        t.finish()
    }
}

/// Sets the mtime (and atime) of `p` without following a symlink.
pub fn set_mtime(p: &Path, secs: i64, nsec: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nsec as libc::c_long,
    };
    let ts = [t, t];
    // SAFETY: valid C string and timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------
// Source walks and the oracle for pkgtool's name escaping

/// One entry of a source tree.
pub struct SrcEntry {
    /// Path relative to the root, `/`-separated bytes.
    pub rel: Vec<u8>,
    pub path: PathBuf,
    pub md: fs::Metadata,
}

impl SrcEntry {
    pub fn is_file(&self) -> bool {
        self.md.file_type().is_file()
    }
    pub fn is_dir(&self) -> bool {
        self.md.file_type().is_dir()
    }
    pub fn is_symlink(&self) -> bool {
        self.md.file_type().is_symlink()
    }
}

/// Every entry below `root` (not the root itself), not following symlinks, sorted by path.
pub fn walk(root: &Path) -> Vec<SrcEntry> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for ent in rd {
            let ent = ent.unwrap();
            let path = ent.path();
            let md = fs::symlink_metadata(&path).unwrap();
            let mut r: Vec<u8> = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(ent.file_name().as_bytes());
            if md.is_dir() {
                stack.push((path.clone(), r.clone()));
            }
            out.push(SrcEntry { rel: r, path, md });
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

/// A path as `pkgtool list` prints it, per `pkgtool list --help`: "control characters and
/// backslashes escaped (\n, \t, \\, \ooo)"; bytes that are not UTF-8 as `\ooo`.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                c if c.is_control() => {
                    let mut b = [0; 4];
                    for x in c.encode_utf8(&mut b).bytes() {
                        s.push_str(&format!("\\{x:03o}"));
                    }
                }
                c => s.push(c),
            }
        }
        for x in chunk.invalid() {
            s.push_str(&format!("\\{x:03o}"));
        }
    }
    s
}

/// `n` regular files of `entries` picked at even steps of the sorted list (deterministic).
pub fn sample_files(entries: &[SrcEntry], n: usize) -> Vec<&SrcEntry> {
    let files: Vec<&SrcEntry> = entries.iter().filter(|e| e.is_file()).collect();
    let step = files.len().div_ceil(n.max(1)).max(1);
    files.into_iter().step_by(step).collect()
}

/// Asserts that `pkgtool cat PKG -- REL` prints exactly the bytes of the source file.
pub fn assert_cat_matches(pkg: &Path, e: &SrcEntry) {
    let r = pkgtool(["cat"])
        .arg(pkg)
        .arg("--")
        .arg(OsStr::from_bytes(&e.rel))
        .ok();
    let want = fs::read(&e.path).unwrap();
    assert!(
        r.stdout == want,
        "`pkgtool cat` of {} gave {} bytes that differ from the source's {}",
        escape(&e.rel),
        r.stdout.len(),
        want.len()
    );
}

/// All xattrs of a path (not following symlinks), sorted by name, except the SELinux
/// label, which the system (not the package) gives each new file.
pub fn xattrs_of(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return BTreeMap::new(),
        Err(e) => panic!("listxattr {}: {e}", p.display()),
    };
    names
        .filter(|n| n.as_bytes() != b"security.selinux")
        .map(|n| {
            let v = xattr::get(p, &n).unwrap().unwrap_or_default();
            (n.as_bytes().to_vec(), v)
        })
        .collect()
}

/// Reads a whole stream in 1 MiB pieces and compares it to `expected(offset, buf)`, which
/// fills `buf` with the bytes expected at `offset`. Returns the number of bytes read.
pub fn stream_compare(mut r: impl Read, expected: impl Fn(u64, &mut [u8]), what: &str) -> u64 {
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = match r.read(&mut got) {
            Ok(0) => return pos,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading {what}: {e}"),
        };
        expected(pos, &mut want[..n]);
        if got[..n] != want[..n] {
            let i = (0..n).find(|&i| got[i] != want[i]).unwrap();
            panic!(
                "{what}: byte {} is {:#04x}, expected {:#04x}",
                pos + i as u64,
                got[i],
                want[i]
            );
        }
        pos += n as u64;
    }
}

/// Reads the archive header (FORMAT.md §2): (offset, length) of a section at header
/// offset `field` (32 manifest, 48 toc, 64 chunk index, 80 heap, 96 trailer).
pub fn section(pkg: &[u8], field: usize) -> (u64, u64) {
    let u = |o: usize| u64::from_le_bytes(pkg[o..o + 8].try_into().unwrap());
    (u(field), u(field + 8))
}

pub const MANIFEST: usize = 32;
pub const TOC: usize = 48;
pub const CHUNK_INDEX: usize = 64;
pub const HEAP: usize = 80;
pub const TRAILER: usize = 96;

/// Per-inode identity of source files, for hard-link checks: (dev, ino) -> paths.
pub fn hardlink_groups(entries: &[SrcEntry]) -> Vec<Vec<&SrcEntry>> {
    let mut by_ino: BTreeMap<(u64, u64), Vec<&SrcEntry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.is_file() && e.md.nlink() > 1) {
        by_ino.entry((e.md.dev(), e.md.ino())).or_default().push(e);
    }
    by_ino.into_values().filter(|g| g.len() > 1).collect()
}

// ---------------------------------------------------------------------------------------
// Attackers

/// The unprivileged user the attackers run as.
pub const NOBODY: u32 = 65534;

/// Drops the calling thread (only it: raw syscalls, not glibc's process-wide wrappers) to
/// `nobody`, with no supplementary groups and hence no capabilities.
pub fn become_nobody() {
    // SAFETY: plain syscalls on the calling thread's credentials.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresgid, NOBODY, NOBODY, NOBODY),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresuid, NOBODY, NOBODY, NOBODY),
            0
        );
    }
    // SAFETY: a plain syscall.
    let euid = unsafe { libc::syscall(libc::SYS_geteuid) };
    assert_eq!(euid, i64::from(NOBODY), "the attacker thread is not nobody");
}
