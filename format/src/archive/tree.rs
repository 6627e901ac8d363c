//! A source tree to be packaged: directories, files, symlinks and hard links, held in memory
//! with file contents referenced by path (or held as bytes). [`Tree::from_dir`] reads one
//! from disk; grafting builds one from a tarball.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{check_name, TARGET_MAX};
use crate::error::{Error, Result};

/// Index of a node in a [`Tree`]; the root directory is node 0.
pub type NodeId = u32;

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// Read from this path at build time.
    Path(PathBuf),
    /// Read from this path at build time, which must still be the file a walk of a tree
    /// met (device and inode): opened without following a link and without waiting, so a
    /// tree changed behind the build's back fails it rather than packaging another file.
    Walked {
        /// The path.
        path: PathBuf,
        /// The file's device, when walked.
        dev: u64,
        /// The file's inode, when walked.
        ino: u64,
    },
    /// These bytes.
    Bytes(Arc<[u8]>),
}

#[derive(Debug, Clone)]
pub(crate) enum NodeKind {
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File { content: Content, size: u64 },
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: NodeKind,
    /// Permission bits (including setuid, setgid, sticky).
    pub perm: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// For messages: where the node came from.
    pub origin: PathBuf,
}

/// A tree of nodes to package.
#[derive(Debug, Clone)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// Attributes of a new node.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Permission bits (0o7777 are kept).
    pub perm: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds.
    pub mtime_nsec: u32,
}

impl Meta {
    /// Permissions and mtime (whole seconds).
    pub fn new(perm: u32, mtime: i64) -> Meta {
        Meta {
            perm: perm & 0o7777,
            mtime,
            mtime_nsec: 0,
        }
    }
}

impl Tree {
    /// A tree holding only an empty root directory (mode 0755, mtime 0).
    pub fn new() -> Tree {
        Tree {
            nodes: vec![Node {
                kind: NodeKind::Dir(BTreeMap::new()),
                perm: 0o755,
                mtime: 0,
                mtime_nsec: 0,
                xattrs: BTreeMap::new(),
                origin: PathBuf::from("/"),
            }],
        }
    }

    /// The root directory.
    pub fn root(&self) -> NodeId {
        0
    }

    /// Number of nodes (each hard-linked file counts once).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if the tree holds only the root.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Sets the attributes of a node.
    pub fn set_meta(&mut self, node: NodeId, meta: Meta) {
        let n = &mut self.nodes[node as usize];
        n.perm = meta.perm & 0o7777;
        n.mtime = meta.mtime;
        n.mtime_nsec = meta.mtime_nsec;
    }

    /// Sets an extended attribute (name must contain a namespace prefix like `user.`).
    pub fn set_xattr(&mut self, node: NodeId, name: &[u8], value: &[u8]) -> Result<()> {
        let origin = self.nodes[node as usize].origin.clone();
        if name.is_empty() || name.len() > 255 || name.contains(&0) || !name.contains(&b'.') {
            return Err(Error::Source {
                path: origin,
                reason: format!("invalid xattr name {:?}", String::from_utf8_lossy(name)),
            });
        }
        if value.len() > super::toc::XATTR_VALUE_MAX {
            return Err(Error::Source {
                path: origin,
                reason: "xattr value longer than 64 KiB".into(),
            });
        }
        self.nodes[node as usize]
            .xattrs
            .insert(name.to_vec(), value.to_vec());
        Ok(())
    }

    fn add(&mut self, parent: NodeId, name: &[u8], node: Node) -> Result<NodeId> {
        let id = self.nodes.len() as NodeId;
        self.link_node(parent, name, id, &node.origin)?;
        self.nodes.push(node);
        Ok(id)
    }

    fn link_node(&mut self, parent: NodeId, name: &[u8], id: NodeId, origin: &Path) -> Result<()> {
        check_name(name).map_err(|r| Error::Source {
            path: origin.to_owned(),
            reason: format!(
                "cannot package name {:?}: {r}",
                String::from_utf8_lossy(name)
            ),
        })?;
        let pnode = self
            .nodes
            .get_mut(parent as usize)
            .ok_or(Error::NoEntry(parent))?;
        match &mut pnode.kind {
            NodeKind::Dir(children) => {
                if children.contains_key(name) {
                    return Err(Error::Source {
                        path: origin.to_owned(),
                        reason: "an entry of that name already exists".into(),
                    });
                }
                children.insert(name.to_vec(), id);
                Ok(())
            }
            _ => Err(Error::Source {
                path: origin.to_owned(),
                reason: "parent is not a directory".into(),
            }),
        }
    }

    /// Adds an empty directory.
    pub fn add_dir(&mut self, parent: NodeId, name: &[u8], meta: Meta) -> Result<NodeId> {
        let origin = self.child_origin(parent, name);
        self.add(
            parent,
            name,
            node(NodeKind::Dir(BTreeMap::new()), meta, origin),
        )
    }

    /// Adds a regular file of `size` bytes.
    pub fn add_file(
        &mut self,
        parent: NodeId,
        name: &[u8],
        content: Content,
        size: u64,
        meta: Meta,
    ) -> Result<NodeId> {
        let origin = match &content {
            Content::Path(p) | Content::Walked { path: p, .. } => p.clone(),
            Content::Bytes(_) => self.child_origin(parent, name),
        };
        if let Content::Bytes(b) = &content {
            if b.len() as u64 != size {
                return Err(Error::Source {
                    path: origin,
                    reason: "content length differs from the file size".into(),
                });
            }
        }
        self.add(
            parent,
            name,
            node(NodeKind::File { content, size }, meta, origin),
        )
    }

    /// Adds a symbolic link.
    pub fn add_symlink(
        &mut self,
        parent: NodeId,
        name: &[u8],
        target: &[u8],
        meta: Meta,
    ) -> Result<NodeId> {
        let origin = self.child_origin(parent, name);
        if target.is_empty() || target.len() > TARGET_MAX || target.contains(&0) {
            return Err(Error::Source {
                path: origin,
                reason: "symlink target is empty, longer than 4095 bytes or contains NUL".into(),
            });
        }
        self.add(
            parent,
            name,
            node(NodeKind::Symlink(target.to_vec()), meta, origin),
        )
    }

    /// Adds another name (a hard link) for an existing file or symlink.
    pub fn add_hardlink(&mut self, parent: NodeId, name: &[u8], existing: NodeId) -> Result<()> {
        let origin = self.child_origin(parent, name);
        match self.nodes.get(existing as usize).map(|n| &n.kind) {
            Some(NodeKind::File { .. }) | Some(NodeKind::Symlink(_)) => {}
            _ => {
                return Err(Error::Source {
                    path: origin,
                    reason: "hard link to a directory or to nothing".into(),
                })
            }
        }
        self.link_node(parent, name, existing, &origin)
    }

    /// Finds a node by a relative path (`a/b/c`); empty path or `.` is the root.
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = 0;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            match &self.nodes[cur as usize].kind {
                NodeKind::Dir(ch) => cur = *ch.get(comp)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    /// Returns the directory at `path`, creating missing directories with `meta`.
    pub fn ensure_dir(&mut self, path: &[u8], meta: Meta) -> Result<NodeId> {
        let mut cur = 0;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            let next = match &self.nodes[cur as usize].kind {
                NodeKind::Dir(ch) => ch.get(comp).copied(),
                _ => {
                    return Err(Error::Source {
                        path: PathBuf::from(String::from_utf8_lossy(path).into_owned()),
                        reason: "a path component is not a directory".into(),
                    })
                }
            };
            cur = match next {
                Some(n) => n,
                None => self.add_dir(cur, comp, meta)?,
            };
        }
        if !matches!(self.nodes[cur as usize].kind, NodeKind::Dir(_)) {
            return Err(Error::Source {
                path: PathBuf::from(String::from_utf8_lossy(path).into_owned()),
                reason: "not a directory".into(),
            });
        }
        Ok(cur)
    }

    /// Removes the name `name` from directory `parent` (the node stays allocated but becomes
    /// unreachable, and is not written). Returns whether it existed.
    pub fn unlink(&mut self, parent: NodeId, name: &[u8]) -> bool {
        match self.nodes.get_mut(parent as usize).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(ch)) => ch.remove(name).is_some(),
            _ => false,
        }
    }

    fn child_origin(&self, parent: NodeId, name: &[u8]) -> PathBuf {
        let base = self
            .nodes
            .get(parent as usize)
            .map(|n| n.origin.clone())
            .unwrap_or_default();
        base.join(Path::new(std::ffi::OsStr::from_bytes(name)))
    }

    /// Reads a directory tree from disk: files, directories, symlinks, hard links (stored
    /// once), permission bits, mtimes and extended attributes. Entries are visited in sorted
    /// order. Devices, fifos and sockets cannot be packaged and are an error naming the path.
    ///
    /// The walk goes through descriptors only ([`super::walk`]): a tree another user
    /// changes while `pkgtool build` runs as root cannot make it package a file from
    /// outside the tree; each file is read later by path, and must then still be the file
    /// walked ([`Content::Walked`]).
    pub fn from_dir(dir: &Path) -> Result<Tree> {
        struct Build {
            tree: Tree,
            /// Directories by their path below the root.
            dirs: HashMap<Vec<Vec<u8>>, NodeId>,
            hardlinks: HashMap<(u64, u64), NodeId>,
        }
        impl Build {
            fn parent(&self, rel: &[Vec<u8>]) -> NodeId {
                self.dirs
                    .get(&rel[..rel.len() - 1])
                    .copied()
                    .expect("a directory is visited before its entries")
            }
            fn xattrs(&mut self, n: NodeId, xs: Vec<super::walk::Xattr>) -> Result<()> {
                for (name, value) in xs {
                    self.tree.set_xattr(n, &name, &value)?;
                }
                Ok(())
            }
        }
        fn meta(st: &super::walk::Stat) -> Meta {
            Meta {
                perm: st.perm,
                mtime: st.mtime,
                mtime_nsec: st.mtime_nsec,
            }
        }
        impl super::walk::Visitor for Build {
            type Error = Error;
            fn dir(
                &mut self,
                rel: &[Vec<u8>],
                path: &Path,
                f: &fs::File,
                st: super::walk::Stat,
            ) -> Result<()> {
                let n = if rel.is_empty() {
                    self.tree.nodes[0].origin = path.to_owned();
                    self.tree.set_meta(0, meta(&st));
                    0
                } else {
                    let n = self
                        .tree
                        .add_dir(self.parent(rel), &rel[rel.len() - 1], meta(&st))?;
                    self.tree.nodes[n as usize].origin = path.to_owned();
                    n
                };
                self.dirs.insert(rel.to_vec(), n);
                self.xattrs(n, super::walk::xattrs_of(f, path)?)
            }
            fn file(&mut self, w: super::walk::WalkFile<'_>) -> Result<()> {
                let parent = self.parent(w.rel);
                let name = &w.rel[w.rel.len() - 1];
                let (f, st) = w.open()?;
                if st.nlink > 1 {
                    if let Some(&first) = self.hardlinks.get(&(st.dev, st.ino)) {
                        return self.tree.add_hardlink(parent, name, first);
                    }
                }
                let content = Content::Walked {
                    path: w.path.to_owned(),
                    dev: st.dev,
                    ino: st.ino,
                };
                let n = self
                    .tree
                    .add_file(parent, name, content, st.size, meta(&st))?;
                if st.nlink > 1 {
                    self.hardlinks.insert((st.dev, st.ino), n);
                }
                self.xattrs(n, super::walk::xattrs_of(&f, w.path)?)
            }
            fn symlink(
                &mut self,
                rel: &[Vec<u8>],
                path: &Path,
                target: &[u8],
                st: super::walk::Stat,
            ) -> Result<()> {
                let n = self.tree.add_symlink(
                    self.parent(rel),
                    &rel[rel.len() - 1],
                    target,
                    meta(&st),
                )?;
                self.tree.nodes[n as usize].origin = path.to_owned();
                // (A link's own xattrs, by its path: l*xattr never follows it.)
                read_xattrs(&mut self.tree, n, path)
            }
        }
        let mut b = Build {
            tree: Tree::new(),
            dirs: HashMap::new(),
            hardlinks: HashMap::new(),
        };
        super::walk::walk_dir(dir, &mut b)?;
        Ok(b.tree)
    }
}

fn node(kind: NodeKind, meta: Meta, origin: PathBuf) -> Node {
    Node {
        kind,
        perm: meta.perm & 0o7777,
        mtime: meta.mtime,
        mtime_nsec: meta.mtime_nsec,
        xattrs: BTreeMap::new(),
        origin,
    }
}

fn read_xattrs(tree: &mut Tree, node: NodeId, path: &Path) -> Result<()> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    for name in names {
        let value = match xattr::get(path, &name) {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        tree.set_xattr(node, name.as_bytes(), &value)?;
    }
    Ok(())
}
