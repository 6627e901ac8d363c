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
//! Inode numbers are a pure function of the node: a merged directory `d` is `d + 1` (the
//! root is 1), a package entry is `(slot + 1) << 32 | entry`, where the slot is the package's
//! number for the life of the mount. Hard links inside a package therefore share an inode.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use format::archive::{Archive, Attr, EntryId, Kind};

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

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
    /// The archive.
    pub archive: Archive,
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
}

/// A merged directory still to fill: (its number, its sources, its path).
type Pending = (u32, Vec<(u32, EntryId)>, Vec<u8>);

struct Cand<'a> {
    name: &'a [u8],
    pkg: u32,
    entry: EntryId,
    kind: Kind,
}

impl View {
    /// Builds the view of `packages` (in any order) stacked in `layers`.
    pub fn build(layers: Vec<Layer>, mut packages: Vec<Arc<Package>>) -> View {
        // Priority order: highest layer first, then (name, version, id) inside a layer.
        packages.sort_by(|a, b| {
            b.layer
                .cmp(&a.layer)
                .then_with(|| a.sort_key().cmp(&b.sort_key()))
        });
        let by_slot = packages
            .iter()
            .enumerate()
            .map(|(i, p)| (p.slot, i as u32))
            .collect();
        let mut v = View {
            layers,
            packages,
            by_slot,
            dirs: Vec::new(),
            entries: Vec::new(),
            names: Vec::new(),
            boundary_parent: HashMap::new(),
            conflicts: Vec::new(),
        };
        let pkgs = v.packages.clone();
        let roots: Vec<(u32, EntryId)> = (0..pkgs.len() as u32)
            .map(|p| (p, pkgs[p as usize].archive.root()))
            .collect();
        v.dirs.push(UDir {
            parent: 0,
            first: 0,
            count: 0,
            subdirs: 0,
            attr_src: roots.first().copied(),
        });
        let mut queue: VecDeque<Pending> = VecDeque::new();
        queue.push_back((0, roots, Vec::new()));
        while let Some((d, sources, path)) = queue.pop_front() {
            let mut cands: Vec<Cand<'_>> = Vec::new();
            for &(p, e) in &sources {
                let ar = &pkgs[p as usize].archive;
                let Ok(iter) = ar.read_dir(e) else { continue };
                for de in iter {
                    let Ok(attr) = ar.attr(de.entry) else {
                        continue;
                    };
                    cands.push(Cand {
                        name: de.name,
                        pkg: p,
                        entry: de.entry,
                        kind: attr.kind,
                    });
                }
            }
            // Stable by name, then by priority (package index).
            cands.sort_by(|a, b| a.name.cmp(b.name).then(a.pkg.cmp(&b.pkg)));
            let first = v.entries.len() as u32;
            let mut subdirs = 0;
            let mut i = 0;
            while i < cands.len() {
                let mut j = i + 1;
                while j < cands.len() && cands[j].name == cands[i].name {
                    j += 1;
                }
                let group = &cands[i..j];
                i = j;
                let top = &group[0];
                let top_layer = pkgs[top.pkg as usize].layer;
                let mut child_path = path.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(top.name);
                let target = if top.kind == Kind::Dir {
                    subdirs += 1;
                    for c in group
                        .iter()
                        .filter(|c| c.kind != Kind::Dir && pkgs[c.pkg as usize].layer == top_layer)
                    {
                        v.conflict(&child_path, top_layer, top.pkg, c.pkg);
                    }
                    let dir_srcs: Vec<(u32, EntryId)> = group
                        .iter()
                        .filter(|c| c.kind == Kind::Dir)
                        .map(|c| (c.pkg, c.entry))
                        .collect();
                    if dir_srcs.len() == 1 {
                        v.boundary_parent.insert((top.pkg, top.entry), d as u64 + 1);
                        Node::Pkg {
                            pkg: top.pkg,
                            entry: top.entry,
                        }
                    } else {
                        let nd = v.dirs.len() as u32;
                        v.dirs.push(UDir {
                            parent: d,
                            first: 0,
                            count: 0,
                            subdirs: 0,
                            attr_src: Some(dir_srcs[0]),
                        });
                        queue.push_back((nd, dir_srcs, child_path));
                        Node::Union(nd)
                    }
                } else {
                    for c in group[1..]
                        .iter()
                        .filter(|c| pkgs[c.pkg as usize].layer == top_layer)
                    {
                        let (a, b) = (
                            &pkgs[top.pkg as usize].archive,
                            &pkgs[c.pkg as usize].archive,
                        );
                        if !same_content(a, top.entry, b, c.entry) {
                            v.conflict(&child_path, top_layer, top.pkg, c.pkg);
                        }
                    }
                    Node::Pkg {
                        pkg: top.pkg,
                        entry: top.entry,
                    }
                };
                let name_off = v.names.len() as u32;
                v.names.extend_from_slice(top.name);
                v.entries.push(UEntry {
                    name_off,
                    name_len: top.name.len() as u16,
                    target,
                });
            }
            let ud = &mut v.dirs[d as usize];
            ud.first = first;
            ud.count = v.entries.len() as u32 - first;
            ud.subdirs = subdirs;
        }
        v
    }

    fn conflict(&mut self, path: &[u8], layer: usize, winner: u32, loser: u32) {
        self.conflicts.push(Conflict {
            path: String::from_utf8_lossy(path).into_owned(),
            layer: self
                .layers
                .get(layer)
                .map(|l| l.name.clone())
                .unwrap_or_default(),
            winner: self.packages[winner as usize].label(),
            loser: self.packages[loser as usize].label(),
        });
    }

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
            Node::Union(d) => d as u64 + 1,
            Node::Pkg { pkg, entry } => {
                ((self.packages[pkg as usize].slot as u64 + 1) << 32) | entry as u64
            }
        }
    }

    /// The node of an inode number.
    pub fn node(&self, ino: u64) -> Result<Node> {
        if ino == 0 {
            return Err(Error::Stale(ino));
        }
        if ino < 1 << 32 {
            let d = ino - 1;
            return if (d as usize) < self.dirs.len() {
                Ok(Node::Union(d as u32))
            } else {
                Err(Error::Stale(ino))
            };
        }
        let slot = ((ino >> 32) - 1) as u32;
        let entry = (ino & 0xffff_ffff) as EntryId;
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
        match e {
            format::Error::NoEntry(_) => Error::NotFound,
            format::Error::WrongKind {
                wanted: "directory",
                ..
            } => Error::NotDir,
            format::Error::WrongKind {
                wanted: "symlink", ..
            } => Error::NotSymlink,
            format::Error::WrongKind { .. } => Error::IsDir,
            e => Error::Archive {
                package: self.packages[pkg as usize].label(),
                source: e,
            },
        }
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
            Node::Pkg { pkg, entry } => {
                let a = self.pkg_attr(pkg, entry)?;
                let mut perm = a.perm;
                if self
                    .layers
                    .get(self.packages[pkg as usize].layer)
                    .is_none_or(|l| l.nosuid)
                {
                    perm &= !0o6000;
                }
                Ok(NodeAttr {
                    ino,
                    kind: a.kind,
                    perm,
                    nlink: a.nlink,
                    size: a.size,
                    mtime: a.mtime,
                    mtime_nsec: a.mtime_nsec,
                })
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
                slice
                    .binary_search_by(|e| self.entry_name(e).cmp(name))
                    .map(|i| slice[i].target)
                    .map_err(|_| Error::NotFound)
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
            Node::Pkg { pkg, entry } => self.packages[pkg as usize]
                .archive
                .read_link(entry)
                .map_err(|e| self.archive_err(pkg, e)),
        }
    }

    /// Extended attributes of a node, sorted by name.
    pub fn xattrs(&self, node: Node) -> Result<Vec<(&[u8], &[u8])>> {
        let (pkg, entry) = match node {
            Node::Union(d) => match self.dirs[d as usize].attr_src {
                Some(src) => src,
                None => return Ok(Vec::new()),
            },
            Node::Pkg { pkg, entry } => (pkg, entry),
        };
        Ok(self.packages[pkg as usize]
            .archive
            .xattrs(entry)
            .map_err(|e| self.archive_err(pkg, e))?
            .collect())
    }

    /// The package and entry of a regular file, for reading.
    pub fn file(&self, node: Node) -> Result<(Arc<Package>, EntryId)> {
        match node {
            Node::Union(_) => Err(Error::IsDir),
            Node::Pkg { pkg, entry } => {
                let a = self.pkg_attr(pkg, entry)?;
                match a.kind {
                    Kind::File => Ok((self.packages[pkg as usize].clone(), entry)),
                    Kind::Dir => Err(Error::IsDir),
                    Kind::Symlink => Err(Error::NotFound),
                }
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

/// True if two entries have the same type, permissions and contents.
pub fn same_content(a: &Archive, ea: EntryId, b: &Archive, eb: EntryId) -> bool {
    let (Ok(x), Ok(y)) = (a.attr(ea), b.attr(eb)) else {
        return false;
    };
    if x.kind != y.kind || x.perm != y.perm || x.size != y.size {
        return false;
    }
    match x.kind {
        Kind::Dir => true,
        Kind::Symlink => a.read_link(ea).ok() == b.read_link(eb).ok(),
        Kind::File => {
            let (Ok(mut ra), Ok(mut rb)) = (a.open_file(ea), b.open_file(eb)) else {
                return false;
            };
            let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            loop {
                let Ok(n) = read_full(&mut ra, &mut ba) else {
                    return false;
                };
                let Ok(m) = read_full(&mut rb, &mut bb) else {
                    return false;
                };
                if n != m || ba[..n] != bb[..m] {
                    return false;
                }
                if n == 0 {
                    return true;
                }
            }
        }
    }
}

fn read_full(
    r: &mut format::archive::reader::FileReader<'_>,
    buf: &mut [u8],
) -> format::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read_next(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}
