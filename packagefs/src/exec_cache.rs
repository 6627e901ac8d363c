//! The persistent exec cache (`-o exec_cache=DIR`): files that are executed or read again and
//! again are decompressed once into a plain file named by the BLAKE3 hash of their bytes,
//! which the FUSE adapter then hands to the kernel as the backing file of a passthrough open
//! (reads and page faults go from the kernel to that file and never reach the daemon).
//!
//! ```text
//! DIR/            0700, owned by the daemon's user (refused otherwise, or if a symlink)
//!   data/<hex>    a file's bytes; <hex> = BLAKE3 of those bytes (shared by every package
//!                 and version that holds them), mode 0400
//!   keys/<hex>    `<data hex> <size>\n`; <hex> = key_of(): BLAKE3 over how the file is
//!                 stored (its chunks' hashes, methods and lengths, its offsets, its size)
//!   tmp/<pid>-<n> a file being written; swept at start when its writer is gone
//! ```
//!
//! - **Fill** ([`ExecCache::fill`]): each chunk is read from the package, checked against its
//!   signed hash before it is decompressed, and its bytes written to a temp file while they
//!   are hashed; then fsync, rename into `data/`, fsync of `data/`, and the same for the key.
//!   A crash leaves at most a temp file (never used, swept) or an object without a key
//!   (found by nobody, evicted in its turn).
//! - **Use** ([`ExecCache::find`]): the object is opened `O_NOFOLLOW`, must be a regular file
//!   of this user with one link and the expected size, and its identity (dev, inode, size,
//!   mtime, ctime: a write, a truncation, a replacement or a rename over it changes one of
//!   these, and ctime cannot be set from user space) must be one its bytes were hashed
//!   under: as written by a fill, as hashed at an earlier use, or as recorded in
//!   `DIR/verified` by an earlier daemon (see [`Verify`]). Otherwise it is hashed whole
//!   (BLAKE3) before it is used, and a file whose bytes do not match its name is removed
//!   (one log line) and filled again. Cost: one `fstat` per open, and a hash only for an
//!   object whose identity changed (or, with [`Verify::Full`], once per object per daemon
//!   life). A change made while a file is open through passthrough is not seen until its
//!   next open.
//! - **The record** (`DIR/verified`): what was hashed, as (digest, identity), in order of
//!   use (least recent first); written whole to a temp file, fsynced and renamed over the
//!   old one (then the directory is fsynced), after fills and hashes and at unmount. A
//!   record that is not whole (no `end` line with its count) is not believed at all.
//! - **Size**: before each fill (to make room) and after it, the least recently used objects
//!   that are not open are removed until the total is within the limit. Recency is kept in
//!   memory and, across restarts, as the order of the record (objects not in it, by
//!   atime, count as older).

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use format::archive::{Archive, EntryId};
use rustix::fs::{AtFlags, Mode, OFlags, Stat};
use tracing::{debug, info, warn};

/// BLAKE3 of a file's bytes: the name of its object.
pub type Digest = [u8; 32];
/// What names a file's object before its bytes are known (see [`key_of`]).
pub type Key = [u8; 32];

const KEY_CONTEXT: &str = "packagefs exec cache key v1";

/// The record of what was hashed (in the cache directory) and its first line.
const RECORD: &str = "verified";
const RECORD_HEADER: &str = "packagefs exec cache verified v1";
/// A record larger than this is not read (a few thousand objects take a few hundred KiB).
const RECORD_MAX: u64 = 64 << 20;

/// How an object kept by an earlier daemon is checked at its first use
/// (`-o exec_cache_verify=stat|full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Served at once if its identity (dev, inode, size, mtime, ctime) is the one the
    /// record says its bytes were hashed under; hashed whole otherwise.
    #[default]
    Stat,
    /// Hashed whole at its first use by each daemon, whatever the record says (catches
    /// what the file system cannot see: a disk that returns other bytes, an edit of the
    /// raw device).
    Full,
}

impl std::str::FromStr for Verify {
    type Err = ();
    fn from_str(s: &str) -> Result<Verify, ()> {
        match s {
            "stat" => Ok(Verify::Stat),
            "full" => Ok(Verify::Full),
            _ => Err(()),
        }
    }
}

/// An exec cache error: one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cache directory is not one the daemon may trust.
    #[error("exec cache {}: {reason}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An I/O error on a named file of the cache.
    #[error("exec cache {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading the package failed (a chunk that does not match its hash, say).
    #[error(transparent)]
    Package(#[from] format::Error),
    /// The file is larger than the whole cache.
    #[error("{size} bytes do not fit in an exec cache of {max}")]
    TooLarge {
        /// The file's size.
        size: u64,
        /// The cache's size.
        max: u64,
    },
}

/// The key of file `e` (of `size` bytes) of `archive`: BLAKE3 over how its bytes are stored
/// (each chunk's signed hash, method and length, and the file's span of it). Computed from
/// the metadata alone; equal keys mean equal bytes, since the chunk hashes pin them.
pub fn key_of(archive: &Archive, e: EntryId, size: u64) -> format::Result<Key> {
    let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    h.update(&size.to_le_bytes());
    for s in archive.file_spans(e, 0, size)? {
        let info = archive.chunk_info(s.chunk)?;
        h.update(&info.hash);
        h.update(&[info.method as u8]);
        h.update(&info.raw_len.to_le_bytes());
        h.update(&s.start.to_le_bytes());
        h.update(&s.len.to_le_bytes());
    }
    Ok(*h.finalize().as_bytes())
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    format::keys::hex(b)
}

fn unhex(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = d(pair[0])? << 4 | d(pair[1])?;
    }
    Some(out)
}

/// What was checked of an object: a change of its bytes changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ident {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

impl Ident {
    fn of(st: &Stat) -> Ident {
        Ident {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// The fields of a record line after the digest.
    fn to_record(self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }

    fn from_record<'a>(mut f: impl Iterator<Item = &'a str>) -> Option<Ident> {
        let mut n = || f.next()?.parse::<u64>().ok();
        let (dev, ino, size) = (n()?, n()?, n()?);
        let mtime = (i64::try_from(n()?).ok()?, n()?);
        let ctime = (i64::try_from(n()?).ok()?, n()?);
        (mtime.1 < 1_000_000_000 && ctime.1 < 1_000_000_000).then_some(Ident {
            dev,
            ino,
            size,
            mtime,
            ctime,
        })
    }
}

/// A record read back: per object, its place in the order of use and what it was hashed as.
type Record = HashMap<Digest, (usize, Option<Ident>)>;

/// Parses a record (see the module doc); `None` if it is not whole.
fn parse_record(text: &[u8]) -> Option<Record> {
    let text = std::str::from_utf8(text).ok()?;
    let (body, last) = text.strip_suffix('\n')?.rsplit_once('\n')?;
    let count: usize = last.strip_prefix("end ")?.parse().ok()?;
    let mut lines = body.split('\n');
    if lines.next()? != RECORD_HEADER {
        return None;
    }
    let mut out = Record::new();
    for (i, line) in lines.enumerate() {
        let mut f = line.split(' ');
        let d = unhex(f.next()?.as_bytes())?;
        let ident = match f.clone().next()? {
            "-" => {
                f.next();
                None
            }
            _ => Some(Ident::from_record(&mut f)?),
        };
        if f.next().is_some() || out.insert(d, (i, ident)).is_some() {
            return None;
        }
    }
    (out.len() == count).then_some(out)
}

struct Object {
    size: u64,
    /// Recency: a tick of `State::tick`.
    used: u64,
    /// Opens handed out and not yet dropped.
    open: u32,
    /// What its bytes were hashed and found right as (by this daemon, or by an earlier one
    /// as its record says).
    verified: Option<Ident>,
    /// `verified` comes from the record and this daemon has not used the object yet.
    recorded: bool,
    /// What the record said at start, believed or not (with `full` it is not, but it is
    /// written back for an object this daemon did not hash: it is still what an earlier
    /// daemon hashed).
    prior: Option<Ident>,
}

#[derive(Default)]
struct State {
    objects: HashMap<Digest, Object>,
    total: u64,
    tick: u64,
    keys: HashMap<Key, (Digest, u64)>,
    /// The record is behind what is known.
    dirty: bool,
    /// Objects whose check was taken from the record at start.
    recorded: usize,
}

impl State {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The entry of object `d` of `size` bytes, made (and counted in the total) if it is
    /// new: found in `data/` after the start (filled by another daemon sharing the cache,
    /// or by this one's fill while an open found its key).
    fn object(&mut self, d: Digest, size: u64, tick: u64) -> &mut Object {
        match self.objects.entry(d) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.total += size;
                v.insert(Object {
                    size,
                    used: tick,
                    open: 0,
                    verified: None,
                    recorded: false,
                    prior: None,
                })
            }
        }
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Objects in `data/`.
    pub objects: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Objects open now.
    pub open: usize,
    /// Objects found at start whose check was taken from the record.
    pub recorded: usize,
}

/// The exec cache of one daemon.
pub struct ExecCache {
    path: PathBuf,
    data: OwnedFd,
    keys: OwnedFd,
    tmp: OwnedFd,
    max_bytes: u64,
    uid: u32,
    state: Mutex<State>,
    seq: AtomicU64,
    dir: OwnedFd,
    verify: Verify,
    /// Held while the record is written (one writer at a time, newest snapshot last).
    saving: Mutex<()>,
}

impl std::fmt::Debug for ExecCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecCache")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// An object opened for use: counts as open (never evicted) until dropped.
pub struct Opened {
    /// The object, opened read-only.
    pub file: File,
    /// Its name.
    pub digest: Digest,
    /// True if it was hashed by this open (its identity was not one known to be right).
    pub hashed: bool,
    /// True if this open is the object's first use by this daemon and was served on the
    /// strength of the record (not hashed).
    pub recorded: bool,
    cache: Arc<ExecCache>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened({})", hex(&self.digest))
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let mut s = self.cache.lock();
        if let Some(o) = s.objects.get_mut(&self.digest) {
            o.open = o.open.saturating_sub(1);
        }
    }
}

fn io_err(path: PathBuf) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::Io {
        path,
        source: e.into(),
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl ExecCache {
    /// [`ExecCache::open_with`] with the default check, [`Verify::Stat`].
    pub fn open(path: &Path, max_bytes: u64) -> Result<ExecCache, Error> {
        ExecCache::open_with(path, max_bytes, Verify::default())
    }

    /// Opens (creating it if missing, mode 0700) the cache directory `path`, holding at most
    /// `max_bytes` of files, whose kept objects are checked as `verify` says. Refuses a
    /// directory that is a symlink, is owned by another user or lets anyone else in; sweeps
    /// temp files left by writers that are gone; reads the record; evicts down to
    /// `max_bytes`.
    pub fn open_with(path: &Path, max_bytes: u64, verify: Verify) -> Result<ExecCache, Error> {
        let refused = |reason: String| Error::Refused {
            path: path.to_owned(),
            reason,
        };
        let uid = rustix::process::geteuid().as_raw();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused("is a symlink (refused)".into()))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                        path: parent.to_owned(),
                        source,
                    })?;
                }
                match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(io_err(path.to_owned())(e)),
                }
            }
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let dir = match rustix::fs::open(path, dir_flags(), Mode::empty()) {
            Ok(d) => d,
            Err(rustix::io::Errno::LOOP) => return Err(refused("is a symlink (refused)".into())),
            Err(rustix::io::Errno::NOTDIR) => return Err(refused("is not a directory".into())),
            Err(e) => return Err(io_err(path.to_owned())(e)),
        };
        let st = rustix::fs::fstat(&dir).map_err(io_err(path.to_owned()))?;
        if st.st_uid != uid {
            return Err(refused(format!(
                "is owned by uid {}, not by the daemon's uid {uid} (refused)",
                st.st_uid
            )));
        }
        if st.st_mode & 0o077 != 0 {
            return Err(refused(format!(
                "has mode {:04o}: only its owner may enter it (chmod 700 {})",
                st.st_mode & 0o7777,
                path.display()
            )));
        }
        let sub = |name: &str| -> Result<OwnedFd, Error> {
            let p = path.join(name);
            match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err(p)(e)),
            }
            let fd = match rustix::fs::openat(&dir, name, dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                    return Err(Error::Refused {
                        path: p,
                        reason: "is not a directory (refused)".into(),
                    })
                }
                Err(e) => return Err(io_err(p)(e)),
            };
            let st = rustix::fs::fstat(&fd).map_err(io_err(p.clone()))?;
            if st.st_uid != uid {
                return Err(Error::Refused {
                    path: p,
                    reason: format!("is owned by uid {}, not {uid} (refused)", st.st_uid),
                });
            }
            Ok(fd)
        };
        let (data, keys, tmp) = (sub("data")?, sub("keys")?, sub("tmp")?);
        let cache = ExecCache {
            data,
            keys,
            tmp,
            path: path.to_owned(),
            max_bytes,
            uid,
            state: Mutex::new(State::default()),
            seq: AtomicU64::new(0),
            dir,
            verify,
            saving: Mutex::new(()),
        };
        cache.sweep_temps();
        cache.scan();
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the object named `d` lives.
    pub fn object_path(&self, d: &Digest) -> PathBuf {
        self.path.join("data").join(hex(d))
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let s = self.lock();
        Stats {
            objects: s.objects.len(),
            bytes: s.total,
            open: s.objects.values().filter(|o| o.open > 0).count(),
            recorded: s.recorded,
        }
    }

    /// Removes the temp files of writers that are gone (this process's earlier life
    /// included: a pid is reused only by a new process).
    fn sweep_temps(&self) {
        let me = std::process::id();
        let mut swept = 0;
        for name in list(&self.tmp) {
            let owner = name
                .to_str()
                .ok()
                .and_then(|n| n.trim_start_matches(['k', 'v']).split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            let alive = match owner {
                Some(pid) if pid as u32 != me && pid > 0 => rustix::process::Pid::from_raw(pid)
                    .is_some_and(|p| {
                        !matches!(
                            rustix::process::test_kill_process(p),
                            Err(rustix::io::Errno::SRCH)
                        )
                    }),
                _ => false,
            };
            if !alive && rustix::fs::unlinkat(&self.tmp, name.as_c_str(), AtFlags::empty()).is_ok()
            {
                swept += 1;
            }
        }
        if swept > 0 {
            info!(
                "exec cache {}: removed {swept} temp files of interrupted fills",
                self.path.display()
            );
        }
    }

    /// Reads what `data/` and `keys/` hold, and the record: objects are ordered by their
    /// place in the record, those not in it (by atime) before them.
    fn scan(&self) {
        let record = self.read_record();
        let mut found = Vec::new();
        for name in list(&self.data) {
            let st = rustix::fs::statat(&self.data, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW);
            let ok = st.as_ref().is_ok_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            });
            match (unhex(name.to_bytes()), st) {
                (Some(d), Ok(st)) if ok => {
                    let (place, ident) = match record.as_ref().and_then(|r| r.get(&d)) {
                        Some(&(i, ident)) => ((1, i as i64, 0), ident),
                        None => ((0, st.st_atime, st.st_atime_nsec), None),
                    };
                    found.push((place, d, st.st_size as u64, ident))
                }
                (_, Ok(st))
                    if rustix::fs::FileType::from_raw_mode(st.st_mode)
                        != rustix::fs::FileType::Directory =>
                {
                    // Not ours: a name that is no hash, a symlink.
                    let _ = rustix::fs::unlinkat(&self.data, name.as_c_str(), AtFlags::empty());
                }
                _ => {}
            }
        }
        found.sort_by_key(|f| (f.0, f.1));
        let mut s = self.lock();
        for (_, d, size, ident) in found {
            s.tick += 1;
            let used = s.tick;
            s.total += size;
            // With `full`, what the record says is not believed (its order is).
            let verified = ident.filter(|_| self.verify == Verify::Stat);
            s.recorded += verified.is_some() as usize;
            s.objects.insert(
                d,
                Object {
                    size,
                    used,
                    open: 0,
                    verified,
                    recorded: verified.is_some(),
                    prior: ident,
                },
            );
        }
        // Keys of objects that are gone (evicted, or lost in a crash) are removed.
        for name in list(&self.keys) {
            let target = unhex(name.to_bytes()).and_then(|_| self.read_key_file(name.as_c_str()));
            if !target.is_some_and(|(d, _)| s.objects.contains_key(&d)) {
                let _ = rustix::fs::unlinkat(&self.keys, name.as_c_str(), AtFlags::empty());
            }
        }
        info!(
            objects = s.objects.len(),
            bytes = s.total,
            recorded = s.recorded,
            verify = ?self.verify,
            "exec cache {}: {} objects, {} of them hashed by an earlier daemon and unchanged since",
            self.path.display(),
            s.objects.len(),
            s.recorded
        );
    }

    /// The record, if there is a whole one (see the module doc).
    fn read_record(&self) -> Option<Record> {
        let fd = match rustix::fs::openat(
            &self.dir,
            RECORD,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return None,
            Err(e) => {
                warn!(
                    "exec cache {}: {e}; every kept object is hashed at its first use",
                    self.path.join(RECORD).display()
                );
                return None;
            }
        };
        let st = rustix::fs::fstat(&fd).ok()?;
        let problem = if let Some(p) = self.not_ours(&st) {
            Some(p)
        } else if st.st_size as u64 > RECORD_MAX {
            Some(format!("has {} bytes", st.st_size))
        } else {
            None
        };
        let mut text = Vec::new();
        let parsed = match problem {
            Some(p) => Err(p),
            None => File::from(fd)
                .take(RECORD_MAX)
                .read_to_end(&mut text)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    parse_record(&text).ok_or_else(|| "is not a whole record".to_string())
                }),
        };
        parsed
            .inspect_err(|why| {
                warn!(
                    "exec cache {} {why}: not believed; every kept object is hashed at its \
                     first use",
                    self.path.join(RECORD).display()
                )
            })
            .ok()
    }

    /// Writes the record if it is behind (or, with `always`, in any case: the order of use
    /// changes with every first use): to a temp file, fsynced, renamed over the old one,
    /// then the directory fsynced. A crash leaves the old record or the new one, and at most
    /// a temp file, swept at the next start.
    pub fn save_record(&self, always: bool) -> Result<(), Error> {
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = {
            let mut s = self.lock();
            if !s.dirty && !always {
                return Ok(());
            }
            s.dirty = false;
            s.objects
                .iter()
                .map(|(d, o)| (o.used, *d, o.verified.or(o.prior)))
                .collect::<Vec<_>>()
        };
        lines.sort_by_key(|l| l.0);
        let mut text = String::with_capacity(64 + lines.len() * 140);
        text.push_str(RECORD_HEADER);
        text.push('\n');
        for (_, d, ident) in &lines {
            text.push_str(&hex(d));
            text.push(' ');
            match ident {
                Some(i) => text.push_str(&i.to_record()),
                None => text.push('-'),
            }
            text.push('\n');
        }
        text.push_str(&format!("end {}\n", lines.len()));
        let r = self.write_beside(&self.dir, RECORD, text.as_bytes(), "v");
        if r.is_err() {
            self.lock().dirty = true;
        }
        r
    }

    /// Why a file of the cache is not one the daemon wrote: not a regular file, another
    /// user's, or with another link (None: it may be).
    fn not_ours(&self, st: &Stat) -> Option<String> {
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            Some("is not a regular file".to_string())
        } else if st.st_uid != self.uid {
            Some(format!("is owned by uid {}", st.st_uid))
        } else if st.st_nlink != 1 {
            Some(format!("has {} links", st.st_nlink))
        } else {
            None
        }
    }

    /// Creates `tmp/<prefix><pid>-<n>` (mode 0400, never an existing file or a link):
    /// its name, its path for messages, and the file.
    fn create_temp(&self, prefix: &str) -> Result<(String, PathBuf, File), Error> {
        let name = format!(
            "{prefix}{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.path.join("tmp").join(&name);
        let fd = rustix::fs::openat(
            &self.tmp,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o400),
        )
        .map_err(io_err(path.clone()))?;
        Ok((name, path, File::from(fd)))
    }

    /// Writes `bytes` to `dir/name` crash-safely: a temp file `tmp/<prefix><pid>-<n>`
    /// (mode 0400), fsync, rename over `name`, fsync of `dir`.
    fn write_beside(
        &self,
        dir: &OwnedFd,
        name: &str,
        bytes: &[u8],
        prefix: &str,
    ) -> Result<(), Error> {
        let (tmp_name, tmp_path, mut f) = self.create_temp(prefix)?;
        let r = f
            .write_all(bytes)
            .map_err(|source| Error::Io {
                path: tmp_path.clone(),
                source,
            })
            .and_then(|()| rustix::fs::fsync(&f).map_err(io_err(tmp_path.clone())))
            .and_then(|()| {
                rustix::fs::renameat(&self.tmp, tmp_name.as_str(), dir, name)
                    .map_err(io_err(tmp_path.clone()))
            });
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&self.tmp, tmp_name.as_str(), AtFlags::empty());
        }
        r?;
        rustix::fs::fsync(dir).map_err(io_err(self.path.clone()))
    }

    fn read_key_file(&self, name: &CStr) -> Option<(Digest, u64)> {
        let fd = rustix::fs::openat(
            &self.keys,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .ok()?;
        let mut text = Vec::with_capacity(96);
        File::from(fd).take(96).read_to_end(&mut text).ok()?;
        let line = text.strip_suffix(b"\n")?;
        let (d, size) = line.split_at_checked(64)?;
        let size = std::str::from_utf8(size.strip_prefix(b" ")?)
            .ok()?
            .parse()
            .ok()?;
        Some((unhex(d)?, size))
    }

    /// The digest of the object for `key`, if there is one.
    fn digest_of(&self, key: &Key) -> Option<(Digest, u64)> {
        if let Some(v) = self.lock().keys.get(key) {
            return Some(*v);
        }
        let name = std::ffi::CString::new(hex(key)).ok()?;
        let v = self.read_key_file(&name)?;
        self.lock().keys.insert(*key, v);
        Some(v)
    }

    /// True if the cache holds an object for `key` of `size` bytes (not checked: that is
    /// [`ExecCache::find`]'s job).
    pub fn has(&self, key: &Key, size: u64) -> bool {
        match self.digest_of(key) {
            Some((d, s)) if s == size => self.lock().objects.contains_key(&d),
            _ => false,
        }
    }

    /// The object of the file with `key` (of `size` bytes), opened and checked, or `None`
    /// if the cache does not have it (then [`ExecCache::fill`] it). An object whose bytes
    /// do not match its name is removed, and logged.
    pub fn find(self: &Arc<Self>, key: &Key, size: u64) -> Option<Opened> {
        let (digest, recorded) = self.digest_of(key)?;
        if recorded != size {
            self.forget_key(key);
            return None;
        }
        let name = hex(&digest);
        let fd = match rustix::fs::openat(
            &self.data,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => {
                // Evicted (by another daemon sharing the cache, or by hand): fill again.
                debug!("exec cache: object {name}: {e}");
                self.forget_key(key);
                let mut s = self.lock();
                if let Some(o) = s.objects.remove(&digest) {
                    s.total -= o.size;
                }
                return None;
            }
        };
        let st = rustix::fs::fstat(&fd).ok()?;
        let problem = if let Some(p) = self.not_ours(&st) {
            Some(p)
        } else if st.st_size as u64 != size {
            Some(format!("has {} bytes, not {size}", st.st_size))
        } else {
            None
        };
        if let Some(p) = problem {
            self.discard(&digest, &st, &p);
            return None;
        }
        // Hashed already (by this daemon, or by an earlier one as the record says), and
        // unchanged since: one fstat.
        {
            let mut s = self.lock();
            let tick = s.next_tick();
            let o = s.object(digest, size, tick);
            if o.verified == Some(Ident::of(&st)) {
                o.open += 1;
                o.used = tick;
                let recorded = std::mem::take(&mut o.recorded);
                return Some(Opened {
                    file: File::from(fd),
                    digest,
                    hashed: false,
                    recorded,
                    cache: self.clone(),
                });
            }
        }
        // Never hashed as it is now: hash it; a change made while it is hashed shows in
        // the fstat after the hash (mtime or ctime), and the file is not believed.
        let before = st;
        let mut file = File::from(fd);
        let t = std::time::Instant::now();
        let got = match hash_file(&mut file) {
            Ok(h) => h,
            Err(e) => {
                warn!(
                    "exec cache: cannot read {}: {e}",
                    self.object_path(&digest).display()
                );
                return None;
            }
        };
        let after = rustix::fs::fstat(&file).ok()?;
        debug!(
            "exec cache: hashed {name} ({size} bytes) in {} us",
            t.elapsed().as_micros()
        );
        if got != digest || Ident::of(&before) != Ident::of(&after) {
            self.discard(&digest, &after, "does not match its hash");
            return None;
        }
        let mut s = self.lock();
        let tick = s.next_tick();
        s.dirty = true;
        let o = s.object(digest, size, tick);
        o.verified = Some(Ident::of(&after));
        o.recorded = false;
        o.open += 1;
        o.used = tick;
        Some(Opened {
            file,
            digest,
            hashed: true,
            recorded: false,
            cache: self.clone(),
        })
    }

    fn forget_key(&self, key: &Key) {
        self.lock().keys.remove(key);
        let _ = rustix::fs::unlinkat(&self.keys, hex(key).as_str(), AtFlags::empty());
    }

    /// Removes object `d` (if `data/<d>` is still the file `st` describes): it is not
    /// what its name says. One log line.
    fn discard(&self, d: &Digest, st: &Stat, why: &str) {
        let name = hex(d);
        let same = rustix::fs::statat(&self.data, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|now| now.st_dev == st.st_dev && now.st_ino == st.st_ino);
        if same {
            let _ = rustix::fs::unlinkat(&self.data, name.as_str(), AtFlags::empty());
        }
        warn!(
            "exec cache: {} {why}: removed, not served; it is filled again",
            self.object_path(d).display()
        );
        let mut s = self.lock();
        if let Some(o) = s.objects.remove(d) {
            s.total -= o.size;
        }
        s.keys.retain(|_, (x, _)| x != d);
    }

    /// Decompresses file `e` of `archive` (`size` bytes, whose key is `key`) into the cache,
    /// each chunk checked against its hash before it is decompressed; returns its digest.
    /// Crash-safe: the bytes become visible under their name only once durable.
    pub fn fill(
        &self,
        key: &Key,
        archive: &Archive,
        e: EntryId,
        size: u64,
    ) -> Result<Digest, Error> {
        if size > self.max_bytes {
            return Err(Error::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        // Room first: the data files stay within the size even while this one is written
        // (if what is open allows).
        self.evict_to(self.max_bytes - size);
        let (tmp_name, tmp_path, mut file) = self.create_temp("")?;
        let written = (|| -> Result<Digest, Error> {
            let mut hasher = blake3::Hasher::new();
            let mut buf = Vec::new();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
            let mut n = 0u64;
            for s in archive.file_spans(e, 0, size)? {
                archive.read_chunk(s.chunk, &mut buf)?;
                let (a, b) = (s.start as usize, s.start as usize + s.len as usize);
                let part = buf.get(a..b).ok_or_else(|| format::Error::Corrupt {
                    section: format!("chunk {}", s.chunk),
                    reason: format!("has {} bytes, the file needs {a}..{b}", buf.len()),
                })?;
                hasher.update(part);
                out.write_all(part).map_err(|source| Error::Io {
                    path: tmp_path.clone(),
                    source,
                })?;
                n += part.len() as u64;
            }
            out.flush().map_err(|source| Error::Io {
                path: tmp_path.clone(),
                source,
            })?;
            drop(out);
            if n != size {
                return Err(format::Error::Corrupt {
                    section: format!("toc entry {e}"),
                    reason: format!("file has {n} bytes, not {size}"),
                }
                .into());
            }
            rustix::fs::fsync(&file).map_err(io_err(tmp_path.clone()))?;
            Ok(*hasher.finalize().as_bytes())
        })();
        let digest = match written {
            Ok(d) => d,
            Err(err) => {
                let _ = rustix::fs::unlinkat(&self.tmp, tmp_name.as_str(), AtFlags::empty());
                return Err(err);
            }
        };
        let name = hex(&digest);
        let obj_path = self.object_path(&digest);
        // An object of that name is either these bytes or is caught when used.
        let exists = rustix::fs::statat(&self.data, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            });
        let verified = if exists {
            let _ = rustix::fs::unlinkat(&self.tmp, tmp_name.as_str(), AtFlags::empty());
            None
        } else {
            rustix::fs::renameat(&self.tmp, tmp_name.as_str(), &self.data, name.as_str())
                .map_err(io_err(obj_path.clone()))
                .inspect_err(|_| {
                    let _ = rustix::fs::unlinkat(&self.tmp, tmp_name.as_str(), AtFlags::empty());
                })?;
            rustix::fs::fsync(&self.data).map_err(io_err(self.path.join("data")))?;
            // These bytes were hashed as written: no need to hash them again in this life.
            rustix::fs::fstat(&file).ok().map(|st| Ident::of(&st))
        };
        drop(file);
        self.write_key(key, &digest, size)?;
        {
            let mut s = self.lock();
            let tick = s.next_tick();
            s.keys.insert(*key, (digest, size));
            s.dirty = true;
            let o = s.object(digest, size, tick);
            o.used = tick;
            if verified.is_some() {
                o.verified = verified;
                o.recorded = false;
            }
        }
        self.evict();
        Ok(digest)
    }

    fn write_key(&self, key: &Key, d: &Digest, size: u64) -> Result<(), Error> {
        let line = format!("{} {size}\n", hex(d));
        self.write_beside(&self.keys, &hex(key), line.as_bytes(), "k")
    }

    /// Removes least recently used objects that are not open until the total is within
    /// the limit (or only open ones are left).
    fn evict(&self) {
        self.evict_to(self.max_bytes);
    }

    /// Removes least recently used objects that are not open until the total is at most
    /// `target` bytes (or only open ones are left).
    fn evict_to(&self, target: u64) {
        let mut s = self.lock();
        while s.total > target {
            let Some((d, size)) = s
                .objects
                .iter()
                .filter(|(_, o)| o.open == 0)
                .min_by_key(|(_, o)| o.used)
                .map(|(d, o)| (*d, o.size))
            else {
                break;
            };
            let _ = rustix::fs::unlinkat(&self.data, hex(&d).as_str(), AtFlags::empty());
            s.objects.remove(&d);
            s.total -= size;
            s.keys.retain(|_, (x, _)| *x != d);
            debug!("exec cache: evicted {} ({size} bytes)", hex(&d));
        }
    }
}

/// The names in a directory (without `.` and `..`).
fn list(dir: &impl AsFd) -> Vec<std::ffi::CString> {
    let Ok(d) = rustix::fs::Dir::read_from(dir) else {
        return Vec::new();
    };
    d.filter_map(|e| e.ok())
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect()
}

/// BLAKE3 of a whole file, read from its start.
fn hash_file(f: &mut File) -> std::io::Result<Digest> {
    use std::os::unix::fs::FileExt;
    // Read ahead further than by default: the whole file is read once, in order.
    let _ = rustix::fs::fadvise(&*f, 0, None, rustix::fs::Advice::Sequential);
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read_at(&mut buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tests::{make, Spec};
    use std::os::unix::fs::PermissionsExt;

    /// A package with `bin/a` (`n` bytes of a pattern) and `bin/b` (the same bytes).
    fn package(dir: &Path, n: usize, seed: u8) -> Arc<crate::view::Package> {
        let body: String = (0..n)
            .map(|i| (b'a' + ((i * 7 + seed as usize) % 26) as u8) as char)
            .collect();
        let a = format!("f:{body}");
        let spec = Spec {
            name: "p",
            version: "1.0.0",
            layer: 0,
            entries: &[("bin/a", &a), ("bin/z", "f:other")],
        };
        make(dir, seed as u32, &spec)
    }

    /// A package `q` with `aaa` and `lib/x` (`body`), lz4 in chunks of 64 KiB.
    fn other_package(dir: &Path, body: &[u8]) -> Arc<crate::view::Package> {
        use format::archive::tree::Meta;
        use format::archive::{BuildOptions, Compression, Content, Tree};
        let mut t = Tree::new();
        let m = Meta::new(0o755, 1);
        let lib = t.ensure_dir(b"lib", m).unwrap();
        let first: Arc<[u8]> = Arc::from(&b"something first"[..]);
        t.add_file(t.root(), b"aaa", Content::Bytes(first), 15, m)
            .unwrap();
        let b: Arc<[u8]> = Arc::from(body);
        t.add_file(lib, b"x", Content::Bytes(b), body.len() as u64, m)
            .unwrap();
        let man =
            format::manifest::Manifest::from_json(br#"{"name":"q","version":"2.0.0"}"#).unwrap();
        let out = dir.join("q.hpkg");
        let opts = BuildOptions {
            compression: Compression::Lz4,
            chunk_size: 64 << 10,
            ..BuildOptions::default()
        };
        format::archive::writer::write_archive(&t, &man, None, &opts, &out, &|_, _| {}).unwrap();
        Arc::new(crate::view::Package {
            slot: 9,
            layer: 0,
            path: out.clone(),
            archive: Arc::new(Archive::open(&out).unwrap()),
        })
    }

    fn entry(p: &crate::view::Package, path: &str) -> (EntryId, u64) {
        let e = p.archive.lookup_path(path.as_bytes()).unwrap().unwrap();
        (e, p.archive.attr(e).unwrap().size)
    }

    fn bytes_of(p: &crate::view::Package, path: &str) -> Vec<u8> {
        let (e, size) = entry(p, path);
        let mut buf = vec![0; size as usize];
        p.archive.read_at(e, 0, &mut buf).unwrap();
        buf
    }

    /// `n` packages of one 1.5 MiB file `bin/a` each (seeds `seed..`), and each file's key,
    /// entry and size.
    #[allow(clippy::type_complexity)]
    fn keyed_packages(
        dir: &Path,
        n: u8,
        seed: u8,
    ) -> (Vec<Arc<crate::view::Package>>, Vec<(Key, EntryId, u64)>) {
        let ps: Vec<_> = (0..n).map(|i| package(dir, 3 << 19, seed + i)).collect();
        let keyed = ps
            .iter()
            .map(|p| {
                let (e, size) = entry(p, "bin/a");
                (key_of(&p.archive, e, size).unwrap(), e, size)
            })
            .collect();
        (ps, keyed)
    }

    fn cache_dir() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("exec");
        (t, p)
    }

    #[test]
    fn fills_once_names_by_content_and_serves_checked_bytes() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        let p = package(pk.path(), 300_000, 1);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        // Created 0700.
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let (e, size) = entry(&p, "bin/a");
        let key = key_of(&p.archive, e, size).unwrap();
        assert!(c.find(&key, size).is_none(), "empty cache");
        let d = c.fill(&key, &p.archive, e, size).unwrap();
        let want = bytes_of(&p, "bin/a");
        assert_eq!(d, *blake3::hash(&want).as_bytes(), "named by its bytes");
        assert_eq!(std::fs::read(c.object_path(&d)).unwrap(), want);
        let o = c.find(&key, size).expect("cached now");
        assert_eq!(o.digest, d);
        assert!(!o.hashed, "bytes hashed as written are not hashed again");
        assert_eq!(c.stats().open, 1);
        drop(o);
        assert_eq!(c.stats().open, 0);
        // A new life (a remount, a reboot) finds it, and serves it without a hash: the
        // record says these bytes were hashed as the file is now.
        c.save_record(false).unwrap();
        drop(c);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert_eq!(c.stats().objects, 1);
        assert_eq!(c.stats().recorded, 1);
        let o = c.find(&key, size).expect("survives a restart");
        assert!(
            !o.hashed && o.recorded,
            "served on the strength of the record"
        );
        let mut got = Vec::new();
        (&o.file).read_to_end(&mut got).unwrap();
        assert_eq!(got, want);
        drop(o);
        let o = c.find(&key, size).unwrap();
        assert!(!o.hashed && !o.recorded, "a later open: one fstat");
        drop(o);
        // With `full`, the record is not believed: hashed once per life.
        drop(c);
        let c = Arc::new(ExecCache::open_with(&dir, 64 << 20, Verify::Full).unwrap());
        assert_eq!(c.stats().recorded, 0);
        let o = c.find(&key, size).unwrap();
        assert!(o.hashed && !o.recorded);
        drop(o);
        assert!(!c.find(&key, size).unwrap().hashed, "once per life");
        // A `full` daemon that did not use an object writes back what the record said of
        // it: the next `stat` daemon still serves it unhashed.
        drop(c);
        let c = Arc::new(ExecCache::open_with(&dir, 64 << 20, Verify::Full).unwrap());
        c.save_record(true).unwrap();
        drop(c);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert_eq!(c.stats().recorded, 1, "{}", record_of(&dir));
        // Another package with the same bytes, stored differently (lz4, 64 KiB chunks, at
        // another offset), shares the object.
        let other = other_package(pk.path(), &want);
        let (e2, s2) = entry(&other, "lib/x");
        let k2 = key_of(&other.archive, e2, s2).unwrap();
        assert_ne!(k2, key, "stored differently");
        assert_eq!(c.fill(&k2, &other.archive, e2, s2).unwrap(), d);
        assert_eq!(c.stats().objects, 1, "one object for the same bytes");
    }

    #[test]
    fn a_tampered_object_is_detected_removed_and_not_served() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        let p = package(pk.path(), 100_000, 2);
        let (e, size) = entry(&p, "bin/a");
        let key = key_of(&p.archive, e, size).unwrap();
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        let d = c.fill(&key, &p.archive, e, size).unwrap();
        let path = c.object_path(&d);
        // Changed behind the daemon's back, same size.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[5000] ^= 1;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert!(c.find(&key, size).is_none(), "changed in this life");
        assert!(!path.exists(), "removed");
        // Refilled, then changed between two lives with its times put back.
        let d2 = c.fill(&key, &p.archive, e, size).unwrap();
        assert_eq!(d2, d);
        drop(c);
        let st = std::fs::metadata(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let f = File::options().write(true).open(&path).unwrap();
        f.set_modified(st.modified().unwrap()).unwrap();
        drop(f);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert!(c.find(&key, size).is_none(), "changed between lives");
        assert!(!path.exists());
        assert_eq!(c.stats().objects, 0);
        // A key that names an object of another size is not believed either.
        c.fill(&key, &p.archive, e, size).unwrap();
        assert!(c.find(&key, size + 1).is_none());
    }

    #[test]
    fn a_leftover_temp_file_is_never_used_and_is_swept() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        let p = package(pk.path(), 50_000, 3);
        let (e, size) = entry(&p, "bin/a");
        let key = key_of(&p.archive, e, size).unwrap();
        drop(ExecCache::open(&dir, 64 << 20).unwrap());
        // A crash mid-fill: a half-written temp file of a process that is gone (pid 0 is
        // nobody's; our own pid's leftovers are from an earlier life of this process).
        let half = &bytes_of(&p, "bin/a")[..1000];
        std::fs::write(dir.join("tmp").join("999999999-0"), half).unwrap();
        std::fs::write(
            dir.join("tmp").join(format!("{}-7", std::process::id())),
            half,
        )
        .unwrap();
        // ... and an object that is a symlink, and one that is not named by a hash.
        std::os::unix::fs::symlink("/etc/passwd", dir.join("data").join(hex(&[1; 32]))).unwrap();
        std::fs::write(dir.join("data").join("junk"), b"x").unwrap();
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.join("tmp")).unwrap().count(),
            0,
            "swept"
        );
        assert_eq!(
            std::fs::read_dir(dir.join("data")).unwrap().count(),
            0,
            "swept"
        );
        assert!(
            c.find(&key, size).is_none(),
            "a temp file is never an object"
        );
        // A key whose object is gone was removed at start.
        let d = c.fill(&key, &p.archive, e, size).unwrap();
        std::fs::remove_file(c.object_path(&d)).unwrap();
        drop(c);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert_eq!(std::fs::read_dir(dir.join("keys")).unwrap().count(), 0);
        assert!(c.find(&key, size).is_none());
        // A temp file of a live writer (this test's parent, say) is left alone.
        let ppid = rustix::process::getppid().unwrap().as_raw_nonzero();
        std::fs::write(dir.join("tmp").join(format!("{ppid}-1")), half).unwrap();
        drop(c);
        drop(ExecCache::open(&dir, 64 << 20).unwrap());
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 1);
    }

    #[test]
    fn stays_within_its_size_evicting_the_least_recently_used_that_are_not_open() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        // Four files of 1.5 MiB in a cache of 4 MiB: two fit.
        let (ps, keyed) = keyed_packages(pk.path(), 4, 10);
        let c = Arc::new(ExecCache::open(&dir, 4 << 20).unwrap());
        let fill = |i: usize| {
            let (k, e, s) = keyed[i];
            c.fill(&k, &ps[i].archive, e, s).unwrap()
        };
        let find = |i: usize| c.find(&keyed[i].0, keyed[i].2);
        fill(0);
        fill(1);
        // 0 is open (a running program), 1 is not: filling 2 evicts 1.
        let open0 = find(0).expect("0 cached");
        fill(2);
        assert!(c.stats().bytes <= 4 << 20);
        assert!(find(1).is_none(), "1 evicted");
        assert!(find(2).is_some());
        // 0 stays open; filling 3 evicts 2, the least recently used of those not open.
        fill(3);
        assert!(find(2).is_none(), "2 evicted");
        assert!(find(0).is_some(), "open: kept");
        assert!(find(3).is_some());
        drop(open0);
        // Nothing open: the least recent (0, used before 3) goes.
        fill(1);
        assert_eq!(c.stats().objects, 2);
        assert!(find(0).is_none());
        assert!(find(3).is_some() && find(1).is_some());
        assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 2);
        // A file larger than the whole cache is not filled.
        let big = package(pk.path(), 5 << 20, 20);
        let (e, s) = entry(&big, "bin/a");
        let k = key_of(&big.archive, e, s).unwrap();
        assert!(matches!(
            c.fill(&k, &big.archive, e, s),
            Err(Error::TooLarge { .. })
        ));
        // A smaller limit at the next start evicts down to it.
        drop(c);
        let c = ExecCache::open(&dir, 2 << 20).unwrap();
        assert_eq!(c.stats().objects, 1);
    }

    #[test]
    fn files_filled_by_another_daemon_count_toward_the_size_once_found() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        let (ps, keyed) = keyed_packages(pk.path(), 3, 30);
        let mine = Arc::new(ExecCache::open(&dir, 4 << 20).unwrap());
        let other = Arc::new(ExecCache::open(&dir, 4 << 20).unwrap());
        for i in 0..2 {
            let (k, e, s) = keyed[i];
            other.fill(&k, &ps[i].archive, e, s).unwrap();
        }
        assert_eq!(mine.stats().bytes, 0, "not seen yet");
        for (k, _, s) in &keyed[..2] {
            assert!(mine.find(k, *s).is_some());
        }
        assert_eq!(mine.stats().bytes, 3 << 20, "counted once found");
        let (k, e, s) = keyed[2];
        mine.fill(&k, &ps[2].archive, e, s).unwrap();
        assert!(mine.stats().bytes <= 4 << 20);
        let on_disk: u64 = std::fs::read_dir(dir.join("data"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= 4 << 20, "{on_disk} bytes on disk");
    }

    #[test]
    fn refuses_a_directory_that_is_a_symlink_foreign_or_open_to_others() {
        let (t, dir) = cache_dir();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::fs::set_permissions(
            t.path().join("real"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), &dir).unwrap();
        let e = ExecCache::open(&dir, 64 << 20).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("exec cache {}: is a symlink (refused)", dir.display())
        );
        assert!(!e.contains('\n'));
        std::fs::remove_file(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = ExecCache::open(&dir, 64 << 20).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "exec cache {}: has mode 1777: only its owner may enter it (chmod 700 {})",
                dir.display(),
                dir.display()
            )
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(ExecCache::open(&dir, 64 << 20).is_err(), "group may enter");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Owned by someone else (only root can make that here).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let e = ExecCache::open(&dir, 64 << 20).unwrap_err().to_string();
            assert!(
                e.ends_with("is owned by uid 65534, not by the daemon's uid 0 (refused)"),
                "{e}"
            );
            std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        }
        // A subdirectory replaced by a symlink.
        std::os::unix::fs::symlink(t.path().join("real"), dir.join("data")).unwrap();
        let e = ExecCache::open(&dir, 64 << 20).unwrap_err().to_string();
        assert!(e.ends_with("data: is not a directory (refused)"), "{e}");
        std::fs::remove_file(dir.join("data")).unwrap();
        assert!(ExecCache::open(&dir, 64 << 20).is_ok());
        // A file where the directory should be.
        let f = t.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert!(ExecCache::open(&f, 64 << 20)
            .unwrap_err()
            .to_string()
            .ends_with("is not a directory"));
    }

    #[test]
    fn a_bad_chunk_fails_the_fill_and_leaves_nothing_behind() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        let p = package(pk.path(), 600_000, 4);
        let (e, size) = entry(&p, "bin/a");
        let key = key_of(&p.archive, e, size).unwrap();
        // Flip a byte of the heap's second chunk in the package file.
        let info = p.archive.chunk_info(1).unwrap();
        let at = p.archive.header().heap.offset + info.offset + info.stored_len as u64 / 2;
        let mut bytes = std::fs::read(&p.path).unwrap();
        bytes[at as usize] ^= 0xff;
        std::fs::write(&p.path, &bytes).unwrap();
        let broken = Archive::open(&p.path).unwrap();
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        let err = c.fill(&key, &broken, e, size).unwrap_err().to_string();
        assert_eq!(err, "chunk 1 does not match its hash");
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(dir.join("data")).unwrap().count(), 0);
        assert!(c.find(&key, size).is_none());
    }

    /// A cache with `bin/a` of a package filled and the record written; the daemon gone.
    fn filled(dir: &Path, pk: &Path) -> (Key, u64, PathBuf, Vec<u8>) {
        let p = package(pk, 200_000, 5);
        let (e, size) = entry(&p, "bin/a");
        let key = key_of(&p.archive, e, size).unwrap();
        let c = Arc::new(ExecCache::open(dir, 64 << 20).unwrap());
        let d = c.fill(&key, &p.archive, e, size).unwrap();
        c.save_record(false).unwrap();
        (key, size, c.object_path(&d), bytes_of(&p, "bin/a"))
    }

    fn record_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(RECORD)).unwrap()
    }

    #[test]
    fn a_file_changed_after_it_was_recorded_is_hashed_and_not_served() {
        let pk = tempfile::tempdir().unwrap();
        // Written in place between two lives, same size, its mtime put back: the ctime
        // (which cannot be set from user space) tells.
        let (_t, dir) = cache_dir();
        let (key, size, path, want) = filled(&dir, pk.path());
        let st = std::fs::metadata(&path).unwrap();
        let mut bad = want.clone();
        bad[1234] ^= 1;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, &bad).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(st.modified().unwrap())
            .unwrap();
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert_eq!(c.stats().recorded, 1, "recorded, but no longer as it is");
        assert!(c.find(&key, size).is_none(), "changed in place: not served");
        assert!(!path.exists(), "removed");
        drop(c);

        // Replaced by a rename of another file over it (same bytes even: another inode).
        let (_t, dir) = cache_dir();
        let (key, size, path, want) = filled(&dir, pk.path());
        let other = dir.join("tmp").join("other");
        std::fs::write(&other, &bad).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert!(c.find(&key, size).is_none(), "replaced: not served");
        assert!(!path.exists());
        // The same bytes under a new inode are hashed, found right and served.
        let good = dir.join("tmp").join("good");
        std::fs::write(&good, &want).unwrap();
        std::fs::rename(&good, &path).unwrap();
        drop(c);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        let o = c.find(&key, size).expect("right bytes");
        assert!(o.hashed, "another inode than recorded: hashed");
        drop(o);
        // ... and the record written after the hash believes it in the next life.
        c.save_record(false).unwrap();
        drop(c);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert!(c.find(&key, size).unwrap().recorded);
        drop(c);

        // Truncated and grown back to its size between two lives.
        let (_t, dir) = cache_dir();
        let (key, size, path, _) = filled(&dir, pk.path());
        let f = File::options().write(true).open(&path).unwrap();
        f.set_len(10).unwrap();
        f.set_len(size).unwrap();
        drop(f);
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        assert!(c.find(&key, size).is_none(), "truncated: not served");
    }

    #[test]
    fn a_record_that_is_not_whole_or_not_ours_is_not_believed() {
        let pk = tempfile::tempdir().unwrap();
        let (_t, dir) = cache_dir();
        let (key, size, _, _) = filled(&dir, pk.path());
        let whole = record_of(&dir);
        assert!(
            whole.starts_with(RECORD_HEADER) && whole.ends_with("end 1\n"),
            "{whole}"
        );
        let believed = |dir: &Path| {
            let c = Arc::new(ExecCache::open(dir, 64 << 20).unwrap());
            let r = c.stats().recorded;
            let o = c.find(&key, size).expect("right bytes are served");
            assert_eq!(o.hashed, r == 0);
            r == 1
        };
        assert!(believed(&dir));
        // A crash while writing the record: its temp file is never read, and swept; the
        // record in place is the last whole one.
        std::fs::write(dir.join("tmp").join("v999999999-3"), &whole[..20]).unwrap();
        assert!(believed(&dir));
        assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
        // A record cut short (as a file system without ordered data could leave it), or
        // with its count wrong: not believed at all, every object is hashed.
        let cut = &whole[..whole.len() - 8];
        for bad in [cut.to_string(), whole.replace("end 1", "end 2")] {
            std::fs::remove_file(dir.join(RECORD)).unwrap();
            std::fs::write(dir.join(RECORD), bad).unwrap();
            assert!(!believed(&dir));
        }
        // Rewritten whole at the end of that life (by the hash of the open above).
        let c = Arc::new(ExecCache::open(&dir, 64 << 20).unwrap());
        drop(c.find(&key, size));
        c.save_record(false).unwrap();
        drop(c);
        assert!(believed(&dir));
        // A record that is a symlink, or has two links: not read.
        let elsewhere = dir.parent().unwrap().join("elsewhere");
        std::fs::write(&elsewhere, record_of(&dir)).unwrap();
        std::fs::remove_file(dir.join(RECORD)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(RECORD)).unwrap();
        assert!(!believed(&dir));
        std::fs::remove_file(dir.join(RECORD)).unwrap();
        std::fs::hard_link(&elsewhere, dir.join(RECORD)).unwrap();
        assert!(!believed(&dir));
    }

    #[test]
    fn the_record_keeps_the_order_of_use_across_lives() {
        let (_t, dir) = cache_dir();
        let pk = tempfile::tempdir().unwrap();
        // Three files of 1.5 MiB in a cache of 4 MiB.
        let (ps, keyed) = keyed_packages(pk.path(), 3, 40);
        let c = Arc::new(ExecCache::open(&dir, 4 << 20).unwrap());
        for i in [0, 1] {
            let (k, e, s) = keyed[i];
            c.fill(&k, &ps[i].archive, e, s).unwrap();
        }
        // 0 is used after 1: 1 is the least recently used.
        drop(c.find(&keyed[0].0, keyed[0].2).unwrap());
        c.save_record(true).unwrap();
        drop(c);
        let c = Arc::new(ExecCache::open(&dir, 4 << 20).unwrap());
        let (k, e, s) = keyed[2];
        c.fill(&k, &ps[2].archive, e, s).unwrap();
        assert!(c.find(&keyed[1].0, keyed[1].2).is_none(), "1 evicted");
        assert!(c.find(&keyed[0].0, keyed[0].2).is_some(), "0 kept");
    }

    #[test]
    fn a_record_parses_only_whole_and_well_formed() {
        let d = hex(&[7; 32]);
        let e = hex(&[8; 32]);
        let ok = format!("{RECORD_HEADER}\n{d} 1 2 3 4 5 6 7\n{e} -\nend 2\n");
        let r = parse_record(ok.as_bytes()).unwrap();
        assert_eq!(r[&[8; 32]], (1, None));
        let i = r[&[7; 32]].1.unwrap();
        assert_eq!(
            (i.dev, i.ino, i.size, i.mtime, i.ctime),
            (1, 2, 3, (4, 5), (6, 7))
        );
        assert!(parse_record(format!("{RECORD_HEADER}\nend 0\n").as_bytes()).is_some());
        // Every prefix of a whole record (a write cut short) is refused, and so is junk.
        for n in 0..ok.len() {
            assert!(parse_record(&ok.as_bytes()[..n]).is_none(), "{n}");
        }
        for bad in [
            ok.replace("end 2", "end 3"),
            ok.replace(" 7\n", " 7 8\n"),
            ok.replace(" 5 ", " 1000000000 "),
            ok.replace(" 2 3 ", " -2 3 "),
            ok.replace(&e, &d),
            ok.replace("v1", "v2"),
            ok.replace("end 2\n", "end 2\nmore\n"),
            "\u{0}\u{ff}".into(),
        ] {
            assert!(parse_record(bad.as_bytes()).is_none(), "{bad}");
        }
    }
}
