//! The `mount.fuse3` form (`packagefs SOURCE MOUNTPOINT -o OPTIONS`, as run by
//! `mount -t fuse.packagefs` and fstab): it returns once the mount is live, the daemon
//! runs on detached, and `umount` stops it.
//!
//! `mount.fuse3` runs `sh -c 'packagefs SOURCE MNT -o OPTS'`, so `packagefs` must be in its
//! PATH: these tests put a symlink to the binary in a temporary directory at the front of
//! PATH instead of installing it. `mount(8)` itself clears PATH for its helpers, so the
//! tests of the `mount` command use the equivalent `-t fuse` form with the program's
//! absolute path (`/path/to/packagefs#SOURCE`).

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use e2e::mount::lazy_unmount;
use e2e::{mountinfo, packagefs, wait_until, Stack, TestTree, DEADLINE};

use crate::read;

fn stack() -> Stack {
    let t = TestTree::new();
    t.file("hello", "hello from the helper form\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "hello");
    s
}

/// A mount made by a helper: the daemon is not our child, so it is found by its command
/// line. Dropping it unmounts (lazily) and stops the daemon if a test left them behind.
struct HelperMount {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl HelperMount {
    fn new() -> HelperMount {
        let dir = tempfile::Builder::new()
            .prefix("e2e-helper-")
            .tempdir()
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        // a directory holding `packagefs`, to put in front of PATH
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::os::unix::fs::symlink(packagefs(), dir.path().join("bin/packagefs")).unwrap();
        let mnt = std::fs::canonicalize(mnt).unwrap();
        HelperMount { dir, mnt }
    }

    fn path_env(&self) -> OsString {
        let mut p = OsString::from(self.dir.path().join("bin"));
        p.push(":");
        p.push(std::env::var_os("PATH").unwrap_or_default());
        p
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("helper.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `cmd` with its output going to the log file (a pipe would be held open by
    /// the detached daemon) and waits for it, at most [`DEADLINE`].
    fn run(&self, cmd: &mut Command) -> ExitStatus {
        let log = File::create(self.log_path()).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_child(&mut child, DEADLINE).unwrap_or_else(|| {
            panic!(
                "{cmd:?} did not return within {DEADLINE:?}:\n{}",
                self.log()
            )
        })
    }

    /// The detached daemon serving this mount point, if it runs.
    fn daemon_pid(&self) -> Option<u32> {
        let exe = std::fs::canonicalize(packagefs()).ok()?;
        let mnt = self.mnt.as_os_str().as_encoded_bytes();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let proc_exe = std::fs::read_link(e.path().join("exe")).ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let ours = proc_exe == exe && cmdline.split(|&b| b == 0).any(|a| a == mnt);
            (ours && !is_zombie(pid)).then_some(pid)
        })
    }
}

impl Drop for HelperMount {
    fn drop(&mut self) {
        if mountinfo::is_fuse_mounted(&self.mnt) {
            lazy_unmount(&self.mnt);
        }
        if let Some(pid) = self.daemon_pid() {
            // SAFETY: the daemon this test started (through the helper), found by its
            // unique mount point; SIGTERM, then SIGKILL if it does not go.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if !wait_until(DEADLINE, || self.daemon_pid().is_none()) {
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
        .unwrap_or(true)
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn layer_source(s: &Stack) -> OsString {
    let mut src = OsString::from("system=");
    src.push(s.layer("system").path());
    src
}

fn keys_option(s: &Stack) -> OsString {
    let mut o = OsString::from("trusted_keys=");
    o.push(s.keys().trusted());
    o
}

/// The mount is live the moment the helper returns; `umount` then ends the daemon.
fn assert_live_then_umount_ends_daemon(h: &HelperMount, status: ExitStatus) {
    assert!(
        status.success(),
        "the helper failed ({status}):\n{}",
        h.log()
    );
    // no polling: the helper must not return before the mount is live
    assert!(
        mountinfo::is_fuse_mounted(&h.mnt),
        "not mounted when the helper returned:\n{}\nFUSE mounts:\n{}",
        h.log(),
        mountinfo::describe_fuse()
    );
    assert_eq!(read(h.mnt.join("hello")), "hello from the helper form\n");
    let pid = h.daemon_pid().expect("the detached daemon is running");
    let out = Command::new("umount").arg(&h.mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(DEADLINE, || h.daemon_pid().is_none()),
        "daemon {pid} still runs {DEADLINE:?} after umount:\n{}",
        h.log()
    );
    assert!(!mountinfo::is_fuse_mounted(&h.mnt));
}

#[test]
fn mount_fuse3_form_returns_once_live_and_umount_stops_the_daemon() {
    let s = stack();
    let h = HelperMount::new();
    let status = h.run(
        Command::new("mount.fuse3")
            .arg(layer_source(&s))
            .arg(&h.mnt)
            .args(["-t", "packagefs", "-o"])
            .arg(keys_option(&s))
            .env("PATH", h.path_env()),
    );
    assert_live_then_umount_ends_daemon(&h, status);
}

#[test]
fn mount_fuse3_form_takes_layers_from_options() {
    // fstab style: a placeholder source, the layers in -o
    let s = stack();
    let h = HelperMount::new();
    let mut opts = OsString::from("layer=system=");
    opts.push(s.layer("system").path());
    opts.push(",");
    opts.push(keys_option(&s));
    let status = h.run(
        Command::new("mount.fuse3")
            .arg("packagefs")
            .arg(&h.mnt)
            .args(["-t", "packagefs", "-o"])
            .arg(opts)
            .env("PATH", h.path_env()),
    );
    assert_live_then_umount_ends_daemon(&h, status);
}

fn mount_command(s: &Stack, h: &HelperMount, extra_options: &str) -> ExitStatus {
    let mut source = OsString::from(packagefs());
    source.push("#");
    source.push(layer_source(s));
    let mut opts = OsString::from(extra_options);
    opts.push(keys_option(s));
    h.run(
        Command::new("mount")
            .args(["-t", "fuse"])
            .arg(source)
            .arg(&h.mnt)
            .arg("-o")
            .arg(opts),
    )
}

#[test]
fn mount_command_with_ro_returns_once_live_and_umount_stops_the_daemon() {
    let s = stack();
    let h = HelperMount::new();
    let status = mount_command(&s, &h, "ro,");
    assert_live_then_umount_ends_daemon(&h, status);
}

#[test]

fn mount_command_without_ro_option_mounts_read_only() {
    // What an fstab line without `ro` does: mount(8) adds `rw` to the options.
    let s = stack();
    let h = HelperMount::new();
    let status = mount_command(&s, &h, "");
    assert_live_then_umount_ends_daemon(&h, status);
}

#[test]

fn mount_helper_does_not_hold_the_callers_stdout_open() {
    let s = stack();
    let h = HelperMount::new();
    let mut child = Command::new("mount.fuse3")
        .arg(layer_source(&s))
        .arg(&h.mnt)
        .args(["-t", "packagefs", "-o"])
        .arg(keys_option(&s))
        .env("PATH", h.path_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(h.log_path()).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let status = wait_child(&mut child, DEADLINE).expect("the helper returns");
    assert!(status.success(), "{}", h.log());
    // like `out=$(mount ...)`: read the helper's stdout to its end
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = stdout.read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let eof = rx.recv_timeout(Duration::from_secs(2)).is_ok();
    drop(h); // unmounts, which also ends the reader above
    assert!(
        eof,
        "the caller's stdout is still open 2 s after the helper returned"
    );
}

#[test]
fn mount_fuse3_form_reports_a_failure_with_nonzero_exit_and_mounts_nothing() {
    let s = stack();
    let h = HelperMount::new();
    let missing = h.dir.path().join("no-such-layer");
    let mut source = OsString::from("system=");
    source.push(&missing);
    let status = h.run(
        Command::new("mount.fuse3")
            .arg(source)
            .arg(&h.mnt)
            .args(["-t", "packagefs", "-o"])
            .arg(keys_option(&s))
            .env("PATH", h.path_env()),
    );
    assert!(!status.success(), "the helper succeeded:\n{}", h.log());
    let log = h.log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("packagefs: ") && l.contains(&*missing.to_string_lossy())),
        "no error naming the layer:\n{log}"
    );
    assert!(!mountinfo::is_fuse_mounted(&h.mnt));
    assert_eq!(h.daemon_pid(), None, "a daemon is left running");
}

/// Where `sh` looks for programs when it has no PATH, as under mount(8).
const DEFAULT_SH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

#[test]
fn mount_t_fuse_packagefs_form_returns_once_live_and_umount_stops_the_daemon() {
    // mount(8) clears PATH for its helpers, so this form finds only an installed
    // `packagefs`; run it only when that is the very binary under test.
    let ours = std::fs::read(packagefs()).unwrap();
    let installed = DEFAULT_SH_PATH
        .iter()
        .map(|d| std::path::Path::new(d).join("packagefs"))
        .find(|p| p.exists());
    match &installed {
        Some(p) if std::fs::read(p).ok().as_ref() == Some(&ours) => {}
        other => {
            eprintln!(
                "skipped: `mount -t fuse.packagefs` needs the binary under test installed as \
                 packagefs in {} (found: {other:?}); the same helper path is tested through \
                 mount.fuse3 with a PATH override and `mount -t fuse PROGRAM#SOURCE`",
                DEFAULT_SH_PATH.join(":")
            );
            return;
        }
    }
    let s = stack();
    let h = HelperMount::new();
    let mut opts = OsString::from("ro,");
    opts.push(keys_option(&s));
    let status = h.run(
        Command::new("mount")
            .args(["-t", "fuse.packagefs"])
            .arg(layer_source(&s))
            .arg(&h.mnt)
            .arg("-o")
            .arg(opts),
    );
    assert_live_then_umount_ends_daemon(&h, status);
}

/// The initramfs form (`packagefs system=DIR /newroot -o boot,log=FILE`): the boot
/// decisions reach the caller's stderr (the console) as `packagefs: ` lines although the
/// detached daemon logs to its file, the log has them too, and the daemon's argv[0] is
/// `@packagefs`.
#[test]
fn r12_boot_form_says_its_choice_on_the_callers_stderr_and_runs_as_at_packagefs() {
    let s = stack();
    let h = HelperMount::new();
    let cmdline = h.dir.path().join("cmdline");
    std::fs::write(&cmdline, "quiet packagefs.tries=2 packagefs.generation=x\n").unwrap();
    let daemon_log = h.dir.path().join("daemon.log");
    let mut opts = OsString::from("boot,boot_cmdline=");
    opts.push(&cmdline);
    opts.push(",log=");
    opts.push(&daemon_log);
    opts.push(",");
    opts.push(keys_option(&s));
    let status = h.run(
        Command::new(packagefs())
            .arg(layer_source(&s))
            .arg(&h.mnt)
            .arg("-o")
            .arg(&opts),
    );
    assert!(status.success(), "{status}:\n{}", h.log());
    assert_eq!(read(h.mnt.join("hello")), "hello from the helper form\n");
    // The layer had no generation: the first is made from packages/, as at any mount.
    let console = h.log();
    assert!(
        console.contains(
            "packagefs: the system layer has no generation yet: its first is made from packages/\n"
        ),
        "console:\n{console}"
    );
    let pid = h.daemon_pid().expect("the detached daemon runs");
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(argv.starts_with(b"@packagefs\0"), "{argv:?}");
    Command::new("umount").arg(&h.mnt).status().unwrap();
    assert!(wait_until(DEADLINE, || h.daemon_pid().is_none()));

    // The next boot has a generation, on trial, and says so on the console and in the log.
    let status = h.run(
        Command::new(packagefs())
            .arg(layer_source(&s))
            .arg(&h.mnt)
            .arg("-o")
            .arg({
                let mut o = opts.clone();
                o.push(",allow_other");
                o
            }),
    );
    assert!(status.success(), "{status}:\n{}", h.log());
    let console = h.log();
    for want in [
        "packagefs: packagefs.generation=x: not a generation number: ignored, the active generation boots\n",
        "packagefs: generation 1 is on trial: boot 1 of 2 (pkgtool bless marks it good)\n",
    ] {
        assert!(console.contains(want), "{want:?} on the console:\n{console}");
    }
    let log = std::fs::read_to_string(&daemon_log).unwrap();
    assert!(
        log.contains("generation 1 is on trial: boot 1 of 2"),
        "the log file:\n{log}"
    );
}
