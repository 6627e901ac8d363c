//! The union view of one generation: the active packages of a stack of layers merged into one
//! read-only tree. A `View` never changes once built; a new generation is a new `View`.
//!
//! Rules:
//! - layers stack, lowest first; at one path, a higher layer's entry hides a lower one's, and
//!   directories merge (a directory hides lower files at its path, a file hides lower
//!   directories);
//! - inside one layer, packages are ordered by (name, version, id); when two claim the same
//!   path with different contents, the first wins and the clash is recorded as a [`Conflict`];
//! - only directories that more than one package contributes to are *materialized* (built
//!   here, in compact arrays); everything else is served straight from its package's TOC. A
//!   single large package therefore costs a few entries, and 1000 small ones cost the
//!   directories they share.
//!
//! Inode numbers are stable for the life of the mount, across generations: a package entry
//! is `(slot + 1) << 32 | entry`, where the slot is the package's number for the life of
//! the mount (so hard links inside a package share an inode, and a package that stays
//! active keeps its numbers); a merged directory gets a number from [`DirInos`], one per
//! path for the life of the mount (the root is 1); the mount's own nodes (shine-through,
//! [`Shine`]) are numbered from [`SPECIAL_INO_BASE`].
//!
//! The module is split by job: `ino` numbers inodes (the one place the encoding of a
//! package inode is written), `build` builds a view, the queries are here, `diff`
//! compares two views, and `slot` holds the current one for the readers.
//!
//! [`diff`] compares two views and names exactly the kernel cache entries a switch from one
//! to the other must invalidate.

mod build;
mod diff;
mod ino;
mod slot;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use format::archive::{Archive, Attr, EntryId, Kind};

pub use build::{Shine, LAYERS_DIR};
pub use diff::{diff, Inval};
pub use ino::{pkg_ino, split_pkg_ino, DirInos, PKG_INO_BASE, ROOT_INO, SPECIAL_INO_BASE};
pub use slot::{ViewSlot, EPOCH_BITS};

#[derive(Debug, Clone)]
struct SpecialNode {
    name: Vec<u8>,
    /// None: a directory (its children are `children`); Some: a symlink.
    target: Option<Vec<u8>>,
    parent: Node,
    children: Vec<u32>,
}

/// A layer of the stack.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Its name (`system`, `common`, `user`, ...).
    pub name: String,
    /// Strip setuid/setgid bits from its files (every layer but `system`).
    pub nosuid: bool,
}

impl Layer {
    /// A layer; only the one named `system` may carry setuid/setgid files.
    pub fn new(name: &str) -> Layer {
        Layer {
            name: name.to_owned(),
            nosuid: name != "system",
        }
    }
}

/// An active package: an open, verified archive in a layer.
#[derive(Debug)]
pub struct Package {
    /// Number of the package for the life of the mount (part of its inode numbers).
    pub slot: u32,
    /// Index of its layer (0 = lowest).
    pub layer: usize,
    /// The file it was opened from.
    pub path: PathBuf,
    /// The archive (shared with the package-set library, which opened it).
    pub archive: Arc<Archive>,
}

impl Package {
    /// `name-version` for messages.
    pub fn label(&self) -> String {
        let m = self.archive.manifest();
        format!("{}-{}", m.name, m.version)
    }

    fn sort_key(&self) -> (&str, &semver::Version, [u8; 32]) {
        let m = self.archive.manifest();
        (m.name.as_str(), &m.version, self.archive.id().0)
    }
}

/// A node of the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A merged directory.
    Union(u32),
    /// A node of the mount's own (a shine-through directory or link; index into the
    /// view's specials).
    Special(u32),
    /// An entry of a package (index into the view's packages).
    Pkg {
        /// Index of the package in [`View::packages`].
        pkg: u32,
        /// Entry inside its archive.
        entry: EntryId,
    },
}

/// The attributes of a node, as the view shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAttr {
    /// Inode number.
    pub ino: u64,
    /// File type.
    pub kind: Kind,
    /// Permission bits (setuid/setgid stripped for `nosuid` layers).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: i64,
    /// Its nanoseconds.
    pub mtime_nsec: u32,
}

impl NodeAttr {
    /// The attributes of a package entry with inode `ino`: its archive attributes, with
    /// setuid and setgid dropped if `nosuid`.
    pub fn of_entry(ino: u64, a: &Attr, nosuid: bool) -> NodeAttr {
        NodeAttr {
            ino,
            kind: a.kind,
            perm: if nosuid { a.perm & !0o6000 } else { a.perm },
            nlink: a.nlink,
            size: a.size,
            mtime: a.mtime,
            mtime_nsec: a.mtime_nsec,
        }
    }
}

/// Two packages of one layer claim one path with different contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The path.
    pub path: String,
    /// The layer.
    pub layer: String,
    /// The package whose entry is shown.
    pub winner: String,
    /// The package whose entry is not.
    pub loser: String,
}

/// What a view operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such entry.
    #[error("no such file or directory")]
    NotFound,
    /// An inode number this view does not know.
    #[error("stale inode {0}")]
    Stale(u64),
    /// The operation needs a directory.
    #[error("not a directory")]
    NotDir,
    /// The operation needs a file.
    #[error("is a directory")]
    IsDir,
    /// The operation needs a symlink.
    #[error("not a symlink")]
    NotSymlink,
    /// A chunk of a file cannot be read (corrupt, or an I/O error): logged once where it
    /// was found, with the package and the cause.
    #[error("chunk {chunk} cannot be read")]
    BadChunk {
        /// The chunk.
        chunk: u32,
    },
    /// The archive failed (corruption or I/O).
    #[error("{package}: {source}")]
    Archive {
        /// Package label.
        package: String,
        /// The cause.
        #[source]
        source: format::Error,
    },
}

impl Error {
    /// The view's error for archive error `e` of `pkg`: a wrong kind or a missing entry is
    /// the caller's mistake (named as such); anything else is the package's fault.
    pub fn of_archive(pkg: &Package, e: format::Error) -> Error {
        match e {
            format::Error::NoEntry(_) => Error::NotFound,
            format::Error::WrongKind { wanted, actual, .. } => match (wanted, actual) {
                (Kind::Dir, _) => Error::NotDir,
                (Kind::Symlink, _) => Error::NotSymlink,
                (Kind::File, Kind::Symlink) => Error::NotFound,
                (Kind::File, _) => Error::IsDir,
            },
            e => Error::Archive {
                package: pkg.label(),
                source: e,
            },
        }
    }
}

/// Result of view operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy)]
struct UDir {
    parent: u32,
    first: u32,
    count: u32,
    subdirs: u32,
    /// The highest-priority package directory at this path: its mode, mtime and xattrs.
    attr_src: Option<(u32, EntryId)>,
}

#[derive(Debug, Clone, Copy)]
struct UEntry {
    name_off: u32,
    name_len: u16,
    target: Node,
}

/// The union view of one generation.
#[derive(Debug)]
pub struct View {
    layers: Vec<Layer>,
    packages: Vec<Arc<Package>>,
    by_slot: HashMap<u32, u32>,
    dirs: Vec<UDir>,
    entries: Vec<UEntry>,
    names: Vec<u8>,
    /// Package directories whose parent is a merged directory: their parent's inode.
    boundary_parent: HashMap<(u32, EntryId), u64>,
    conflicts: Vec<Conflict>,
    /// Inode number of each merged directory, and back.
    dir_ino: Vec<u64>,
    union_by_ino: HashMap<u64, u32>,
    special: Vec<SpecialNode>,
}

impl View {
    /// Path clashes found while building (each also means one entry is not shown).
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// The active packages, in priority order.
    pub fn packages(&self) -> &[Arc<Package>] {
        &self.packages
    }

    /// The layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Number of merged (materialized) directories.
    pub fn merged_dirs(&self) -> usize {
        self.dirs.len()
    }

    /// The inode number of a node.
    pub fn ino(&self, node: Node) -> u64 {
        match node {
            Node::Union(d) => self.dir_ino[d as usize],
            Node::Special(i) => SPECIAL_INO_BASE + i as u64,
            Node::Pkg { pkg, entry } => pkg_ino(self.packages[pkg as usize].slot, entry),
        }
    }

    /// The node of an inode number.
    pub fn node(&self, ino: u64) -> Result<Node> {
        if ino == 0 {
            return Err(Error::Stale(ino));
        }
        if ino < PKG_INO_BASE {
            if ino >= SPECIAL_INO_BASE {
                let i = ino - SPECIAL_INO_BASE;
                return if (i as usize) < self.special.len() {
                    Ok(Node::Special(i as u32))
                } else {
                    Err(Error::Stale(ino))
                };
            }
            return self
                .union_by_ino
                .get(&ino)
                .map(|&d| Node::Union(d))
                .ok_or(Error::Stale(ino));
        }
        let (slot, entry) = split_pkg_ino(ino).ok_or(Error::Stale(ino))?;
        let pkg = *self.by_slot.get(&slot).ok_or(Error::Stale(ino))?;
        if entry >= self.packages[pkg as usize].archive.entry_count() {
            return Err(Error::Stale(ino));
        }
        Ok(Node::Pkg { pkg, entry })
    }

    /// The package of a package node.
    pub fn package(&self, pkg: u32) -> &Arc<Package> {
        &self.packages[pkg as usize]
    }

    fn archive_err(&self, pkg: u32, e: format::Error) -> Error {
        Error::of_archive(&self.packages[pkg as usize], e)
    }

    fn pkg_attr(&self, pkg: u32, entry: EntryId) -> Result<Attr> {
        self.packages[pkg as usize]
            .archive
            .attr(entry)
            .map_err(|e| self.archive_err(pkg, e))
    }

    /// The attributes of a node.
    pub fn attr(&self, node: Node) -> Result<NodeAttr> {
        let ino = self.ino(node);
        match node {
            Node::Union(d) => {
                let ud = &self.dirs[d as usize];
                let (perm, mtime, mtime_nsec) = match ud.attr_src {
                    Some((p, e)) => {
                        let a = self.pkg_attr(p, e)?;
                        (a.perm, a.mtime, a.mtime_nsec)
                    }
                    None => (0o755, 0, 0),
                };
                Ok(NodeAttr {
                    ino,
                    kind: Kind::Dir,
                    perm,
                    nlink: 2 + ud.subdirs,
                    size: 0,
                    mtime,
                    mtime_nsec,
                })
            }
            Node::Special(i) => {
                let sp = &self.special[i as usize];
                let (kind, perm, nlink, size) = match &sp.target {
                    None => (Kind::Dir, 0o755, 2, 0),
                    Some(t) => (Kind::Symlink, 0o777, 1, t.len() as u64),
                };
                Ok(NodeAttr {
                    ino,
                    kind,
                    perm,
                    nlink,
                    size,
                    mtime: 0,
                    mtime_nsec: 0,
                })
            }
            Node::Pkg { pkg, entry } => {
                let a = self.pkg_attr(pkg, entry)?;
                let nosuid = self
                    .layers
                    .get(self.packages[pkg as usize].layer)
                    .is_none_or(|l| l.nosuid);
                Ok(NodeAttr::of_entry(ino, &a, nosuid))
            }
        }
    }

    fn entry_name(&self, e: &UEntry) -> &[u8] {
        &self.names[e.name_off as usize..e.name_off as usize + e.name_len as usize]
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: Node, name: &[u8]) -> Result<Node> {
        match dir {
            Node::Union(d) => {
                let ud = &self.dirs[d as usize];
                let slice = &self.entries[ud.first as usize..(ud.first + ud.count) as usize];
                match slice.binary_search_by(|e| self.entry_name(e).cmp(name)) {
                    Ok(i) => Ok(slice[i].target),
                    Err(_) if d == 0 && name == LAYERS_DIR && !self.special.is_empty() => {
                        Ok(Node::Special(0))
                    }
                    Err(_) => Err(Error::NotFound),
                }
            }
            Node::Special(i) => {
                let sp = &self.special[i as usize];
                if sp.target.is_some() {
                    return Err(Error::NotDir);
                }
                sp.children
                    .iter()
                    .find(|&&c| self.special[c as usize].name == name)
                    .map(|&c| Node::Special(c))
                    .ok_or(Error::NotFound)
            }
            Node::Pkg { pkg, entry } => {
                match self.packages[pkg as usize].archive.lookup(entry, name) {
                    Ok(Some(child)) => Ok(Node::Pkg { pkg, entry: child }),
                    Ok(None) => Err(Error::NotFound),
                    Err(e) => Err(self.archive_err(pkg, e)),
                }
            }
        }
    }

    /// Resolves a relative path without following symlinks (for tests and tools).
    pub fn lookup_path(&self, path: &[u8]) -> Result<Node> {
        let mut cur = Node::Union(0);
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            cur = self.lookup(cur, comp)?;
        }
        Ok(cur)
    }

    /// The parent of a directory node (the root is its own parent).
    pub fn parent(&self, dir: Node) -> Result<Node> {
        match dir {
            Node::Union(d) => Ok(Node::Union(self.dirs[d as usize].parent)),
            Node::Special(i) => Ok(self.special[i as usize].parent),
            Node::Pkg { pkg, entry } => {
                if let Some(&ino) = self.boundary_parent.get(&(pkg, entry)) {
                    return self.node(ino);
                }
                let p = self.packages[pkg as usize]
                    .archive
                    .parent(entry)
                    .map_err(|e| self.archive_err(pkg, e))?;
                Ok(Node::Pkg { pkg, entry: p })
            }
        }
    }

    /// Number of entries in a directory (without `.` and `..`).
    pub fn dir_len(&self, dir: Node) -> Result<usize> {
        match dir {
            Node::Union(d) => Ok(self.dirs[d as usize].count as usize),
            Node::Special(i) => match &self.special[i as usize].target {
                None => Ok(self.special[i as usize].children.len()),
                Some(_) => Err(Error::NotDir),
            },
            Node::Pkg { pkg, entry } => Ok(self.packages[pkg as usize]
                .archive
                .read_dir(entry)
                .map_err(|e| self.archive_err(pkg, e))?
                .len()),
        }
    }

    /// Entries of a directory from index `start` (without `.` and `..`), in name order:
    /// `(name, node)`. `start` past the end gives nothing.
    pub fn read_dir(&self, dir: Node, start: usize) -> Result<Vec<(&[u8], Node)>> {
        self.read_dir_limit(dir, start, usize::MAX)
    }

    /// Like [`View::read_dir`], at most `limit` entries.
    pub fn read_dir_limit(
        &self,
        dir: Node,
        start: usize,
        limit: usize,
    ) -> Result<Vec<(&[u8], Node)>> {
        match dir {
            Node::Union(d) => {
                let ud = &self.dirs[d as usize];
                let s = (ud.first as usize + start).min((ud.first + ud.count) as usize);
                let e = (ud.first + ud.count) as usize;
                Ok(self.entries[s..e]
                    .iter()
                    .take(limit)
                    .map(|x| (self.entry_name(x), x.target))
                    .collect())
            }
            Node::Special(i) => {
                let sp = &self.special[i as usize];
                if sp.target.is_some() {
                    return Err(Error::NotDir);
                }
                Ok(sp
                    .children
                    .iter()
                    .skip(start)
                    .take(limit)
                    .map(|&c| (self.special[c as usize].name.as_slice(), Node::Special(c)))
                    .collect())
            }
            Node::Pkg { pkg, entry } => {
                let mut it = self.packages[pkg as usize]
                    .archive
                    .read_dir(entry)
                    .map_err(|e| self.archive_err(pkg, e))?;
                if start > 0 && it.nth(start - 1).is_none() {
                    return Ok(Vec::new());
                }
                Ok(it
                    .take(limit)
                    .map(|de| {
                        (
                            de.name,
                            Node::Pkg {
                                pkg,
                                entry: de.entry,
                            },
                        )
                    })
                    .collect())
            }
        }
    }

    /// The target of a symlink.
    pub fn read_link(&self, node: Node) -> Result<&[u8]> {
        match node {
            Node::Union(_) => Err(Error::NotSymlink),
            Node::Special(i) => self.special[i as usize]
                .target
                .as_deref()
                .ok_or(Error::NotSymlink),
            Node::Pkg { pkg, entry } => self.packages[pkg as usize]
                .archive
                .read_link(entry)
                .map_err(|e| self.archive_err(pkg, e)),
        }
    }

    /// Extended attributes of a node, sorted by name. Files of `nosuid` layers carry no
    /// `security.capability` (file capabilities are privileges, like setuid bits).
    pub fn xattrs(&self, node: Node) -> Result<Vec<(&[u8], &[u8])>> {
        let (pkg, entry) = match node {
            Node::Union(d) => match self.dirs[d as usize].attr_src {
                Some(src) => src,
                None => return Ok(Vec::new()),
            },
            Node::Special(_) => return Ok(Vec::new()),
            Node::Pkg { pkg, entry } => (pkg, entry),
        };
        let nosuid = self
            .layers
            .get(self.packages[pkg as usize].layer)
            .is_none_or(|l| l.nosuid);
        Ok(self.packages[pkg as usize]
            .archive
            .xattrs(entry)
            .map_err(|e| self.archive_err(pkg, e))?
            .filter(|(name, _)| !(nosuid && *name == b"security.capability"))
            .collect())
    }

    /// A regular file, for reading: its package, entry and extent, decoded once.
    pub fn file(&self, node: Node) -> Result<crate::read::OpenFile> {
        match node {
            Node::Union(_) => Err(Error::IsDir),
            Node::Special(i) => match self.special[i as usize].target {
                None => Err(Error::IsDir),
                Some(_) => Err(Error::NotFound),
            },
            Node::Pkg { pkg, entry } => {
                crate::read::OpenFile::new(self.packages[pkg as usize].clone(), entry)
            }
        }
    }

    /// Totals for `statfs`: (bytes of package files, number of entries).
    pub fn totals(&self) -> (u64, u64) {
        let bytes = self
            .packages
            .iter()
            .map(|p| p.archive.header().file_size)
            .sum();
        let files = self
            .packages
            .iter()
            .map(|p| p.archive.entry_count() as u64)
            .sum::<u64>()
            + self.dirs.len() as u64;
        (bytes, files)
    }
}
