//! A source tree to be packaged: directories, files, symlinks and hard links, held in memory
//! with file contents referenced by path (or held as bytes). [`Tree::from_dir`] reads one
//! from disk; grafting builds one from a tarball.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
            Content::Path(p) => p.clone(),
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
    pub fn from_dir(dir: &Path) -> Result<Tree> {
        let meta = fs::symlink_metadata(dir).map_err(|e| Error::io(dir, e))?;
        if !meta.is_dir() {
            return Err(Error::Source {
                path: dir.to_owned(),
                reason: "not a directory".into(),
            });
        }
        let mut tree = Tree::new();
        tree.nodes[0].origin = dir.to_owned();
        tree.set_meta(0, meta_of(&meta));
        read_xattrs(&mut tree, 0, dir)?;
        let mut hardlinks: HashMap<(u64, u64), NodeId> = HashMap::new();
        let mut stack: Vec<(PathBuf, NodeId)> = vec![(dir.to_owned(), 0)];
        while let Some((path, id)) = stack.pop() {
            let mut entries = Vec::new();
            for ent in fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
                let ent = ent.map_err(|e| Error::io(&path, e))?;
                entries.push(ent.file_name());
            }
            entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in entries {
                let child = path.join(&name);
                let md = fs::symlink_metadata(&child).map_err(|e| Error::io(&child, e))?;
                let m = meta_of(&md);
                let ft = md.file_type();
                let nb = name.as_bytes();
                let node = if ft.is_dir() {
                    let n = tree.add_dir(id, nb, m)?;
                    tree.nodes[n as usize].origin = child.clone();
                    stack.push((child.clone(), n));
                    n
                } else if ft.is_file() {
                    if md.nlink() > 1 {
                        if let Some(&existing) = hardlinks.get(&(md.dev(), md.ino())) {
                            tree.add_hardlink(id, nb, existing)?;
                            continue;
                        }
                    }
                    let n = tree.add_file(id, nb, Content::Path(child.clone()), md.len(), m)?;
                    if md.nlink() > 1 {
                        hardlinks.insert((md.dev(), md.ino()), n);
                    }
                    n
                } else if ft.is_symlink() {
                    let target = fs::read_link(&child).map_err(|e| Error::io(&child, e))?;
                    let n = tree.add_symlink(id, nb, target.as_os_str().as_bytes(), m)?;
                    tree.nodes[n as usize].origin = child.clone();
                    n
                } else {
                    return Err(Error::Source {
                        path: child,
                        reason: "cannot package a device, fifo or socket".into(),
                    });
                };
                read_xattrs(&mut tree, node, &child)?;
            }
        }
        Ok(tree)
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

fn meta_of(md: &fs::Metadata) -> Meta {
    Meta {
        perm: md.permissions().mode() & 0o7777,
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
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
