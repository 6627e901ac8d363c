//! The command line, including the `mount.fuse3` form
//! (`packagefs SOURCE MOUNTPOINT -o OPTIONS`).

use std::path::PathBuf;

use clap::Parser;
use fuser::{Config, MountOption, SessionACL};

use packagefs::layers::LayerDir;

/// Mount layers of signed .hpkg packages as one read-only union view.
#[derive(Debug, Parser)]
#[command(
    name = "packagefs",
    version,
    about,
    after_help = "Examples:
  packagefs --layer system=/pkg/system --layer user=/home/u/pkg /mnt/pkg
  packagefs --layer system=/pkg/system -o allow_other /system
  mount -t fuse.packagefs system=/pkg/system:common=/pkg/common /mnt/pkg -o allow_other
  fstab:  system=/pkg/system  /mnt/pkg  fuse.packagefs  trusted_keys=/etc/packagefs/keys,allow_other  0 0

Layers are given lowest first. Each layer directory holds packages/ with .hpkg files.
Only packages signed by a key in --trusted-keys are mounted; others are refused with a log line.
Files of layers other than `system` never carry setuid/setgid bits.
Runs in the foreground (logs to stderr; RUST_LOG=debug for more) unless started in the
mount.fuse3 form (SOURCE MOUNTPOINT), where it returns once the mount is ready. SIGINT or
SIGTERM unmount cleanly, and `umount`/`fusermount3 -u` end the daemon. A dead packagefs
mount left at the mount point by a killed daemon is cleared (and logged); any other mount
there is an error.
-o takes FUSE options (allow_other, allow_root, nosuid, nodev, noexec, fsname=...,
auto_unmount: a watcher process unmounts the mount if the daemon dies without unmounting
it, with no need for allow_other or allow_root; default_permissions is always on) and
packagefs options (layer=NAME=DIR, trusted_keys=DIR, policy=FILE (which capabilities
each key's packages may ask for; docs/services.md), cache_size=SIZE, threads=N,
log=FILE: where a detached daemon logs (/dev/kmsg: one kernel log record per line, with
its level), boot: the root file system of a machine (the initramfs form: the lowest
layer's generation is chosen by packagefs.generation=N on the kernel command line, this
boot only, and by boot assessment: a generation not yet blessed gets packagefs.tries=N
boots, or tries=N of state/boot.conf, default 3, counted in state/boot; then the last good
one boots, for good; one that does not open whole falls back to the newest earlier one
that does; each decision is one `packagefs: ` line on the console and in the kernel log;
the daemon runs as @packagefs, a root storage daemon systemd leaves running, and holds its
layers by descriptor, reachable after switch_root; boot_cmdline=FILE reads another
command line than /proc/cmdline; see docs/boot.md and pkgtool bless),
xattrs / noxattrs: always / never answer extended attributes; by default they are answered
if a package active at mount has any, since answering costs `ls -l` a round trip per file;
chunk_store=DIR[,chunk_store_size=SIZE][,fetch_timeout=SECS]: where the chunks of thin
packages (pkgtool pull) are kept once fetched (default /var/cache/packagefs/chunks, 4G,
least recently used first; chunks of packages being fetched whole are pinned), and the
connect and read timeout of each request to a repository (default 5; docs/fleet.md);
repositories=FILE: the repositories thin packages in layers not owned by root may name
(default /etc/packagefs/repositories; missing: none, so such a package is refused; layers
owned by root name any);
read_ahead_kb=N: the mount's read-ahead, which is also how much a page fault of a mapped
file reads around it (default 1024: big requests for sequential readers; a machine reading
thin packages over a slow link moves less with 128, what local disks use);
prefetch_record=DIR: record the chunks each thin package reads into DIR/<id>.prefetch
(pkgtool publish --prefetch DIR ships them; the daemon fetches a package's list in the
background after mount);
exec_cache=DIR[,exec_cache_size=SIZE]: ELF executables and libraries, and files of 1 MiB or
more opened 4 times, are decompressed once (in the background, each chunk checked) into DIR
(created 0700; refused if a symlink, another user's, or open to others), named by the
BLAKE3 of their bytes, kept across remounts and reboots within SIZE (default 1G, least
recently used files that are not open go first), checked at each open, and then opened
by FUSE passthrough: reads and page faults go from the kernel to the cache file, not
through the daemon (Linux 6.9+, as root). Every file is then opened by the daemon (an
OPEN round trip, which mounts without the cache do not pay);
exec_cache_verify=stat|full: how a cache file kept by an earlier daemon is checked before
its first use: stat (default) serves it at once if its device, inode, size, mtime and ctime
are those recorded in DIR/verified when its bytes were last hashed (any change through the
file system changes them), and hashes it whole otherwise; full hashes every cache file
whole at its first use by each daemon, whatever the record says (also catches a disk that
returns other bytes, or an edit of the raw device; see docs/exec-cache.md);
io_uring=auto|on|off: the kernel's FUSE io_uring transport (Linux 6.14+, as root), one
queue per CPU, a request served on the CPU that made it: auto (default) uses it when the
kernel offers it (the fuse module's enable_uring, which the daemon never changes), else
/dev/fuse; on fails with one line if it is not offered; off always uses /dev/fuse; with
exec_cache too (backing files are registered on the /dev/fuse descriptor, the OPEN replies
that name them travel over the ring). See README.md)."
)]
pub struct Args {
    /// Layer NAME=DIR, lowest first (repeatable).
    #[arg(long = "layer", value_name = "NAME=DIR")]
    pub layers: Vec<String>,
    /// Directory of trusted public keys (*.pub).
    #[arg(long, value_name = "DIR", default_value = "/etc/packagefs/keys")]
    pub trusted_keys: PathBuf,
    /// Size of the decompressed chunk cache (K, M, G suffixes).
    #[arg(long, value_name = "SIZE", default_value = "64M")]
    pub cache_size: String,
    /// FUSE worker threads (default: number of CPUs, at least 2).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Mount options, comma separated (repeatable).
    #[arg(short = 'o', value_name = "OPTION[,OPTION]...")]
    pub options: Vec<String>,
    /// Stay in the foreground even in the mount.fuse3 form.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Mount point, or SOURCE MOUNTPOINT in the mount.fuse3 form (SOURCE is
    /// NAME=DIR[:NAME=DIR...] or any word such as `packagefs` when layers come from -o).
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    pub positional: Vec<PathBuf>,
}

/// Everything the daemon needs, parsed and checked.
#[derive(Debug)]
pub struct Settings {
    /// The layers, lowest first.
    pub layers: Vec<LayerDir>,
    /// Trusted keys directory.
    pub trusted_keys: PathBuf,
    /// The capability policy (`-o policy=FILE`, default /etc/packagefs/policy; a missing
    /// file: every trusted key is unrestricted).
    pub policy: PathBuf,
    /// The repository allow-list (`-o repositories=FILE`, default
    /// /etc/packagefs/repositories; missing: no repository).
    pub repositories: PathBuf,
    /// Cache size in bytes.
    pub cache_size: usize,
    /// FUSE worker threads.
    pub threads: usize,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// FUSE mount options.
    pub mount_options: Vec<MountOption>,
    /// Who may access the mount.
    pub acl: SessionACL,
    /// Started in the mount.fuse3 form: detach once ready.
    pub daemonize: bool,
    /// Where a detached daemon writes its log (`-o log=FILE`).
    pub log_file: Option<PathBuf>,
    /// `-o xattrs` / `-o noxattrs`; unset: decided by the packages at mount.
    pub xattrs: Option<bool>,
    /// `-o auto_unmount`: a watcher process unmounts the mount if the daemon dies
    /// without unmounting it (see `auto_unmount.rs`; fuser is never told, since it would
    /// demand allow_other or allow_root).
    pub auto_unmount: bool,
    /// `-o boot`: the root file system of a machine (see `pkgset::boot`): the generation of
    /// the lowest layer is chosen from the kernel command line and boot assessment, the
    /// daemon's argv[0] starts with `@` (systemd's root storage daemons) and layers are
    /// held by descriptor, reachable after `switch_root`.
    pub boot: bool,
    /// `-o boot_cmdline=FILE`: where the kernel command line is read (default /proc/cmdline).
    pub boot_cmdline: PathBuf,
    /// `-o exec_cache=DIR`: the exec cache served by passthrough.
    pub exec_cache: Option<PathBuf>,
    /// `-o exec_cache_size=SIZE`: its size limit in bytes.
    pub exec_cache_size: u64,
    /// `-o exec_cache_verify=stat|full`: how kept cache files are checked.
    pub exec_cache_verify: packagefs::exec_cache::Verify,
    /// `-o io_uring=auto|on|off`: the kernel's FUSE io_uring transport.
    pub io_uring: packagefs::uring::Mode,
    /// `-o chunk_store=DIR`: where chunks of thin packages are kept (docs/fleet.md).
    pub chunk_store: PathBuf,
    /// `-o chunk_store_size=SIZE`: its bound.
    pub chunk_store_size: u64,
    /// `-o fetch_timeout=SECS`: connect and read timeout of a chunk request.
    pub fetch_timeout: u64,
    /// `-o read_ahead_kb=N`: the mount's read-ahead (and a page fault's read-around).
    pub read_ahead_kb: u32,
    /// `-o prefetch_record=DIR`: record the chunks thin packages read (prefetch lists).
    pub prefetch_record: Option<PathBuf>,
}

/// The exec cache's size limit unless `-o exec_cache_size` says otherwise.
pub const DEFAULT_EXEC_CACHE_SIZE: u64 = 1 << 30;

/// What is wrong with a command line; each prints as a one-line usage message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Usage {
    /// Neither `MOUNTPOINT` nor `SOURCE MOUNTPOINT`.
    #[error("expected MOUNTPOINT or SOURCE MOUNTPOINT")]
    Positional,
    /// A size that does not parse or is out of range (`option`: where it was given).
    #[error("{0}")]
    Size(String),
    /// An option's value is not what it takes.
    #[error("{option}={value}: {wants}")]
    Value {
        /// The option.
        option: &'static str,
        /// What was given.
        value: String,
        /// What it takes.
        wants: &'static str,
    },
    /// `exec_cache_size` without `exec_cache`.
    #[error("exec_cache_size without exec_cache=DIR")]
    ExecCacheSizeAlone,
    /// `exec_cache_verify` without `exec_cache`.
    #[error("exec_cache_verify without exec_cache=DIR")]
    ExecCacheVerifyAlone,
    /// No layer given.
    #[error("no layers: give at least one --layer NAME=DIR")]
    NoLayers,
    /// A layer not given as `NAME=DIR`.
    #[error("layer `{0}`: expected NAME=DIR")]
    LayerSpec(String),
    /// A layer name with other characters than the layer-name rule allows.
    #[error("layer `{0}`: the name must be letters, digits, '.', '-' or '_'")]
    LayerName(String),
    /// The same layer twice.
    #[error("layer {0} given twice")]
    DuplicateLayer(String),
}

impl Args {
    /// Turns the arguments into settings, or says what is wrong with them.
    pub fn settings(self) -> Result<Settings, Usage> {
        let mut layer_specs = self.layers.clone();
        let mut trusted_keys = self.trusted_keys.clone();
        let mut policy = PathBuf::from(pkgset::capabilities::DEFAULT_PATH);
        let mut repositories = PathBuf::from(repo::allow::DEFAULT_PATH);
        let mut cache_size = parse_size(&self.cache_size)?;
        let mut threads = self.threads;
        let (mountpoint, source) = match self.positional.as_slice() {
            [m] => (m.clone(), None),
            [s, m] => (m.clone(), Some(s.clone())),
            _ => return Err(Usage::Positional),
        };
        if let Some(src) = &source {
            let s = src.to_string_lossy();
            if s.contains('=') {
                layer_specs.extend(s.split(':').filter(|x| !x.is_empty()).map(str::to_owned));
            }
        }
        // Everything is owned by root with fixed modes, so the kernel's own permission check
        // (default_permissions) is exact, and without it `allow_other` would let any user
        // read any file. The fsname is the SOURCE of the mount.fuse3 form, so that
        // `mount -a` recognises an fstab line as mounted.
        let fsname = source
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "packagefs".into());
        let mut mount_options = vec![
            MountOption::RO,
            MountOption::FSName(fsname),
            MountOption::Subtype("packagefs".into()),
            MountOption::NoDev,
            MountOption::DefaultPermissions,
        ];
        let mut log_file = None;
        let mut acl = SessionACL::Owner;
        let mut nosuid = false;
        let mut xattrs = None;
        let mut auto_unmount = false;
        let mut boot = false;
        let mut boot_cmdline = PathBuf::from("/proc/cmdline");
        let mut exec_cache = None;
        let mut exec_cache_size = None;
        let mut exec_cache_verify = None;
        let mut io_uring = packagefs::uring::Mode::Auto;
        let mut chunk_store = PathBuf::from("/var/cache/packagefs/chunks");
        let mut chunk_store_size: u64 = 4 << 30;
        let mut fetch_timeout: u64 = 5;
        let mut read_ahead_kb: u32 = 1024;
        let mut prefetch_record = None;
        for opt in self
            .options
            .iter()
            .flat_map(|o| o.split(','))
            .filter(|o| !o.is_empty())
        {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (k, v) {
                ("layer", Some(v)) => layer_specs.push(v.to_owned()),
                ("trusted_keys", Some(v)) => trusted_keys = PathBuf::from(v),
                ("policy", Some(v)) => policy = PathBuf::from(v),
                ("repositories", Some(v)) => repositories = PathBuf::from(v),
                ("cache_size", Some(v)) => cache_size = parse_size(v)?,
                ("threads", Some(v)) => {
                    threads = Some(v.parse().map_err(|_| Usage::Value {
                        option: "threads",
                        value: v.to_owned(),
                        wants: "not a number",
                    })?)
                }
                ("allow_other", None) => acl = SessionACL::All,
                ("allow_root", None) => acl = SessionACL::RootAndOwner,
                ("default_permissions", None) => {} // always on
                ("log", Some(v)) => log_file = Some(PathBuf::from(v)),
                ("auto_unmount", None) => auto_unmount = true,
                ("boot", None) => boot = true,
                ("boot_cmdline", Some(v)) => boot_cmdline = PathBuf::from(v),
                ("exec_cache", Some(v)) if !v.is_empty() => exec_cache = Some(PathBuf::from(v)),
                ("exec_cache_size", Some(v)) => exec_cache_size = Some(parse_size(v)? as u64),
                ("exec_cache_verify", Some(v)) => {
                    exec_cache_verify = Some(v.parse().map_err(|()| Usage::Value {
                        option: "exec_cache_verify",
                        value: v.to_owned(),
                        wants: "expected stat or full",
                    })?)
                }
                ("io_uring", Some(v)) => {
                    io_uring = v.parse().map_err(|_| Usage::Value {
                        option: "io_uring",
                        value: v.to_owned(),
                        wants: "expected auto, on or off",
                    })?
                }
                ("chunk_store", Some(v)) if !v.is_empty() => chunk_store = PathBuf::from(v),
                ("chunk_store_size", Some(v)) => chunk_store_size = parse_size(v)? as u64,
                ("prefetch_record", Some(v)) if !v.is_empty() => {
                    prefetch_record = Some(PathBuf::from(v))
                }
                ("fetch_timeout", Some(v)) => {
                    fetch_timeout = number_in("fetch_timeout", v, 1..=300, "seconds from 1 to 300")?
                }
                ("read_ahead_kb", Some(v)) => {
                    read_ahead_kb = number_in("read_ahead_kb", v, 4..=16384, "KiB from 4 to 16384")?
                }
                ("nosuid", None) => nosuid = true,
                ("suid", None) => nosuid = false,
                ("noexec", None) => mount_options.push(MountOption::NoExec),
                ("exec", None) => mount_options.push(MountOption::Exec),
                ("noatime", None) => mount_options.push(MountOption::NoAtime),
                // mount(8) passes `rw` unless told `ro`: the mount is read-only whatever it
                // says; the rest is mount(8) noise.
                (
                    "nodev" | "dev" | "ro" | "rw" | "async" | "sync" | "atime" | "relatime"
                    | "nofail" | "_netdev" | "user" | "users" | "nouser" | "auto" | "noauto"
                    | "defaults",
                    None,
                ) => {}
                ("fsname", Some(v)) => {
                    mount_options.retain(|o| !matches!(o, MountOption::FSName(_)));
                    mount_options.push(MountOption::FSName(v.to_owned()));
                }
                ("subtype", Some(_)) => {}
                ("xattrs", None) => xattrs = Some(true),
                ("noxattrs", None) => xattrs = Some(false),
                _ => mount_options.push(MountOption::CUSTOM(opt.to_owned())),
            }
        }
        // Root mounts honour setuid (only files of the `system` layer keep the bits anyway).
        let root = unsafe { libc::geteuid() } == 0;
        mount_options.push(if root && !nosuid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        });
        if exec_cache_size.is_some() && exec_cache.is_none() {
            return Err(Usage::ExecCacheSizeAlone);
        }
        if exec_cache_verify.is_some() && exec_cache.is_none() {
            return Err(Usage::ExecCacheVerifyAlone);
        }
        if layer_specs.is_empty() {
            return Err(Usage::NoLayers);
        }
        let mut layers = Vec::new();
        for spec in &layer_specs {
            let (name, dir) = spec
                .split_once('=')
                .ok_or_else(|| Usage::LayerSpec(spec.clone()))?;
            if !pkgset::stack::is_layer_name(name) {
                return Err(Usage::LayerName(spec.clone()));
            }
            if layers.iter().any(|l: &LayerDir| l.name == name) {
                return Err(Usage::DuplicateLayer(name.to_owned()));
            }
            layers.push(LayerDir {
                name: name.to_owned(),
                dir: PathBuf::from(dir),
            });
        }
        let threads = threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(2, |n| n.get())
                    .max(2)
            })
            .clamp(1, 64);
        Ok(Settings {
            layers,
            trusted_keys,
            policy,
            repositories,
            cache_size,
            threads,
            mountpoint,
            mount_options,
            acl,
            daemonize: source.is_some() && !self.foreground,
            log_file,
            xattrs,
            auto_unmount,
            boot,
            boot_cmdline,
            exec_cache,
            exec_cache_size: exec_cache_size.unwrap_or(DEFAULT_EXEC_CACHE_SIZE),
            exec_cache_verify: exec_cache_verify.unwrap_or_default(),
            io_uring,
            chunk_store,
            chunk_store_size,
            fetch_timeout,
            read_ahead_kb,
            prefetch_record,
        })
    }
}

impl Settings {
    /// The fuser configuration.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.mount_options = self.mount_options.clone();
        c.acl = self.acl;
        c.n_threads = Some(self.threads);
        c.clone_fd = true;
        c
    }
}

/// The number `v` of option `option` if it is in `range`, else the error that says what
/// the option `wants`.
fn number_in<T: std::str::FromStr + PartialOrd>(
    option: &'static str,
    v: &str,
    range: std::ops::RangeInclusive<T>,
    wants: &'static str,
) -> Result<T, Usage> {
    v.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| Usage::Value {
            option,
            value: v.to_owned(),
            wants,
        })
}

/// A cache size: `64M`, `512K`, `1G`, `1048576` ([`format::text::parse_size`]), at least 4M.
pub fn parse_size(s: &str) -> Result<usize, Usage> {
    let v = usize::try_from(format::text::parse_size(s).map_err(Usage::Size)?)
        .map_err(|_| Usage::Size(format!("size `{s}` is too large")))?;
    if v < 4 << 20 {
        return Err(Usage::Size(format!(
            "cache size `{s}` is below the minimum of 4M"
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        // (clap checks only in builds with debug assertions: scripts/test runs this test
        // so, once.)
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    use super::*;
    use packagefs::exec_cache::Verify;

    fn settings(args: &[&str]) -> Result<Settings, Usage> {
        Args::try_parse_from(["packagefs"].iter().chain(args))
            .expect("clap accepts it")
            .settings()
    }

    #[test]
    fn exec_cache_options() {
        let s = settings(&["--layer", "system=/l", "/mnt"]).unwrap();
        assert_eq!(s.exec_cache, None);
        let s = settings(&[
            "--layer",
            "system=/l",
            "-o",
            "exec_cache=/var/cache/exec",
            "/mnt",
        ])
        .unwrap();
        assert_eq!(s.exec_cache, Some(PathBuf::from("/var/cache/exec")));
        assert_eq!(s.exec_cache_size, DEFAULT_EXEC_CACHE_SIZE);
        let s = settings(&[
            "--layer",
            "system=/l",
            "-o",
            "exec_cache=/c,exec_cache_size=2G",
            "/mnt",
        ])
        .unwrap();
        assert_eq!(s.exec_cache_size, 2 << 30);
        assert_eq!(s.exec_cache_verify, Verify::Stat, "the default");
        let s = settings(&[
            "--layer",
            "system=/l",
            "-o",
            "exec_cache=/c,exec_cache_verify=full",
            "/mnt",
        ])
        .unwrap();
        assert_eq!(s.exec_cache_verify, Verify::Full);
        let bad = settings(&[
            "--layer",
            "system=/l",
            "-o",
            "exec_cache=/c,exec_cache_verify=maybe",
            "/mnt",
        ])
        .unwrap_err();
        assert_eq!(
            bad.to_string(),
            "exec_cache_verify=maybe: expected stat or full"
        );
        assert_eq!(
            settings(&[
                "--layer",
                "system=/l",
                "-o",
                "exec_cache_verify=stat",
                "/mnt"
            ])
            .unwrap_err(),
            Usage::ExecCacheVerifyAlone
        );
        // No unknown option reaches the kernel.
        assert!(!s
            .mount_options
            .iter()
            .any(|o| matches!(o, MountOption::CUSTOM(_))));
        assert_eq!(
            settings(&["--layer", "system=/l", "-o", "exec_cache_size=2G", "/mnt"]).unwrap_err(),
            Usage::ExecCacheSizeAlone
        );
        assert_eq!(
            settings(&[
                "--layer",
                "system=/l",
                "-o",
                "exec_cache=/c,exec_cache_size=1M",
                "/mnt"
            ])
            .unwrap_err()
            .to_string(),
            "cache size `1M` is below the minimum of 4M"
        );
    }

    #[test]
    fn usage_errors_say_what_is_wrong_by_kind() {
        let e = |args: &[&str]| settings(args).unwrap_err();
        assert_eq!(e(&["/mnt"]), Usage::NoLayers);
        assert_eq!(e(&["--layer", "sys", "/m"]), Usage::LayerSpec("sys".into()));
        assert_eq!(
            e(&["--layer", "a b=/l", "/m"]),
            Usage::LayerName("a b=/l".into())
        );
        assert_eq!(
            e(&["--layer", "s=/a", "--layer", "s=/b", "/m"]),
            Usage::DuplicateLayer("s".into())
        );
        let bad = e(&["--layer", "s=/a", "-o", "io_uring=maybe", "/m"]);
        assert!(
            matches!(
                bad,
                Usage::Value {
                    option: "io_uring",
                    ..
                }
            ),
            "{bad:?}"
        );
        assert_eq!(bad.to_string(), "io_uring=maybe: expected auto, on or off");
        for v in ["0", "3", "16385", "big"] {
            let bad = e(&["--layer", "s=/a", "-o", &format!("read_ahead_kb={v}"), "/m"]);
            assert!(
                matches!(
                    bad,
                    Usage::Value {
                        option: "read_ahead_kb",
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
        let bad = e(&["--layer", "s=/a", "-o", "fetch_timeout=0", "/m"]);
        assert!(matches!(
            bad,
            Usage::Value {
                option: "fetch_timeout",
                ..
            }
        ));
        assert!(matches!(
            e(&["--layer", "s=/a", "-o", "threads=many", "/m"]),
            Usage::Value {
                option: "threads",
                ..
            }
        ));
    }
}
