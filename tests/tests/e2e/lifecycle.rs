//! Starting and stopping: readiness is reported once the mount is live; SIGTERM and SIGINT
//! unmount and exit 0; an unmount from outside (`umount`, `fusermount3 -u`) ends the
//! daemon with exit 0; nothing is ever left mounted.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use e2e::{run_ok, Mount, Stack, TestTree, DEADLINE};

use crate::read;

fn stack() -> Stack {
    let t = TestTree::new();
    t.file("hello", "hello\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "hello");
    s
}

/// Stops the daemon with `sig` and checks it exits 0 and takes its mount with it.
fn assert_signal_unmounts(sig: libc::c_int) {
    let s = stack();
    let mut m = s.mount();
    assert_eq!(read(m.join("hello")), "hello\n");
    m.signal(sig);
    let st = m
        .wait_exit(DEADLINE)
        .unwrap_or_else(|| panic!("no exit within {DEADLINE:?} of signal {sig}:\n{}", m.log()));
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after signal {sig}:\n{}",
        m.log()
    );
    assert!(!m.is_mounted(), "still mounted after the daemon exited");
}

#[test]
fn sigterm_unmounts_and_exits_0() {
    assert_signal_unmounts(libc::SIGTERM);
}

#[test]
fn sigint_unmounts_and_exits_0() {
    assert_signal_unmounts(libc::SIGINT);
}

/// Opens a file and the root directory on the mount, sends SIGTERM, and returns how long
/// the daemon took to exit (at most `limit`), after checking it exited 0 and unmounted.
fn sigterm_with_open_files(limit: Duration) -> Duration {
    let s = stack();
    let mut m = s.mount();
    let f = std::fs::File::open(m.join("hello")).unwrap();
    let d = std::fs::File::open(m.path()).unwrap();
    let t0 = std::time::Instant::now();
    m.signal(libc::SIGTERM);
    let st = m
        .wait_exit(limit)
        .unwrap_or_else(|| panic!("no exit within {limit:?} of SIGTERM:\n{}", m.log()));
    let took = t0.elapsed();
    assert_eq!(st.code(), Some(0), "{}", m.log());
    assert!(!m.is_mounted(), "still in the mount table");
    drop((f, d));
    took
}

#[test]
fn sigterm_with_a_file_open_on_the_mount_still_unmounts_and_exits_0() {
    sigterm_with_open_files(2 * DEADLINE);
}

#[test]

fn sigterm_with_a_file_open_on_the_mount_exits_promptly() {
    let took = sigterm_with_open_files(2 * DEADLINE);
    assert!(
        took < Duration::from_secs(3),
        "the daemon took {took:?} to exit after SIGTERM"
    );
}

/// Unmounts from outside with `CMD... MNT` and checks the daemon exits 0 by itself.
fn assert_outside_unmount_ends_daemon(cmd: &[&str]) {
    let s = stack();
    let mut m = s.mount();
    assert_eq!(read(m.join("hello")), "hello\n");
    run_ok(Command::new(cmd[0]).args(&cmd[1..]).arg(m.path()));
    let st = m.wait_exit(DEADLINE).unwrap_or_else(|| {
        panic!(
            "the daemon is still running {DEADLINE:?} after {cmd:?}:\n{}",
            m.log()
        )
    });
    assert_eq!(st.code(), Some(0), "{}", m.log());
    assert!(!m.is_mounted());
}

#[test]
fn umount_from_outside_ends_the_daemon_with_exit_0() {
    assert_outside_unmount_ends_daemon(&["umount"]);
}

#[test]
fn fusermount3_u_from_outside_ends_the_daemon_with_exit_0() {
    assert_outside_unmount_ends_daemon(&["fusermount3", "-u"]);
}

#[test]
fn readiness_is_notified_to_systemd_once_the_mount_is_live() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let m = s.builder().env("NOTIFY_SOCKET", &sock_path).spawn();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no sd_notify message: {e}\n{}", m.log()));
    // the mount must be live at the moment READY=1 arrives, not some time later
    let live = m.is_mounted();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "the message is not READY=1: {msg:?}"
    );
    assert!(
        live,
        "READY=1 arrived before the mount was in the mount table"
    );
    assert_eq!(read(m.join("hello")), "hello\n");
    assert!(
        msg.lines().any(|l| l == format!("MAINPID={}", m.pid())),
        "MAINPID: {msg:?}"
    );
    // nothing else is sent (e.g. a second READY)
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(sock.recv(&mut buf).is_err(), "a second notification");
}

#[test]
fn daemon_runs_in_the_foreground_until_stopped() {
    let s = stack();
    let mut m: Mount = s.mount();
    // still the process we started, still serving, after a while
    std::thread::sleep(Duration::from_millis(300));
    assert!(m.try_wait().is_none(), "the daemon exited:\n{}", m.log());
    assert_eq!(read(m.join("hello")), "hello\n");
}

/// A daemon still starting (here: waiting for a layer's lock, held by a writer) stops at
/// once on SIGTERM or SIGINT, exits 1 and leaves nothing mounted.
#[test]
fn a_signal_before_the_mount_is_live_stops_the_daemon_at_once() {
    use std::os::fd::AsRawFd;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let s = stack();
        let state = s.layer("system").path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let lock = std::fs::File::create(state.join("lock")).unwrap();
        // SAFETY: flock on a valid fd.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let mut m = s.builder().spawn();
        std::thread::sleep(Duration::from_millis(500));
        assert!(m.try_wait().is_none(), "exited early:\n{}", m.log());
        assert!(!m.is_mounted());
        m.signal(sig);
        let st = m
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("signal {sig} did not stop a starting daemon:\n{}", m.log()));
        assert_eq!(st.code(), Some(1), "{}", m.log());
        assert!(!m.is_mounted());
        assert!(
            m.log().contains("stopped before the mount was live"),
            "{}",
            m.log()
        );
    }
}

/// `-o auto_unmount` alone (no allow_other, no allow_root) mounts, and when the daemon is
/// killed with SIGKILL its mount goes away by itself.
#[test]
fn auto_unmount_alone_takes_a_sigkilled_daemons_mount_away() {
    let s = stack();
    let mut m = s.builder().arg("-o").arg("auto_unmount").start();
    assert_eq!(read(m.join("hello")), "hello\n");
    let e = m.entry().expect("mounted");
    assert_eq!(e.fstype, "fuse.packagefs", "{e}");
    // `ls -la` of the mount point: the kernel caches the root's attributes, after which
    // opening or stat-ing the dead mount still succeeds (so a check by `open`, as
    // fusermount3's auto_unmount does, would leave the dead mount there)
    assert_eq!(crate::names(m.path()), ["hello"]);
    std::fs::metadata(m.path()).unwrap();
    m.signal(libc::SIGKILL);
    m.wait_exit(DEADLINE).expect("SIGKILL ends the daemon");
    assert!(
        e2e::wait_until(DEADLINE, || !m.is_mounted()),
        "still mounted {DEADLINE:?} after the daemon was killed: {:?}\n{}",
        m.entry(),
        m.log()
    );
    // The watcher says so after it has unmounted: wait for its line, then count.
    let said =
        |log: &str| e2e::log_lines(log, &["auto_unmount", &m.path().to_string_lossy()]).len();
    assert!(
        e2e::wait_until(DEADLINE, || said(&m.log()) > 0),
        "no line says the mount was taken away:\n{}",
        m.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = m.log();
    assert_eq!(
        said(&log),
        1,
        "one line says the mount was taken away:\n{log}"
    );
}

/// With `-o auto_unmount`, SIGTERM still unmounts cleanly and exits 0, and nothing is left
/// running that would unmount a later mount at the same point.
#[test]
fn auto_unmount_sigterm_unmounts_and_exits_0() {
    let s = stack();
    let mut m = s.builder().arg("-o").arg("auto_unmount").start();
    assert_eq!(read(m.join("hello")), "hello\n");
    assert_eq!(m.terminate().code(), Some(0), "{}", m.log());
    assert!(!m.is_mounted(), "still mounted after SIGTERM:\n{}", m.log());
    // a new mount at the same point is not taken away by the old daemon's watcher
    let m2 = s.builder().mountpoint(m.path()).start();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(m2.join("hello")), "hello\n");
}

/// The `-o auto_unmount` watcher of a SIGKILLed daemon never takes away a live mount:
/// here another daemon has cleared the dead mount and mounted its own at the same point
/// before the watcher (held stopped meanwhile) gets to look.
#[test]
fn auto_unmount_watcher_leaves_a_newer_live_mount_alone() {
    let s = stack();
    let mut m = s.builder().arg("-o").arg("auto_unmount").start();
    let watcher = child_pids(m.pid())
        .into_iter()
        .find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with("packagefs-auto-unmount\0"))
        })
        .unwrap_or_else(|| panic!("no watcher among the daemon's children:\n{}", m.log()));
    assert_eq!(crate::names(m.path()), ["hello"]);
    // SAFETY: the watcher our daemon started, found among its children a moment ago (it
    // cannot exit before the daemon does).
    unsafe { libc::kill(watcher as libc::pid_t, libc::SIGSTOP) };
    m.signal(libc::SIGKILL);
    m.wait_exit(DEADLINE).expect("SIGKILL ends the daemon");
    let m2 = s.builder().mountpoint(m.path()).start();
    assert!(
        m2.log().contains("cleared a dead packagefs mount"),
        "{}",
        m2.log()
    );
    // SAFETY: as above; stopped, so still there.
    unsafe { libc::kill(watcher as libc::pid_t, libc::SIGCONT) };
    assert!(
        e2e::wait_until(DEADLINE, || !process_runs(watcher)),
        "the watcher still runs {DEADLINE:?} after being let go"
    );
    assert!(m2.is_mounted(), "the watcher took the new mount away");
    assert_eq!(read(m2.join("hello")), "hello\n");
    assert!(!m.log().contains("unmounted it"), "{}", m.log());
}

/// The children of process `pid`.
fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}
