//! Building a package [`Tree`] from a tar stream or a directory, checking every entry:
//! no absolute path, no `..`, no link out of the package, no device; directories missing
//! from the input are created; `--prefix` and `--strip-docs` are applied here.
//!
//! Symbolic links: an absolute target (`/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`) is
//! made relative to the link (`../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2`), so that it
//! resolves inside the view wherever it is mounted; a target that would leave the
//! package root, directly or through other links of the package, is an error.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use format::archive::tree::Meta;
use format::archive::walk::{self, Stat};
use format::archive::{Content, NodeId, Tree};

use format::text::escape;

/// The directories `--strip-docs` leaves out, relative to the package root.
pub const STRIPPED_DIRS: [&str; 4] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
];

/// How many bytes of file contents are held in memory before they go to temporary files.
const MEMORY_BUDGET: u64 = 512 << 20;

/// How many symlinks one resolution may follow (as Linux's MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// A path inside the package, as components.
type Comps = Vec<Vec<u8>>;

/// An extended attribute: name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// A path for messages.
fn show(comps: &[Vec<u8>]) -> String {
    if comps.is_empty() {
        return ".".into();
    }
    escape(&comps.join(&b'/'))
}

/// Options of a graft.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Put the input under this directory of the package (components).
    pub prefix: Comps,
    /// Leave out [`STRIPPED_DIRS`].
    pub strip_docs: bool,
}

impl Options {
    /// Parses `--prefix`: a relative path without `..` (`opt/foo`, `/opt/foo` and `./opt`
    /// are accepted and mean the same).
    pub fn parse_prefix(p: &str) -> Result<Comps, String> {
        let mut out = Vec::new();
        for c in p.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(format!("--prefix {p:?} has a `..` component")),
                c if c.len() > 255 => {
                    return Err(format!(
                        "--prefix {p:?} has a component longer than 255 bytes"
                    ))
                }
                c => out.push(c.as_bytes().to_vec()),
            }
        }
        Ok(out)
    }
}

/// Counts of what a graft did with its input.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Entries read from the input.
    pub entries: u64,
    /// Entries `--strip-docs` left out.
    pub stripped: u64,
    /// Bytes of file contents `--strip-docs` left out.
    pub stripped_bytes: u64,
    /// Absolute symlink targets made relative.
    pub relative_links: u64,
    /// Directories created because the input did not list them.
    pub created_dirs: u64,
}

/// What is at a path of the package being built.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// A directory; `true` if the input listed it (else it was created).
    Dir(NodeId, bool),
    File(NodeId),
    /// A symlink, index into `links`.
    Link(usize),
}

#[derive(Debug)]
struct PendingLink {
    at: Comps,
    target: Vec<u8>,
    meta: Meta,
    xattrs: Vec<Xattr>,
}

/// File contents: in memory up to a budget, then in temporary files.
#[derive(Debug)]
struct Spool {
    left: u64,
    dir: Option<tempfile::TempDir>,
    files: u64,
}

impl Spool {
    fn new() -> Spool {
        Spool {
            left: MEMORY_BUDGET,
            dir: None,
            files: 0,
        }
    }

    /// Reads `r` to its end; returns the content and its length.
    fn store(&mut self, r: &mut dyn Read) -> io::Result<(Content, u64)> {
        let mut buf = Vec::new();
        let n = r.take(self.left.saturating_add(1)).read_to_end(&mut buf)? as u64;
        if n <= self.left {
            self.left -= n;
            return Ok((Content::Bytes(Arc::from(buf)), n));
        }
        self.left = 0;
        if self.dir.is_none() {
            self.dir = Some(
                tempfile::Builder::new()
                    .prefix("pkgtool-graft-")
                    .tempdir()?,
            );
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path().to_owned())
            .unwrap_or_default();
        self.files += 1;
        let path = dir.join(self.files.to_string());
        let mut f = fs::File::create(&path)?;
        f.write_all(&buf)?;
        drop(buf);
        let rest = io::copy(r, &mut f)?;
        f.flush()?;
        Ok((Content::Path(path), n + rest))
    }
}

/// A package tree being built from entries, with the graft's rules applied.
pub struct Builder {
    tree: Tree,
    opts: Options,
    spool: Spool,
    slots: HashMap<Comps, Slot>,
    stripped: HashSet<Comps>,
    links: Vec<PendingLink>,
    newest_mtime: i64,
    /// What was done.
    pub stats: Stats,
}

/// A finished tree, with the temporary files its contents may live in (keep it until
/// the package is written).
pub struct Built {
    /// The tree.
    pub tree: Tree,
    /// Counts.
    pub stats: Stats,
    _spool: Option<tempfile::TempDir>,
}

impl Builder {
    /// An empty package tree (holding the prefix directories, if any).
    pub fn new(opts: Options) -> Builder {
        let mut b = Builder {
            tree: Tree::new(),
            opts,
            spool: Spool::new(),
            slots: HashMap::new(),
            stripped: HashSet::new(),
            links: Vec::new(),
            newest_mtime: 0,
            stats: Stats::default(),
        };
        b.slots.insert(Vec::new(), Slot::Dir(0, false));
        b
    }

    /// The package path of an input path (prefix added).
    fn full(&self, rel: &[Vec<u8>]) -> Comps {
        let mut p = self.opts.prefix.clone();
        p.extend(rel.iter().cloned());
        p
    }

    /// Does `--strip-docs` leave out the input path `rel`?
    pub fn strips(&self, rel: &[Vec<u8>]) -> bool {
        self.is_stripped(&self.full(rel))
    }

    fn is_stripped(&self, full: &[Vec<u8>]) -> bool {
        self.opts.strip_docs
            && full.len() >= 3
            && STRIPPED_DIRS.iter().any(|d| {
                d.split('/')
                    .zip(full)
                    .all(|(a, b)| a.as_bytes() == b.as_slice())
            })
    }

    /// Counts an entry; returns its package path, or `None` if `--strip-docs` drops it.
    fn admit(&mut self, rel: &[Vec<u8>], size: u64, mtime: i64) -> Option<Comps> {
        self.stats.entries += 1;
        self.newest_mtime = self.newest_mtime.max(mtime);
        let full = self.full(rel);
        if self.is_stripped(&full) {
            self.stats.stripped += 1;
            self.stats.stripped_bytes += size;
            self.stripped.insert(full);
            return None;
        }
        Some(full)
    }

    /// The directory node at `comps`, creating missing directories.
    fn ensure_dir(&mut self, comps: &[Vec<u8>], mtime: i64) -> Result<NodeId, String> {
        let mut cur: NodeId = 0;
        for i in 0..comps.len() {
            let p = &comps[..=i];
            match self.slots.get(p) {
                Some(Slot::Dir(id, _)) => cur = *id,
                Some(Slot::File(_)) => {
                    return Err(format!("{} is a file, not a directory", show(p)))
                }
                Some(Slot::Link(_)) => {
                    return Err(format!(
                        "{} is a symlink: the archive would write through it",
                        show(p)
                    ))
                }
                None => {
                    let id = self
                        .tree
                        .add_dir(cur, &comps[i], Meta::new(0o755, mtime))
                        .map_err(|e| e.to_string())?;
                    self.slots.insert(p.to_vec(), Slot::Dir(id, false));
                    self.stats.created_dirs += 1;
                    cur = id;
                }
            }
        }
        Ok(cur)
    }

    /// The parent directory node of `full` (created if missing) and the last name; errors
    /// if something is at `full` already.
    fn place(&mut self, full: &[Vec<u8>], mtime: i64) -> Result<(NodeId, Vec<u8>), String> {
        if self.slots.contains_key(full) {
            return Err("appears twice in the archive".into());
        }
        let (name, parent) = full.split_last().expect("not the root");
        let parent = self.ensure_dir(parent, mtime)?;
        Ok((parent, name.clone()))
    }

    /// A directory (the root if `rel` is empty).
    pub fn dir(&mut self, rel: &[Vec<u8>], meta: Meta, xattrs: &[Xattr]) -> Result<(), String> {
        let Some(full) = self.admit(rel, 0, meta.mtime) else {
            return Ok(());
        };
        let id = match self.slots.get(&full).copied() {
            Some(Slot::Dir(id, false)) => id,
            Some(Slot::Dir(_, true)) => return Err("appears twice in the archive".into()),
            Some(_) => return Err("appears twice in the archive (as a directory and not)".into()),
            None => {
                let (parent, name) = self.place(&full, meta.mtime)?;
                self.tree
                    .add_dir(parent, &name, meta)
                    .map_err(|e| e.to_string())?
            }
        };
        self.tree.set_meta(id, meta);
        self.slots.insert(full, Slot::Dir(id, true));
        self.set_xattrs(id, xattrs)
    }

    /// A regular file whose contents are read from `r` to its end; returns its length.
    pub fn file(
        &mut self,
        rel: &[Vec<u8>],
        r: &mut dyn Read,
        meta: Meta,
        xattrs: &[Xattr],
    ) -> Result<u64, String> {
        if rel.is_empty() {
            return Err("the root is not a directory".into());
        }
        let full = self.full(rel);
        if self.is_stripped(&full) {
            // Read past it; only its size is counted.
            let n = io::copy(r, &mut io::sink()).map_err(|e| e.to_string())?;
            self.admit(rel, n, meta.mtime);
            return Ok(n);
        }
        self.admit(rel, 0, meta.mtime);
        let (parent, name) = self.place(&full, meta.mtime)?;
        let (content, size) = self.spool.store(r).map_err(|e| e.to_string())?;
        let id = self
            .tree
            .add_file(parent, &name, content, size, meta)
            .map_err(|e| e.to_string())?;
        self.slots.insert(full, Slot::File(id));
        self.set_xattrs(id, xattrs)?;
        Ok(size)
    }

    /// A symbolic link; its target is checked (and made relative if absolute) when the
    /// tree is finished, once every entry is known.
    pub fn symlink(
        &mut self,
        rel: &[Vec<u8>],
        target: &[u8],
        meta: Meta,
        xattrs: &[Xattr],
    ) -> Result<(), String> {
        if rel.is_empty() {
            return Err("the root is not a directory".into());
        }
        if target.is_empty() || target.len() > format::archive::TARGET_MAX || target.contains(&0) {
            return Err("symlink target is empty, longer than 4095 bytes or contains NUL".into());
        }
        let Some(full) = self.admit(rel, 0, meta.mtime) else {
            return Ok(());
        };
        self.place(&full, meta.mtime)?;
        self.slots
            .insert(full.clone(), Slot::Link(self.links.len()));
        self.links.push(PendingLink {
            at: full,
            target: target.to_vec(),
            meta,
            xattrs: xattrs.to_vec(),
        });
        Ok(())
    }

    /// A hard link to an earlier entry, named by its path in the input.
    pub fn hardlink(&mut self, rel: &[Vec<u8>], target: &[u8]) -> Result<(), String> {
        if rel.is_empty() {
            return Err("the root is not a directory".into());
        }
        let target_rel = input_path(target).map_err(|e| {
            format!(
                "hard link to {}: {e}: it points out of the package",
                escape(target)
            )
        })?;
        let Some(full) = self.admit(rel, 0, 0) else {
            return Ok(());
        };
        let tfull = self.full(&target_rel);
        match self.slots.get(&tfull).copied() {
            Some(Slot::File(id)) => {
                let (parent, name) = self.place(&full, 0)?;
                self.tree
                    .add_hardlink(parent, &name, id)
                    .map_err(|e| e.to_string())?;
                self.slots.insert(full, Slot::File(id));
                Ok(())
            }
            Some(Slot::Link(i)) => {
                // A hard link to a symlink: another symlink with the same target.
                self.place(&full, 0)?;
                let l = &self.links[i];
                let copy = PendingLink {
                    at: full.clone(),
                    target: l.target.clone(),
                    meta: l.meta,
                    xattrs: l.xattrs.clone(),
                };
                self.slots.insert(full, Slot::Link(self.links.len()));
                self.links.push(copy);
                Ok(())
            }
            Some(Slot::Dir(..)) => Err(format!("hard link to the directory {}", show(&target_rel))),
            None if self.stripped.contains(&tfull) => Err(format!(
                "hard link to {}, which --strip-docs leaves out",
                show(&target_rel)
            )),
            None => Err(format!(
                "hard link to {}, which is not an earlier file of the archive",
                show(&target_rel)
            )),
        }
    }

    fn set_xattrs(&mut self, id: NodeId, xattrs: &[Xattr]) -> Result<(), String> {
        for (k, v) in xattrs {
            self.tree.set_xattr(id, k, v).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Checks and adds the symlinks, dates the created directories, and returns the tree.
    /// Errors name the offending link.
    pub fn finish(mut self) -> Result<Built, String> {
        let targets: Vec<Comps> = (0..self.links.len())
            .map(|i| self.relative_target(i))
            .collect::<Result<_, _>>()?;
        let by_path: HashMap<&[Vec<u8>], usize> = self
            .links
            .iter()
            .enumerate()
            .map(|(i, l)| (l.at.as_slice(), i))
            .collect();
        for l in &self.links {
            check_inside(&l.at, &targets, &by_path).map_err(|()| {
                format!(
                    "{}: symlink to {} points out of the package",
                    show(&l.at),
                    escape(&l.target)
                )
            })?;
        }
        let links = std::mem::take(&mut self.links);
        for (l, target) in links.into_iter().zip(targets) {
            let (name, parent) = l.at.split_last().expect("not the root");
            let parent = match self.slots.get(parent) {
                Some(Slot::Dir(id, _)) => *id,
                _ => return Err(format!("{}: parent is not a directory", show(&l.at))),
            };
            let text = if target.is_empty() {
                b".".to_vec()
            } else {
                target.join(&b'/')
            };
            if text != l.target {
                self.stats.relative_links += 1;
            }
            let id = self
                .tree
                .add_symlink(parent, name, &text, l.meta)
                .map_err(|e| format!("{}: {e}", show(&l.at)))?;
            for (k, v) in &l.xattrs {
                self.tree
                    .set_xattr(id, k, v)
                    .map_err(|e| format!("{}: {e}", show(&l.at)))?;
            }
        }
        let created: Vec<NodeId> = self
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Dir(id, false) => Some(*id),
                _ => None,
            })
            .collect();
        for id in created {
            self.tree.set_meta(id, Meta::new(0o755, self.newest_mtime));
        }
        Ok(Built {
            tree: self.tree,
            stats: self.stats,
            _spool: self.spool.dir,
        })
    }

    /// The target of link `i` as written into the package: relative components (an
    /// absolute target rewritten relative to the link's directory).
    fn relative_target(&self, i: usize) -> Result<Comps, String> {
        let l = &self.links[i];
        let parts: Comps = l
            .target
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(<[u8]>::to_vec)
            .collect();
        if !l.target.starts_with(b"/") {
            // Relative: kept as written (`./` and `//` dropped), checked later.
            return Ok(l
                .target
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty())
                .enumerate()
                .filter(|(j, c)| !(*j > 0 && *c == b"."))
                .map(|(_, c)| c.to_vec())
                .collect());
        }
        let dir = &l.at[..l.at.len() - 1];
        let out_of_root = || {
            format!(
                "{}: symlink to {} points out of the package",
                show(&l.at),
                escape(&l.target)
            )
        };
        if parts.iter().any(|c| c == b"..") {
            // Keep the components; climb to the root first. `..` at the root would
            // leave the view once the target is relative.
            let mut depth = 0usize;
            for c in &parts {
                if c == b".." {
                    depth = depth.checked_sub(1).ok_or_else(out_of_root)?;
                } else {
                    depth += 1;
                }
            }
            let mut out: Comps = vec![b"..".to_vec(); dir.len()];
            out.extend(parts);
            return Ok(out);
        }
        let common = dir.iter().zip(&parts).take_while(|(a, b)| a == b).count();
        let mut out: Comps = vec![b"..".to_vec(); dir.len() - common];
        out.extend(parts[common..].iter().cloned());
        Ok(out)
    }
}

/// Does the symlink at `at` (with the relative `targets` of all links, indexed through
/// `by_path`) resolve without climbing above the package root? Links of the package on
/// the way are followed; paths that are not in the package are taken as directories.
fn check_inside(
    at: &[Vec<u8>],
    targets: &[Comps],
    by_path: &HashMap<&[Vec<u8>], usize>,
) -> Result<(), ()> {
    let mut cur: Comps = at[..at.len() - 1].to_vec();
    let mut todo: Vec<Vec<u8>> = targets[by_path[at]].iter().rev().cloned().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_slice() {
            b"." => {}
            b".." => {
                cur.pop().ok_or(())?;
            }
            _ => {
                cur.push(c);
                if let Some(&j) = by_path.get(cur.as_slice()) {
                    hops += 1;
                    if hops > MAX_HOPS {
                        // A loop: it never resolves, so it never leaves the package.
                        return Ok(());
                    }
                    cur.pop();
                    todo.extend(targets[j].iter().rev().cloned());
                }
            }
        }
    }
    Ok(())
}

/// An input path (tar entry name or link target) as components: `./` and empty
/// components dropped; an absolute path or a `..` component is an error.
pub fn input_path(raw: &[u8]) -> Result<Comps, String> {
    if raw.starts_with(b"/") {
        return Err("an absolute path".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a `..` component".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn meta_from_header(h: &tar::Header) -> Result<Meta, String> {
    let mode = h.mode().map_err(|e| format!("bad mode: {e}"))?;
    let mtime = h.mtime().map_err(|e| format!("bad mtime: {e}"))?;
    Ok(Meta::new(
        mode & 0o7777,
        i64::try_from(mtime).unwrap_or(i64::MAX),
    ))
}

/// Reads every entry of a tar stream into `b`. Errors name the entry; a stream or entry
/// that ends early is an error.
pub fn read_tar(r: &mut dyn Read, b: &mut Builder) -> Result<(), String> {
    let mut ar = tar::Archive::new(r);
    let entries = ar.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| tar_error(&e))?;
        let raw = entry.path_bytes().into_owned();
        let at = |e: String| format!("entry {}: {e}", escape(&raw));
        let rel = input_path(&raw).map_err(&at)?;
        let meta = meta_from_header(entry.header()).map_err(&at)?;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| at(e.to_string()))? {
            for ext in exts {
                let ext = ext.map_err(|e| at(e.to_string()))?;
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let want = entry.size();
                let got = b.file(&rel, &mut entry, meta, &xattrs).map_err(|e| {
                    if e.contains("unexpected end of file") || e.contains("failed to fill") {
                        at(format!(
                            "truncated: the archive ends inside this file ({e})"
                        ))
                    } else {
                        at(e)
                    }
                })?;
                if got != want {
                    return Err(at(format!(
                        "truncated: {got} of its {want} bytes are in the archive"
                    )));
                }
            }
            T::Directory => b.dir(&rel, meta, &xattrs).map_err(at)?,
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| at("symlink without a target".into()))?;
                b.symlink(&rel, &target, meta, &xattrs).map_err(at)?
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| at("hard link without a target".into()))?
                    .into_owned();
                b.hardlink(&rel, &target).map_err(at)?
            }
            T::Char | T::Block | T::Fifo => {
                return Err(at("a device or fifo, which a package cannot hold".into()))
            }
            T::XGlobalHeader => {}
            other => {
                return Err(at(format!(
                    "unsupported tar entry type {:?}",
                    other.as_byte() as char
                )))
            }
        }
    }
    Ok(())
}

/// A tar crate error, on one line, with truncation named as such.
pub fn tar_error(e: &io::Error) -> String {
    let s = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof || s.contains("failed to read entire block") {
        format!("truncated tar archive ({s})")
    } else {
        s.replace('\n', " ")
    }
}

/// Reads a directory tree into `b`: modes, mtimes, contents, symlinks, hard links,
/// extended attributes.
///
/// The walk is the project's one directory walker ([`format::archive::walk`]), through
/// descriptors only: a tree somebody else changes while it is read cannot make a file
/// from outside it end up in the package. Contents are read right away from the
/// descriptor the walk opened (into memory, then temporary files, as for tarballs), so
/// nothing is opened by path later.
pub fn read_dir(dir: &Path, b: &mut Builder) -> Result<(), String> {
    struct Into<'b> {
        b: &'b mut Builder,
        /// The first name of each file with more than one link.
        seen: HashMap<(u64, u64), Comps>,
    }
    fn meta(st: &Stat) -> Meta {
        Meta {
            perm: st.perm,
            mtime: st.mtime,
            mtime_nsec: st.mtime_nsec,
        }
    }
    fn at(p: &Path) -> impl Fn(String) -> String + '_ {
        move |e| format!("{}: {e}", p.display())
    }
    impl walk::Visitor for Into<'_> {
        type Error = Msg;
        fn dir(&mut self, rel: &[Vec<u8>], p: &Path, f: &fs::File, st: Stat) -> Result<(), Msg> {
            let xattrs = walk::xattrs_of(f, p)?;
            let r = self.b.dir(rel, meta(&st), &xattrs);
            Ok(if rel.is_empty() { r } else { r.map_err(at(p)) }?)
        }
        fn file(&mut self, w: walk::WalkFile<'_>) -> Result<(), Msg> {
            if self.b.strips(w.rel) {
                // Left out: counted, never opened.
                self.b.stripped_file(w.rel, w.stat.size, w.stat.mtime);
                return Ok(());
            }
            let (mut f, st) = w.open()?;
            if st.nlink > 1 {
                if let Some(first) = self.seen.get(&(st.dev, st.ino)) {
                    let first = first.join(&b'/');
                    return Ok(self.b.hardlink(w.rel, &first).map_err(at(w.path))?);
                }
                self.seen.insert((st.dev, st.ino), w.rel.to_vec());
            }
            let xattrs = walk::xattrs_of(&f, w.path)?;
            self.b
                .file(w.rel, &mut f, meta(&st), &xattrs)
                .map_err(at(w.path))?;
            Ok(())
        }
        fn symlink(
            &mut self,
            rel: &[Vec<u8>],
            p: &Path,
            target: &[u8],
            st: Stat,
        ) -> Result<(), Msg> {
            Ok(self.b.symlink(rel, target, meta(&st), &[]).map_err(at(p))?)
        }
    }
    /// The walk's errors and the builder's, as the builder's one line.
    struct Msg(String);
    impl From<walk::WalkError> for Msg {
        fn from(e: walk::WalkError) -> Msg {
            Msg(e.to_string())
        }
    }
    impl From<String> for Msg {
        fn from(e: String) -> Msg {
            Msg(e)
        }
    }
    walk::walk_dir(
        dir,
        &mut Into {
            b,
            seen: HashMap::new(),
        },
    )
    .map_err(|Msg(e)| e)
}

impl Builder {
    /// Counts a regular file that `--strip-docs` leaves out (see [`Builder::strips`]).
    fn stripped_file(&mut self, rel: &[Vec<u8>], size: u64, mtime: i64) {
        let kept = self.admit(rel, size, mtime);
        debug_assert!(kept.is_none(), "stripped_file on a file that is kept");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> Comps {
        input_path(p.as_bytes()).unwrap()
    }

    fn meta() -> Meta {
        Meta::new(0o644, 1_700_000_000)
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            // set_path refuses `..` and absolute paths: write the raw name.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                h.set_link_name_literal(link).unwrap();
            }
            h.set_cksum();
            t.append(&h, *data).unwrap();
        }
        t.into_inner().unwrap()
    }

    fn build(
        entries: &[(&str, tar::EntryType, &[u8], &str)],
        opts: Options,
    ) -> Result<Built, String> {
        let data = tar_of(entries);
        let mut b = Builder::new(opts);
        read_tar(&mut &data[..], &mut b)?;
        b.finish()
    }

    use tar::EntryType as T;

    #[test]
    fn input_paths() {
        assert_eq!(
            c("./usr/bin/hello"),
            vec![b"usr".to_vec(), b"bin".to_vec(), b"hello".to_vec()]
        );
        assert_eq!(c("./"), Vec::<Vec<u8>>::new());
        assert_eq!(c("a//b/./c/"), c("a/b/c"));
        assert!(input_path(b"/etc/passwd").unwrap_err().contains("absolute"));
        assert!(input_path(b"./a/../../b").unwrap_err().contains(".."));
    }

    #[test]
    fn absolute_symlinks_become_relative() {
        let b = Builder::new(Options::default());
        let mut b = b;
        for (at, target) in [
            (
                "lib64/ld-linux-x86-64.so.2",
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            ),
            ("usr/bin/a", "/usr/bin/b"),
            ("usr/share/doc/x", "/usr/share/doc/y/z"),
            ("top", "/"),
            ("usr/lib/up", "/usr/lib/../share"),
        ] {
            b.symlink(&c(at), target.as_bytes(), meta(), &[]).unwrap();
        }
        let want = [
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "b",
            "y/z",
            ".",
            "../../usr/lib/../share",
        ];
        for (i, w) in want.iter().enumerate() {
            let t = b.relative_target(i).unwrap();
            let text = if t.is_empty() {
                b".".to_vec()
            } else {
                t.join(&b'/')
            };
            assert_eq!(String::from_utf8(text).unwrap(), *w);
        }
        let built = b.finish().unwrap();
        assert_eq!(built.stats.relative_links, 5);
    }

    #[test]
    fn links_out_of_the_package_are_refused() {
        for (at, target) in [
            ("a", ".."),
            ("usr/bin/x", "../../../etc/passwd"),
            ("x", "/../etc/passwd"),
            ("usr/x", "/usr/../../etc"),
        ] {
            let mut b = Builder::new(Options::default());
            let r = b
                .symlink(&c(at), target.as_bytes(), meta(), &[])
                .and_then(|()| b.finish().map(|_| ()));
            let e = r.unwrap_err();
            assert!(
                e.contains("points out of the package"),
                "{at} -> {target}: {e}"
            );
        }
        // Inside: fine, also relative ones that climb and come back.
        let mut b = Builder::new(Options::default());
        b.symlink(&c("usr/bin/x"), b"../../etc/passwd", meta(), &[])
            .unwrap();
        b.symlink(&c("usr/bin/y"), b"./x", meta(), &[]).unwrap();
        b.finish().unwrap();
        // A chain of links that escapes only through another link.
        let mut b = Builder::new(Options::default());
        b.symlink(&c("usr/up"), b"..", meta(), &[]).unwrap();
        b.symlink(&c("usr/l"), b"up/../x", meta(), &[]).unwrap();
        let e = b.finish().err().unwrap();
        assert!(e.starts_with("usr/l: symlink to up/../x points out"), "{e}");
        // With a prefix the root is still the package root.
        let mut b = Builder::new(Options {
            prefix: c("opt/app"),
            strip_docs: false,
        });
        b.symlink(&c("bin/sh"), b"../../../bin/sh", meta(), &[])
            .unwrap();
        b.finish().unwrap();
        // A loop never resolves, so it never leaves.
        let mut b = Builder::new(Options::default());
        b.symlink(&c("a"), b"b", meta(), &[]).unwrap();
        b.symlink(&c("b"), b"a", meta(), &[]).unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn tar_entries_are_checked() {
        let ok = build(
            &[
                ("./", T::Directory, b"", ""),
                ("./usr/bin/hello", T::Regular, b"hi\n", ""),
                ("./usr/bin/hi", T::Link, b"", "./usr/bin/hello"),
                ("./usr/bin/sym", T::Symlink, b"", "hello"),
                ("./usr/share/doc/hello/README", T::Regular, b"doc", ""),
            ],
            Options::default(),
        )
        .unwrap();
        assert_eq!(ok.stats.entries, 5);
        assert_eq!(
            ok.stats.created_dirs, 5,
            "usr usr/bin usr/share usr/share/doc usr/share/doc/hello"
        );
        for (entries, want) in [
            (
                vec![("../x", T::Regular, &b"x"[..], "")],
                "entry ../x: a `..` component",
            ),
            (
                vec![("./a/../../x", T::Regular, b"x", "")],
                "a `..` component",
            ),
            (
                vec![("/etc/passwd", T::Regular, b"x", "")],
                "entry /etc/passwd: an absolute path",
            ),
            (
                vec![("./x", T::Link, b"", "../etc/passwd")],
                "points out of the package",
            ),
            (
                vec![("./x", T::Link, b"", "/etc/passwd")],
                "points out of the package",
            ),
            (
                vec![("./x", T::Link, b"", "./later")],
                "not an earlier file",
            ),
            (
                vec![("./x", T::Symlink, b"", "../etc/passwd")],
                "points out of the package",
            ),
            (vec![("./dev/null", T::Char, b"", "")], "device or fifo"),
            (
                vec![("./x", T::Regular, b"1", ""), ("./x", T::Regular, b"2", "")],
                "appears twice",
            ),
            (
                vec![
                    ("./x", T::Regular, b"1", ""),
                    ("./x/y", T::Regular, b"2", ""),
                ],
                "x is a file",
            ),
            (
                vec![
                    ("./lib", T::Symlink, b"", "usr/lib"),
                    ("./lib/x", T::Regular, b"2", ""),
                ],
                "lib is a symlink",
            ),
        ] {
            let e = build(&entries, Options::default()).err().unwrap();
            assert!(e.contains(want), "{entries:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let data = tar_of(&[("./big", T::Regular, &[7u8; 10_000], "")]);
        for cut in [600, 5000, 10_000] {
            let mut b = Builder::new(Options::default());
            let e = read_tar(&mut &data[..cut], &mut b).unwrap_err();
            assert!(e.contains("truncated"), "cut at {cut}: {e}");
        }
    }

    #[test]
    fn strip_docs_and_prefix() {
        let entries: &[(&str, T, &[u8], &str)] = &[
            ("./usr/bin/hello", T::Regular, b"hi\n", ""),
            ("./usr/share/doc/hello/copyright", T::Regular, b"(c)", ""),
            ("./usr/share/man/man1/hello.1.gz", T::Regular, b"man", ""),
            ("./usr/share/info/hello.info.gz", T::Regular, b"info", ""),
            (
                "./usr/share/locale/de/LC_MESSAGES/hello.mo",
                T::Regular,
                b"mo",
                "",
            ),
            ("./usr/share/doc-base/hello", T::Regular, b"kept", ""),
            ("./usr/share/hello/data", T::Regular, b"kept", ""),
        ];
        let all = build(entries, Options::default()).unwrap();
        assert_eq!(all.stats.stripped, 0);
        let s = build(
            entries,
            Options {
                prefix: Vec::new(),
                strip_docs: true,
            },
        )
        .unwrap();
        assert_eq!(s.stats.stripped, 4);
        assert_eq!(s.stats.stripped_bytes, 3 + 3 + 4 + 2);
        assert!(s.tree.lookup(b"usr/share/doc").is_none());
        assert!(s.tree.lookup(b"usr/share/man").is_none());
        assert!(s.tree.lookup(b"usr/share/doc-base/hello").is_some());
        assert!(s.tree.lookup(b"usr/bin/hello").is_some());
        let p = build(
            entries,
            Options {
                prefix: c("opt/hello"),
                strip_docs: true,
            },
        )
        .unwrap();
        // Stripping applies to package paths: nothing under opt/hello is usr/share/doc.
        assert_eq!(p.stats.stripped, 0);
        assert!(p.tree.lookup(b"opt/hello/usr/bin/hello").is_some());
        // A hard link into a stripped directory cannot be kept.
        let e = build(
            &[
                ("./usr/share/doc/x", T::Regular, b"x", ""),
                ("./usr/bin/x", T::Link, b"", "./usr/share/doc/x"),
            ],
            Options {
                prefix: Vec::new(),
                strip_docs: true,
            },
        )
        .err()
        .unwrap();
        assert!(e.contains("--strip-docs leaves out"), "{e}");
    }

    #[test]
    fn prefixes_parse() {
        assert_eq!(Options::parse_prefix("/opt//foo/").unwrap(), c("opt/foo"));
        assert_eq!(Options::parse_prefix(".").unwrap(), Comps::new());
        assert!(Options::parse_prefix("opt/../..").is_err());
    }
}
