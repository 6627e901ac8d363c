//! `-o auto_unmount`: a watcher process that takes the mount away when the daemon dies
//! without unmounting it (SIGKILL, a crash, the OOM killer), instead of leaving a dead
//! mount whose requests fail with ENOTCONN.
//!
//! libfuse does this with `fusermount3 --auto-unmount`, a helper that holds one end of a
//! socket whose other end the daemon holds; once the daemon is gone it unmounts if the
//! mount is still there and opening the mount point fails with ENOTCONN. fuser offers that
//! only through `fusermount3` and only with allow_other or allow_root, and for packagefs it
//! does not work reliably: the kernel opens packagefs directories itself (no_opendir), so
//! once the root's attributes are cached (after any `ls` of the mount point) the open
//! succeeds on a dead mount and fusermount3 leaves it there. Nor can fusermount3 3.14
//! (Debian 12) watch a mount it did not make (`--auto-unmount` came with 3.15). So the
//! daemon starts its own watcher: itself, re-executed with [`ENV`] set, holding the read
//! end of a pipe whose write end only the daemon holds. It probes with `statfs`, which
//! always reaches the daemon ([`mount::Pinned::probe`]). No access rule changes: the mount
//! stays the caller's alone unless allow_other or allow_root says otherwise.
//!
//! The watcher blocks in `read` until the pipe reports end of file (the daemon has exited,
//! however it ended), then unmounts only the very mount the daemon made (its id and device
//! in the mount table, still the topmost at the mount point) and only if it is dead. A
//! daemon that unmounted cleanly leaves it nothing to do.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::mount;

/// Set in the watcher's environment: `MOUNT_ID,DEVICE,DAEMON_PID`; the mount point is its
/// only argument and the pipe is descriptor [`PIPE_FD`].
pub const ENV: &str = "PACKAGEFS_AUTO_UNMOUNT";

/// The watcher's descriptor of the pipe's read end.
const PIPE_FD: i32 = 3;

/// How long the watcher keeps looking for the dead mount after the daemon is gone (the
/// kernel ends the FUSE connection as it closes the daemon's descriptors).
const SETTLE: Duration = Duration::from_secs(2);

/// Starts the watcher of the FUSE mount at `mountpoint` (which must be mounted). The
/// returned descriptor is the pipe's write end: keep it open for as long as the daemon
/// runs (its closing, by exit or death, wakes the watcher).
pub fn spawn(mountpoint: &Path) -> std::io::Result<OwnedFd> {
    let canon = std::fs::canonicalize(mountpoint)?;
    let m = mount::mounted_at(&canon)
        .filter(|m| m.fstype.starts_with("fuse"))
        .ok_or_else(|| std::io::Error::other("the mount is not in the mount table"))?;
    let mut fds = [0i32; 2];
    // SAFETY: valid array for pipe2; both ends are owned below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let r = read_end.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("packagefs-auto-unmount")
        .arg(&canon)
        .env(ENV, format!("{},{},{}", m.id, m.dev, std::process::id()))
        .env_remove("NOTIFY_SOCKET")
        .env_remove(crate::READY_FD_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl, close_range, setsid, chdir)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if r == PIPE_FD {
                if libc::fcntl(r, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(r, PIPE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing else of the daemon's (its /dev/fuse descriptors, the pipe's write
            // end, a readiness pipe) may live on in the watcher: marked close-on-exec
            // rather than closed, so that std's own exec-error pipe keeps working.
            libc::syscall(
                libc::SYS_close_range,
                PIPE_FD as libc::c_uint + 1,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            // Out of the daemon's session and process group: a terminal's ^C or a
            // signal to the group is for the daemon, which then unmounts by itself.
            libc::setsid();
            // Keep no directory busy (the mount point is absolute).
            libc::chdir(c"/".as_ptr());
            Ok(())
        })
    };
    let mut child = cmd.spawn()?;
    drop(read_end);
    // Reap it when it exits, so that it never lingers as a zombie of a long-lived daemon.
    std::thread::Builder::new()
        .name("auto-unmount".into())
        .spawn(move || {
            let _ = child.wait();
        })?;
    Ok(write_end)
}

/// The watcher's main: `value` is [`ENV`]'s value, the mount point the only argument.
/// Returns the exit status.
pub fn watch(value: OsString) -> u8 {
    // The termination signals are for the daemon; the watcher ends when it does.
    // SAFETY: setting dispositions before any thread exists.
    unsafe {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    let have_pipe = unsafe { libc::fcntl(PIPE_FD, libc::F_GETFD) } >= 0;
    let (Some((id, dev, pid)), [mp], true) = (
        value.to_str().and_then(parse_env),
        args.as_slice(),
        have_pipe,
    ) else {
        eprintln!("packagefs: {ENV} is for packagefs's own auto_unmount watcher");
        return 2;
    };
    let mp = PathBuf::from(mp);
    // SAFETY: the descriptor the daemon passed; owned from here on.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(PIPE_FD) };
    let mut buf = [0u8; 64];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(
                    "auto_unmount of {}: cannot watch the daemon: {e}",
                    mp.display()
                );
                return 1;
            }
        }
    }
    let t0 = Instant::now();
    loop {
        // The very mount the daemon made, still the topmost at the point, pinned so that
        // what is probed is what is detached.
        let top = match mount::Pinned::topmost(&mp) {
            Ok(Some(top)) if top.entry.id == id && top.entry.dev == dev => top,
            _ => return 0,
        };
        match top.probe(SETTLE) {
            mount::Probe::Dead => {
                return match top.detach() {
                    Ok(()) => {
                        info!(
                            "the daemon (pid {pid}) died without unmounting {}; \
                             unmounted it (auto_unmount)",
                            mp.display()
                        );
                        0
                    }
                    Err(e) => {
                        warn!(
                            "the daemon (pid {pid}) died without unmounting {}, \
                             and it cannot be unmounted (auto_unmount): {e}",
                            mp.display()
                        );
                        1
                    }
                };
            }
            // Alive: the daemon's descriptors are still being closed, or another daemon
            // (the same id can be reused) serves it now; either way not dead, so not ours.
            _ if t0.elapsed() > SETTLE => return 0,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// [`ENV`]'s value: `MOUNT_ID,DEVICE,DAEMON_PID`.
fn parse_env(v: &str) -> Option<(u64, String, u32)> {
    let mut it = v.split(',');
    let id: u64 = it.next()?.parse().ok()?;
    let dev = it.next().filter(|d| !d.is_empty())?.to_owned();
    let pid: u32 = it.next()?.parse().ok()?;
    it.next().is_none().then_some((id, dev, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_watchers_environment() {
        assert_eq!(parse_env("42,0:40,1234"), Some((42, "0:40".into(), 1234)));
        for bad in [
            "",
            "42",
            "42,0:40",
            "x,0:40,1",
            "42,,1",
            "42,0:40,1,9",
            "42,0:40,-1",
        ] {
            assert_eq!(parse_env(bad), None, "{bad:?}");
        }
    }
}
