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
//! [`diff`] compares two views and names exactly the kernel cache entries a switch from one
//! to the other must invalidate.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use format::archive::{Archive, Attr, EntryId, Kind};

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// First inode number of the mount's own nodes (below `1 << 32`, above any merged directory).
pub const SPECIAL_INO_BASE: u64 = 0xffff_0000;

/// Inode numbers from here on are package entries: `(slot + 1) << 32 | entry`.
pub const PKG_INO_BASE: u64 = 1 << 32;

/// Inode numbers of merged directories, by path, for the life of the mount: a directory
/// keeps its number across generations, so the kernel's caches stay valid for it.
#[derive(Debug)]
pub struct DirInos {
    by_path: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl Default for DirInos {
    fn default() -> Self {
        DirInos {
            by_path: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }
}

impl DirInos {
    fn get(&mut self, path: &[u8]) -> u64 {
        if path.is_empty() {
            return ROOT_INO;
        }
        if let Some(&i) = self.by_path.get(path) {
            return i;
        }
        let i = self.next;
        // 4 billion distinct merged directories in one mount's life would be needed to run
        // into the special numbers; past that, numbers are reused (still unique per view
        // for all practical purposes).
        self.next = if self.next + 1 >= SPECIAL_INO_BASE {
            ROOT_INO + 1
        } else {
            self.next + 1
        };
        self.by_path.insert(path.to_vec(), i);
        i
    }
}

/// The mount's own entries: each layer's directory, reachable through the mount as a
/// symlink (`/.layers/NAME`; `.layers` is found by name but not listed), and links at the root (`/packages`, `/state` of a layer
/// whose directory is the mount point, as in Haiku). Their names hide package entries.
#[derive(Debug, Clone, Default)]
pub struct Shine {
    /// `(layer name, link target)`: `/.layers/NAME -> TARGET`.
    pub layers: Vec<(String, Vec<u8>)>,
    /// `(name, link target)` at the root.
    pub root: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The name of the directory holding the layers' links.
pub const LAYERS_DIR: &[u8] = b".layers";

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
    /// Inode number of each merged directory, and back.
    dir_ino: Vec<u64>,
    union_by_ino: HashMap<u64, u32>,
    special: Vec<SpecialNode>,
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
    /// Builds the view of `packages` (in any order) stacked in `layers`, with fresh
    /// directory numbers and no shine-through (tests, tools).
    pub fn build(layers: Vec<Layer>, packages: Vec<Arc<Package>>) -> View {
        View::build_with(layers, packages, &mut DirInos::default(), &Shine::default())
    }

    /// Builds the view of `packages` stacked in `layers`, numbering merged directories from
    /// `inos` (shared by every generation of a mount) and adding the `shine` entries.
    pub fn build_with(
        layers: Vec<Layer>,
        mut packages: Vec<Arc<Package>>,
        inos: &mut DirInos,
        shine: &Shine,
    ) -> View {
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
            dir_ino: vec![ROOT_INO],
            union_by_ino: HashMap::from([(ROOT_INO, 0)]),
            special: Vec::new(),
        };
        let reserved = v.add_specials(shine);
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
                if d == 0 && reserved.iter().any(|r| r.as_slice() == top.name) {
                    v.conflicts.push(Conflict {
                        path: String::from_utf8_lossy(top.name).into_owned(),
                        layer: v
                            .layers
                            .get(pkgs[top.pkg as usize].layer)
                            .map(|l| l.name.clone())
                            .unwrap_or_default(),
                        winner: "packagefs (shine-through)".into(),
                        loser: pkgs[top.pkg as usize].label(),
                    });
                    continue;
                }
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
                        v.boundary_parent
                            .insert((top.pkg, top.entry), v.dir_ino[d as usize]);
                        Node::Pkg {
                            pkg: top.pkg,
                            entry: top.entry,
                        }
                    } else {
                        let nd = v.dirs.len() as u32;
                        let ino = inos.get(&child_path);
                        v.dir_ino.push(ino);
                        v.union_by_ino.insert(ino, nd);
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
                        if !format::archive::reader::same_entry(a, top.entry, b, c.entry) {
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
            if d == 0 {
                // The mount's own entries join the root, in name order.
                for (i, sp) in v.special.iter().enumerate() {
                    // `.layers` is found by name but not listed (like ZFS's `.zfs`), so
                    // find, du, tar and diff -r of the mount see the packages only.
                    if sp.parent != Node::Union(0) || sp.name == LAYERS_DIR {
                        continue;
                    }
                    if sp.target.is_none() {
                        subdirs += 1;
                    }
                    let name_off = v.names.len() as u32;
                    v.names.extend_from_slice(&sp.name);
                    v.entries.push(UEntry {
                        name_off,
                        name_len: sp.name.len() as u16,
                        target: Node::Special(i as u32),
                    });
                }
                let names = &v.names;
                let name = |e: &UEntry| {
                    &names[e.name_off as usize..e.name_off as usize + e.name_len as usize]
                };
                v.entries[first as usize..].sort_by(|a, b| name(a).cmp(name(b)));
            }
            let ud = &mut v.dirs[d as usize];
            ud.first = first;
            ud.count = v.entries.len() as u32 - first;
            ud.subdirs = subdirs;
        }
        v
    }

    /// Adds the shine-through nodes; returns the root names they take.
    fn add_specials(&mut self, shine: &Shine) -> Vec<Vec<u8>> {
        let mut reserved = Vec::new();
        if !shine.layers.is_empty() {
            self.special.push(SpecialNode {
                name: LAYERS_DIR.to_vec(),
                target: None,
                parent: Node::Union(0),
                children: Vec::new(),
            });
            reserved.push(LAYERS_DIR.to_vec());
            let mut kids: Vec<(Vec<u8>, Vec<u8>)> = shine
                .layers
                .iter()
                .map(|(n, t)| (n.as_bytes().to_vec(), t.clone()))
                .collect();
            kids.sort();
            kids.dedup_by(|a, b| a.0 == b.0);
            for (name, target) in kids {
                let i = self.special.len() as u32;
                self.special.push(SpecialNode {
                    name,
                    target: Some(target),
                    parent: Node::Special(0),
                    children: Vec::new(),
                });
                self.special[0].children.push(i);
            }
        }
        for (name, target) in &shine.root {
            if name.is_empty() || reserved.contains(name) || name.contains(&b'/') {
                continue;
            }
            reserved.push(name.clone());
            self.special.push(SpecialNode {
                name: name.clone(),
                target: Some(target.clone()),
                parent: Node::Union(0),
                children: Vec::new(),
            });
        }
        reserved
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
            Node::Union(d) => self.dir_ino[d as usize],
            Node::Special(i) => SPECIAL_INO_BASE + i as u64,
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

    /// The package and entry of a regular file, for reading.
    pub fn file(&self, node: Node) -> Result<(Arc<Package>, EntryId)> {
        match node {
            Node::Union(_) => Err(Error::IsDir),
            Node::Special(i) => match self.special[i as usize].target {
                None => Err(Error::IsDir),
                Some(_) => Err(Error::NotFound),
            },
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

/// A kernel cache entry a generation switch must drop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inval {
    /// The name in the directory (positive or negative dentry) now resolves differently.
    Entry {
        /// The directory's inode.
        parent: u64,
        /// The name.
        name: Vec<u8>,
    },
    /// The directory's listing or attributes changed.
    Inode(u64),
}

/// What a switch from `old` to `new` must invalidate: every name that resolves to a
/// different inode (or appeared, or vanished) and every directory whose listing changed.
/// Subtrees served by the same package entry in both views are identical and skipped, so
/// the work is proportional to the merged directories, not to the packages' contents.
pub fn diff(old: &View, new: &View) -> Vec<Inval> {
    let mut out = Vec::new();
    let mut stack = vec![(Node::Union(0), Node::Union(0))];
    while let Some((a, b)) = stack.pop() {
        let ino = old.ino(a);
        if let (Node::Pkg { .. }, Node::Pkg { .. }) = (a, b) {
            if ino == new.ino(b) {
                continue;
            }
        }
        let (Ok(xs), Ok(ys)) = (old.read_dir(a, 0), new.read_dir(b, 0)) else {
            out.push(Inval::Inode(ino));
            continue;
        };
        let mut changed = old.attr(a).ok() != new.attr(b).ok();
        let (mut i, mut j) = (0, 0);
        while i < xs.len() || j < ys.len() {
            let ord = match (xs.get(i), ys.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(y.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    out.push(Inval::Entry {
                        parent: ino,
                        name: xs[i].0.to_vec(),
                    });
                    changed = true;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(Inval::Entry {
                        parent: ino,
                        name: ys[j].0.to_vec(),
                    });
                    changed = true;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (xs[i].1, ys[j].1);
                    if old.ino(x) != new.ino(y) {
                        out.push(Inval::Entry {
                            parent: ino,
                            name: xs[i].0.to_vec(),
                        });
                        changed = true;
                    } else if matches!(x, Node::Union(_) | Node::Special(_))
                        || matches!(y, Node::Union(_) | Node::Special(_))
                    {
                        stack.push((x, y));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        if changed {
            out.push(Inval::Inode(ino));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use format::archive::tree::Meta;
    use format::archive::writer::write_archive;
    use format::archive::{BuildOptions, Content, Tree};
    use format::manifest::Manifest;
    use std::collections::HashSet;

    /// A package description: (path, what) where what is `f:CONTENT`, `d`, `l:TARGET`,
    /// `s:CONTENT` (a setuid file) or `h:OTHER` (hard link to OTHER).
    pub(crate) struct Spec<'a> {
        pub(crate) name: &'a str,
        pub(crate) version: &'a str,
        pub(crate) layer: usize,
        pub(crate) entries: &'a [(&'a str, &'a str)],
    }

    pub(crate) fn make(dir: &std::path::Path, slot: u32, s: &Spec<'_>) -> Arc<Package> {
        let mut t = Tree::new();
        let meta = Meta::new(0o644, 1_700_000_000);
        for (path, what) in s.entries {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (t.ensure_dir(p.as_bytes(), Meta::new(0o755, 1)).unwrap(), n),
                None => (t.root(), *path),
            };
            let (kind, arg) = what.split_at(1);
            let arg = arg.strip_prefix(':').unwrap_or(arg);
            match kind {
                "f" | "s" => {
                    let b: Arc<[u8]> = Arc::from(arg.as_bytes());
                    let perm = if kind == "s" { 0o4755 } else { 0o644 };
                    t.add_file(
                        parent,
                        name.as_bytes(),
                        Content::Bytes(b),
                        arg.len() as u64,
                        Meta::new(perm, 1_700_000_000),
                    )
                    .unwrap();
                }
                "d" => {
                    t.ensure_dir(path.as_bytes(), Meta::new(0o755, 2)).unwrap();
                }
                "l" => {
                    t.add_symlink(parent, name.as_bytes(), arg.as_bytes(), meta)
                        .unwrap();
                }
                "h" => {
                    let other = t.lookup(arg.as_bytes()).unwrap();
                    t.add_hardlink(parent, name.as_bytes(), other).unwrap();
                }
                _ => panic!("bad spec {what}"),
            }
        }
        let m = Manifest::from_json(
            format!(r#"{{"name":"{}","version":"{}"}}"#, s.name, s.version).as_bytes(),
        )
        .unwrap();
        let out = dir.join(format!("{}-{}-{}.hpkg", s.name, s.version, s.layer));
        write_archive(&t, &m, None, &BuildOptions::default(), &out, &|_, _| {}).unwrap();
        Arc::new(Package {
            slot,
            layer: s.layer,
            path: out.clone(),
            archive: Arc::new(Archive::open(&out).unwrap()),
        })
    }

    fn view(specs: &[Spec<'_>]) -> (tempfile::TempDir, View) {
        let dir = tempfile::tempdir().unwrap();
        let pkgs = specs
            .iter()
            .enumerate()
            .map(|(i, s)| make(dir.path(), i as u32, s))
            .collect();
        let layers = vec![
            Layer::new("system"),
            Layer::new("common"),
            Layer::new("user"),
        ];
        (dir, View::build(layers, pkgs))
    }

    fn read(v: &View, path: &str) -> String {
        let n = v.lookup_path(path.as_bytes()).unwrap();
        let (p, e) = v.file(n).unwrap();
        let size = p.archive.attr(e).unwrap().size as usize;
        let mut buf = vec![0; size];
        p.archive.read_at(e, 0, &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn names(v: &View, path: &str) -> Vec<String> {
        let n = v.lookup_path(path.as_bytes()).unwrap();
        v.read_dir(n, 0)
            .unwrap()
            .into_iter()
            .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
            .collect()
    }

    /// Every (path, ino) of the view, depth first.
    fn walk(v: &View) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), Node::Union(0))];
        while let Some((path, n)) = stack.pop() {
            for (name, child) in v.read_dir(n, 0).unwrap() {
                let p = format!("{path}/{}", String::from_utf8_lossy(name));
                out.push((p.clone(), v.ino(child)));
                if v.attr(child).unwrap().kind == Kind::Dir {
                    stack.push((p, child));
                }
            }
        }
        out
    }

    #[test]
    fn higher_layer_hides_lower_and_directories_merge() {
        let (_d, v) = view(&[
            Spec {
                name: "base",
                version: "1.0.0",
                layer: 0,
                entries: &[
                    ("etc/conf", "f:system"),
                    ("share/a", "f:A"),
                    ("opt", "d"),
                    ("bin/tool", "f:dir-in-system"),
                ],
            },
            Spec {
                name: "mine",
                version: "1.0.0",
                layer: 2,
                entries: &[
                    ("etc/conf", "f:user"),
                    ("share/b", "f:B"),
                    ("opt", "f:file-over-dir"),
                    ("bin", "d"),
                ],
            },
        ]);
        assert_eq!(read(&v, "etc/conf"), "user");
        assert_eq!(names(&v, "share"), ["a", "b"]);
        assert_eq!(read(&v, "opt"), "file-over-dir");
        assert_eq!(names(&v, ""), ["bin", "etc", "opt", "share"]);
        // a directory merges with a lower directory, so bin/tool stays visible
        assert_eq!(read(&v, "bin/tool"), "dir-in-system");
        assert!(v.conflicts().is_empty());
    }

    #[test]
    fn upper_file_hides_lower_directory_and_everything_below() {
        let (_d, v) = view(&[
            Spec {
                name: "base",
                version: "1.0.0",
                layer: 0,
                entries: &[("lib/x/y", "f:deep")],
            },
            Spec {
                name: "top",
                version: "1.0.0",
                layer: 1,
                entries: &[("lib/x", "l:elsewhere")],
            },
        ]);
        let n = v.lookup_path(b"lib/x").unwrap();
        assert_eq!(v.read_link(n).unwrap(), b"elsewhere");
        assert!(matches!(v.lookup_path(b"lib/x/y"), Err(Error::NotDir)));
    }

    #[test]
    fn same_layer_clash_first_package_wins_and_is_reported() {
        let (_d, v) = view(&[
            Spec {
                name: "zeta",
                version: "1.0.0",
                layer: 0,
                entries: &[("bin/x", "f:from-zeta"), ("doc/same", "f:identical")],
            },
            Spec {
                name: "alpha",
                version: "1.0.0",
                layer: 0,
                entries: &[("bin/x", "f:from-alpha"), ("doc/same", "f:identical")],
            },
        ]);
        assert_eq!(read(&v, "bin/x"), "from-alpha");
        assert_eq!(v.conflicts().len(), 1, "{:?}", v.conflicts());
        let c = &v.conflicts()[0];
        assert_eq!(
            (c.path.as_str(), c.winner.as_str(), c.loser.as_str()),
            ("bin/x", "alpha-1.0.0", "zeta-1.0.0")
        );
        assert_eq!(c.layer, "system");
    }

    #[test]
    fn inode_numbers_are_unique_except_hard_links() {
        let (_d, v) = view(&[
            Spec {
                name: "a",
                version: "1.0.0",
                layer: 0,
                entries: &[
                    ("usr/bin/a", "f:1"),
                    ("usr/bin/a2", "h:usr/bin/a"),
                    ("usr/share/a/doc", "f:2"),
                ],
            },
            Spec {
                name: "b",
                version: "1.0.0",
                layer: 0,
                entries: &[("usr/bin/b", "f:3"), ("usr/share/b/doc", "f:4")],
            },
            Spec {
                name: "c",
                version: "2.0.0",
                layer: 2,
                entries: &[("usr/bin/c", "f:5"), ("usr/lib/c.so", "f:6")],
            },
        ]);
        let all = walk(&v);
        let mut seen = HashSet::new();
        let mut dups: Vec<&String> = Vec::new();
        for (p, ino) in &all {
            if !seen.insert(*ino) {
                dups.push(p);
            }
        }
        assert_eq!(
            dups,
            [&"/usr/bin/a2".to_string()],
            "only the hard link repeats an inode"
        );
        let a = v.attr(v.lookup_path(b"usr/bin/a").unwrap()).unwrap();
        assert_eq!(a.nlink, 2);
        // every inode number resolves back to its node
        for (p, ino) in &all {
            let n = v.node(*ino).unwrap();
            assert_eq!(v.ino(n), *ino, "{p}");
        }
        assert!(v.node(999_999).is_err());
        assert!(v.node(0).is_err());
        // usr and usr/bin and usr/share are merged; usr/lib, usr/share/a are not
        assert_eq!(v.merged_dirs(), 4);
    }

    #[test]
    fn setuid_survives_only_in_the_system_layer() {
        let (_d, v) = view(&[
            Spec {
                name: "sys",
                version: "1.0.0",
                layer: 0,
                entries: &[("bin/su", "s:x")],
            },
            Spec {
                name: "usr",
                version: "1.0.0",
                layer: 2,
                entries: &[("bin/evil", "s:x")],
            },
        ]);
        let su = v.attr(v.lookup_path(b"bin/su").unwrap()).unwrap();
        let evil = v.attr(v.lookup_path(b"bin/evil").unwrap()).unwrap();
        assert_eq!(su.perm, 0o4755);
        assert_eq!(evil.perm, 0o755);
    }

    #[test]
    fn directories_know_their_parents_across_the_merge_boundary() {
        let (_d, v) = view(&[
            Spec {
                name: "a",
                version: "1.0.0",
                layer: 0,
                entries: &[("usr/share/a/x", "f:1")],
            },
            Spec {
                name: "b",
                version: "1.0.0",
                layer: 0,
                entries: &[("usr/share/b/y", "f:2")],
            },
        ]);
        let share = v.lookup_path(b"usr/share").unwrap();
        let a = v.lookup_path(b"usr/share/a").unwrap();
        assert!(matches!(share, Node::Union(_)));
        assert!(matches!(a, Node::Pkg { .. }));
        assert_eq!(v.parent(a).unwrap(), share);
        assert_eq!(v.parent(Node::Union(0)).unwrap(), Node::Union(0));
        let usr = v.lookup_path(b"usr").unwrap();
        assert_eq!(v.parent(share).unwrap(), usr);
        assert_eq!(v.attr(share).unwrap().nlink, 4);
    }

    #[test]
    fn read_dir_resumes_at_any_offset_and_agrees_with_lookup() {
        let entries: Vec<(String, String)> = (0..50)
            .map(|i| (format!("d/f{i:02}"), format!("f:{i}")))
            .collect();
        let e2: Vec<(&str, &str)> = entries
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (_d, v) = view(&[
            Spec {
                name: "one",
                version: "1.0.0",
                layer: 0,
                entries: &e2[..25],
            },
            Spec {
                name: "two",
                version: "1.0.0",
                layer: 1,
                entries: &e2[25..],
            },
        ]);
        let d = v.lookup_path(b"d").unwrap();
        let all = v.read_dir(d, 0).unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(v.dir_len(d).unwrap(), 50);
        for start in [0, 1, 24, 25, 49, 50, 51] {
            let part = v.read_dir(d, start).unwrap();
            assert_eq!(part.len(), 50usize.saturating_sub(start));
            if let Some((name, node)) = part.first() {
                assert_eq!(v.lookup(d, name).unwrap(), *node);
            }
        }
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        // a package directory resumes the same way
        let (_d2, v2) = view(&[Spec {
            name: "one",
            version: "1.0.0",
            layer: 0,
            entries: &e2,
        }]);
        let d2 = v2.lookup_path(b"d").unwrap();
        assert!(matches!(d2, Node::Pkg { .. }));
        assert_eq!(v2.read_dir(d2, 10).unwrap().len(), 40);
        assert_eq!(v2.read_dir(d2, 60).unwrap().len(), 0);
        assert_eq!(
            v2.merged_dirs(),
            1,
            "a single package needs only the root merged"
        );
    }

    #[test]
    fn an_empty_view_is_an_empty_root() {
        let (_d, v) = view(&[]);
        assert_eq!(v.read_dir(Node::Union(0), 0).unwrap().len(), 0);
        let a = v.attr(Node::Union(0)).unwrap();
        assert_eq!((a.ino, a.kind, a.nlink), (ROOT_INO, Kind::Dir, 2));
        assert!(matches!(v.lookup_path(b"x"), Err(Error::NotFound)));
    }

    fn layers3() -> Vec<Layer> {
        vec![
            Layer::new("system"),
            Layer::new("common"),
            Layer::new("user"),
        ]
    }

    fn ino_of(v: &View, path: &str) -> u64 {
        v.ino(v.lookup_path(path.as_bytes()).unwrap())
    }

    #[test]
    fn generations_keep_inode_numbers_and_diff_names_exactly_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = make(
            dir.path(),
            0,
            &Spec {
                name: "a",
                version: "1.0.0",
                layer: 0,
                entries: &[("usr/bin/x", "f:x"), ("usr/share/a", "f:a")],
            },
        );
        let b = make(
            dir.path(),
            1,
            &Spec {
                name: "b",
                version: "1.0.0",
                layer: 0,
                entries: &[("usr/bin/y", "f:y")],
            },
        );
        let c = make(
            dir.path(),
            2,
            &Spec {
                name: "c",
                version: "1.0.0",
                layer: 0,
                entries: &[("usr/lib/z", "f:z")],
            },
        );
        let mut inos = DirInos::default();
        let sh = Shine::default();
        let v1 = View::build_with(layers3(), vec![a.clone()], &mut inos, &sh);
        let v2 = View::build_with(layers3(), vec![a.clone(), b.clone()], &mut inos, &sh);
        let v3 = View::build_with(layers3(), vec![a.clone(), b.clone(), c], &mut inos, &sh);
        let v4 = View::build_with(layers3(), vec![a.clone(), b.clone()], &mut inos, &sh);

        // a's files keep their numbers in every generation
        for v in [&v2, &v3, &v4] {
            assert_eq!(ino_of(v, "usr/bin/x"), ino_of(&v1, "usr/bin/x"));
            assert_eq!(ino_of(v, "usr/share/a"), ino_of(&v1, "usr/share/a"));
        }
        // a merged directory keeps its number by path, across generations
        assert_eq!(ino_of(&v2, "usr"), ino_of(&v3, "usr"));
        assert_eq!(ino_of(&v2, "usr/bin"), ino_of(&v4, "usr/bin"));
        assert_ne!(
            ino_of(&v1, "usr"),
            ino_of(&v2, "usr"),
            "package dir -> merged"
        );

        // 1 -> 2: /usr became a merged directory: its entry in / is dropped; nothing inside
        // a's tree is touched (the kernel reaches it anew through the new /usr)
        let d12 = diff(&v1, &v2);
        assert_eq!(
            d12,
            [
                Inval::Entry {
                    parent: ROOT_INO,
                    name: b"usr".to_vec()
                },
                Inval::Inode(ROOT_INO)
            ]
        );
        // 2 -> 3: only usr/lib is new
        let usr = ino_of(&v2, "usr");
        assert_eq!(
            diff(&v2, &v3),
            [
                Inval::Entry {
                    parent: usr,
                    name: b"lib".to_vec()
                },
                Inval::Inode(usr)
            ]
        );
        // 3 -> 4: and gone again; the same generation twice differs in nothing
        assert_eq!(diff(&v3, &v4), diff(&v2, &v3));
        assert!(diff(&v2, &v4).is_empty());
        // the old view still serves what it had (a reader of the old generation)
        assert_eq!(read(&v3, "usr/lib/z"), "z");
        assert!(matches!(v4.lookup_path(b"usr/lib"), Err(Error::NotFound)));
    }

    #[test]
    fn shine_through_links_take_their_names_from_packages() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(
            dir.path(),
            0,
            &Spec {
                name: "p",
                version: "1.0.0",
                layer: 0,
                entries: &[("packages/evil", "f:x"), ("usr/x", "f:x")],
            },
        );
        let shine = Shine {
            layers: vec![
                ("user".into(), b"/home/u/pkg".to_vec()),
                ("system".into(), b"/proc/1/fd/3".to_vec()),
            ],
            root: vec![
                (b"packages".to_vec(), b"/proc/1/fd/3/packages".to_vec()),
                (b"state".to_vec(), b"/proc/1/fd/3/state".to_vec()),
            ],
        };
        let v = View::build_with(layers3(), vec![p], &mut DirInos::default(), &shine);
        assert_eq!(
            names(&v, ""),
            ["packages", "state", "usr"],
            ".layers is not listed"
        );
        assert_eq!(names(&v, ".layers"), ["system", "user"]);
        let link = v.lookup_path(b".layers/system").unwrap();
        assert_eq!(v.read_link(link).unwrap(), b"/proc/1/fd/3");
        let a = v.attr(link).unwrap();
        assert_eq!((a.kind, a.size), (Kind::Symlink, 12));
        assert!(a.ino >= SPECIAL_INO_BASE);
        assert_eq!(v.node(a.ino).unwrap(), link);
        assert_eq!(
            v.read_link(v.lookup_path(b"packages").unwrap()).unwrap(),
            b"/proc/1/fd/3/packages"
        );
        assert!(matches!(
            v.lookup_path(b"packages/evil"),
            Err(Error::NotDir)
        ));
        let layers_dir = v.lookup_path(b".layers").unwrap();
        assert_eq!(v.parent(layers_dir).unwrap(), Node::Union(0));
        assert_eq!(v.attr(Node::Union(0)).unwrap().nlink, 3, "usr");
        assert_eq!(v.conflicts().len(), 1);
        assert_eq!(v.conflicts()[0].path, "packages");
        // every node is reached once; inode numbers are unique
        let all = walk(&v);
        let mut inos: Vec<u64> = all.iter().map(|x| x.1).collect();
        inos.sort();
        inos.dedup();
        assert_eq!(inos.len(), all.len());
    }
}
