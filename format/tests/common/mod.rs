//! Helpers shared by the archive tests: a `TestTree` that makes real directory trees (files,
//! links, modes, mtimes, xattrs, odd names), a fixed signing key, builders, a comparison of an
//! archive against its source tree, and `RawArchive`, which patches an archive's bytes and
//! re-seals it (metadata hash and signature) so that hostile archives reach the validation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use format::archive::{writer, Archive, BuildOptions, BuildReport, Compression, Kind, Tree};
use format::keys::{SecretKey, TrustedKeys};
use format::manifest::Manifest;
use format::Error;

/// The seed of the test signing key.
pub const SEED: [u8; 32] = [7; 32];

/// The test signing key.
pub fn key() -> SecretKey {
    SecretKey::from_seed(&SEED, "test")
}

/// A trust set holding only the test key.
pub fn trusted() -> TrustedKeys {
    let mut keys = TrustedKeys::new();
    keys.insert(key().public(), "test");
    keys
}

/// A minimal valid manifest.
pub fn manifest() -> Manifest {
    Manifest::from_json(br#"{"name": "test.pkg", "version": "1.0.0"}"#).expect("valid manifest")
}

/// Build options with a compression and a chunk size.
pub fn opts(compression: Compression, chunk_size: u32) -> BuildOptions {
    BuildOptions {
        compression,
        chunk_size,
        ..BuildOptions::default()
    }
}

/// Writes `tree` to `out`, signed with the test key.
pub fn write_archive(tree: &Tree, opts: &BuildOptions, out: &Path) -> BuildReport {
    writer::write_archive(tree, &manifest(), Some(&key()), opts, out, &|_, _| {})
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()))
}

/// Writes `tree` to `out` without a signature.
pub fn write_unsigned(tree: &Tree, opts: &BuildOptions, out: &Path) -> BuildReport {
    writer::write_archive(tree, &manifest(), None, opts, out, &|_, _| {})
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()))
}

/// Reads `src` from disk and writes it to `out`, signed with the test key.
pub fn build_dir(src: &Path, opts: &BuildOptions, out: &Path) -> BuildReport {
    let tree = Tree::from_dir(src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    write_archive(&tree, opts, out)
}

/// Opens an archive that must be valid and signed by the test key.
pub fn open(path: &Path) -> Archive {
    let a = Archive::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    a.check_trust(&trusted())
        .unwrap_or_else(|e| panic!("trusting {}: {e}", path.display()));
    a
}

/// The real tree at `path`, or `None` (with a note on stderr) if this machine lacks it.
pub fn real_tree(path: &str) -> Option<&Path> {
    let p = Path::new(path);
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("note: {path} does not exist on this machine; skipping");
        None
    }
}

/// A directory that supports `user.*` xattrs: the system temp dir if it does, else /var/tmp.
pub fn scratch_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        for base in [std::env::temp_dir(), PathBuf::from("/var/tmp")] {
            let Ok(probe) = tempfile::NamedTempFile::new_in(&base) else {
                continue;
            };
            if xattr::set(probe.path(), "user.probe", b"1").is_ok() {
                return base;
            }
        }
        panic!("neither the temp dir nor /var/tmp supports user.* xattrs");
    })
}

/// A fresh temporary directory (removed on drop) under [`scratch_base`].
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("format-test-")
        .tempdir_in(scratch_base())
        .expect("temp dir")
}

/// A path below `root` from `/`-separated bytes (which need not be UTF-8).
pub fn join(root: &Path, rel: &[u8]) -> PathBuf {
    let mut p = root.to_owned();
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        p.push(OsStr::from_bytes(comp));
    }
    p
}

/// A real directory tree in a temp dir, built up like ripgrep's test `Dir`. Every method
/// panics on failure (it is test set-up) and returns `&Self` so calls can be chained.
pub struct TestTree {
    dir: tempfile::TempDir,
}

impl Default for TestTree {
    fn default() -> Self {
        TestTree::new()
    }
}

impl TestTree {
    /// An empty tree.
    pub fn new() -> TestTree {
        let t = TestTree { dir: scratch() };
        // Make the root's attributes independent of the umask and the clock.
        t.mode(b"", 0o755);
        t
    }

    /// The root directory on disk.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The on-disk path of a relative path.
    pub fn p(&self, rel: &[u8]) -> PathBuf {
        join(self.path(), rel)
    }

    /// Creates a file (and missing parent directories) with these contents.
    pub fn file(&self, rel: impl AsRef<[u8]>, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.p(rel.as_ref());
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self.mode(rel.as_ref(), 0o644)
    }

    /// Creates a directory (and missing parents).
    pub fn dir(&self, rel: impl AsRef<[u8]>) -> &Self {
        let p = self.p(rel.as_ref());
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        self.mode(rel.as_ref(), 0o755)
    }

    /// Creates a symlink at `rel` pointing to `target` (bytes, need not exist).
    pub fn symlink(&self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &Self {
        let p = self.p(rel.as_ref());
        std::os::unix::fs::symlink(OsStr::from_bytes(target.as_ref()), &p)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
        self
    }

    /// Creates a hard link `rel` to the existing file `existing`.
    pub fn hardlink(&self, rel: impl AsRef<[u8]>, existing: impl AsRef<[u8]>) -> &Self {
        let (p, e) = (self.p(rel.as_ref()), self.p(existing.as_ref()));
        fs::hard_link(&e, &p).unwrap_or_else(|err| panic!("link {}: {err}", p.display()));
        self
    }

    /// Sets the permission bits (including setuid, setgid, sticky).
    pub fn mode(&self, rel: &[u8], perm: u32) -> &Self {
        let p = self.p(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(perm))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        self
    }

    /// Sets the modification time (of a symlink itself, not its target).
    pub fn mtime(&self, rel: impl AsRef<[u8]>, secs: i64, nsec: u32) -> &Self {
        let p = self.p(rel.as_ref());
        let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
        let times = [
            libc::timespec {
                tv_sec: secs,
                tv_nsec: nsec as _,
            },
            libc::timespec {
                tv_sec: secs,
                tv_nsec: nsec as _,
            },
        ];
        // SAFETY: `c` is a valid C string and `times` two valid timespecs.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
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
        self
    }

    /// Sets an extended attribute (on the entry itself, not a symlink's target).
    pub fn xattr(&self, rel: impl AsRef<[u8]>, name: &str, value: impl AsRef<[u8]>) -> &Self {
        let p = self.p(rel.as_ref());
        xattr::set(&p, name, value.as_ref())
            .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
        self
    }

    /// Gives every entry a fixed mtime (so builds do not depend on when the tree was made).
    pub fn fix_mtimes(&self, secs: i64) -> &Self {
        // Setting a time does not touch the parent's (creating an entry did), so any order.
        let mut all = vec![Vec::new()];
        walk_source(self.path(), &mut |rel, _| all.push(rel.to_vec()));
        for rel in &all {
            self.mtime(rel, secs, 0);
        }
        self
    }
}

/// A tree with every kind of entry and attribute the format stores, and names that break
/// naive code: spaces, newlines, UTF-8, invalid UTF-8, leading dashes, 255 bytes.
pub fn odd_tree() -> TestTree {
    let t = TestTree::new();
    let long = vec![b'n'; 255];
    let mut long_path = b"names/".to_vec();
    long_path.extend_from_slice(&long);
    t.file("plain.txt", "hello, world\n")
        .file("empty", "")
        .file("also-empty", "")
        .file("copy-a", "identical contents\n".repeat(50))
        .file("sub/copy-b", "identical contents\n".repeat(50))
        .file("setuid-bin", b"\x7fELF not really")
        .mode(b"setuid-bin", 0o4755)
        .file("setgid-bin", b"gid")
        .mode(b"setgid-bin", 0o2711)
        .file("private", b"secret")
        .mode(b"private", 0o600)
        // Readable by its owner only (mode 0 would be unreadable to a non-root builder;
        // the in-memory tests cover it).
        .file("read-only", b"r--------")
        .mode(b"read-only", 0o400)
        .dir("sticky")
        .mode(b"sticky", 0o1777)
        .dir("empty-dir")
        .dir("deep/a/b/c/d/e/f")
        .file("deep/a/b/c/d/e/f/leaf", "leaf\n")
        .file("names/with space", "space")
        .file("names/with\nnewline", "newline")
        .file("names/tab\there", "tab")
        .file("names/héllo wörld ✓", "utf-8")
        .file(b"names/bad\xff\xfeutf8", "invalid utf-8")
        .file("names/-rf", "leading dash")
        .file("names/--", "two dashes")
        .file("names/...", "three dots")
        .file("names/.hidden", "hidden")
        .file("names/back\\slash", "backslash")
        .file(&long_path, "long name")
        .symlink("link-rel", "plain.txt")
        .symlink("link-abs", "/etc/passwd")
        .symlink("link-dangling", "does/not/exist")
        .symlink("link-dotdot", "../../outside")
        .symlink(b"link-odd-target", b"we\xffird\ntarget")
        .symlink("sub/link-up", "../plain.txt")
        .file("hard/one", "three names, one inode\n")
        .hardlink("hard/two", "hard/one")
        .hardlink("sub/three", "hard/one")
        .file("hard/pair-a", "two names\n")
        .hardlink("hard/pair-b", "hard/pair-a")
        .xattr("plain.txt", "user.comment", "a comment")
        .xattr("plain.txt", "user.binary", [0u8, 1, 2, 255, 0, 7])
        .xattr("plain.txt", "user.empty", b"")
        .xattr("sub", "user.on-dir", "dir xattr")
        .xattr("", "user.on-root", "root xattr")
        .xattr("hard/one", "user.shared", "on a hard-linked inode")
        .xattr("empty", "user.big", vec![0xabu8; 2000]);
    // Mtimes last (creating entries touches their parents): before the epoch, with and
    // without nanoseconds, far in the future, and on a symlink itself.
    t.fix_mtimes(1_600_000_000)
        .mtime("plain.txt", 1_700_000_000, 123_456_789)
        .mtime("empty", -1_000_000, 5)
        .mtime("private", 0, 999_999_999)
        .mtime("setuid-bin", 1 << 33, 1)
        .mtime("link-rel", 1_234_567_890, 42)
        .mtime("sub", 1_650_000_000, 500)
        .mtime("", 1_650_000_001, 0);
    t
}

/// Calls `f(relative path, metadata)` for every entry below `root` (not the root itself),
/// in sorted order, depth first, without following symlinks.
pub fn walk_source(root: &Path, f: &mut dyn FnMut(&[u8], &fs::Metadata)) {
    fn go(root: &Path, rel: &mut Vec<u8>, f: &mut dyn FnMut(&[u8], &fs::Metadata)) {
        let dir = join(root, rel);
        let mut names: Vec<Vec<u8>> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").file_name().as_bytes().to_vec())
            .collect();
        names.sort();
        for name in names {
            let base = rel.len();
            if base > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            let md = fs::symlink_metadata(join(root, rel)).expect("lstat");
            f(rel, &md);
            if md.is_dir() {
                go(root, rel, f);
            }
            rel.truncate(base);
        }
    }
    go(root, &mut Vec::new(), f);
}

/// A small deterministic PRNG (xorshift64*), so tests are reproducible without a crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }

    /// `n` incompressible bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Compressible but not trivial bytes: lines of text with a counter.
pub fn text_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut i = seed;
    while v.len() < n {
        v.extend_from_slice(format!("line {i}: the quick brown fox jumps over\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

/// How [`assert_matches_source`] checks.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Mtimes are expected clamped to this (`SOURCE_DATE_EPOCH`).
    pub clamp: Option<i64>,
    /// Random-offset `read_at` slices per file.
    pub slices: u32,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            clamp: None,
            slices: 3,
        }
    }
}

/// What [`assert_matches_source`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seen {
    /// Names (entries below the root, hard links counted once per name).
    pub names: u64,
    /// Regular files (inodes).
    pub files: u64,
    /// Bytes of file contents compared (each inode once).
    pub bytes: u64,
}

/// Reads all of file `e` through `open_file` + `io::Read`.
pub fn read_stream(a: &Archive, e: u32) -> Vec<u8> {
    let mut out = Vec::new();
    a.open_file(e)
        .expect("open_file")
        .read_to_end(&mut out)
        .expect("read_to_end");
    out
}

/// The xattrs of an archive entry, as a sorted map.
pub fn archive_xattrs(a: &Archive, e: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let list: Vec<(Vec<u8>, Vec<u8>)> = a
        .xattrs(e)
        .expect("xattrs")
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    let names: Vec<&Vec<u8>> = list.iter().map(|(n, _)| n).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "xattrs sorted");
    list.into_iter().collect()
}

fn source_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    let names = match xattr::list(p) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return m,
        Err(e) => panic!("listxattr {}: {e}", p.display()),
    };
    for n in names {
        if let Some(v) = xattr::get(p, &n).expect("getxattr") {
            m.insert(n.as_bytes().to_vec(), v);
        }
    }
    m
}

fn check_attrs(
    a: &Archive,
    e: u32,
    md: &fs::Metadata,
    check: Check,
    what: &str,
) -> format::archive::Attr {
    let attr = a.attr(e).expect("attr");
    let kind = if md.is_dir() {
        Kind::Dir
    } else if md.is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    };
    assert_eq!(attr.kind, kind, "{what}: kind");
    assert_eq!(attr.perm, md.mode() & 0o7777, "{what}: permission bits");
    assert_eq!(attr.mode(), md.mode(), "{what}: st_mode");
    let (mut mtime, mut nsec) = (md.mtime(), md.mtime_nsec() as u32);
    if let Some(t) = check.clamp {
        if mtime >= t {
            (mtime, nsec) = (t, 0);
        }
    }
    assert_eq!(
        (attr.mtime, attr.mtime_nsec),
        (mtime, nsec),
        "{what}: mtime"
    );
    attr
}

/// Compares the contents of file `e` with `want` through every read path: one `read_at` of
/// the whole file, `open_file` + `io::Read`, `read_at` at and past the end, and
/// `check.slices` random `read_at` slices.
pub fn assert_contents(a: &Archive, e: u32, want: &[u8], slices: u32, rng: &mut Rng, what: &str) {
    let size = want.len();
    assert_eq!(a.attr(e).expect("attr").size, size as u64, "{what}: size");
    let mut buf = vec![0u8; size + 17];
    let n = a
        .read_at(e, 0, &mut buf)
        .unwrap_or_else(|err| panic!("{what}: read_at: {err}"));
    assert_eq!(n, size, "{what}: read_at length");
    assert!(buf[..n] == *want, "{what}: read_at contents differ");
    let streamed = read_stream(a, e);
    assert!(streamed == want, "{what}: io::Read contents differ");
    assert_eq!(
        a.read_at(e, size as u64, &mut buf).unwrap(),
        0,
        "{what}: EOF"
    );
    assert_eq!(
        a.read_at(e, u64::MAX, &mut buf).unwrap(),
        0,
        "{what}: past EOF"
    );
    for _ in 0..slices {
        let off = rng.upto(size as u64) as usize;
        let len = rng.upto(((size - off) as u64 + 8).min(300_000)) as usize;
        let mut s = vec![0u8; len];
        let n = a.read_at(e, off as u64, &mut s).expect("read_at slice");
        assert_eq!(n, len.min(size - off), "{what}: slice {off}+{len} length");
        assert!(s[..n] == want[off..off + n], "{what}: slice {off}+{len}");
    }
}

/// Checks an archive against the tree it was built from, entry by entry: the same set of
/// paths; for each its kind, permission bits, size, mtime (with nanoseconds), nlink, symlink
/// target, xattrs and full contents (through every read path); hard links share one entry;
/// directory listings are sorted, `lookup` finds every name and `parent` is right.
pub fn assert_matches_source(a: &Archive, src: &Path, check: Check) -> Seen {
    let mut seen = Seen::default();
    let root_md = fs::symlink_metadata(src).expect("lstat root");
    check_attrs(a, a.root(), &root_md, check, "root");
    assert_eq!(
        archive_xattrs(a, a.root()),
        source_xattrs(src),
        "root: xattrs"
    );

    // First pass over the source: names per inode (hard links inside the tree) and
    // subdirectories per directory, which is what nlink must count.
    let mut names_of: HashMap<(u64, u64), u32> = HashMap::new();
    let mut subdirs: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut paths = BTreeSet::new();
    walk_source(src, &mut |rel, md| {
        *names_of.entry((md.dev(), md.ino())).or_default() += 1;
        if md.is_dir() {
            let parent = rel
                .iter()
                .rposition(|&b| b == b'/')
                .map_or(&rel[..0], |i| &rel[..i]);
            *subdirs.entry(parent.to_vec()).or_default() += 1;
        }
        paths.insert(rel.to_vec());
    });
    let archive_paths: BTreeSet<Vec<u8>> = a.walk().map(|w| w.path).collect();
    if archive_paths != paths {
        let extra: Vec<_> = archive_paths.difference(&paths).take(5).collect();
        let missing: Vec<_> = paths.difference(&archive_paths).take(5).collect();
        panic!("paths differ: extra in archive {extra:?}, missing {missing:?}");
    }
    assert_eq!(
        a.attr(a.root()).unwrap().nlink,
        2 + subdirs.get(&b""[..]).copied().unwrap_or(0),
        "root: nlink"
    );

    let mut entry_of: HashMap<(u64, u64), u32> = HashMap::new();
    let mut inode_of: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut contents_done = HashSet::new();
    let mut rng = Rng::new(0xC0FFEE);
    let mut failures = Vec::new();
    walk_source(src, &mut |rel, md| {
        seen.names += 1;
        let what = String::from_utf8_lossy(rel).into_owned();
        let p = join(src, rel);
        let e = match a.lookup_path(rel) {
            Ok(Some(e)) => e,
            other => panic!("{what}: lookup_path gave {other:?}"),
        };
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&rel[..0], rel),
        };
        let pe = a.lookup_path(parent).unwrap().expect("parent");
        assert_eq!(a.lookup(pe, name).unwrap(), Some(e), "{what}: lookup");
        let attr = check_attrs(a, e, md, check, &what);
        let ino = (md.dev(), md.ino());
        if let Some(&first) = entry_of.get(&ino) {
            assert_eq!(first, e, "{what}: hard links share one entry");
        } else {
            assert!(
                inode_of.insert(e, ino).is_none(),
                "{what}: entry {e} also names another inode"
            );
            entry_of.insert(ino, e);
        }
        assert_eq!(source_xattrs(&p), archive_xattrs(a, e), "{what}: xattrs");
        match attr.kind {
            Kind::Dir => {
                assert_eq!(attr.nlink, 2 + subdirs.get(rel).copied().unwrap_or(0));
                assert_eq!(attr.size, 0, "{what}: dir size");
                assert_eq!(a.parent(e).unwrap(), pe, "{what}: parent");
                let names: Vec<&[u8]> = a.read_dir(e).unwrap().map(|d| d.name).collect();
                assert!(names.windows(2).all(|w| w[0] < w[1]), "{what}: sorted");
                assert_eq!(a.lookup(e, b"\x01no such name").unwrap(), None);
            }
            Kind::Symlink => {
                let target = fs::read_link(&p).expect("readlink");
                assert_eq!(a.read_link(e).unwrap(), target.as_os_str().as_bytes());
                assert_eq!(attr.size, target.as_os_str().len() as u64);
                assert_eq!(attr.nlink, 1, "{what}: symlink nlink");
            }
            Kind::File => {
                assert_eq!(attr.nlink, names_of[&ino], "{what}: nlink");
                if contents_done.insert(ino) {
                    let want = fs::read(&p).expect("read source");
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        assert_contents(a, e, &want, check.slices, &mut rng, &what)
                    }));
                    if let Err(panic) = r {
                        let msg = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failures.push(msg);
                    }
                    seen.files += 1;
                    seen.bytes += want.len() as u64;
                }
            }
        }
    });
    assert!(failures.is_empty(), "contents differ: {failures:#?}");
    for c in 0..a.chunk_count() {
        a.verify_chunk(c)
            .unwrap_or_else(|e| panic!("chunk {c}: {e}"));
    }
    seen
}

/// Opens an archive and touches everything in it: walks every entry, reads every file
/// through both read paths, reads every symlink and xattr, verifies every chunk and checks
/// trust with the test key. The first error is returned.
pub fn open_and_read_all(path: &Path) -> Result<Archive, Error> {
    let a = Archive::open(path)?;
    read_all(&a)?;
    Ok(a)
}

/// Everything [`open_and_read_all`] does after opening.
pub fn read_all(a: &Archive) -> Result<(), Error> {
    a.check_trust(&trusted())?;
    for w in a.walk() {
        let _ = a.xattrs(w.entry)?.count();
        match w.attr.kind {
            Kind::File => {
                let mut buf = vec![0u8; w.attr.size.min(1 << 24) as usize];
                a.read_at(w.entry, 0, &mut buf)?;
                let mut r = a.open_file(w.entry)?;
                let mut chunk = vec![0u8; 1 << 16];
                while r.read_next(&mut chunk)? > 0 {}
            }
            Kind::Symlink => {
                a.read_link(w.entry)?;
            }
            Kind::Dir => {
                a.read_dir(w.entry)?.count();
            }
        }
    }
    for c in 0..a.chunk_count() {
        a.verify_chunk(c)?;
    }
    Ok(())
}

/// Field offsets of the byte layout, for tests that patch archives.
pub mod layout {
    /// Header: section `i` (0 manifest, 1 toc, 2 chunk index, 3 heap, 4 trailer) offset field.
    pub fn section_offset(i: usize) -> usize {
        32 + 16 * i
    }
    /// Header: section `i` length field.
    pub fn section_len(i: usize) -> usize {
        40 + 16 * i
    }
    pub const MANIFEST: usize = 0;
    pub const TOC: usize = 1;
    pub const INDEX: usize = 2;
    pub const HEAP: usize = 3;
    pub const TRAILER: usize = 4;
    pub const H_VERSION_MAJOR: usize = 8;
    pub const H_VERSION_MINOR: usize = 10;
    pub const H_FLAGS: usize = 16;
    pub const H_CHUNK_SIZE: usize = 20;
    pub const H_METHOD: usize = 24;
    pub const H_LEVEL: usize = 28;
    pub const H_CONTENT_SIZE: usize = 112;
    pub const H_FILE_SIZE: usize = 120;

    /// The TOC section starts with a frame: method u8, 7 zero bytes, raw length u64.
    pub const TOC_FRAME_LEN: usize = 16;
    pub const TOC_HEADER_LEN: usize = 32;
    pub const INODE_LEN: usize = 48;
    pub const DIRENT_LEN: usize = 12;
    pub const XATTR_LEN: usize = 16;
    pub const INDEX_ENTRY_LEN: usize = 56;
    pub const TRAILER_LEN: usize = 136;

    // inode fields
    pub const I_MODE: usize = 0;
    pub const I_MTIME_NSEC: usize = 16;
    pub const I_XATTR_FIRST: usize = 20;
    pub const I_XATTR_COUNT: usize = 24;
    pub const I_A: usize = 28;
    pub const I_B: usize = 32;
    pub const I_C: usize = 36;
    pub const I_D: usize = 40;
    // dirent fields
    pub const D_NAME_OFF: usize = 0;
    pub const D_TARGET: usize = 4;
    pub const D_NAME_LEN: usize = 8;
    // xattr fields
    pub const X_NAME_OFF: usize = 0;
    pub const X_NAME_LEN: usize = 8;
    pub const X_VALUE_LEN: usize = 12;
    // chunk index fields
    pub const C_OFFSET: usize = 0;
    pub const C_STORED_LEN: usize = 8;
    pub const C_RAW_LEN: usize = 12;
    pub const C_METHOD: usize = 16;
    pub const C_HASH: usize = 24;
}

/// An archive's bytes, to be patched and re-sealed: after [`RawArchive::reseal`] the
/// metadata hash and the signature are valid again, so only the structural validation
/// stands between a hostile archive and the reader.
#[derive(Clone)]
pub struct RawArchive {
    pub bytes: Vec<u8>,
}

fn align8(x: usize) -> usize {
    x.next_multiple_of(8)
}

impl RawArchive {
    /// The archive's bytes as written.
    pub fn read(path: &Path) -> RawArchive {
        RawArchive {
            bytes: fs::read(path).expect("read archive"),
        }
    }

    /// The archive with its TOC stored raw (frame method 0, which the reader reads in
    /// place), the later sections moved to fit, and re-sealed: TOC records can then be
    /// patched where [`RawArchive::toc`] says they are.
    pub fn read_raw_toc(path: &Path) -> RawArchive {
        let old = RawArchive::read(path);
        let raw_toc = old.raw_toc();
        let (m_off, m_len) = old.section(layout::MANIFEST);
        let (i_off, i_len) = old.section(layout::INDEX);
        let (h_off, h_len) = old.section(layout::HEAP);
        let mut b = old.bytes[..m_off + m_len].to_vec();
        let toc_off = align8(b.len());
        b.resize(toc_off, 0);
        b.extend_from_slice(&[0u8; 8]); // method 0 (stored raw), reserved
        b.extend_from_slice(&(raw_toc.len() as u64).to_le_bytes());
        b.extend_from_slice(&raw_toc);
        let toc_len = b.len() - toc_off;
        let index_off = align8(b.len());
        b.resize(index_off, 0);
        b.extend_from_slice(&old.bytes[i_off..i_off + i_len]);
        let heap_off = align8(b.len());
        b.resize(heap_off, 0);
        b.extend_from_slice(&old.bytes[h_off..h_off + h_len]);
        let trailer_off = b.len();
        b.extend_from_slice(&old.bytes[old.bytes.len() - layout::TRAILER_LEN..]);
        let mut new = RawArchive { bytes: b };
        for (i, off, len) in [
            (layout::TOC, toc_off, toc_len),
            (layout::INDEX, index_off, i_len),
            (layout::HEAP, heap_off, h_len),
            (layout::TRAILER, trailer_off, layout::TRAILER_LEN),
        ] {
            new.set_u64(layout::section_offset(i), off as u64);
            new.set_u64(layout::section_len(i), len as u64);
        }
        let size = new.bytes.len() as u64;
        new.set_u64(layout::H_FILE_SIZE, size);
        new.reseal();
        new
    }

    /// The TOC, decompressed from its frame.
    pub fn raw_toc(&self) -> Vec<u8> {
        let (off, len) = self.section(layout::TOC);
        let frame = &self.bytes[off..off + len];
        let raw_len = u64::from_le_bytes(frame[8..16].try_into().unwrap()) as usize;
        let body = &frame[layout::TOC_FRAME_LEN..];
        let raw = match frame[0] {
            0 => body.to_vec(),
            1 => zstd::bulk::decompress(body, raw_len).expect("zstd TOC"),
            2 => {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(body)
                    .read_to_end(&mut out)
                    .expect("zlib TOC");
                out
            }
            3 => lz4_flex::block::decompress(body, raw_len).expect("lz4 TOC"),
            m => panic!("unknown TOC method {m}"),
        };
        assert_eq!(raw.len(), raw_len);
        raw
    }

    pub fn write(&self, path: &Path) {
        fs::write(path, &self.bytes).expect("write archive");
    }

    pub fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes(self.bytes[off..off + 2].try_into().unwrap())
    }
    pub fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().unwrap())
    }
    pub fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes[off..off + 8].try_into().unwrap())
    }
    pub fn set_u16(&mut self, off: usize, v: u16) -> &mut Self {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn set_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn set_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
        self
    }

    /// (offset, length) of header section `i` (see [`layout`]).
    pub fn section(&self, i: usize) -> (usize, usize) {
        (
            self.u64(layout::section_offset(i)) as usize,
            self.u64(layout::section_len(i)) as usize,
        )
    }
    /// Where the raw TOC starts (only for an archive whose TOC is stored raw: see
    /// [`RawArchive::read_raw_toc`]).
    pub fn toc(&self) -> usize {
        let off = self.section(layout::TOC).0;
        assert_eq!(
            self.bytes[off], 0,
            "the TOC is compressed; use read_raw_toc"
        );
        off + layout::TOC_FRAME_LEN
    }
    pub fn n_inodes(&self) -> u32 {
        self.u32(self.toc())
    }
    pub fn n_dirents(&self) -> u32 {
        self.u32(self.toc() + 4)
    }
    pub fn n_xattrs(&self) -> u32 {
        self.u32(self.toc() + 8)
    }
    /// Offset of inode record `e`.
    pub fn inode(&self, e: u32) -> usize {
        self.toc() + layout::TOC_HEADER_LEN + e as usize * layout::INODE_LEN
    }
    fn dirents(&self) -> usize {
        self.inode(self.n_inodes())
    }
    /// Offset of dirent record `j`.
    pub fn dirent(&self, j: u32) -> usize {
        self.dirents() + j as usize * layout::DIRENT_LEN
    }
    /// Offset of xattr record `k`.
    pub fn xattr(&self, k: u32) -> usize {
        // Aligned relative to the TOC (which itself starts 8-aligned).
        let rel = self.dirents() - self.toc() + self.n_dirents() as usize * layout::DIRENT_LEN;
        self.toc() + rel.next_multiple_of(8) + k as usize * layout::XATTR_LEN
    }
    /// Offset of the string table.
    pub fn strings(&self) -> usize {
        self.xattr(self.n_xattrs())
    }
    /// The dirent number of `name` in directory `dir` (an entry of this archive).
    pub fn dirent_of(&self, dir: u32, name: &[u8]) -> u32 {
        let first = self.u32(self.inode(dir) + layout::I_A);
        let count = self.u32(self.inode(dir) + layout::I_B);
        (first..first + count)
            .find(|&j| self.dirent_name(j) == name)
            .unwrap_or_else(|| panic!("no {:?} in entry {dir}", String::from_utf8_lossy(name)))
    }
    /// The name bytes of dirent `j`.
    pub fn dirent_name(&self, j: u32) -> &[u8] {
        let d = self.dirent(j);
        let off = self.strings() + self.u32(d + layout::D_NAME_OFF) as usize;
        &self.bytes[off..off + self.u16(d + layout::D_NAME_LEN) as usize]
    }
    /// Offset of chunk index entry `c`.
    pub fn chunk(&self, c: u32) -> usize {
        self.section(layout::INDEX).0 + c as usize * layout::INDEX_ENTRY_LEN
    }
    /// The absolute byte range of chunk `c`'s stored bytes.
    pub fn stored(&self, c: u32) -> std::ops::Range<usize> {
        let e = self.chunk(c);
        let start = self.section(layout::HEAP).0 + self.u64(e + layout::C_OFFSET) as usize;
        start..start + self.u32(e + layout::C_STORED_LEN) as usize
    }
    /// Recomputes chunk `c`'s hash from its stored bytes.
    pub fn rehash_chunk(&mut self, c: u32) -> &mut Self {
        let h = *blake3::hash(&self.bytes[self.stored(c)]).as_bytes();
        let e = self.chunk(c) + layout::C_HASH;
        self.bytes[e..e + 32].copy_from_slice(&h);
        self
    }
    /// Rewrites the trailer: the package id (BLAKE3 of the bytes before the heap) and, if
    /// the header says the archive is signed, the test key and its signature over the id.
    pub fn reseal(&mut self) -> &mut Self {
        let t = self.bytes.len() - layout::TRAILER_LEN;
        let heap = (self.u64(layout::section_offset(layout::HEAP)) as usize).min(t);
        let id = *blake3::hash(&self.bytes[..heap]).as_bytes();
        self.bytes[t + 40..t + 72].copy_from_slice(&id);
        if self.u32(layout::H_FLAGS) & 1 != 0 {
            let k = key();
            self.bytes[t + 8..t + 40].copy_from_slice(&k.public().to_bytes());
            self.bytes[t + 72..t + 136].copy_from_slice(&k.sign(&id));
        } else {
            self.bytes[t + 8..t + 40].fill(0);
            self.bytes[t + 72..t + 136].fill(0);
        }
        self
    }
}

/// A small tree built in memory (no disk): an empty file, nested directories, an empty
/// directory, small files sharing a chunk, a symlink, xattrs on the root, a directory and a
/// file, and a 100 KB text file (two compressed 64 KiB chunks). With `raw_chunk`, also a
/// 64 KiB + 100 byte incompressible file (a raw chunk, room in the heap to overwrite).
pub fn fixture_tree(raw_chunk: bool) -> Tree {
    use format::archive::tree::Meta;
    use format::archive::Content;
    let mut t = Tree::new();
    let m = Meta::new(0o644, 1_700_000_000);
    let bytes = |b: &[u8]| Content::Bytes(b.into());
    let root = t.root();
    t.set_xattr(root, b"user.root", b"r").unwrap();
    t.add_file(root, b"a-empty", bytes(b""), 0, m).unwrap();
    let dir = t.add_dir(root, b"dir", Meta::new(0o755, 1)).unwrap();
    t.set_xattr(dir, b"user.d1", b"1").unwrap();
    t.set_xattr(dir, b"user.d2", b"2").unwrap();
    t.add_file(dir, b"nested.txt", bytes(b"nested\n"), 7, m)
        .unwrap();
    let sub = t.add_dir(dir, b"sub", Meta::new(0o700, 2)).unwrap();
    t.add_file(sub, b"deep.txt", bytes(b"deep\n"), 5, m)
        .unwrap();
    t.add_dir(root, b"empty-dir", Meta::new(0o755, 3)).unwrap();
    let hello = t
        .add_file(root, b"hello.txt", bytes(b"hello world\n"), 12, m)
        .unwrap();
    t.set_xattr(hello, b"user.comment", b"hi").unwrap();
    t.add_symlink(root, b"link", b"./hello.txt", Meta::new(0o777, 4))
        .unwrap();
    if raw_chunk {
        let r = Rng::new(99).bytes(64 * 1024 + 100);
        t.add_file(root, b"random.bin", bytes(&r), r.len() as u64, m)
            .unwrap();
    }
    let text = text_bytes(100_000, 0);
    t.add_file(root, b"text.txt", bytes(&text), text.len() as u64, m)
        .unwrap();
    t
}
