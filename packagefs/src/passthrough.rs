//! Opens served from the exec cache by FUSE passthrough (`-o exec_cache=DIR`): which files
//! qualify, the background fills, and the per-inode state the kernel requires.
//!
//! - **Which files**: ELF executables and shared objects (magic `\x7fELF`, `e_type` EXEC or
//!   DYN; what `execve` and the dynamic loader map), and any file of at least
//!   [`REREAD_MIN`] bytes opened [`REREAD_OPENS`] times in this daemon's life (data read
//!   again and again: a compiler's headers are small and stay in the page cache anyway).
//!   Whether a file is an ELF program is read from its first bytes once per daemon life;
//!   a file of [`FIND_FIRST`] bytes or more is first looked up in the cache, which holds
//!   only files that qualified when they were filled, so that a kept cache serves a
//!   program and its libraries without reading a chunk of any of them.
//! - **Not cached yet**: the open is answered as without the cache (reads go through the
//!   daemon) and the file is queued for the fill thread; it is never waited for.
//! - **Cached**: the object is opened (and hashed whole unless its identity is one its bytes
//!   were hashed under, by this daemon or, as the cache's record says, an earlier one; see
//!   `exec_cache`), registered with the kernel (`FUSE_DEV_IOC_BACKING_OPEN`) and
//!   the open is answered with `FOPEN_PASSTHROUGH`: reads and page faults of that open go
//!   from the kernel to the object and never reach the daemon.
//! - **The kernel's rule**: an inode is open either through the daemon (cached I/O) or by
//!   passthrough to one backing file, never both (a mixed open fails with EIO). So while an
//!   inode has passthrough opens every new open of it is passthrough to the same object,
//!   and while it has opens through the daemon every new open goes through the daemon; the
//!   counts are kept here, from OPEN to RELEASE. The backing registration and the object
//!   (which cannot be evicted meanwhile) are held until the inode's last passthrough open is
//!   released (a mapped executable stays open until it is unmapped). The kernel sends the
//!   RELEASE after the close has returned, so an open that follows a close at once may still
//!   count that open and go through the daemon: conservative, never a mixed open.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};

use format::archive::EntryId;
use fuser::FopenFlags;
use lru::LruCache;
use tracing::{debug, info, warn};

use crate::exec_cache::{key_of, ExecCache, Key, Opened};
use crate::view::Package;

/// Files of at least this size...
pub const REREAD_MIN: u64 = 1 << 20;
/// ... opened this many times are cached, ELF or not.
pub const REREAD_OPENS: u32 = 4;
/// Files of at least this size are looked up in the cache before their head is read
/// (smaller ones are mostly data packed with others into a chunk their read loads anyway).
pub const FIND_FIRST: u64 = 16 << 10;

/// The handle of an open served by passthrough.
pub const FH_PASSTHROUGH: u64 = 1;
/// The handle of an open served through the daemon.
pub const FH_DAEMON: u64 = 2;

/// The flags of a passthrough open: the kernel refuses (EIO) any but DIRECT_IO,
/// PARALLEL_DIRECT_WRITES and NOFLUSH beside PASSTHROUGH (`FOPEN_PASSTHROUGH_MASK`); the page
/// cache is the backing file's anyway.
const PASSTHROUGH_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

/// A file of a package: the package's id and the file's entry.
type FileId = ([u8; 32], EntryId);

/// What is known of a package file.
#[derive(Default)]
struct Seen {
    elf: Option<bool>,
    opens: u32,
    key: Option<Key>,
}

/// The answer to an OPEN, for whichever transport carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReply {
    /// The handle.
    pub fh: u64,
    /// `FOPEN_*` flags; `FOPEN_PASSTHROUGH` with a backing id.
    pub flags: u32,
    /// The backing file's id (`FUSE_DEV_IOC_BACKING_OPEN`; ids start at 1), or 0.
    pub backing_id: u32,
}

/// `struct fuse_backing_map` of `<linux/fuse.h>`.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// `_IOW(229, 1, struct fuse_backing_map)` and `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// A backing file registered with the kernel on the connection's `/dev/fuse` descriptor
/// (the id is the connection's, whichever transport then carries the OPEN reply that
/// names it), and the object it is. Unregistered when dropped.
struct Backing {
    id: u32,
    dev: Arc<OwnedFd>,
    _object: Opened,
}

impl Backing {
    fn register(dev: &Arc<OwnedFd>, object: Opened) -> std::io::Result<Backing> {
        let map = BackingMap {
            fd: object.file.as_fd().as_raw_fd(),
            flags: 0,
            padding: 0,
        };
        // SAFETY: the ioctl reads a fuse_backing_map that lives across the call.
        let id = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_OPEN, &map) };
        if id < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Backing {
            id: id as u32,
            dev: dev.clone(),
            _object: object,
        })
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: the ioctl reads a u32 that lives across the call. It fails harmlessly
        // once the connection is gone (its backing files went with it).
        unsafe { libc::ioctl(self.dev.as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE, &self.id) };
    }
}

/// The opens of one inode the kernel holds, by kind: never both kinds at once (the
/// kernel's rule, see the module doc). `B` is what holds a backing file.
struct InodeOpens<B> {
    daemon: u32,
    passthrough: u32,
    backing: Option<B>,
    /// Removed from the table: an open that finds this takes the table's entry again.
    gone: bool,
}

impl<B> Default for InodeOpens<B> {
    fn default() -> Self {
        InodeOpens {
            daemon: 0,
            passthrough: 0,
            backing: None,
            gone: false,
        }
    }
}

impl<B> InodeOpens<B> {
    /// Decides an open: the inode's backing file while it has passthrough opens; else, if
    /// it has no opens through the daemon, the one `try_backing` gives (if any). `None`:
    /// through the daemon.
    fn open(&mut self, try_backing: impl FnOnce() -> Option<B>) -> Option<&B> {
        if self.backing.is_none() && self.daemon == 0 {
            self.backing = try_backing();
        }
        match &self.backing {
            Some(b) => {
                self.passthrough += 1;
                Some(b)
            }
            None => {
                self.daemon += 1;
                None
            }
        }
    }

    /// The release of an open of the kind given; true if the inode has no opens left. The
    /// backing file is let go with the last passthrough open.
    fn release(&mut self, passthrough: bool) -> bool {
        if passthrough {
            self.passthrough = self.passthrough.saturating_sub(1);
            if self.passthrough == 0 {
                self.backing = None;
            }
        } else {
            self.daemon = self.daemon.saturating_sub(1);
        }
        self.passthrough == 0 && self.daemon == 0
    }
}

struct Fill {
    key: Key,
    pkg: Arc<Package>,
    entry: EntryId,
    size: u64,
}

/// Work for the fill thread.
enum Job {
    /// Fill a file into the cache.
    Fill(Fill),
    /// Write the cache's record if it is behind (an object was hashed at an open).
    Save,
}

/// Counters, logged at unmount.
#[derive(Debug, Default)]
pub struct Counters {
    /// Opens answered with passthrough.
    pub passthrough: AtomicU64,
    /// Opens answered through the daemon.
    pub daemon: AtomicU64,
    /// READ requests of files served by the daemon.
    pub reads: AtomicU64,
    /// Files filled into the cache.
    pub filled: AtomicU64,
    /// Objects hashed at an open (their identity was not one known to be right).
    pub hashed: AtomicU64,
    /// Objects served at their first open by this daemon without a hash, on the strength
    /// of the record of an earlier one (`-o exec_cache_verify=stat`).
    pub recorded: AtomicU64,
    /// The kernel took passthrough at INIT.
    pub active: AtomicBool,
}

/// What the daemon logs of the exec cache when it ends (kept by `main` apart from the
/// file system, which may not be dropped when the daemon exits).
#[derive(Debug, Clone)]
pub struct Report {
    counters: Arc<Counters>,
    cache: Arc<ExecCache>,
}

impl Report {
    /// Writes the cache's record (the order of use changed with every first use) and logs
    /// the counters in one line, if the mount used the exec cache.
    pub fn log(&self) {
        let c = &self.counters;
        if !c.active.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.cache.save_record(true) {
            warn!(
                "exec cache: cannot write its record: {}",
                crate::layers::one_line(&e)
            );
        }
        let s = self.cache.stats();
        info!(
            passthrough_opens = c.passthrough.load(Ordering::Relaxed),
            daemon_opens = c.daemon.load(Ordering::Relaxed),
            daemon_reads = c.reads.load(Ordering::Relaxed),
            filled = c.filled.load(Ordering::Relaxed),
            hashed = c.hashed.load(Ordering::Relaxed),
            recorded = c.recorded.load(Ordering::Relaxed),
            objects = s.objects,
            bytes = s.bytes,
            "exec cache {}",
            self.cache.path().display()
        );
    }
}

/// The passthrough side of the adapter.
pub struct Passthrough {
    cache: Arc<ExecCache>,
    inodes: Mutex<HashMap<u64, Arc<Mutex<InodeOpens<Backing>>>>>,
    seen: Mutex<LruCache<FileId, Seen>>,
    fills: SyncSender<Job>,
    pending: Arc<Mutex<HashSet<Key>>>,
    /// The kernel refused a backing file (no CAP_SYS_ADMIN, a cache on a stacked file
    /// system), or there is no `/dev/fuse` descriptor to register one on: every open goes
    /// through the daemon from then on.
    off: AtomicBool,
    /// The connection's `/dev/fuse` descriptor (a duplicate of the session's), on which
    /// backing files are registered.
    dev: OnceLock<Arc<OwnedFd>>,
    /// Counters.
    pub counters: Arc<Counters>,
}

impl Passthrough {
    /// Serves opens from `cache`, with a fill thread of its own.
    pub fn new(cache: Arc<ExecCache>) -> Passthrough {
        let (tx, rx) = sync_channel::<Job>(1024);
        let pending: Arc<Mutex<HashSet<Key>>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        {
            let (cache, pending, counters) = (cache.clone(), pending.clone(), counters.clone());
            std::thread::Builder::new()
                .name("exec-fill".into())
                .spawn(move || {
                    // Filling is background work: below the readers' priority.
                    // SAFETY: setpriority on this thread (a tid is a PRIO_PROCESS id on Linux).
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
                    let mut failed = HashSet::new();
                    let fill = |f: Fill, failed: &mut HashSet<Key>| {
                        if !failed.contains(&f.key) && !cache.has(&f.key, f.size) {
                            let t = std::time::Instant::now();
                            match cache.fill(&f.key, &f.pkg.archive, f.entry, f.size) {
                                Ok(d) => {
                                    counters.filled.fetch_add(1, Ordering::Relaxed);
                                    debug!(
                                        package = %f.pkg.label(),
                                        entry = f.entry,
                                        "exec cache: filled {} ({} bytes) in {:?}",
                                        crate::exec_cache::hex(&d),
                                        f.size,
                                        t.elapsed()
                                    );
                                }
                                Err(e) => {
                                    if !matches!(e, crate::exec_cache::Error::TooLarge { .. }) {
                                        warn!(
                                            package = %f.pkg.label(),
                                            entry = f.entry,
                                            "exec cache: cannot fill: {}; served through the daemon",
                                            crate::layers::one_line(&e)
                                        );
                                    }
                                    failed.insert(f.key);
                                }
                            }
                        }
                        pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&f.key);
                    };
                    let mut record_failed = false;
                    while let Ok(job) = rx.recv() {
                        // What is queued now is done before the record is written once.
                        let mut next = Some(job);
                        while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
                            if let Job::Fill(f) = job {
                                fill(f, &mut failed);
                            }
                        }
                        match cache.save_record(false) {
                            Ok(()) => record_failed = false,
                            Err(e) if !record_failed => {
                                record_failed = true;
                                warn!(
                                    "exec cache: cannot write its record: {}; the next daemon \
                                     hashes what it cannot find in it",
                                    crate::layers::one_line(&e)
                                );
                            }
                            Err(_) => {}
                        }
                    }
                })
                .expect("spawn the exec cache fill thread");
        }
        Passthrough {
            cache,
            inodes: Mutex::default(),
            seen: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(8192).expect("nonzero"),
            )),
            fills: tx,
            pending,
            off: AtomicBool::new(false),
            dev: OnceLock::new(),
            counters,
        }
    }

    /// The connection's `/dev/fuse` descriptor, on which backing files are registered
    /// (a duplicate is kept). Without one (a daemon that does not mount as root: fuser
    /// mounts through fusermount3 and keeps the descriptor), every open goes through the
    /// daemon.
    pub fn set_fuse_dev(&self, fd: &OwnedFd) {
        match fd.try_clone() {
            Ok(d) => {
                let _ = self.dev.set(Arc::new(d));
            }
            Err(e) => warn!("exec cache: cannot keep the /dev/fuse descriptor: {e}"),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Arc<ExecCache> {
        &self.cache
    }

    fn inode(&self, ino: u64) -> Arc<Mutex<InodeOpens<Backing>>> {
        self.inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ino)
            .or_default()
            .clone()
    }

    /// Answers the open of inode `ino`, file `entry` of `pkg` (`size` bytes). `head` gives
    /// the file's first bytes (for the ELF check), when needed.
    pub fn open(
        &self,
        ino: u64,
        pkg: &Arc<Package>,
        entry: EntryId,
        size: u64,
        head: impl FnOnce() -> Option<[u8; 18]>,
    ) -> OpenReply {
        let slot = self.inode(ino);
        let mut guard = slot.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        if st.gone {
            // Released and removed from the table between the two locks: take it again.
            drop(guard);
            return self.open(ino, pkg, entry, size, head);
        }
        match st.open(|| self.backing(ino, pkg, entry, size, head)) {
            Some(b) => {
                self.counters.passthrough.fetch_add(1, Ordering::Relaxed);
                OpenReply {
                    fh: FH_PASSTHROUGH,
                    flags: (PASSTHROUGH_FLAGS | FopenFlags::FOPEN_PASSTHROUGH).bits(),
                    backing_id: b.id,
                }
            }
            None => {
                self.counters.daemon.fetch_add(1, Ordering::Relaxed);
                OpenReply {
                    fh: FH_DAEMON,
                    flags: FopenFlags::FOPEN_KEEP_CACHE.bits(),
                    backing_id: 0,
                }
            }
        }
    }

    /// A backing file for an inode with no opens: the file's cache file, if it qualifies and
    /// is cached (else it is queued for a fill), registered with the kernel.
    fn backing(
        &self,
        ino: u64,
        pkg: &Arc<Package>,
        entry: EntryId,
        size: u64,
        head: impl FnOnce() -> Option<[u8; 18]>,
    ) -> Option<Backing> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        let Some(dev) = self.dev.get() else {
            if !self.off.swap(true, Ordering::Relaxed) {
                warn!(
                    "exec cache {}: no /dev/fuse descriptor to register backing files on (the \
                     daemon mounts itself only as root); files are served through the daemon",
                    self.cache.path().display()
                );
            }
            return None;
        };
        if size == 0 || size > self.cache.max_bytes() {
            return None;
        }
        let id = (pkg.archive.id().0, entry);
        let elf = self.count_open(id);
        // A file of FIND_FIRST bytes or more whose kind this daemon does not know yet is
        // looked up in the cache before its first bytes are read to tell: the cache holds
        // only files that qualified when they were filled (their bytes are what the key
        // names, the same wherever they are), and reading the head costs a chunk's read,
        // hash and decompression on the open's path, for every library of a program a
        // new daemon starts. A miss costs a failed `openat` in the cache's `keys/`.
        let mut head = Some(head);
        // (Asked at most once below.)
        let mut qualifies = || head.take().is_some_and(|h| self.qualifies(id, size, h));
        let find_first = elf.is_none() && size >= FIND_FIRST;
        if !find_first && !qualifies() {
            return None;
        }
        let key = self.key(id, pkg, entry, size)?;
        let Some(object) = self.cache.find(&key, size) else {
            if !find_first || qualifies() {
                self.queue(key, pkg, entry, size);
            }
            return None;
        };
        let (hashed, recorded, digest) = (object.hashed, object.recorded, object.digest);
        match Backing::register(dev, object) {
            Ok(b) => {
                if hashed {
                    self.counters.hashed.fetch_add(1, Ordering::Relaxed);
                    // The record is written by the fill thread, not on the open's path.
                    let _ = self.fills.try_send(Job::Save);
                }
                if recorded {
                    self.counters.recorded.fetch_add(1, Ordering::Relaxed);
                }
                debug!(
                    ino,
                    package = %pkg.label(),
                    entry,
                    backing_id = b.id,
                    "exec cache: passthrough to {}",
                    crate::exec_cache::hex(&digest)
                );
                Some(b)
            }
            Err(e) => {
                if !self.off.swap(true, Ordering::Relaxed) {
                    warn!(
                        "exec cache {}: the kernel refuses its files as passthrough backing \
                         files ({e}); files are served through the daemon",
                        self.cache.path().display()
                    );
                }
                None
            }
        }
    }

    /// The release of an open of inode `ino` with handle `fh`.
    pub fn release(&self, ino: u64, fh: u64) {
        let slot = match self
            .inodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
        {
            Some(s) => s.clone(),
            None => return,
        };
        // (The table is not held while waiting for the inode: an open may be hashing.)
        let mut st = slot.lock().unwrap_or_else(|p| p.into_inner());
        // The last passthrough release unregisters the backing file and lets the cache
        // file be evicted again.
        if st.release(fh == FH_PASSTHROUGH) {
            st.gone = true;
            let mut table = self.inodes.lock().unwrap_or_else(|p| p.into_inner());
            if table.get(&ino).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                table.remove(&ino);
            }
        }
    }

    /// Counts an open of file `id` (package, entry); returns whether it is known to be
    /// an ELF program (`None`: not looked at yet in this daemon's life).
    fn count_open(&self, id: FileId) -> Option<bool> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let s = seen.get_or_insert_mut(id, Seen::default);
        s.opens = s.opens.saturating_add(1);
        s.elf
    }

    /// Whether file `id` qualifies (see the module doc): an ELF program by its first bytes
    /// (`head`, read once per daemon life), or a big file opened again and again.
    fn qualifies(&self, id: FileId, size: u64, head: impl FnOnce() -> Option<[u8; 18]>) -> bool {
        let (elf, opens) = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let s = seen.get_or_insert_mut(id, Seen::default);
            (s.elf, s.opens)
        };
        let elf = match elf {
            Some(e) => e,
            None => {
                let e = head().is_some_and(|h| is_elf_program(&h));
                if let Some(s) = self
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(&id)
                {
                    s.elf = Some(e);
                }
                e
            }
        };
        elf || (opens >= REREAD_OPENS && size >= REREAD_MIN)
    }

    /// The cache's key of file `id`, computed once per daemon life.
    fn key(&self, id: FileId, pkg: &Package, entry: EntryId, size: u64) -> Option<Key> {
        if let Some(k) = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .and_then(|s| s.key)
        {
            return Some(k);
        }
        let k = key_of(&pkg.archive, entry, size).ok()?;
        if let Some(s) = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            s.key = Some(k);
        }
        Some(k)
    }

    fn queue(&self, key: Key, pkg: &Arc<Package>, entry: EntryId, size: u64) {
        if !self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key)
        {
            return;
        }
        let job = Job::Fill(Fill {
            key,
            pkg: pkg.clone(),
            entry,
            size,
        });
        // A full queue: the file is queued again at a later open.
        if self.fills.try_send(job).is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }

    /// What to log at the end.
    pub fn report(&self) -> Report {
        Report {
            counters: self.counters.clone(),
            cache: self.cache.clone(),
        }
    }
}

/// True for the first bytes of an ELF executable or shared object (`e_type` 2 or 3, in the
/// file's own byte order).
pub fn is_elf_program(h: &[u8; 18]) -> bool {
    if h[..4] != *b"\x7fELF" {
        return false;
    }
    let t = match h[5] {
        1 => u16::from_le_bytes([h[16], h[17]]),
        2 => u16::from_be_bytes([h[16], h[17]]),
        _ => return false,
    };
    t == 2 || t == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backing file that says when it is let go.
    struct B(u32, Arc<AtomicBool>);
    impl Drop for B {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn an_inode_is_never_open_both_ways_and_keeps_one_backing_file_while_open() {
        let gone = Arc::new(AtomicBool::new(false));
        let b = |n| {
            let g = gone.clone();
            move || Some(B(n, g))
        };
        let mut st = InodeOpens::<B>::default();
        // The first open finds the file cached: passthrough to backing 1.
        assert_eq!(st.open(b(1)).map(|x| x.0), Some(1));
        // While it is open every open gets backing 1, whatever else there would be.
        assert_eq!(st.open(|| panic!("not asked")).map(|x| x.0), Some(1));
        assert_eq!(st.open(|| None).map(|x| x.0), Some(1));
        assert!(!st.release(true));
        assert!(!st.release(true));
        assert!(!gone.load(Ordering::SeqCst), "held while open");
        assert!(st.release(true), "no opens left");
        assert!(gone.load(Ordering::SeqCst), "let go with the last release");
        // Not cached: through the daemon; then, even once cached, through the daemon
        // until the last such open is released.
        assert!(st.open(|| None).is_none());
        assert!(st
            .open(|| panic!("not asked while open through the daemon"))
            .is_none());
        assert!(!st.release(false));
        assert!(st.release(false));
        gone.store(false, Ordering::SeqCst);
        assert_eq!(st.open(b(2)).map(|x| x.0), Some(2));
        assert!(st.release(true));
        assert!(gone.load(Ordering::SeqCst));
    }

    #[test]
    fn elf_programs_and_libraries_qualify_objects_and_text_do_not() {
        let mut h = [0u8; 18];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        for (t, want) in [(1u16, false), (2, true), (3, true), (4, false)] {
            h[16..].copy_from_slice(&t.to_le_bytes());
            assert_eq!(is_elf_program(&h), want, "e_type {t}");
        }
        h[5] = 2;
        h[16..].copy_from_slice(&3u16.to_be_bytes());
        assert!(is_elf_program(&h), "big-endian shared object");
        h[5] = 3;
        assert!(!is_elf_program(&h), "no byte order");
        let mut text = [b'#'; 18];
        text[1] = b'!';
        assert!(!is_elf_program(&text));
        // The real thing.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        assert!(is_elf_program(exe[..18].try_into().unwrap()));
    }
}
