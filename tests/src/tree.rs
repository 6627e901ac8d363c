//! Source trees built in code: files, directories, symlinks, hard links, modes, mtimes and
//! xattrs, in a temporary directory (ripgrep's `Dir`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A directory tree to package.
#[derive(Debug)]
pub struct TestTree {
    dir: TempDir,
}

impl Default for TestTree {
    fn default() -> Self {
        Self::new()
    }
}

impl TestTree {
    /// An empty tree in a new temporary directory.
    pub fn new() -> TestTree {
        TestTree {
            dir: tempfile::Builder::new()
                .prefix("e2e-tree-")
                .tempdir()
                .expect("create a temporary directory"),
        }
    }

    /// The root of the tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The absolute path of `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file (creating its parent directories), mode 0644.
    pub fn file(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> &Self {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        self
    }

    /// Writes an executable file (mode 0755).
    pub fn exe(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        self.file(rel, contents).chmod(rel, 0o755)
    }

    /// Copies a file of the host into the tree, keeping its mode.
    pub fn copy_from(&self, rel: impl AsRef<Path>, from: impl AsRef<Path>) -> &Self {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::copy(from.as_ref(), &p)
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.as_ref().display()));
        self
    }

    /// Creates a directory (and its parents), mode 0755.
    pub fn dir(&self, rel: impl AsRef<Path>) -> &Self {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// Creates a symlink `rel -> target`.
    pub fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> &Self {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        std::os::unix::fs::symlink(target, &p).unwrap();
        self
    }

    /// Creates a hard link `rel` to the existing `existing`.
    pub fn hard_link(&self, existing: impl AsRef<Path>, rel: impl AsRef<Path>) -> &Self {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::hard_link(self.join(existing), &p).unwrap();
        self
    }

    /// Sets the permission bits (including setuid, setgid, sticky).
    pub fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> &Self {
        fs::set_permissions(self.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    /// Sets the modification (and access) time, without following a symlink.
    pub fn mtime(&self, rel: impl AsRef<Path>, secs: i64, nsec: u32) -> &Self {
        let p = cstr(&self.join(rel));
        let ts = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nsec as libc::c_long,
        };
        // SAFETY: valid C string and two timespecs.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                [ts, ts].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat: {}", std::io::Error::last_os_error());
        self
    }

    /// Sets an extended attribute.
    pub fn xattr(&self, rel: impl AsRef<Path>, name: &str, value: &[u8]) -> &Self {
        let p = cstr(&self.join(rel));
        let n = CString::new(name).unwrap();
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
        self
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Every entry below `root` (not `root` itself), by relative path, with its `lstat`
/// metadata. Symlinks are not followed.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for e in rd {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let md = fs::symlink_metadata(root.join(&r)).unwrap();
            if md.is_dir() {
                stack.push(r.clone());
            }
            out.insert(r, md);
        }
    }
    out
}

/// `len` deterministic pseudo-random bytes (xorshift64*), different for each `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text that compresses somewhat, like real files: `len` bytes of numbered lines.
pub fn text_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(format!("file {seed} line {i}: the quick brown fox\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// The union of source trees stacked lowest first, by the rules of the view: at each path
/// the highest layer's entry wins; when it is a directory, the directories (only) of the
/// layers below at that path merge into it. Maps each relative path to the source entry
/// that is shown.
pub fn union(roots: &[&Path]) -> BTreeMap<PathBuf, PathBuf> {
    fn rec(sources: &[PathBuf], rel: &Path, out: &mut BTreeMap<PathBuf, PathBuf>) {
        let mut names = std::collections::BTreeSet::new();
        for s in sources {
            for e in fs::read_dir(s).unwrap_or_else(|e| panic!("read_dir {}: {e}", s.display())) {
                names.insert(e.unwrap().file_name());
            }
        }
        for n in names {
            let present: Vec<(PathBuf, fs::Metadata)> = sources
                .iter()
                .filter_map(|s| {
                    let p = s.join(&n);
                    fs::symlink_metadata(&p).ok().map(|m| (p, m))
                })
                .collect();
            let child = rel.join(&n);
            out.insert(child.clone(), present[0].0.clone());
            if present[0].1.is_dir() {
                let dirs: Vec<PathBuf> = present
                    .into_iter()
                    .filter(|(_, m)| m.is_dir())
                    .map(|(p, _)| p)
                    .collect();
                rec(&dirs, &child, out);
            }
        }
    }
    let highest_first: Vec<PathBuf> = roots.iter().rev().map(|p| p.to_path_buf()).collect();
    let mut out = BTreeMap::new();
    rec(&highest_first, Path::new(""), &mut out);
    out
}
