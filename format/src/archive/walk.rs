//! Walking a directory tree to package it, safely: the one walker of the project
//! ([`crate::archive::Tree::from_dir`] for `pkgtool build`, and graft's directory input).
//!
//! The tree may belong to somebody else who changes it while it is read (as root, a file
//! swapped for a symlink to a root-only file must not end up in the package), so the walk
//! goes through descriptors only: each directory is opened relative to its parent with
//! `O_NOFOLLOW|O_DIRECTORY`, each file is opened relative to its directory with
//! `O_NOFOLLOW|O_NONBLOCK` (a FIFO put in its place cannot hang the walk) and checked with
//! `fstat` to be a regular file; modes, mtimes, identities (for hard links) and xattrs come
//! from those descriptors. Entries are visited depth first, in byte order of their names.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// An extended attribute: name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// Why a walk stopped, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// An I/O error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The walk's root is not a directory (or is a symbolic link).
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// An entry changed kind between its `stat` and its open (a file swapped for a link).
    #[error("{}: changed while it was read (it is no longer what it was)", .0.display())]
    Changed(PathBuf),
    /// A device, FIFO or socket: a package holds none.
    #[error("{}: a device, fifo or socket, which a package cannot hold", .0.display())]
    Special(PathBuf),
}

impl WalkError {
    fn io(path: &Path, e: impl Into<io::Error>) -> WalkError {
        WalkError::Io {
            path: path.to_owned(),
            source: e.into(),
        }
    }
}

/// The metadata of an entry that a package keeps, and its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Permission bits (with setuid, setgid, sticky).
    pub perm: u32,
    /// Modification time.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device and inode: the file's identity.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
}

impl Stat {
    /// The stat of an open file.
    pub fn of(md: &fs::Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            perm: md.mode() & 0o7777,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
            size: md.len(),
            dev: md.dev(),
            ino: md.ino(),
            nlink: md.nlink(),
        }
    }

    /// The kernel's field types differ between targets.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    fn of_raw(st: &rustix::fs::Stat) -> Stat {
        Stat {
            perm: (st.st_mode as u32) & 0o7777,
            mtime: st.st_mtime as i64,
            mtime_nsec: (st.st_mtime_nsec as i64).clamp(0, 999_999_999) as u32,
            size: st.st_size as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
        }
    }
}

/// A regular file met by the walk, not opened yet: a visitor that leaves it out never
/// opens it.
pub struct WalkFile<'a> {
    dir: &'a fs::File,
    name: &'a [u8],
    /// Its path, for messages.
    pub path: &'a Path,
    /// Its path below the root, by component.
    pub rel: &'a [Vec<u8>],
    /// Its `lstat` when listed (size and mtime for a file left out unopened).
    pub stat: Stat,
}

impl WalkFile<'_> {
    /// Opens it for reading, relative to its directory, never through a link and never
    /// waiting (a FIFO in its place): the file and its stat, which are from now on what
    /// the package holds. [`WalkError::Changed`] if it is no longer a regular file.
    pub fn open(&self) -> Result<(fs::File, Stat), WalkError> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = rustix::fs::openat(self.dir, self.name, flags | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| match e {
                rustix::io::Errno::LOOP => WalkError::Changed(self.path.to_owned()),
                e => WalkError::io(self.path, e),
            })?;
        let f = fs::File::from(fd);
        let md = f.metadata().map_err(|e| WalkError::io(self.path, e))?;
        if !md.is_file() {
            return Err(WalkError::Changed(self.path.to_owned()));
        }
        Ok((f, Stat::of(&md)))
    }
}

/// What a walk does with each entry. Errors of the walk itself come as [`WalkError`].
pub trait Visitor {
    /// The visitor's error.
    type Error: From<WalkError>;

    /// A directory (the root first, with `rel` empty), open.
    fn dir(
        &mut self,
        rel: &[Vec<u8>],
        path: &Path,
        dir: &fs::File,
        stat: Stat,
    ) -> Result<(), Self::Error>;

    /// A regular file.
    fn file(&mut self, f: WalkFile<'_>) -> Result<(), Self::Error>;

    /// A symbolic link and its target (never followed).
    fn symlink(
        &mut self,
        rel: &[Vec<u8>],
        path: &Path,
        target: &[u8],
        stat: Stat,
    ) -> Result<(), Self::Error>;
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Walks the tree at `root` (which must be a directory, not a link to one), depth first in
/// name order, handing every entry to `v`.
pub fn walk_dir<V: Visitor>(root: &Path, v: &mut V) -> Result<(), V::Error> {
    let fd = rustix::fs::open(root, dir_flags(), Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            WalkError::NotADirectory(root.to_owned())
        }
        e => WalkError::io(root, e),
    })?;
    let top = fs::File::from(fd);
    let md = top.metadata().map_err(|e| WalkError::io(root, e))?;
    v.dir(&[], root, &top, Stat::of(&md))?;
    let mut stack: Vec<(fs::File, PathBuf, Vec<Vec<u8>>)> =
        vec![(top, root.to_owned(), Vec::new())];
    while let Some((dirfd, path, rel)) = stack.pop() {
        let mut names = Vec::new();
        let entries = rustix::fs::Dir::read_from(&dirfd).map_err(|e| WalkError::io(&path, e))?;
        for ent in entries {
            let ent = ent.map_err(|e| WalkError::io(&path, e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let p = path.join(OsStr::from_bytes(&name));
            let mut crel = rel.clone();
            crel.push(name.clone());
            let st = rustix::fs::statat(&dirfd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| WalkError::io(&p, e))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let fd =
                        rustix::fs::openat(&dirfd, name.as_slice(), dir_flags(), Mode::empty())
                            .map_err(|e| match e {
                                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
                                    WalkError::Changed(p.clone())
                                }
                                e => WalkError::io(&p, e),
                            })?;
                    let f = fs::File::from(fd);
                    let md = f.metadata().map_err(|e| WalkError::io(&p, e))?;
                    v.dir(&crel, &p, &f, Stat::of(&md))?;
                    subdirs.push((f, p, crel));
                }
                FileType::RegularFile => v.file(WalkFile {
                    dir: &dirfd,
                    name: &name,
                    path: &p,
                    rel: &crel,
                    stat: Stat::of_raw(&st),
                })?,
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dirfd, name.as_slice(), Vec::new())
                        .map_err(|e| match e {
                            rustix::io::Errno::INVAL => WalkError::Changed(p.clone()),
                            e => WalkError::io(&p, e),
                        })?;
                    v.symlink(&crel, &p, target.as_bytes(), Stat::of_raw(&st))?;
                }
                _ => return Err(WalkError::Special(p).into()),
            }
        }
        // Depth first in name order (the stack pops the last pushed first).
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// The xattrs of an open file or directory (`path` names it in messages); none where the
/// file system has none.
pub fn xattrs_of(f: &fs::File, path: &Path) -> Result<Vec<Xattr>, WalkError> {
    use xattr::FileExt;
    let names = match f.list_xattr() {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(WalkError::io(path, e)),
    };
    let mut out = Vec::new();
    for n in names {
        if let Ok(Some(v)) = f.get_xattr(&n) {
            out.push((n.as_bytes().to_vec(), v));
        }
    }
    Ok(out)
}

impl From<WalkError> for crate::Error {
    fn from(e: WalkError) -> crate::Error {
        let source = |path: PathBuf, reason: &str| crate::Error::Source {
            path,
            reason: reason.into(),
        };
        match e {
            WalkError::Io { path, source } => crate::Error::Io { path, source },
            WalkError::NotADirectory(p) => source(p, "not a directory"),
            WalkError::Changed(p) => {
                source(p, "changed while it was read (it is no longer what it was)")
            }
            WalkError::Special(p) => source(p, "cannot package a device, fifo or socket"),
        }
    }
}
