//! A layer's state on disk: the active set, numbered generations, retained package files.
//!
//! ```text
//! <layer>/packages/                    the drop zone (.hpkg files)
//! <layer>/state/lock                   flock()ed by every writer
//! <layer>/state/active.list            the current set (a copy of one generation's list)
//! <layer>/state/generations/N/active.list   every set there has been, N = 1, 2, ...
//! <layer>/state/pool/<id>.hpkg         the pool's own copy (a reflink where the file
//!                                      system can) of every package a kept generation
//!                                      names, so a rollback never finds it gone or changed
//! <layer>/state/seen                   which file of packages/ held which package when the
//!                                      set last accounted for it (see [`Seen`])
//! ```
//!
//! The pool never shares an inode with `packages/`: a package file overwritten in place
//! (`cp new.hpkg packages/same-name.hpkg`), truncated or filled with garbage changes that
//! file only, never the bytes a kept generation relies on.
//!
//! Every file is written crash-safely: to a temp file in the same directory, fsync, rename
//! over the target, fsync the directory. A generation's directory is complete before
//! `active.list` names it, so a crash leaves the layer at the old or the new generation.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use format::active_list::ActiveList;
use format::archive::PackageId;

/// Errors of the state files, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on a file.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A state file does not parse.
    #[error("{}: {reason}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No such generation.
    #[error("layer {layer}: no generation {n}", n = .0, layer = .1.display())]
    NoGeneration(u64, PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The paths of one layer directory.
#[derive(Debug, Clone)]
pub struct LayerPaths {
    /// The layer directory.
    pub dir: PathBuf,
}

impl LayerPaths {
    /// Paths under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> LayerPaths {
        LayerPaths { dir: dir.into() }
    }
    /// `packages/`
    pub fn packages(&self) -> PathBuf {
        self.dir.join("packages")
    }
    /// `state/`
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// `state/active.list`
    pub fn active_list(&self) -> PathBuf {
        self.state().join("active.list")
    }
    /// `state/generations/`
    pub fn generations(&self) -> PathBuf {
        self.state().join("generations")
    }
    /// `state/generations/N/active.list`
    pub fn generation_list(&self, n: u64) -> PathBuf {
        self.generations().join(n.to_string()).join("active.list")
    }
    /// `state/pool/`
    pub fn pool(&self) -> PathBuf {
        self.state().join("pool")
    }
    /// `state/pool/<id>.hpkg`
    pub fn pool_file(&self, id: &PackageId) -> PathBuf {
        self.pool().join(format!("{id}.hpkg"))
    }
    /// `state/served`: the list the running daemon serves for the layer, written by the
    /// daemon after each switch of its view (`pkgtool update` waits for it).
    pub fn served(&self) -> PathBuf {
        self.state().join("served")
    }

    /// `state/transaction`: the record of an update in progress (see
    /// [`crate::update::TxnRecord`]).
    pub fn transaction(&self) -> PathBuf {
        self.state().join("transaction")
    }

    /// `state/transaction.lock`: held by the process running an update for as long as it
    /// runs; a record whose lock is free was left by a process that died.
    pub fn transaction_lock(&self) -> PathBuf {
        self.state().join("transaction.lock")
    }

    /// `state/seen`: the files of `packages/` the active set has accounted for.
    pub fn seen(&self) -> PathBuf {
        self.state().join("seen")
    }
    /// `state/stack`: the layer's name and the layers below it, as packagefs last
    /// mounted them.
    pub fn stack_record(&self) -> PathBuf {
        self.state().join("stack")
    }
}

/// Where a layer sits in a mount: its name there and the layers below it (name and
/// directory, lowest first). packagefs writes it to `state/stack` at mount, so that
/// pkgtool, given just this layer, checks a change against the same layers below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackRecord {
    /// The layer's name in the mount.
    pub name: String,
    /// The layers below it, lowest first.
    pub below: Vec<(String, PathBuf)>,
}

impl StackRecord {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut t = String::from(
            "# packagefs layer stack: this layer's name and the layers below it, lowest first\n",
        );
        t.push_str(&format!("# layer: {}\n", self.name));
        for (n, d) in &self.below {
            t.push_str(&format!("{n}={}\n", d.display()));
        }
        t
    }

    /// Parses the file's text; `None` if it is not one (no `# layer:` line, a bad line).
    pub fn parse(text: &str) -> Option<StackRecord> {
        let mut name = None;
        let mut below = Vec::new();
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("# layer: ") {
                name = Some(n.trim().to_owned());
            } else if line.starts_with('#') || line.trim().is_empty() {
                continue;
            } else {
                let (n, d) = line.split_once('=')?;
                if n.is_empty() || d.is_empty() || !Path::new(d).is_absolute() {
                    return None;
                }
                below.push((n.to_owned(), PathBuf::from(d)));
            }
        }
        Some(StackRecord {
            name: name.filter(|n| !n.is_empty())?,
            below,
        })
    }

    /// Reads layer `layer`'s record, if it has a valid one.
    pub fn read(layer: &LayerPaths) -> Option<StackRecord> {
        let text = read_state_file(&layer.stack_record(), 1 << 20).ok()?;
        StackRecord::parse(&text)
    }

    /// Writes it to layer `layer` (crash-safely; not if it is already there).
    pub fn write(&self, layer: &LayerPaths) -> Result<(), StateError> {
        let _as = crate::owner::AsOwner::enter(layer);
        if StackRecord::read(layer).as_ref() == Some(self) {
            return Ok(());
        }
        write_atomic(&layer.stack_record(), self.to_text().as_bytes())
    }
}

/// Which file of `packages/` held which package when the layer's set last accounted for it
/// (`state/seen`): a file named here with the package it holds now was a drop already
/// decided (activated, or left inactive: older than the active version, rolled back from);
/// a file not named here, or holding another package, is a drop still to decide; a name
/// here whose file is gone is a deletion. Every writer of the set updates it in the same
/// locked step as the set, so the daemon and pkgtool never take each other's work for news,
/// whatever the clock says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// File name in `packages/` -> the package it held.
    pub files: std::collections::BTreeMap<String, PackageId>,
}

impl Seen {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut t =
            String::from("# packagefs: the files of packages/ the active set has accounted for\n");
        for (name, id) in &self.files {
            t.push_str(&format!("{id} {name}\n"));
        }
        t
    }

    /// Parses the file's text; `None` if a line is not `ID NAME`.
    pub fn parse(text: &str) -> Option<Seen> {
        let mut files = std::collections::BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (id, name) = line.split_once(' ')?;
            let id = format::active_list::parse_id(id)?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            files.insert(name.to_owned(), id);
        }
        Some(Seen { files })
    }

    /// Reads layer `layer`'s record: `Ok(None)` if it has none (a layer written by an older
    /// packagefs, or one never mounted); an unreadable or malformed one is an error.
    pub fn read(layer: &LayerPaths) -> Result<Option<Seen>, StateError> {
        let path = layer.seen();
        match read_state_file(&path, format::active_list::MAX_LEN as u64) {
            Ok(t) => Seen::parse(&t).map(Some).ok_or_else(|| StateError::Bad {
                path,
                reason: "not a list of `ID NAME` lines".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Writes it to layer `layer` (crash-safely; the caller holds the [`Lock`]).
    pub fn write(&self, layer: &LayerPaths) -> Result<(), StateError> {
        write_atomic(&layer.seen(), self.to_text().as_bytes())
    }
}

/// An exclusive lock on a layer's state (`flock` on `state/lock`), released on drop.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for and takes the layer's lock, creating `state/` if needed.
    pub fn acquire(layer: &LayerPaths) -> Result<Lock, StateError> {
        let _as = crate::owner::AsOwner::enter(layer);
        let state = layer.state();
        // The layer's own directory, never a link to someone else's.
        match fs::symlink_metadata(&state) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(StateError::Bad {
                    path: state,
                    reason: "not a directory of the layer's own (a link or a file)".into(),
                })
            }
            Err(_) => fs::create_dir_all(&state).map_err(io_err(&state))?,
        }
        let path = state.join("lock");
        let file = open_lock_file(&path)?;
        loop {
            // SAFETY: flock on a valid fd.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                remove_stale_temps(layer);
                return Ok(Lock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(StateError::Io { path, source: e });
            }
        }
    }
}

/// Opens (creating) a layer's lock file: never through a symlink (a root writer would
/// create or lock whatever it points to) and never blocking (an open for writing of a
/// FIFO waits for a reader). A user layer's `state/` belongs to its user: anything named
/// `lock` that is not a regular file is not packagefs's lock, and is replaced, once.
fn open_lock_file(path: &Path) -> Result<File, StateError> {
    if let Ok(md) = fs::symlink_metadata(path) {
        if md.is_dir() {
            fs::remove_dir(path).map_err(io_err(path))?;
        } else if !md.is_file() {
            fs::remove_file(path).map_err(io_err(path))?;
        }
    }
    // O_NOFOLLOW and the check after opening cover a swap between the two steps.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))?;
    if !file.metadata().map_err(io_err(path))?.is_file() {
        return Err(StateError::Io {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    Ok(file)
}

/// Removes what a writer killed half-way left behind: `.tmp-*` files under `state/` and
/// `.install-*` files in `packages/`. Only called with the lock held, when no other
/// writer can be half-way.
fn remove_stale_temps(layer: &LayerPaths) {
    let mut dirs = vec![layer.state(), layer.pool(), layer.packages()];
    if let Ok(rd) = fs::read_dir(layer.generations()) {
        // (A link among the generations is not followed into someone else's directory.)
        dirs.extend(
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    for d in dirs {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") || name.starts_with(".install-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Writes `bytes` to `path` crash-safely (temp file, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    // State files are public (pkgtool run by a layer's user reads the layers below it);
    // a temp file is created 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err(path))?;
    }
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| StateError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// fsyncs a directory (so a rename in it is durable).
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads an `active.list`; `Ok(None)` if it does not exist.
pub fn read_list(path: &Path) -> Result<Option<ActiveList>, StateError> {
    let text = match read_state_file(path, format::active_list::MAX_LEN as u64) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    ActiveList::parse(&text)
        .map(Some)
        .map_err(|e| StateError::Bad {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Reads a small file of a layer's state: it must be a regular file (a FIFO would block
/// the reader, a device could be endless) of at most `max` bytes. A user layer's `state/`
/// belongs to its user; the daemon reading it must not hang or run out of memory.
pub fn read_state_bytes(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    // Never through a link: a user's state/ could point anywhere.
    crate::owner::open_in_layer(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than the {max} bytes a state file may have"),
        ));
    }
    Ok(bytes)
}

/// [`read_state_bytes`], as UTF-8 text.
pub fn read_state_file(path: &Path, max: u64) -> io::Result<String> {
    String::from_utf8(read_state_bytes(path, max)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The generation numbers present, ascending.
pub fn generation_numbers(layer: &LayerPaths) -> Result<Vec<u64>, StateError> {
    let dir = layer.generations();
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut ns: Vec<u64> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|n| layer.generation_list(*n).exists())
        .collect();
    ns.sort_unstable();
    Ok(ns)
}

/// Records `list` as a new generation (numbered one past the highest) and makes it the
/// active set. `files` maps each package id of the list to a file holding it, which is
/// retained in the pool first. The caller holds the [`Lock`]. Returns the number.
pub fn commit(
    layer: &LayerPaths,
    mut list: ActiveList,
    reason: &str,
    time: &str,
    files: &dyn Fn(&PackageId) -> Option<PathBuf>,
) -> Result<u64, StateError> {
    let n = generation_numbers(layer)?.last().copied().unwrap_or(0) + 1;
    let before = read_list(&layer.active_list()).ok().flatten();
    let mut copies = Vec::new();
    for e in &list.entries {
        if let Some(c) = retain(layer, &e.id, files(&e.id).as_deref())? {
            copies.push(c);
        }
    }
    persist_copies(layer, copies)?;
    list.meta.insert("generation".into(), n.to_string());
    list.meta.insert("time".into(), time.to_owned());
    list.meta.insert("reason".into(), reason.to_owned());
    let text = list.to_text();
    write_atomic(&layer.generation_list(n), text.as_bytes())?;
    sync_dir(&layer.generations())?;
    write_atomic(&layer.active_list(), text.as_bytes())?;
    let rec = crate::journal::Record::new(kind_of(reason), reason).between(before.as_ref(), &list);
    crate::journal::append(layer, &rec)?;
    Ok(n)
}

/// The kind of a change, for the audit trail, from a generation's reason (`install +a`,
/// `remove -b`, `dropped a.hpkg; deleted b.hpkg`, `first generation from packages/`).
fn kind_of(reason: &str) -> &'static str {
    match reason.split_whitespace().next().unwrap_or("") {
        "install" => "install",
        "remove" => "remove",
        "update" => "update",
        "dropped" | "deleted" => "packages",
        "first" => "first",
        "adopt" | "adopted" => "adopt",
        "rollback" => "rollback",
        _ => "change",
    }
}

/// Makes generation `n` the active set again (a rollback): `active.list` becomes a copy of
/// its list. Every package it names is in the pool.
///
/// `kind` and `reason` go to the audit trail ([`crate::journal`]): `rollback` by a user,
/// `boot-assessment` when spent boot tries took the machine back, `health-rollback`.
pub fn switch_to(
    layer: &LayerPaths,
    n: u64,
    kind: &str,
    reason: &str,
) -> Result<ActiveList, StateError> {
    let path = layer.generation_list(n);
    let before = read_list(&layer.active_list()).ok().flatten();
    let list = read_list(&path)?.ok_or_else(|| StateError::NoGeneration(n, layer.dir.clone()))?;
    for e in &list.entries {
        let f = layer.pool_file(&e.id);
        if !f.exists() {
            return Err(StateError::Bad {
                path: f,
                reason: format!(
                    "package {} of generation {n} is missing from the pool",
                    e.label
                ),
            });
        }
    }
    write_atomic(&layer.active_list(), list.to_text().as_bytes())?;
    let rec = crate::journal::Record::new(kind, reason).between(before.as_ref(), &list);
    crate::journal::append(layer, &rec)?;
    Ok(list)
}

/// Keeps a package in the pool: the pool's own copy of `src` (see [`prepare_copy`] and [`persist_copies`]). A
/// pool file left by an older packagefs as a hard link to a file of `packages/` (nlink > 1)
/// is replaced by a copy of itself, so a later write to that file cannot reach it.
fn retain(
    layer: &LayerPaths,
    id: &PackageId,
    src: Option<&Path>,
) -> Result<Option<PoolCopy>, StateError> {
    use std::os::unix::fs::MetadataExt;
    let dst = layer.pool_file(id);
    let shared = match fs::symlink_metadata(&dst) {
        Ok(md) if md.is_file() && md.nlink() == 1 => return Ok(None),
        Ok(md) => md.is_file(),
        Err(_) => false,
    };
    let src = match (src, shared) {
        (Some(s), _) => s.to_owned(),
        (None, true) => dst.clone(),
        (None, false) => {
            return Err(StateError::Bad {
                path: dst,
                reason: format!("no file holds package {id}"),
            })
        }
    };
    prepare_copy(layer, id, &src).map(Some)
}

/// Breaks every hard link between the pool and anything else (pool files written by an
/// older packagefs, which linked them to `packages/`): each becomes a copy of its own,
/// checked like any pool copy. A link whose bytes no longer match their package is left
/// as it is (it is already damaged; the generations naming it do not open whole). The
/// caller holds the [`Lock`]. Returns the number of files copied.
pub fn unshare_pool(layer: &LayerPaths) -> Result<usize, StateError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = fs::read_dir(layer.pool()) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".hpkg"))
            .and_then(format::active_list::parse_id)
        else {
            continue;
        };
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if md.is_file() && md.nlink() > 1 {
            if let Ok(c) = prepare_copy(layer, &id, &e.path()) {
                persist_copies(layer, vec![c])?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// A checked copy for the pool, not yet durable nor in place ([`persist_copies`]).
pub struct PoolCopy {
    /// Closed: a first generation of a thousand packages holds no thousand descriptors.
    tmp: tempfile::TempPath,
    dst: PathBuf,
}

/// Makes checked copies durable and renames them into the pool: one `syncfs` of the pool's
/// file system for all of them (a thousand packages of a first generation would otherwise
/// cost a thousand fsyncs), then the renames, then one fsync of the pool directory.
pub fn persist_copies(layer: &LayerPaths, copies: Vec<PoolCopy>) -> Result<(), StateError> {
    if copies.is_empty() {
        return Ok(());
    }
    let pool = layer.pool();
    if copies.len() == 1 {
        File::open(&copies[0].tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&copies[0].dst))?;
    } else {
        let dir = File::open(&pool).map_err(io_err(&pool))?;
        // SAFETY: syncfs on a valid descriptor.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io_err(&pool)(io::Error::last_os_error()));
        }
    }
    for c in copies {
        c.tmp.persist(&c.dst).map_err(|e| StateError::Io {
            path: c.dst.clone(),
            source: e.error,
        })?;
    }
    sync_dir(&pool)
}

/// Writes the pool's copy of package `id` from `src`: a reflink (`FICLONE`) where the file
/// system can make one, a copy (`copy_file_range`) otherwise, to a temp file that is then
/// checked (the package id and every chunk's hash: `src` may be changing under the copy,
/// or be the wrong file) and made read-only. On any failure (a full disk, a changed
/// source) nothing is left behind and the pool is as it was.
pub fn prepare_copy(
    layer: &LayerPaths,
    id: &PackageId,
    src: &Path,
) -> Result<PoolCopy, StateError> {
    use std::os::unix::fs::PermissionsExt;
    let pool = layer.pool();
    fs::create_dir_all(&pool).map_err(io_err(&pool))?;
    let dst = layer.pool_file(id);
    let mut from = crate::owner::open_in_layer(src).map_err(io_err(src))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&pool)
        .map_err(io_err(&pool))?;
    // SAFETY: FICLONE on two valid file descriptors; failure is reported, not UB.
    let cloned = unsafe {
        libc::ioctl(
            tmp.as_file().as_raw_fd(),
            libc::FICLONE as _,
            from.as_raw_fd(),
        )
    } == 0;
    if !cloned {
        io::copy(&mut from, tmp.as_file_mut()).map_err(io_err(&dst))?;
    }
    let bad = |reason: String| StateError::Bad {
        path: src.to_owned(),
        reason,
    };
    let copy = format::archive::Archive::open(tmp.path())
        .map_err(|e| bad(format!("its copy for the pool does not open: {e}")))?;
    if copy.id() != *id {
        return Err(bad(format!(
            "holds package {} now, not {id} (changed while it was copied?)",
            copy.id()
        )));
    }
    // A chunk of the copy that does not match its hash: the source changed while it was
    // copied (take the source's chunk now, if that one matches), or the package is damaged
    // there in the source too (then the copy is as good as the source: its reads of that
    // chunk fail with EIO either way, and the rest is served).
    let mut source: Option<format::archive::Archive> = None;
    let mut buf = Vec::new();
    // A thin package has no heap here to check (its chunks are checked as they arrive).
    let chunks = if copy.is_thin() {
        0
    } else {
        copy.chunk_count()
    };
    for c in 0..chunks {
        if copy.verify_chunk(c).is_ok() {
            continue;
        }
        if source.is_none() {
            let a = crate::owner::open_in_layer(src)
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    format::archive::Archive::from_file(f, src).map_err(|e| e.to_string())
                })
                .map_err(|e| bad(format!("does not open any more: {e}")))?;
            if a.id() != *id {
                return Err(bad(format!("holds package {} now, not {id}", a.id())));
            }
            source = Some(a);
        }
        let Some(a) = source.as_ref() else { continue };
        if a.verify_chunk(c).is_err() {
            continue;
        }
        let info = a.read_stored(c, &mut buf).map_err(|e| bad(e.to_string()))?;
        std::os::unix::fs::FileExt::write_all_at(
            tmp.as_file(),
            &buf,
            copy.header().heap.offset + info.offset,
        )
        .map_err(io_err(&dst))?;
        copy.verify_chunk(c)
            .map_err(|e| bad(format!("changes while it is copied: {e}")))?;
    }
    drop(copy);
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o444))
        .map_err(io_err(&dst))?;
    Ok(PoolCopy {
        tmp: tmp.into_temp_path(),
        dst,
    })
}

/// Deletes all but the newest `keep` generations (never the active one, nor those in
/// `also_keep`) and the pool files no remaining generation names. The caller holds the
/// [`Lock`]. Returns the removed generation numbers.
pub fn gc(layer: &LayerPaths, keep: usize, also_keep: &[u64]) -> Result<Vec<u64>, StateError> {
    let ns = generation_numbers(layer)?;
    let active = read_list(&layer.active_list())
        .ok()
        .flatten()
        .and_then(|l| l.generation());
    let cut = ns.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for &n in &ns[..cut] {
        if Some(n) == active || also_keep.contains(&n) {
            continue;
        }
        let dir = layer.generations().join(n.to_string());
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        removed.push(n);
    }
    let mut named = std::collections::HashSet::new();
    for n in generation_numbers(layer)? {
        if let Some(l) = read_list(&layer.generation_list(n))? {
            named.extend(l.entries.into_iter().map(|e| e.id));
        }
    }
    // An active list that does not parse names nothing; its generation (if any) is kept.
    if let Ok(Some(l)) = read_list(&layer.active_list()) {
        named.extend(l.entries.into_iter().map(|e| e.id));
    }
    if let Ok(rd) = fs::read_dir(layer.pool()) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name();
            let Some(stem) = name.to_str().and_then(|s| s.strip_suffix(".hpkg")) else {
                continue;
            };
            if let Some(id) = format::active_list::parse_id(stem) {
                if !named.contains(&id) {
                    let p = e.path();
                    fs::remove_file(&p).map_err(io_err(&p))?;
                }
            }
        }
    }
    sync_dir(&layer.state())?;
    if !removed.is_empty() {
        let mut rec = crate::journal::Record::new("gc", &format!("kept the newest {keep}"));
        rec.before = active;
        rec.after = active;
        rec.deleted_generations = removed.clone();
        crate::journal::append(layer, &rec)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::active_list::Entry;

    use crate::tests::{m, Lab};
    use crate::Candidate;
    use std::os::unix::fs::MetadataExt;

    /// Packages p1, p2, p3 (real archives), each copied into the layer's `packages/`.
    fn packages(lab: &mut Lab, layer: &LayerPaths) -> Vec<Candidate> {
        fs::create_dir_all(layer.packages()).unwrap();
        (1..=3)
            .map(|i| {
                let mut c = lab.pkg(0, &m(&format!("p{i}"), "1.0.0", ""), &[("f", "x")]);
                let dst = layer.packages().join(format!("p{i}.hpkg"));
                fs::copy(&c.path, &dst).unwrap();
                c.path = dst;
                c
            })
            .collect()
    }

    fn list(cs: &[&Candidate]) -> ActiveList {
        ActiveList {
            meta: Default::default(),
            entries: cs
                .iter()
                .map(|c| Entry {
                    label: c.label(),
                    id: c.id(),
                })
                .collect(),
        }
    }

    #[test]
    fn commit_switch_and_gc() {
        let mut lab = Lab::new();
        let d = tempfile::tempdir().unwrap();
        let layer = LayerPaths::new(d.path());
        let p = packages(&mut lab, &layer);
        let file_of = |id: &PackageId| p.iter().find(|c| c.id() == *id).map(|c| c.path.clone());
        let _lock = Lock::acquire(&layer).unwrap();
        assert_eq!(
            commit(&layer, list(&[&p[0]]), "first", "t1", &file_of).unwrap(),
            1
        );
        assert_eq!(
            commit(&layer, list(&[&p[0], &p[1]]), "install p2", "t2", &file_of).unwrap(),
            2
        );
        assert_eq!(
            commit(&layer, list(&[&p[1], &p[2]]), "install p3", "t3", &file_of).unwrap(),
            3
        );
        let active = read_list(&layer.active_list()).unwrap().unwrap();
        assert_eq!(active.generation(), Some(3));
        assert_eq!(active.meta["reason"], "install p3");
        // the package files disappear from packages/: the pool still has them
        fs::remove_dir_all(layer.packages()).unwrap();
        let back = switch_to(&layer, 1, "rollback", "t").unwrap();
        assert!(back.same_packages(&list(&[&p[0]])));
        assert_eq!(
            read_list(&layer.active_list())
                .unwrap()
                .unwrap()
                .generation(),
            Some(1)
        );
        assert!(matches!(
            switch_to(&layer, 9, "rollback", "t"),
            Err(StateError::NoGeneration(9, _))
        ));
        // gc keeping 1 keeps generation 3 and the active generation 1
        let removed = gc(&layer, 1, &[]).unwrap();
        assert_eq!(removed, [2]);
        assert_eq!(generation_numbers(&layer).unwrap(), [1, 3]);
        assert!(layer.pool_file(&p[0].id()).exists());
        assert!(layer.pool_file(&p[2].id()).exists());
        switch_to(&layer, 3, "rollback", "t").unwrap();
        // also_keep keeps generation 1 (say, the newest one that opens whole)
        assert!(gc(&layer, 1, &[1]).unwrap().is_empty());
        gc(&layer, 1, &[]).unwrap();
        assert_eq!(generation_numbers(&layer).unwrap(), [3]);
        assert!(!layer.pool_file(&p[0].id()).exists());
        assert!(layer.pool_file(&p[1].id()).exists());
    }

    /// r11: the pool's copy shares nothing with packages/: a package file overwritten in
    /// place, truncated or filled with garbage leaves every kept generation whole.
    #[test]
    fn r11_pool_copies_survive_writes_to_packages() {
        let mut lab = Lab::new();
        let d = tempfile::tempdir().unwrap();
        let layer = LayerPaths::new(d.path());
        let p = packages(&mut lab, &layer);
        let file_of = |id: &PackageId| p.iter().find(|c| c.id() == *id).map(|c| c.path.clone());
        let _lock = Lock::acquire(&layer).unwrap();
        commit(&layer, list(&[&p[0], &p[1]]), "first", "t1", &file_of).unwrap();
        for c in &p[..2] {
            let pool = layer.pool_file(&c.id());
            let md = fs::metadata(&pool).unwrap();
            assert_eq!(md.nlink(), 1, "the pool file is a copy, not a link");
            assert_ne!(md.ino(), fs::metadata(&c.path).unwrap().ino());
            assert_eq!(md.mode() & 0o777, 0o444);
        }
        // Garbage over one file, the other truncated: the pool copies still open whole.
        fs::write(&p[0].path, b"garbage").unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&p[1].path)
            .unwrap()
            .set_len(10)
            .unwrap();
        for c in &p[..2] {
            let a = format::archive::Archive::open(&layer.pool_file(&c.id())).unwrap();
            assert_eq!(a.id(), c.id());
            for k in 0..a.chunk_count() {
                a.verify_chunk(k).unwrap();
            }
        }
        // A source that is not the package it claims to be never reaches the pool.
        let wrong = |_: &PackageId| Some(p[2].path.clone());
        let mut other = lab.pkg(0, &m("p9", "1.0.0", ""), &[("g", "y")]);
        other.path = p[2].path.clone();
        let err = commit(&layer, list(&[&other]), "bad", "t2", &wrong).unwrap_err();
        assert!(err.to_string().contains("holds package"), "{err}");
        assert!(!layer.pool_file(&other.id()).exists());
        assert_eq!(generation_numbers(&layer).unwrap(), [1]);
    }

    /// A pool file an older packagefs hard-linked to packages/ becomes a copy of its own.
    #[test]
    fn r11_unshare_pool_breaks_old_hard_links() {
        let mut lab = Lab::new();
        let d = tempfile::tempdir().unwrap();
        let layer = LayerPaths::new(d.path());
        let p = packages(&mut lab, &layer);
        fs::create_dir_all(layer.pool()).unwrap();
        fs::hard_link(&p[0].path, layer.pool_file(&p[0].id())).unwrap();
        assert_eq!(unshare_pool(&layer).unwrap(), 1);
        assert_eq!(
            fs::metadata(layer.pool_file(&p[0].id())).unwrap().nlink(),
            1
        );
        assert_eq!(fs::metadata(&p[0].path).unwrap().nlink(), 1);
        assert_eq!(unshare_pool(&layer).unwrap(), 0);
    }

    #[test]
    fn seen_round_trips_and_refuses_bad_lines() {
        let mut s = Seen::default();
        s.files.insert("a b.hpkg".into(), PackageId([7; 32]));
        s.files.insert("c.hpkg".into(), PackageId([8; 32]));
        assert_eq!(Seen::parse(&s.to_text()), Some(s));
        assert_eq!(Seen::parse("zz c.hpkg\n"), None);
        assert_eq!(
            Seen::parse(&format!("{} a/b.hpkg\n", PackageId([1; 32]))),
            None
        );
    }

    #[test]
    fn write_atomic_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/active.list");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path().join("x")).unwrap().count(), 1);
    }
}
