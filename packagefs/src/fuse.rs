//! The FUSE adapter: each request loads the current `Arc<View>` once, calls one view method,
//! converts with `From`-style helpers, and replies. Every write-type request gets `EROFS`.
//!
//! Reads go file -> chunk spans -> shared chunk cache (hash checked before decompression) ->
//! bytes. A sequential reader gets the next chunks decompressed ahead of it on the prefetch
//! threads, so decompression overlaps the kernel copying the previous chunk out.
//!
//! Files and directories are opened by the kernel alone (`open` and `opendir` answer ENOSYS
//! once, on kernels that support it): a file read costs a LOOKUP and its READs, no OPEN,
//! FLUSH or RELEASE. With an exec cache (`-o exec_cache=DIR`) and a kernel that offers FUSE
//! passthrough, files are opened by the daemon instead (an OPEN and a RELEASE per open), so
//! that an open of a cached file can be answered with passthrough (`passthrough.rs`). A file open across a generation switch stays readable through the
//! kernel's lookup count (`lookups`); a listing across one, through its offsets (`dir_at`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use format::archive::{EntryId, Kind};
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, info, warn};

use crate::cache::ChunkCache;
use crate::exec_cache::ExecCache;
use crate::lookups::Lookups;
use crate::passthrough::{OpenReply, Passthrough};
use crate::read::{OpenFile, Reader};
use crate::view::{self, Node, NodeAttr, Package, View, ViewSlot};

/// Tunables of the adapter.
#[derive(Debug, Clone)]
pub struct Options {
    /// Entry and attribute timeout handed to the kernel (content never changes under a
    /// path within a generation; switches invalidate explicitly).
    pub ttl: Duration,
    /// How far ahead of a sequential reader to decompress, in bytes.
    pub readahead: u64,
    /// Largest read request to negotiate with the kernel.
    pub max_read: u32,
    /// Prefetch worker threads (0: no prefetching).
    pub prefetch_threads: usize,
    /// Answer getxattr/listxattr. When off, the first request gets ENOSYS, which the
    /// kernel remembers for the whole mount: `ls -l` (which asks for the SELinux label
    /// and the ACLs of every file) then costs no round trip per file, which makes a warm
    /// `ls -lR` about 7 times faster. `None`: on if any package of the first view has an
    /// xattr (a package with xattrs activated later then needs `-o xattrs` or a remount).
    pub xattrs: Option<bool>,
    /// The exec cache whose files are served by passthrough (`-o exec_cache=DIR`).
    pub exec_cache: Option<Arc<ExecCache>>,
}

/// True if an entry of package `p` has an extended attribute.
pub fn package_has_xattrs(p: &Package) -> bool {
    p.archive.xattr_count() > 0
}

/// True if any package of the view has an extended attribute.
pub fn view_has_xattrs(v: &View) -> bool {
    v.packages().iter().any(|p| package_has_xattrs(p))
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: Duration::from_secs(24 * 3600),
            readahead: 2 << 20,
            max_read: 1 << 20,
            prefetch_threads: 2,
            xattrs: None,
            exec_cache: None,
        }
    }
}

/// Bits of a directory offset that hold the position in the listing; the bits above hold
/// the epoch of the view listed.
const POS_BITS: u32 = 64 - view::EPOCH_BITS;

/// The entries of a listing of directory `node` from position `off`, each with the
/// position after it (the offset the kernel sends to go on): "." and ".." (positions 0
/// and 1), then the directory's entries. The one place both listings get them from.
fn listing(
    v: &View,
    node: Node,
    off: u64,
) -> Result<impl Iterator<Item = (u64, &[u8], Node)>, Errno> {
    let dots = [
        (1, &b"."[..], node),
        (2, &b".."[..], v.parent(node).unwrap_or(node)),
    ];
    let entries = v.read_dir(node, off.saturating_sub(2) as usize)?;
    let first = off.max(2);
    Ok(dots.into_iter().skip(off.min(2) as usize).chain(
        entries
            .into_iter()
            .enumerate()
            .map(move |(i, (name, child))| (first + i as u64 + 1, name, child)),
    ))
}

/// The offset of the directory entry at `pos` of a listing of the view of `epoch`.
fn dir_cookie(epoch: u32, pos: u64) -> u64 {
    ((epoch as u64) << POS_BITS) | pos
}

/// The mounted file system.
pub struct PackageFs {
    view: ViewSlot,
    /// The read path: chunk cache, read-ahead, prefetch threads.
    reader: Reader,
    /// Package inodes the kernel holds (it reads files by inode, whatever the view).
    lookups: Lookups,
    opts: Options,
    xattrs: bool,
    /// The kernel opens files (`no_open`) and directories (`no_opendir`) itself after an
    /// ENOSYS (Linux 3.18+ and 5.1+; it says so at INIT). Older kernels get handles that
    /// carry nothing: reads and listings are served by inode and offset either way.
    no_open: bool,
    no_opendir: bool,
    /// Opens served from the exec cache; `None` without one, or when the kernel offers no
    /// passthrough (decided at INIT).
    passthrough: Option<Passthrough>,
}

impl PackageFs {
    /// A file system serving `view`, with a chunk cache of `cache_size` bytes.
    pub fn new(view: View, cache_size: usize, opts: Options) -> PackageFs {
        let xattrs = opts.xattrs.unwrap_or_else(|| view_has_xattrs(&view));
        PackageFs {
            passthrough: opts.exec_cache.clone().map(Passthrough::new),
            xattrs,
            no_open: false,
            no_opendir: false,
            view: ViewSlot::new(view),
            reader: Reader::new(
                cache_size,
                opts.readahead,
                opts.max_read,
                opts.prefetch_threads,
            ),
            lookups: Lookups::default(),
            opts,
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.view.load()
    }

    /// The slot through which the live updater switches views.
    pub fn slot(&self) -> ViewSlot {
        self.view.clone()
    }

    /// Whether extended attributes are answered (see `Options::xattrs`).
    pub fn xattrs(&self) -> bool {
        self.xattrs
    }

    /// What to log of the exec cache when the daemon ends (`None` without one).
    pub fn exec_report(&self) -> Option<crate::passthrough::Report> {
        self.passthrough.as_ref().map(Passthrough::report)
    }

    /// The chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        self.reader.cache()
    }

    /// The view and directory a READDIR(PLUS) at `offset` of directory `ino` lists, its
    /// epoch and the position to list from. Directories are opened by the kernel itself
    /// (see `opendir`), so a listing is identified by its offsets: a listing begun in a
    /// view goes on in it after a switch (as long as that view is among the last few), so
    /// that no entry present in both is skipped or listed twice.
    fn dir_at(&self, ino: u64, offset: u64) -> Result<(Arc<View>, Node, u32, u64), Errno> {
        let pos = offset & ((1 << POS_BITS) - 1);
        let (epoch, v) = match (offset >> POS_BITS) as u32 {
            _ if offset == 0 => self.view.load_epoch(),
            e => match self.view.get(e) {
                Some(v) => (e, v),
                None => self.view.load_epoch(),
            },
        };
        let node = v.node(ino).map_err(|e| Errno::from(&e))?;
        Ok((v, node, epoch, pos))
    }

    fn file_attr(&self, a: &NodeAttr) -> FileAttr {
        let mtime = to_system_time(a.mtime, a.mtime_nsec);
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: file_type(a.kind),
            perm: a.perm as u16,
            nlink: a.nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The file of inode `ino`: in the current view, or held by the kernel after its package
    /// left the view.
    fn file_ref(&self, ino: u64) -> Result<OpenFile, Errno> {
        let v = self.view();
        match v.node(ino).and_then(|n| v.file(n)) {
            Ok(f) => Ok(f),
            Err(e) => match self.lookups.get(ino) {
                // Its package left the view, but the kernel still holds the inode.
                Some((pkg, entry)) => Ok(OpenFile::new(pkg, entry)?),
                None => Err(e.into()),
            },
        }
    }

    /// The kernel was handed inode `ino` (of `node`) in a LOOKUP or READDIRPLUS reply.
    fn handed_out(&self, v: &View, node: Node, ino: u64) {
        if let Node::Pkg { pkg, .. } = node {
            self.lookups.add(ino, v.package(pkg));
        }
    }
}

/// The attributes of a package entry held by the kernel after its package left the view
/// (an open file). Setuid and setgid bits are dropped: its layer's rules are not at hand.
fn held_attr(ino: u64, pkg: &Package, entry: EntryId) -> Option<NodeAttr> {
    let a = pkg.archive.attr(entry).ok()?;
    Some(NodeAttr::of_entry(ino, &a, true))
}

fn to_system_time(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

/// The one place that picks an errno for a view error.
impl From<&view::Error> for Errno {
    fn from(e: &view::Error) -> Errno {
        match e {
            view::Error::NotFound => Errno::ENOENT,
            view::Error::Stale(_) => Errno::ESTALE,
            view::Error::NotDir => Errno::ENOTDIR,
            view::Error::IsDir => Errno::EISDIR,
            view::Error::NotSymlink => Errno::EINVAL,
            // Logged once per chunk where it was found.
            view::Error::BadChunk { .. } => Errno::EIO,
            view::Error::Archive { .. } => {
                warn!("{e}");
                Errno::EIO
            }
        }
    }
}

impl From<view::Error> for Errno {
    fn from(e: view::Error) -> Errno {
        Errno::from(&e)
    }
}

fn xattr_reply(data: &[u8], size: u32, reply: ReplyXattr) {
    match xattr_answer(data, size) {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(d)) => reply.data(d),
        Err(e) => reply.error(e),
    }
}

/// Where a directory listing puts its entries: fuser's reply, or the io_uring transport's
/// buffer. `entry` returns true when the buffer is full (the entry was not added).
pub(crate) trait DirSink {
    /// Adds one entry (with `off`, the offset of the entry after it).
    fn entry(&mut self, ino: u64, off: u64, kind: Kind, name: &[u8]) -> bool;
}

/// Where a READDIRPLUS listing puts its entries (see `DirSink`).
pub(crate) trait DirPlusSink {
    /// Adds one entry with its attributes, valid for `ttl`.
    fn entry(&mut self, off: u64, name: &[u8], ttl: Duration, attr: &NodeAttr) -> bool;
}

impl DirSink for ReplyDirectory {
    fn entry(&mut self, ino: u64, off: u64, kind: Kind, name: &[u8]) -> bool {
        self.add(INodeNo(ino), off, file_type(kind), OsStr::from_bytes(name))
    }
}

/// fuser's READDIRPLUS reply, with the attribute conversion it needs.
struct PlusReply<'a>(&'a PackageFs, ReplyDirectoryPlus);

impl DirPlusSink for PlusReply<'_> {
    fn entry(&mut self, off: u64, name: &[u8], ttl: Duration, a: &NodeAttr) -> bool {
        self.1.add(
            INodeNo(a.ino),
            off,
            OsStr::from_bytes(name),
            &ttl,
            &self.0.file_attr(a),
            Generation(0),
        )
    }
}

/// What a GETXATTR or LISTXATTR answers: the size the caller must allow, or the bytes.
pub(crate) enum Xattr<'a> {
    /// The caller asked for the size only (its buffer size is 0).
    Size(u32),
    /// The value, which fits the caller's buffer.
    Data(&'a [u8]),
}

/// The answer to a GETXATTR or LISTXATTR of `data` into a buffer of `size` bytes.
pub(crate) fn xattr_answer(data: &[u8], size: u32) -> Result<Xattr<'_>, Errno> {
    if size == 0 {
        Ok(Xattr::Size(data.len() as u32))
    } else if data.len() <= size as usize {
        Ok(Xattr::Data(data))
    } else {
        Err(Errno::ERANGE)
    }
}

/// The requests of the file system, answered in domain types: each transport (fuser's
/// `/dev/fuse` session below, the io_uring transport in `uring`) decodes a request, calls
/// one of these and encodes the answer.
impl PackageFs {
    /// Chooses the INIT capabilities out of those the kernel `offered`; decides whether
    /// the kernel opens files and directories itself and whether passthrough is used.
    pub(crate) fn negotiate(&mut self, offered: InitFlags) -> InitFlags {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_SPLICE_WRITE
            | InitFlags::FUSE_SPLICE_MOVE;
        let mut granted = wanted & offered;
        self.no_open = offered.contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        if let Some(pt) = &self.passthrough {
            let dir = pt.cache().path().display().to_string();
            if offered.contains(InitFlags::FUSE_PASSTHROUGH) {
                granted |= InitFlags::FUSE_PASSTHROUGH;
                pt.counters
                    .active
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                // Passthrough is chosen at OPEN: the daemon opens every file.
                self.no_open = false;
                info!("exec cache {dir}: files are opened by the daemon; cached ELF files and files read again and again are served by passthrough");
            } else {
                warn!("exec cache {dir} unused: the kernel offers no FUSE passthrough (Linux 6.9+, CONFIG_FUSE_PASSTHROUGH)");
                self.passthrough = None;
            }
        }
        self.no_opendir = offered.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        info!(
            capabilities = ?granted,
            missing = ?(wanted - granted),
            kernel_opens_files = self.no_open,
            kernel_opens_dirs = self.no_opendir,
            "FUSE session initialised"
        );
        granted
    }

    /// Largest read (and write) request to negotiate.
    pub(crate) fn max_read(&self) -> u32 {
        self.opts.max_read
    }

    /// The entry `name` in directory `parent`: its attributes, or `None` for an absent
    /// name, answered with a negative entry (node id 0): the kernel remembers that the
    /// name is absent for as long as it keeps a positive one, so the misses of library and
    /// unit search paths (ld.so, systemd, $PATH) cost one round trip, not one each time.
    /// A switch that makes the name appear invalidates it (view::diff).
    pub(crate) fn do_lookup(&self, parent: u64, name: &[u8]) -> Result<Option<NodeAttr>, Errno> {
        let v = self.view();
        let r = v
            .node(parent)
            .and_then(|p| v.lookup(p, name))
            .and_then(|n| v.attr(n).map(|a| (n, a)));
        match r {
            Ok((n, a)) => {
                self.handed_out(&v, n, a.ino);
                Ok(Some(a))
            }
            Err(view::Error::NotFound) => Ok(None),
            Err(e) => Err(Errno::from(&e)),
        }
    }

    /// Entry and attribute time to live.
    pub(crate) fn ttl(&self) -> Duration {
        self.opts.ttl
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub(crate) fn do_forget(&self, ino: u64, nlookup: u64) {
        self.lookups.forget(ino, nlookup);
    }

    /// The attributes of `ino` and their time to live.
    pub(crate) fn do_getattr(&self, ino: u64) -> Result<(NodeAttr, Duration), Errno> {
        let v = self.view();
        match v.node(ino).and_then(|n| v.attr(n)) {
            Ok(a) => Ok((a, self.opts.ttl)),
            Err(e) => match self
                .lookups
                .get(ino)
                .and_then(|(p, e)| held_attr(ino, &p, e))
            {
                // A file whose package left the view while the kernel holds it (open).
                Some(a) => Ok((a, Duration::ZERO)),
                None => Err(Errno::from(&e)),
            },
        }
    }

    /// The target of symbolic link `ino`.
    pub(crate) fn do_readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let v = self.view();
        v.node(ino)
            .and_then(|n| v.read_link(n))
            .map(|t| t.to_vec())
            .map_err(|e| Errno::from(&e))
    }

    /// An OPEN without the exec cache (see `open`): ENOSYS where the kernel can open files
    /// itself, else an empty handle: (fh, open flags).
    pub(crate) fn do_open(&self, flags: i32) -> Result<(u64, u32), Errno> {
        // (Never sent for writing: the mount is read-only; kept for the first open.)
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        if self.no_open {
            Err(Errno::ENOSYS)
        } else {
            Ok((0, FopenFlags::FOPEN_KEEP_CACHE.bits()))
        }
    }

    /// An OPEN of file `ino` with `flags`: through the daemon or, with an exec cache that
    /// has the file, by passthrough to a backing file (see `passthrough.rs`).
    pub(crate) fn do_open_file(&self, ino: u64, flags: i32) -> Result<OpenReply, Errno> {
        let Some(pt) = &self.passthrough else {
            return self.do_open(flags).map(|(fh, flags)| OpenReply {
                fh,
                flags,
                backing_id: 0,
            });
        };
        // (Never sent for writing: the mount is read-only.)
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        let f = self.file_ref(ino)?;
        let head = || self.reader.head::<18>(&f);
        Ok(pt.open(ino, &f.pkg, f.entry, f.extent.size(), head))
    }

    /// Keeps (a duplicate of) the connection's `/dev/fuse` descriptor, on which the exec
    /// cache registers its backing files whichever transport serves the mount.
    pub fn set_fuse_dev(&self, fd: &std::os::fd::OwnedFd) {
        if let Some(pt) = &self.passthrough {
            pt.set_fuse_dev(fd);
        }
    }

    /// An OPENDIR (see `opendir`): (fh, open flags).
    pub(crate) fn do_opendir(&self) -> Result<(u64, u32), Errno> {
        if self.no_opendir {
            Err(Errno::ENOSYS)
        } else {
            let flags = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR;
            Ok((0, flags.bits()))
        }
    }

    /// A RELEASE of handle `fh` of `ino`.
    pub(crate) fn do_release(&self, ino: u64, fh: u64) {
        if let Some(pt) = &self.passthrough {
            pt.release(ino, fh);
        }
    }

    /// A READ of `size` bytes at `offset` of `ino` by process `pid`, handed to `sink` span by
    /// span (see `Reader::read_spans`): for the ring, which writes the reply into its own
    /// payload buffer.
    pub(crate) fn do_read_spans(
        &self,
        pid: u32,
        ino: u64,
        offset: u64,
        size: u32,
        sink: impl FnMut(&[u8]),
    ) -> Result<(), Errno> {
        if let Some(pt) = &self.passthrough {
            pt.counters
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let f = self.file_ref(ino)?;
        self.reader
            .read_spans((ino, pid), &f, offset, size, sink)
            .map_err(Errno::from)
    }

    /// A READ of `size` bytes at `offset` of `ino` by process `pid`: `answer` gets the bytes.
    pub(crate) fn do_read(
        &self,
        pid: u32,
        ino: u64,
        offset: u64,
        size: u32,
        answer: impl FnOnce(Result<&[u8], Errno>),
    ) {
        if let Some(pt) = &self.passthrough {
            pt.counters
                .reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match self.file_ref(ino) {
            Ok(f) => self.reader.read((ino, pid), &f, offset, size, |r| {
                answer(r.map_err(Errno::from))
            }),
            Err(e) => answer(Err(e)),
        }
    }

    /// A READDIR of `ino` from `offset` into `sink`.
    pub(crate) fn do_readdir(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut impl DirSink,
    ) -> Result<(), Errno> {
        let (v, node, epoch, off) = self.dir_at(ino, offset)?;
        for (pos, name, child) in listing(&v, node, off)? {
            let kind = v.attr(child).map_or(Kind::File, |a| a.kind);
            if sink.entry(v.ino(child), dir_cookie(epoch, pos), kind, name) {
                break;
            }
        }
        Ok(())
    }

    /// A READDIRPLUS of `ino` from `offset` into `sink`.
    pub(crate) fn do_readdirplus(
        &self,
        ino: u64,
        offset: u64,
        sink: &mut impl DirPlusSink,
    ) -> Result<(), Errno> {
        let (v, node, epoch, off) = self.dir_at(ino, offset)?;
        let ttl = self.opts.ttl;
        for (pos, name, child) in listing(&v, node, off)? {
            let a = match v.attr(child) {
                Ok(a) => a,
                Err(e) => {
                    // (Converted for its log line: an entry the package cannot describe
                    // is left out of the listing.)
                    let _ = Errno::from(&e);
                    continue;
                }
            };
            if sink.entry(dir_cookie(epoch, pos), name, ttl, &a) {
                break;
            }
            // "." and ".." carry attributes too; the kernel adds no lookups for them.
            if pos > 2 {
                self.handed_out(&v, child, a.ino);
            }
        }
        Ok(())
    }

    /// STATFS: (blocks of 4 KiB, files).
    pub(crate) fn do_statfs(&self) -> (u64, u64) {
        let (bytes, files) = self.view().totals();
        (bytes.div_ceil(4096), files)
    }

    /// The value of extended attribute `name` of `ino`.
    pub(crate) fn do_getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        if !self.xattrs {
            return Err(Errno::ENOSYS);
        }
        let v = self.view();
        match v.node(ino).and_then(|n| v.xattrs(n)) {
            Ok(xs) => match xs.iter().find(|(k, _)| *k == name) {
                Some((_, val)) => Ok(val.to_vec()),
                None => Err(Errno::NO_XATTR),
            },
            Err(e) => Err(Errno::from(&e)),
        }
    }

    /// The names of the extended attributes of `ino`, each ending in a NUL byte.
    pub(crate) fn do_listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        if !self.xattrs {
            return Err(Errno::ENOSYS);
        }
        let v = self.view();
        match v.node(ino).and_then(|n| v.xattrs(n)) {
            Ok(xs) => {
                let mut list = Vec::new();
                for (k, _) in xs {
                    list.extend_from_slice(k);
                    list.push(0);
                }
                Ok(list)
            }
            Err(e) => Err(Errno::from(&e)),
        }
    }
}

impl Filesystem for PackageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let granted = self.negotiate(config.capabilities());
        if granted.contains(InitFlags::FUSE_PASSTHROUGH) {
            // Backing files on a file system that is not itself stacked (ext4, xfs,
            // btrfs, tmpfs; not overlayfs), and this mount may be a layer of an overlay.
            let _ = config.set_max_stack_depth(1);
        }
        if let Err(missing) = config.add_capabilities(granted) {
            debug!("kernel refused capabilities {missing:?}");
        }
        let _ = config.set_max_readahead(self.opts.max_read);
        let _ = config.set_max_write(self.opts.max_read);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent.0, name.as_bytes()) {
            Ok(Some(a)) => reply.entry(&self.opts.ttl, &self.file_attr(&a), Generation(0)),
            // A negative entry: see `do_lookup`.
            Ok(None) => {
                let none = FileAttr {
                    ino: INodeNo(0),
                    size: 0,
                    blocks: 0,
                    atime: UNIX_EPOCH,
                    mtime: UNIX_EPOCH,
                    ctime: UNIX_EPOCH,
                    crtime: UNIX_EPOCH,
                    kind: FileType::RegularFile,
                    perm: 0,
                    nlink: 0,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    blksize: 4096,
                    flags: 0,
                };
                reply.entry(&self.opts.ttl, &none, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    // (fuser's default batch_forget calls this for each inode; it cannot be overridden
    // anyway: its argument type is private.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.do_forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.do_getattr(ino.0) {
            Ok((a, ttl)) => reply.attr(&ttl, &self.file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.do_readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    /// Files are opened by the kernel itself: ENOSYS to the first open makes it stop
    /// sending OPEN (and FLUSH and RELEASE) for the rest of the mount, which saves two
    /// round trips per file read. Reads then name the inode; what keeps a file readable
    /// while it is open, across generation switches, is the kernel's lookup count (see
    /// `lookups`). The kernel then keeps cached pages across opens (`FOPEN_KEEP_CACHE`
    /// is its default for this mode), as the content under an inode never changes. A
    /// kernel without zero-message opens gets an empty handle: reads go by inode anyway.
    ///
    /// With an exec cache, the daemon opens files (see `passthrough.rs`).
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open_file(ino.0, flags.0) {
            Ok(o) if o.backing_id != 0 => {
                // SAFETY: the id was registered on this connection's /dev/fuse and stays
                // registered while the open lives (passthrough.rs holds it until the
                // inode's last passthrough RELEASE); `into_raw` keeps fuser from closing it.
                let id = unsafe { reply.wrap_backing(o.backing_id) };
                let flags = FopenFlags::from_bits_retain(o.flags) - FopenFlags::FOPEN_PASSTHROUGH;
                reply.opened_passthrough(FileHandle(o.fh), flags, &id);
                let _ = id.into_raw();
            }
            Ok(o) => reply.opened(FileHandle(o.fh), FopenFlags::from_bits_retain(o.flags)),
            Err(e) => reply.error(e),
        }
    }

    /// Only opens made by the daemon are released (with an exec cache).
    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(ino.0, fh.0);
        reply.ok();
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.do_read(req.pid(), ino.0, offset, size, |r| match r {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(e),
        });
    }

    // flush, fsync and fsyncdir: nothing is ever written, so there is nothing to flush or
    // sync. ENOSYS (rather than success) makes the kernel stop sending them for the rest of
    // the mount and answer success itself, which saves a round trip on every close().
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Directories too are opened by the kernel itself (ENOSYS once: no OPENDIR and
    /// RELEASEDIR round trips, which a warm `du` or `ls -lR` otherwise pays per directory).
    /// The kernel then caches listings (`FOPEN_CACHE_DIR`, its default in that mode) until
    /// a switch invalidates them.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir() {
            Ok((fh, f)) => reply.opened(FileHandle(fh), FopenFlags::from_bits_retain(f)),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.do_readdir(ino.0, offset, &mut reply) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let mut sink = PlusReply(self, reply);
        match self.do_readdirplus(ino.0, offset, &mut sink) {
            Ok(()) => sink.1.ok(),
            Err(e) => sink.1.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (blocks, files) = self.do_statfs();
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.do_getxattr(ino.0, name.as_bytes()) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.do_listxattr(ino.0) {
            Ok(v) => xattr_reply(&v, size, reply),
            Err(e) => reply.error(e),
        }
    }

    /// No file of a package is a device: every ioctl gets ENOTTY, as on any regular file
    /// (`isatty()` of a script run from the view asks TCGETS; fuser's default would log a
    /// warning per call).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: fuser::FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    // ACCESS is never sent: default_permissions is always on (args.rs), so the kernel
    // checks permissions itself from the attributes; fuser's default answers ENOSYS.

    // Everything below would change the tree: a package view is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ii: INodeNo,
        _fi: FileHandle,
        _oi: u64,
        _io: INodeNo,
        _fo: FileHandle,
        _oo: u64,
        _len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_offset_carries_its_epoch_above_the_position() {
        let e = (1 << view::EPOCH_BITS) - 1;
        let c = dir_cookie(e, 5);
        assert_eq!((c >> POS_BITS) as u32, e);
        assert_eq!(c & ((1 << POS_BITS) - 1), 5);
    }
}
