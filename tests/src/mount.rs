//! Running the daemon: the [`Mount`] guard and [`run_packagefs`] for runs expected to fail.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::mountinfo::{self, MountEntry};
use crate::uring::{RingSwitch, Transport};
use crate::{packagefs, Keys, Layer, DEADLINE};

/// The options of one daemon run.
#[derive(Debug, Default)]
#[must_use]
pub struct MountBuilder {
    layers: Vec<(String, PathBuf)>,
    trusted: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    mountpoint: Option<PathBuf>,
    transport: Option<Transport>,
}

/// The daemon exited before its mount appeared.
#[derive(Debug)]
pub struct Exited {
    /// How it exited.
    pub status: ExitStatus,
    /// What it logged (stderr).
    pub log: String,
}

impl MountBuilder {
    /// Adds `--layer NAME=DIR` (lowest first).
    pub fn layer(mut self, name: &str, dir: impl AsRef<Path>) -> Self {
        self.layers
            .push((name.to_owned(), dir.as_ref().to_path_buf()));
        self
    }

    /// Adds `--layer NAME=DIR` for a [`Layer`].
    pub fn layer_of(self, name: &str, layer: &Layer) -> Self {
        self.layer(name, layer.path())
    }

    /// `--trusted-keys DIR`.
    pub fn trusted_keys(mut self, dir: impl AsRef<Path>) -> Self {
        self.trusted = Some(dir.as_ref().to_path_buf());
        self
    }

    /// `--trusted-keys` holding the public key of `keys`.
    pub fn trusting(self, keys: &Keys) -> Self {
        self.trusted_keys(keys.trusted())
    }

    /// Any further argument (before the mount point).
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// An environment variable for the daemon.
    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Serve the mount over this transport (`-o io_uring=off|on`; for the ring, with
    /// `enable_uring` on while the mount lives). Without it the daemon's default (auto)
    /// applies, or `E2E_IO_URING=on` for the whole suite.
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = Some(t);
        self
    }

    /// Mount here instead of in a fresh temporary directory.
    pub fn mountpoint(mut self, p: impl AsRef<Path>) -> Self {
        self.mountpoint = Some(p.as_ref().to_path_buf());
        self
    }

    /// Starts the daemon and returns at once (see [`Mount::wait_ready`]).
    pub fn spawn(self) -> Mount {
        let dir = tempfile::Builder::new()
            .prefix("e2e-mount-")
            .tempdir()
            .unwrap();
        let mountpoint = match &self.mountpoint {
            Some(p) => p.clone(),
            None => {
                let p = dir.path().join("mnt");
                std::fs::create_dir(&p).unwrap();
                p
            }
        };
        let mountpoint = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint);
        let log_path = dir.path().join("packagefs.log");
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(packagefs());
        for (name, d) in &self.layers {
            let mut spec = OsString::from(format!("{name}="));
            spec.push(d);
            cmd.arg("--layer").arg(spec);
        }
        if let Some(t) = &self.trusted {
            cmd.arg("--trusted-keys").arg(t);
        }
        // E2E_EXEC_CACHE=1: the whole suite with an exec cache per mount (passthrough opens).
        if std::env::var_os("E2E_EXEC_CACHE").is_some() {
            cmd.arg("-o")
                .arg(format!("exec_cache={}", dir.path().join("exec").display()));
        }
        // E2E_IO_URING=on: every mount over the ring.
        let transport = self.transport.or_else(|| {
            let env = std::env::var_os("E2E_IO_URING")?;
            (env == "on").then_some(Transport::Ring)
        });
        let ring = match transport {
            Some(t) => {
                cmd.arg("-o").arg(t.option());
                if t == Transport::Ring {
                    RingSwitch::on()
                } else {
                    None
                }
            }
            None => None,
        };
        cmd.args(&self.args)
            .arg(&mountpoint)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Mount {
            child: Some(child),
            status: None,
            mountpoint,
            log_path,
            _ring: ring,
            _dir: dir,
        }
    }

    /// Starts the daemon and waits until its mount is live, or until it exits.
    pub fn try_start(self) -> Result<Mount, Exited> {
        let mut m = self.spawn();
        m.wait_ready()?;
        Ok(m)
    }

    /// Starts the daemon and waits until its mount is live; panics (showing the log) if
    /// the daemon exits instead.
    pub fn start(self) -> Mount {
        match self.try_start() {
            Ok(m) => m,
            Err(e) => panic!(
                "packagefs exited with {} before mounting; its log:\n{}",
                e.status, e.log
            ),
        }
    }
}

/// A running daemon and its mount. Dropping it (also while panicking) sends SIGTERM,
/// waits a bounded time (then SIGKILL and a lazy unmount), reaps the child, and fails the
/// test if the daemon did not exit promptly or left its mount behind.
#[derive(Debug)]
pub struct Mount {
    child: Option<Child>,
    status: Option<ExitStatus>,
    mountpoint: PathBuf,
    log_path: PathBuf,
    /// `enable_uring` held on while a mount over the ring lives.
    _ring: Option<RingSwitch>,
    _dir: TempDir,
}

impl Mount {
    /// A new builder.
    pub fn builder() -> MountBuilder {
        MountBuilder::default()
    }

    /// The mount point (canonical).
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// `path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mountpoint.join(rel)
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The mountinfo entry of the mount, if it is mounted.
    pub fn entry(&self) -> Option<MountEntry> {
        mountinfo::find(&self.mountpoint).filter(|m| m.fstype.starts_with("fuse"))
    }

    /// Whether the FUSE mount is in the mount table.
    pub fn is_mounted(&self) -> bool {
        mountinfo::is_fuse_mounted(&self.mountpoint)
    }

    /// Waits until the mount is live (Ok) or the daemon exits (Err); panics after
    /// [`DEADLINE`], showing the log and the FUSE mounts seen.
    pub fn wait_ready(&mut self) -> Result<(), Exited> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                if !self.is_mounted() {
                    return Err(Exited {
                        status,
                        log: self.log(),
                    });
                }
            }
            // In the mount table is not yet ready: mount(2) returns before the FUSE
            // handshake and the daemon's last steps; it logs "mounted in" when it is
            // ready (right before telling systemd), so a test reading the log from here
            // on sees the whole start.
            if self.is_mounted() && self.log().contains("mounted in ") {
                return Ok(());
            }
            if t0.elapsed() > DEADLINE {
                panic!(
                    "packagefs did not mount {} within {DEADLINE:?}\nits log:\n{}\nFUSE mounts seen:\n{}",
                    self.mountpoint.display(),
                    self.log(),
                    mountinfo::describe_fuse()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal to the daemon (if it is still running).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_wait().is_none() {
            // SAFETY: our own child, which has not been reaped yet, so the pid is ours.
            unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        }
    }

    /// The exit status, if the daemon has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = &mut self.child {
                self.status = c.try_wait().ok().flatten();
            }
        }
        self.status
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for the daemon to exit; panics if it does not exit within
    /// [`DEADLINE`]. Returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(DEADLINE) {
            Some(s) => s,
            None => panic!(
                "packagefs did not exit within {DEADLINE:?} of SIGTERM; its log:\n{}",
                self.log()
            ),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if self.try_wait().is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(DEADLINE).is_none() {
                problems.push(format!(
                    "packagefs (pid {}) did not exit within {DEADLINE:?} of SIGTERM",
                    self.pid()
                ));
                if let Some(c) = &mut self.child {
                    let _ = c.kill();
                    self.status = c.wait().ok();
                }
            }
        }
        if self.is_mounted() {
            problems.push(format!(
                "{} is still mounted after the daemon exited ({:?})",
                self.mountpoint.display(),
                self.status
            ));
            lazy_unmount(&self.mountpoint);
        }
        let panicking = std::thread::panicking();
        if panicking {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- packagefs log for {} (last {} lines) ---",
                self.mountpoint.display(),
                tail.len()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        if !problems.is_empty() {
            let msg = format!("{}\nits log:\n{}", problems.join("\n"), self.log());
            if panicking {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// `umount2(path, MNT_DETACH)`, for cleaning up after a failed test.
pub fn lazy_unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The result of a daemon run that was expected to end by itself.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Its stderr (and stdout).
    pub stderr: String,
}

impl Finished {
    /// The exit code (a signal counts as 128 + signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
}

/// Runs `packagefs ARGS...` and waits (at most [`DEADLINE`]) for it to exit by itself;
/// panics, after stopping it, if it is still running then.
pub fn run_packagefs<I, S>(args: I) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let dir = tempfile::Builder::new()
        .prefix("e2e-run-")
        .tempdir()
        .unwrap();
    let log_path = dir.path().join("out.log");
    let log = File::create(&log_path).unwrap();
    let mut cmd = Command::new(packagefs());
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > DEADLINE {
            // SAFETY: our own, unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(1));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} was still running after {DEADLINE:?}; its output:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stderr: std::fs::read_to_string(&log_path).unwrap_or_default(),
    }
}
