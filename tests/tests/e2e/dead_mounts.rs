//! A mount point that still holds a mount: a dead `fuse.packagefs` mount (its daemon was
//! killed with SIGKILL, so nothing unmounted it and every request gives ENOTCONN) is cleared
//! by the next daemon, which says so and serves; anything else (a live packagefs mount, a
//! dead mount of another FUSE file system, a tmpfs) is left alone, with a one-line
//! "busy" error and exit 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e::mount::{lazy_unmount, Finished};
use e2e::{
    log_lines, mountinfo, run_ok, run_packagefs, wait_until, Mount, Stack, TestTree, DEADLINE,
};

use crate::{assert_errno, read};

fn stack() -> Stack {
    let t = TestTree::new();
    t.file("hello", "hello\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "hello");
    s
}

/// A mount point of its own (not the one a [`e2e::Mount`] makes), canonical; whatever a
/// test leaves mounted there is detached when it is dropped.
struct MountPoint {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl MountPoint {
    fn new() -> MountPoint {
        let dir = tempfile::Builder::new()
            .prefix("e2e-dead-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let path = std::fs::canonicalize(path).unwrap();
        MountPoint { dir, path }
    }

    /// How many mounts are stacked at exactly this point.
    fn mounts(&self) -> usize {
        mountinfo::mounts()
            .iter()
            .filter(|m| m.mount_point == self.path)
            .count()
    }

    /// The fs type of the topmost mount here.
    fn fstype(&self) -> Option<String> {
        mountinfo::find(&self.path).map(|m| m.fstype)
    }
}

impl Drop for MountPoint {
    fn drop(&mut self) {
        while self.mounts() > 0 {
            lazy_unmount(&self.path);
            if self.mounts() > 0 && !wait_until(DEADLINE, || self.mounts() == 0) {
                eprintln!("cannot clear {}", self.path.display());
                break;
            }
        }
    }
}

/// `statfs(path)`: on a FUSE mount it always reaches the daemon (`stat` may be answered
/// from the kernel's attribute cache even when the daemon is gone).
fn statfs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string and out-pointer.
    let r = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `packagefs --layer system=... --trusted-keys ... MNT`, expected to end by itself.
fn run(s: &Stack, mnt: &Path) -> Finished {
    let mut spec = std::ffi::OsString::from("system=");
    spec.push(s.layer("system").path());
    run_packagefs([
        "--layer".into(),
        spec,
        "--trusted-keys".into(),
        s.keys().trusted().as_os_str().to_owned(),
        mnt.as_os_str().to_owned(),
    ])
}

/// Exit 1 and exactly one line of output, `packagefs: ...`, naming the mount point and
/// saying it is busy, and every one of `needles`.
fn assert_busy(f: &Finished, mnt: &Path, needles: &[&str]) {
    assert_eq!(f.code(), 1, "exit status; output:\n{}", f.stderr);
    let lines: Vec<&str> = f.stderr.lines().collect();
    let line = lines
        .iter()
        .find(|l| l.starts_with("packagefs: "))
        .unwrap_or_else(|| panic!("no `packagefs: ` line:\n{}", f.stderr));
    let mnt = mnt.to_string_lossy();
    for n in [&*mnt, "busy"].iter().chain(needles) {
        assert!(line.contains(n), "the error does not say {n:?}: {line}");
    }
    assert!(
        !f.stderr.contains("cleared") && !f.stderr.contains("panicked"),
        "{}",
        f.stderr
    );
}

/// SIGKILLs a packagefs daemon serving `mp`, and checks the mount it leaves is dead.
/// Keep the returned guard until the dead mount is gone: dropped before, it reports the
/// mount its daemon left behind.
fn kill_9_leaves_a_dead_mount(s: &Stack, mp: &MountPoint) -> Mount {
    let mut m = s.builder().mountpoint(&mp.path).start();
    assert_eq!(read(m.join("hello")), "hello\n");
    // with the root's attributes cached, `stat` of the dead mount point succeeds
    assert_eq!(crate::names(m.path()), ["hello"]);
    std::fs::metadata(m.path()).unwrap();
    m.signal(libc::SIGKILL);
    m.wait_exit(DEADLINE).expect("SIGKILL ends the daemon");
    assert_eq!(mp.fstype().as_deref(), Some("fuse.packagefs"));
    // Over /dev/fuse the connection is gone (ENOTCONN); over io_uring (E2E_IO_URING=on)
    // the kernel aborts it when it tears the dead daemon's rings down (ECONNABORTED).
    // The daemon's probe takes both for dead.
    match statfs(&mp.path) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {}
        r => panic!("statfs of the dead mount: {r:?}, expected ENOTCONN or ECONNABORTED"),
    }
    m
}

#[test]
fn a_new_daemon_clears_the_dead_mount_of_a_sigkilled_one_and_serves() {
    let s = stack();
    let mp = MountPoint::new();
    let _killed = kill_9_leaves_a_dead_mount(&s, &mp);
    let mut m = s.builder().mountpoint(&mp.path).start();
    assert_eq!(read(m.join("hello")), "hello\n");
    let log = m.log();
    let said = log_lines(&log, &["dead", "cleared", &mp.path.to_string_lossy()]);
    assert_eq!(
        said.len(),
        1,
        "one line says the dead mount was cleared:\n{log}"
    );
    assert_eq!(mp.mounts(), 1, "the dead mount is still under the new one");
    // and the new daemon's mount is an ordinary one: SIGTERM takes it away, exit 0
    assert_eq!(m.terminate().code(), Some(0), "{}", m.log());
    assert_eq!(
        mp.mounts(),
        0,
        "{}",
        mountinfo::describe_under(mp.dir.path())
    );
}

#[test]
fn a_live_packagefs_mount_is_never_cleared() {
    let s = stack();
    let mp = MountPoint::new();
    let m = s.builder().mountpoint(&mp.path).start();
    let f = run(&s, &mp.path);
    assert_busy(&f, &mp.path, &["fuse.packagefs"]);
    assert_eq!(read(m.join("hello")), "hello\n");
    assert_eq!(mp.mounts(), 1);
}

#[test]
fn a_dead_mount_of_another_fuse_file_system_is_not_cleared() {
    let s = stack();
    let mp = MountPoint::new();
    // squashfuse, SIGKILLed: a dead FUSE mount of type fuse.squashfuse
    let src = TestTree::new();
    src.file("other", "other\n");
    let img = mp.dir.path().join("other.sqfs");
    run_ok(
        Command::new("mksquashfs")
            .arg(src.path())
            .arg(&img)
            .args(["-quiet", "-no-progress"]),
    );
    let mut sq = Command::new("squashfuse")
        .arg("-f")
        .arg(&img)
        .arg(&mp.path)
        .stdin(Stdio::null())
        .spawn()
        .expect("run squashfuse (scripts/test installs it)");
    let up = wait_until(DEADLINE, || mp.fstype().is_some());
    let _ = sq.kill(); // SIGKILL
    let _ = sq.wait();
    assert!(up, "squashfuse did not mount");
    let fstype = mp.fstype().expect("squashfuse's mount is left behind");
    assert!(
        fstype.starts_with("fuse") && fstype != "fuse.packagefs",
        "{fstype}"
    );
    assert_errno(statfs(&mp.path), libc::ENOTCONN, "statfs of the dead mount");

    let f = run(&s, &mp.path);
    assert_busy(&f, &mp.path, &[&fstype]);
    assert_eq!(
        mp.fstype(),
        Some(fstype),
        "the other file system's mount was touched"
    );
    assert_eq!(mp.mounts(), 1);
}

#[test]
fn a_tmpfs_on_the_mount_point_is_not_cleared() {
    let s = stack();
    let mp = MountPoint::new();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "e2e-tmpfs"])
            .arg(&mp.path),
    );
    std::fs::write(mp.path.join("mine"), "mine\n").unwrap();
    let f = run(&s, &mp.path);
    assert_busy(&f, &mp.path, &["tmpfs"]);
    assert_eq!(read(mp.path.join("mine")), "mine\n");
    assert_eq!(mp.mounts(), 1);
}
