//! `packagefs`: the daemon. Parses arguments, loads the layers, builds the view, mounts it,
//! reports readiness, and unmounts on SIGINT/SIGTERM.

mod args;
mod auto_unmount;
mod mount;

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use format::keys::TrustedKeys;
use fuser::INodeNo;
use packagefs::exec_cache::ExecCache;
use packagefs::fuse::{Options, PackageFs};
use packagefs::layers;
use packagefs::live::Live;
use packagefs::uring;
use packagefs::view::{Inval, Shine};
use packagefs::watch::Watcher;
use pkgset::{LayerSpec, Stack};
use tracing::{error, info, warn};

/// Environment variable through which a daemonizing parent passes its readiness pipe.
const READY_FD_ENV: &str = "PACKAGEFS_READY_FD";
/// With `-o boot`, the daemonizing parent's stderr (the console), for the boot messages.
const CONSOLE_FD_ENV: &str = "PACKAGEFS_CONSOLE_FD";

fn main() -> ExitCode {
    if let Some(v) = std::env::var_os(auto_unmount::ENV) {
        init_log();
        return ExitCode::from(auto_unmount::watch(v));
    }
    // Before any thread exists, so that every thread inherits the mask and the termination
    // signals reach only the thread that waits for them.
    let sigset = block_signals();
    tune_malloc();
    raise_nofile();
    // Build time only (scripts/package): the man page and completions. Not a clap
    // argument, so that the page and completions do not show it.
    if let Some(dir) = clidoc::requested() {
        use clap::CommandFactory;
        return clidoc::run("packagefs", args::Args::command(), &dir);
    }
    let args = args::Args::parse();
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("packagefs: {e}");
            return ExitCode::from(2);
        }
    };
    if settings.daemonize && std::env::var_os(READY_FD_ENV).is_none() {
        return daemonize(settings.log_file.as_deref(), settings.boot);
    }
    if settings.boot
        && !std::env::args_os()
            .next()
            .is_some_and(|a| a.as_bytes().starts_with(b"@"))
    {
        return reexec_as_root_storage_daemon();
    }
    init_log();
    match run(settings, sigset) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error_line(&format!("packagefs: {}", layers::one_line(e.as_ref())));
            ExitCode::from(1)
        }
    }
}

/// One line on stderr in one write: under `-o log=/dev/kmsg` a write is a kernel log
/// record, and `eprintln!` may write a line in pieces.
fn error_line(line: &str) {
    let line = format!("{}\n", line.replace('\n', " "));
    // SAFETY: writing our own buffer to fd 2.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// systemd's convention for root storage daemons: a process whose argv[0] starts with `@`
/// is left running by systemd-shutdown's final kill (it serves the root file system).
/// The daemon runs itself again under that name (only the name changes).
fn reexec_as_root_storage_daemon() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(ROOT_STORAGE_ARGV0)
        .args(std::env::args_os().skip(1))
        .exec();
    error_line(&format!(
        "packagefs: cannot run itself as {ROOT_STORAGE_ARGV0}: {err}"
    ));
    ExitCode::from(1)
}

/// argv[0] of the daemon with `-o boot`.
const ROOT_STORAGE_ARGV0: &str = "@packagefs";

/// True if stderr is the kernel log (`-o log=/dev/kmsg`): character device 1:11.
fn stderr_is_kmsg() -> bool {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(1, 11))
}

/// One kernel log record per event, with the event's level as its priority, so that the
/// console shows what `loglevel=` lets through and the journal keeps the levels.
struct Kmsg(Vec<u8>, u8);

impl std::io::Write for Kmsg {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Kmsg {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        // The kernel keeps a record under 1 KiB; a longer event is cut, never split.
        let mut rec = format!("<{}>packagefs: {}", self.1, text.replace('\n', " "));
        if rec.len() > 1000 {
            let mut cut = 1000;
            while !rec.is_char_boundary(cut) {
                cut -= 1;
            }
            rec.truncate(cut);
        }
        // SAFETY: writing our own buffer to fd 2.
        unsafe { libc::write(2, rec.as_ptr().cast(), rec.len()) };
    }
}

struct KmsgWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for KmsgWriter {
    type Writer = Kmsg;
    fn make_writer(&'a self) -> Kmsg {
        Kmsg(Vec::new(), 6)
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Kmsg {
        let prio = match *meta.level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        Kmsg(Vec::new(), prio)
    }
}

/// Logs go to stderr.
fn init_log() {
    if stderr_is_kmsg() {
        // The kernel stamps each record: no time of our own.
        tracing_subscriber::fmt()
            .with_env_filter(log_filter(std::env::var("RUST_LOG").ok()))
            .with_writer(KmsgWriter)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            // The record's priority is the level.
            .with_level(false)
            .init();
        return;
    }
    // fuser::session's only warning is "Failed to umount filesystem: Invalid argument":
    // after `umount` or `fusermount3 -u` from outside, fuser's session tries to unmount
    // the already unmounted mount point once more. It is noise, logged on every such
    // unmount; its errors stay visible.
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(std::env::var("RUST_LOG").ok()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The log filter: `RUST_LOG`, or info by default. The solver (pubgrub) logs every step
/// of its search at info level, so it stays at warn unless `RUST_LOG` names it.
fn log_filter(env: Option<String>) -> tracing_subscriber::EnvFilter {
    let mut spec = env
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info,fuser::session=error".into());
    if !spec.contains("pubgrub") {
        spec.push_str(",pubgrub=warn");
    }
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        error_line(&format!("packagefs: RUST_LOG={spec}: {e}; logging at info"));
        tracing_subscriber::EnvFilter::new("info,pubgrub=warn,fuser::session=error")
    })
}

/// The FUSE session serving the mount: fuser's over `/dev/fuse`, or the daemon's own
/// (`uring`), which uses the kernel's io_uring transport when INIT offers it.
enum Serving {
    Fuser(Box<fuser::Session<PackageFs>>),
    Own(uring::Session),
}

/// Invalidations for the kernel, through the session serving the mount.
enum Notify {
    Fuser(fuser::Notifier),
    Own(uring::Notifier),
}

impl Notify {
    fn inval_entry(&self, parent: u64, name: &[u8]) -> std::io::Result<()> {
        match self {
            Notify::Fuser(n) => n.inval_entry(INodeNo(parent), std::ffi::OsStr::from_bytes(name)),
            Notify::Own(n) => n.inval_entry(parent, name),
        }
    }

    fn inval_inode(&self, ino: u64) -> std::io::Result<()> {
        match self {
            Notify::Fuser(n) => n.inval_inode(INodeNo(ino), 0, 0),
            Notify::Own(n) => n.inval_inode(ino),
        }
    }
}

/// Whether to serve the mount with the daemon's own session, which can use the ring
/// (`-o io_uring`): logs the choice when it is `/dev/fuse` through fuser, and fails for
/// `-o io_uring=on` where the kernel cannot offer the ring. The kernel's switch is read,
/// never written.
fn want_ring(s: &args::Settings) -> anyhow::Result<bool> {
    use uring::Mode;
    match s.io_uring {
        Mode::Off => {
            info!("FUSE transport: /dev/fuse (-o io_uring=off)");
            Ok(false)
        }
        Mode::On if uring::kernel_enabled() != Some(true) => Err(uring::Error::NotOffered.into()),
        Mode::Auto if uring::kernel_enabled() != Some(true) => {
            info!("FUSE transport: /dev/fuse ({})", uring::why_not());
            Ok(false)
        }
        Mode::On | Mode::Auto => Ok(true),
    }
}

enum Event {
    Signal(i32),
    Ended(std::io::Result<()>),
}

fn run(s: args::Settings, sigset: libc::sigset_t) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Signals are waited for from the start: opening and checking the packages, or waiting
    // for a layer's lock, can take a while, and SIGINT/SIGTERM must end that at once. Until
    // the mount is attempted there is nothing to undo (the layers' state is written
    // crash-safely); from then on a signal unmounts.
    let (tx, rx) = mpsc::channel::<Event>();
    let mounting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (tx, mounting) = (tx.clone(), mounting.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: valid sigset and out-pointer.
                if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
                    if !mounting.load(std::sync::atomic::Ordering::SeqCst) {
                        error!(signal = sig, "stopped before the mount was live");
                        std::process::exit(1);
                    }
                    let _ = tx.send(Event::Signal(sig));
                }
            })?;
    }
    check_mountpoint(&s.mountpoint)?;
    for l in &s.layers {
        let md = std::fs::metadata(&l.dir)
            .map_err(|e| anyhow::anyhow!("layer {}: {}: {e}", l.name, l.dir.display()))?;
        if !md.is_dir() {
            anyhow::bail!("layer {}: {} is not a directory", l.name, l.dir.display());
        }
    }
    let keys = TrustedKeys::load_dir(&s.trusted_keys).map_err(|e| {
        anyhow::anyhow!(
            "cannot load trusted keys from {}: {e}",
            s.trusted_keys.display()
        )
    })?;
    if keys.is_empty() {
        warn!(dir = %s.trusted_keys.display(), "no trusted keys: every package will be refused");
    }
    let exec_cache = match &s.exec_cache {
        Some(dir) => Some(std::sync::Arc::new(ExecCache::open_with(
            dir,
            s.exec_cache_size,
            s.exec_cache_verify,
        )?)),
        None => None,
    };
    let (stack, shine, _layer_fds) = layer_stack(&s)?;
    for spec in &stack.layers {
        // A user's state/ made as root by an older packagefs is given back first: from
        // now on the daemon writes there with the user's rights.
        match pkgset::owner::give_back_state(&spec.paths) {
            Ok(0) => {}
            Ok(k) => {
                info!(layer = %spec.name, "state/ was root's in a layer owned by another user: {k} entries are the owner's now")
            }
            Err(e) => {
                warn!(layer = %spec.name, "cannot give state/ back to the layer's owner: {e}")
            }
        }
    }
    record_stack(&s, &stack);
    // The boot's choice opens and checks the packages; the first view reuses them.
    let policy = pkgset::capabilities::Policy::load(&s.policy).map_err(|e| anyhow::anyhow!(e))?;
    let mut opener = pkgset::Opener::with_policy(keys.clone(), policy);
    // Thin packages (pkgtool pull) read their chunks through the repository client.
    let t = std::time::Duration::from_secs(s.fetch_timeout);
    let mut heaps = repo::RepoHeaps::at(
        &s.chunk_store,
        s.chunk_store_size,
        repo::Policy {
            timeouts: repo::http::Timeouts {
                connect: t,
                io: t,
                total: t * 2,
            },
            ..repo::Policy::default()
        },
    );
    if let Some(dir) = &s.prefetch_record {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        heaps.record_into(dir);
    }
    opener.set_heaps(std::sync::Arc::new(heaps));
    opener.set_repositories(
        repo::allow::AllowList::load(&s.repositories).map_err(|e| anyhow::anyhow!(e))?,
    );
    let pin = if s.boot {
        // A boot uses whole packages only: the network is not up in the initramfs, and a
        // root file system must not wait on it. Packages pulled later are served thin.
        opener.set_whole_only(true);
        let pin = boot_choice(&s, &stack, &mut opener);
        opener.set_whole_only(false);
        pin?
    } else {
        None
    };
    // Watch before loading, so no change between the two goes unseen.
    let watcher = Watcher::new(&stack)
        .map_err(|e| anyhow::anyhow!("cannot watch the layer directories: {e}"))?;
    let (live, view) = Live::start(stack, opener, shine, pin)?;
    // One line per package, up to a few dozen; a whole system's set (a root file system
    // of a hundred packages) is one line, and each package is at debug level.
    let each = view.packages().len() <= 32;
    for p in view.packages() {
        if each {
            info!(
                layer = %s.layers[p.layer].name,
                package = %p.label(),
                id = %p.archive.id().short(),
                "activated {}",
                p.path.display()
            );
        } else {
            tracing::debug!(
                layer = %s.layers[p.layer].name,
                package = %p.label(),
                id = %p.archive.id().short(),
                "activated {}",
                p.path.display()
            );
        }
    }
    if !each {
        for (l, spec) in s.layers.iter().enumerate() {
            let k = view.packages().iter().filter(|p| p.layer == l).count();
            info!(layer = %spec.name, "activated {k} packages (RUST_LOG=debug names each)");
        }
    }
    packagefs::live::log_conflicts(&view);
    let npkg = view.packages().len();
    let opts = Options {
        xattrs: s.xattrs,
        exec_cache,
        ..Options::default()
    };
    let fs = PackageFs::new(view, s.cache_size, opts);
    let exec_report = fs.exec_report();
    let chunk_cache = fs.cache().clone();
    let xattrs = fs.xattrs();
    if !xattrs {
        info!("no active package has extended attributes: they are not served (-o xattrs serves them)");
    }
    let fs_slot = fs.slot();
    let cannot =
        |e: std::io::Error| anyhow::anyhow!("cannot mount on {}: {e}", s.mountpoint.display());
    mounting.store(true, std::sync::atomic::Ordering::SeqCst);
    let ring = want_ring(&s)?;
    let mounted = mount::mount(&s.mountpoint, &s.mount_options, s.acl).map_err(cannot)?;
    if let Some(fd) = &mounted {
        // Passthrough's backing files are registered on the connection's /dev/fuse
        // descriptor, whichever transport then carries the OPEN replies.
        fs.set_fuse_dev(fd);
    }
    let (mut session, own_mount) = match mounted {
        // Our own session: INIT chooses the ring if the kernel offers it.
        Some(fd) if ring => match uring::Session::init(fs, fd, s.io_uring, s.acl, s.threads) {
            Ok(session) => (Serving::Own(session), true),
            Err(e) => {
                lazy_unmount(&s.mountpoint);
                return Err(e.into());
            }
        },
        Some(fd) => {
            // Mounted as fuse.packagefs; if the handshake fails, take the mount away.
            match fuser::Session::from_fd(fs, fd, s.acl, s.config()) {
                Ok(session) => (Serving::Fuser(Box::new(session)), true),
                Err(e) => {
                    lazy_unmount(&s.mountpoint);
                    return Err(cannot(e));
                }
            }
        }
        None if s.io_uring == uring::Mode::On => {
            anyhow::bail!("-o io_uring=on needs the daemon to mount as root")
        }
        None => (
            Serving::Fuser(Box::new(
                fuser::Session::new(fs, &s.mountpoint, &s.config()).map_err(cannot)?,
            )),
            false,
        ),
    };
    // The watcher holds the read end of a pipe whose write end lives as long as this
    // process: however the daemon ends, the watcher wakes.
    let _auto_unmount = if s.auto_unmount {
        match auto_unmount::spawn(&s.mountpoint) {
            Ok(fd) => Some(fd),
            Err(e) => {
                let _ = mount::detach(&s.mountpoint);
                anyhow::bail!(
                    "-o auto_unmount: cannot start the process that unmounts {} if the \
                     daemon dies: {e}",
                    s.mountpoint.display()
                );
            }
        }
    } else {
        None
    };
    let (mut unmounter, notifier) = match &mut session {
        Serving::Fuser(f) => (Some(f.unmount_callable()), Notify::Fuser(f.notifier())),
        Serving::Own(o) => (None, Notify::Own(o.notifier())),
    };
    let slot = fs_slot;

    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = match session {
                Serving::Fuser(f) => f.run(),
                Serving::Own(o) => o.run(),
            };
            let _ = tx.send(Event::Ended(r));
        })?;

    std::thread::Builder::new()
        .name("live".into())
        .spawn(move || {
            packagefs::live::run(live, watcher, &slot, xattrs, &|i: &Inval| match i {
                Inval::Entry { parent, name } => notifier.inval_entry(*parent, name),
                Inval::Inode(ino) => notifier.inval_inode(*ino),
            })
        })?;

    raise_readahead(&s.mountpoint, s.read_ahead_kb);
    info!(
        mountpoint = %s.mountpoint.display(),
        packages = npkg,
        layers = s.layers.len(),
        threads = s.threads,
        cache = s.cache_size,
        "mounted in {} ms",
        t0.elapsed().as_millis()
    );
    notify_ready(npkg);

    let result = match rx.recv() {
        Ok(Event::Signal(sig)) => {
            info!(signal = sig, "unmounting");
            let r = match &mut unmounter {
                Some(u) if !own_mount => u.unmount(),
                _ => mount::unmount(&s.mountpoint),
            };
            match r {
                Ok(()) => {
                    // Let the session threads see the unmount (bounded).
                    let _ = rx.recv_timeout(Duration::from_secs(10));
                    info!("unmounted");
                }
                Err(e) => {
                    // Busy (files open): detach the mount and exit now, as libfuse does;
                    // processes still using it get ENOTCONN.
                    warn!("unmount failed: {e}; detaching the mount lazily");
                    lazy_unmount(&s.mountpoint);
                    info!("detached");
                }
            }
            Ok(())
        }
        Ok(Event::Ended(r)) => {
            info!("file system was unmounted");
            r.map_err(|e| anyhow::anyhow!("FUSE session failed: {e}"))
        }
        Err(_) => Ok(()),
    };
    if let Some(r) = &exec_report {
        r.log();
    }
    let st = chunk_cache.stats();
    info!(
        hits = st.hits,
        misses = st.misses,
        loads = st.loads,
        evictions = st.evictions,
        "chunk cache"
    );
    result
}

/// The layers as the daemon reaches them, and their shine-through links. A layer directory
/// the mount covers (the mount point itself, or inside it) is reached through a descriptor
/// opened before mounting (`/proc/self/fd/N`), so the daemon and the shine-through links
/// still see the real directory underneath.
fn layer_stack(s: &args::Settings) -> anyhow::Result<(Stack, Shine, Vec<std::fs::File>)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mp = std::fs::canonicalize(&s.mountpoint)?;
    let mut specs = Vec::new();
    let mut shine = Shine::default();
    let mut fds = Vec::new();
    for l in &s.layers {
        let canon = std::fs::canonicalize(&l.dir)
            .map_err(|e| anyhow::anyhow!("layer {}: {}: {e}", l.name, l.dir.display()))?;
        // A layer inside the mount point, and every layer of a root file system (after
        // switch_root, the daemon's own root is the old initramfs, where the data disk is
        // no longer reachable by path), is held by descriptor.
        let (dir, target) = if s.boot || canon.starts_with(&mp) {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(&canon)
                .map_err(|e| anyhow::anyhow!("layer {}: {}: {e}", l.name, canon.display()))?;
            let fd = f.as_raw_fd();
            fds.push(f);
            (
                PathBuf::from(format!("/proc/self/fd/{fd}")),
                format!("/proc/{}/fd/{fd}", std::process::id()).into_bytes(),
            )
        } else {
            (canon.clone(), canon.as_os_str().as_bytes().to_vec())
        };
        if canon == mp && shine.root.is_empty() {
            for sub in ["packages", "state"] {
                let mut t = target.clone();
                t.push(b'/');
                t.extend_from_slice(sub.as_bytes());
                shine.root.push((sub.as_bytes().to_vec(), t));
            }
        }
        shine.layers.push((l.name.clone(), target));
        specs.push(LayerSpec::new(&l.name, dir));
    }
    Ok((Stack::new(specs), shine, fds))
}

/// `-o boot`: chooses the generation of the lowest layer (pkgset::boot) under its lock,
/// says on the console and in the log which one and why, and returns it if the view must
/// serve it instead of `active.list` (pinned, or a fallback).
fn boot_choice(
    s: &args::Settings,
    stack: &Stack,
    opener: &mut pkgset::Opener,
) -> anyhow::Result<Option<(usize, u64)>> {
    let text = std::fs::read_to_string(&s.boot_cmdline).unwrap_or_else(|e| {
        warn!(
            "cannot read the kernel command line {}: {e}",
            s.boot_cmdline.display()
        );
        String::new()
    });
    let cmd = pkgset::boot::parse_cmdline(&text);
    let paths = &stack.layers[0].paths;
    let _lock = pkgset::generation::Lock::acquire(paths).map_err(|e| {
        anyhow::anyhow!(
            "boot: cannot lock layer {}: {}",
            stack.layers[0].name,
            layers::one_line(&e)
        )
    })?;
    let choice = pkgset::boot::choose(stack, 0, &[], &cmd, opener);
    let console = Console::new();
    let say = |m: &str| console.say(m);
    match choice {
        Ok(Some(c)) => {
            for m in &c.messages {
                say(m);
            }
            Ok(c.frozen.then_some((0, c.n)))
        }
        Ok(None) => {
            say("the system layer has no generation yet: its first is made from packages/");
            Ok(None)
        }
        Err(e) => {
            let m = format!("boot: {}: serving what opens", layers::one_line(&e));
            say(&m);
            Ok(None)
        }
    }
}

/// Where the boot messages go: one kernel log record each (so `journalctl -k` shows them
/// after the boot), and one `packagefs: ` line each on the console: the daemonizing
/// parent's stderr (passed as CONSOLE_FD_ENV) or our own. A console the kernel prints
/// the record on already (`/dev/console`, at the console log level) gets no second copy;
/// a log file (`-o log=FILE`) gets the line as well.
struct Console {
    kmsg: Option<std::fs::File>,
    /// The fd of the console line, and whether it is a copy from the parent.
    fd: i32,
    inherited: bool,
    /// The kernel prints our records on the console by itself.
    kernel_shows: bool,
}

/// Kernel log priority of the boot messages (notice).
const BOOT_PRIORITY: u32 = 5;

impl Console {
    fn new() -> Console {
        let inherited = std::env::var_os(CONSOLE_FD_ENV)
            .and_then(|v| v.to_str()?.parse::<i32>().ok())
            // SAFETY: F_GETFD only asks whether the fd is open.
            .filter(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        let fd = inherited.unwrap_or(2);
        let is_console = fd_rdev(fd) == Some(libc::makedev(5, 1));
        let level = std::fs::read_to_string("/proc/sys/kernel/printk")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(0);
        let kmsg = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .ok();
        Console {
            kernel_shows: kmsg.is_some() && is_console && level > BOOT_PRIORITY,
            kmsg,
            fd,
            inherited: inherited.is_some(),
        }
    }

    fn say(&self, m: &str) {
        let m = m.replace('\n', " ");
        if let Some(mut k) = self.kmsg.as_ref() {
            // One write is one record.
            let _ = k.write_all(format!("<{BOOT_PRIORITY}>packagefs: {m}").as_bytes());
        }
        // Our stderr being the kernel log, the record above is the line.
        let stderr_kmsg = self.fd == 2 && stderr_is_kmsg();
        if !self.kernel_shows && !stderr_kmsg {
            let line = format!("packagefs: {m}\n");
            // SAFETY: writing our own buffer to an open fd.
            unsafe { libc::write(self.fd, line.as_ptr().cast(), line.len()) };
        }
        // A log file of a detached daemon gets it too.
        if self.inherited && !stderr_is_kmsg() {
            info!("{m}");
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if self.inherited {
            // SAFETY: our copy of the parent's stderr, used by nobody else.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// The device number of the file an fd is open on, if it is a character device.
fn fd_rdev(fd: i32) -> Option<libc::dev_t> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .filter(|m| m.file_type().is_char_device())
        .map(|m| m.rdev())
}

/// Writes each layer's `state/stack` (its name and the layers below it), so that pkgtool
/// given only this layer checks changes against the same layers below. A layer that
/// cannot be written (read-only media) is skipped.
fn record_stack(s: &args::Settings, stack: &Stack) {
    let mut below = Vec::new();
    for (l, spec) in s.layers.iter().zip(&stack.layers) {
        let record = pkgset::generation::StackRecord {
            name: l.name.clone(),
            below: below.clone(),
        };
        // Under the layer's lock, as every writer of state/ (the lock holder clears temps).
        let written = pkgset::generation::Lock::acquire(&spec.paths)
            .and_then(|_lock| record.write(&spec.paths));
        if let Err(e) = written {
            tracing::debug!(layer = %l.name, "cannot record the layer stack: {e}");
        }
        let dir = std::fs::canonicalize(&l.dir).unwrap_or_else(|_| l.dir.clone());
        below.push((l.name.clone(), dir));
    }
}

/// Chunk buffers (64 KiB - 1 MiB) are allocated and freed by many threads: with glibc's
/// defaults they end up in per-thread arenas below a dynamic mmap threshold, and freed
/// memory stays in the process. A fixed threshold makes them mmap()ed and returned on
/// free, and two arenas bound the fragmentation, so RSS follows the cache size.
fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Every active package (and every package of a kept generation) holds a file open: raise
/// the soft limit on open files to the hard one, as systemd-era daemons do.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a local sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// How long a probe of a FUSE mount found at the mount point may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The mount point must exist, be a directory, and not have a file system mounted on it.
/// A dead packagefs mount there (its daemon was killed and nothing unmounted it, so every
/// access fails with ENOTCONN) is cleared, and the log says so; anything else mounted
/// there (a live packagefs mount, another file system, dead or alive) makes it busy.
fn check_mountpoint(mp: &Path) -> anyhow::Result<()> {
    // Bounded: under one dead mount there may be another one (older daemons never cleared).
    for _ in 0..16 {
        let canon = canonical_mountpoint(mp)?;
        let top = mount::Pinned::topmost(&canon)
            .map_err(|e| anyhow::anyhow!("mount point {}: {e}", mp.display()))?;
        let Some(top) = top else {
            break;
        };
        let what = &top.entry;
        let state = if what.fstype.starts_with("fuse") {
            top.probe(PROBE_TIMEOUT)
        } else {
            mount::Probe::Alive
        };
        match state {
            mount::Probe::Dead if what.fstype == mount::FSTYPE => {
                top.detach().map_err(|e| {
                    anyhow::anyhow!(
                        "mount point {} is busy: a dead packagefs mount is there and \
                         cannot be cleared: {e}",
                        mp.display()
                    )
                })?;
                info!(
                    "cleared a dead packagefs mount at {} (its daemon died without unmounting it)",
                    canon.display()
                );
            }
            mount::Probe::Dead => anyhow::bail!(
                "mount point {} is busy: {what} is mounted there, dead (its daemon is gone); \
                 not ours to clear: `umount -l {}` clears it",
                mp.display(),
                canon.display()
            ),
            mount::Probe::NoAnswer => anyhow::bail!(
                "mount point {} is busy: {what} is mounted there and does not answer",
                mp.display()
            ),
            _ => anyhow::bail!(
                "mount point {} is busy: {what} is mounted there",
                mp.display()
            ),
        }
    }
    let md =
        std::fs::metadata(mp).map_err(|e| anyhow::anyhow!("mount point {}: {e}", mp.display()))?;
    if !md.is_dir() {
        anyhow::bail!("mount point {} is not a directory", mp.display());
    }
    if let Some(top) = mount::mounted_at(&canonical_mountpoint(mp)?) {
        anyhow::bail!(
            "mount point {} is busy: {top} is mounted there",
            mp.display()
        );
    }
    Ok(())
}

/// The canonical path of the mount point. A dead FUSE mount there cannot be resolved
/// (ENOTCONN), so then its parent is resolved and its name appended.
fn canonical_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    let err = match std::fs::canonicalize(mp) {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let dead = matches!(
        err.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECONNABORTED)
    );
    let name = mp.file_name().filter(|_| dead);
    let Some(name) = name else {
        anyhow::bail!("mount point {}: {err}", mp.display());
    };
    let parent = match mp.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| anyhow::anyhow!("mount point {}: {e}", mp.display()))?;
    Ok(parent.join(name))
}

/// FUSE read-ahead is capped by the mount's backing device (bdi) setting, 128 KiB by
/// default; raise it so sequential readers get big requests (`-o read_ahead_kb`).
fn raise_readahead(mp: &Path, kb: u32) {
    let Ok(canon) = std::fs::canonicalize(mp) else {
        return;
    };
    let Some(m) = mount::mounted_at(&canon).filter(|m| m.fstype.starts_with("fuse")) else {
        return;
    };
    let path = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    match std::fs::write(&path, kb.to_string()) {
        Ok(()) => info!("read-ahead set to {kb} KiB ({path})"),
        Err(e) => warn!("cannot raise read-ahead via {path}: {e}"),
    }
}

fn lazy_unmount(mp: &Path) {
    if let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_bytes()) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Tells systemd (NOTIFY_SOCKET) and a daemonizing parent (READY_FD_ENV) that the mount is live.
fn notify_ready(packages: usize) {
    if let Some(sock) = std::env::var_os("NOTIFY_SOCKET") {
        let msg = format!(
            "READY=1\nSTATUS=serving {packages} packages\nMAINPID={}\n",
            std::process::id()
        );
        let b = sock.as_bytes();
        let res = if b.first() == Some(&b'@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&b[1..]).and_then(|addr| {
                let s = std::os::unix::net::UnixDatagram::unbound()?;
                s.send_to_addr(msg.as_bytes(), &addr)
            })
        } else {
            std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.send_to(msg.as_bytes(), Path::new(&sock)))
        };
        if let Err(e) = res {
            warn!("cannot notify systemd: {e}");
        }
    }
    if let Some(fd) = std::env::var_os(READY_FD_ENV).and_then(|v| v.to_str()?.parse::<i32>().ok()) {
        // SAFETY: the parent passed us this pipe's write end.
        let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = f.write_all(b"ready\n");
    }
}

/// The mount.fuse3 form: run the daemon as a detached child and return once it reports
/// that the mount is live (exit 0) or it exits (its status).
fn daemonize(log_file: Option<&Path>, boot: bool) -> ExitCode {
    let mut fds = [0i32; 2];
    // SAFETY: valid array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        eprintln!(
            "packagefs: cannot create a pipe: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    let (r, w) = (fds[0], fds[1]);
    // The child must inherit the write end.
    // SAFETY: clearing FD_CLOEXEC on our own fd.
    unsafe { libc::fcntl(w, libc::F_SETFD, 0) };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("packagefs"));
    let mut cmd = std::process::Command::new(exe);
    // The boot messages go to our stderr, the console, as well as to the log.
    let console = if boot {
        std::os::unix::process::CommandExt::arg0(&mut cmd, ROOT_STORAGE_ARGV0);
        // SAFETY: dup of our stderr; the copy is inherited (no FD_CLOEXEC).
        let c = unsafe { libc::fcntl(2, libc::F_DUPFD, 3) };
        (c >= 0).then(|| {
            cmd.env(CONSOLE_FD_ENV, c.to_string());
            c
        })
    } else {
        None
    };
    cmd.args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, w.to_string())
        .stdin(std::process::Stdio::null())
        // The caller (mount(8), a shell's $(...)) must not wait for our stdout to close.
        .stdout(std::process::Stdio::null());
    // Logs go to -o log=FILE, or stay on stderr if that is a file; never hold a pipe open.
    let stderr_is_file = std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.is_file());
    match log_file {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => {
                cmd.stderr(f);
            }
            Err(e) => {
                eprintln!("packagefs: cannot open log file {}: {e}", p.display());
                return ExitCode::from(1);
            }
        },
        None if stderr_is_file => {}
        None => {
            cmd.stderr(std::process::Stdio::null());
        }
    }
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            })
        };
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("packagefs: cannot start the daemon: {e}");
            return ExitCode::from(1);
        }
    };
    // SAFETY: closing our copy of the write end so EOF means the child is gone, and our
    // copy of the console.
    unsafe { libc::close(w) };
    if let Some(c) = console {
        // SAFETY: as above.
        unsafe { libc::close(c) };
    }
    let mut f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(r) };
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut f, &mut buf).unwrap_or(0);
    if n > 0 {
        return ExitCode::SUCCESS;
    }
    match child.wait() {
        Ok(st) => ExitCode::from(st.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(_) => ExitCode::from(1),
    }
}
