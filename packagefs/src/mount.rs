//! Mounting as root with the file system type `fuse.packagefs`.
//!
//! fuser's own mount(2) call always says type `fuse`, so `/proc/mounts`, `findmnt -t
//! fuse.packagefs`, `umount -a -t fuse.packagefs` and `df -T` could not tell a packagefs
//! mount from any other FUSE mount. As root we therefore mount ourselves, as libfuse does:
//! open `/dev/fuse`, call mount(2) with type `fuse.packagefs` and the descriptor in the
//! options, and hand the descriptor to fuser. Without the privilege (EPERM), fuser mounts
//! through `fusermount3`, which sets the subtype itself.
//!
//! Also the mount table (`/proc/self/mountinfo`) as the daemon reads it, a probe that tells
//! a dead FUSE mount (its daemon gone) from a live one, and the lazy unmount that clears one.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuser::{MountOption, SessionACL};

/// The file system type in the mount table.
pub const FSTYPE: &str = "fuse.packagefs";

/// mount(2) flags and the option string the FUSE kernel module reads, for descriptor `fd`.
fn flags_and_data(
    opts: &[MountOption],
    acl: SessionACL,
    fd: i32,
    uid: u32,
    gid: u32,
) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = format!("fd={fd},rootmode=40000,user_id={uid},group_id={gid}");
    for o in opts {
        match o {
            MountOption::RO => flags |= libc::MS_RDONLY,
            MountOption::NoDev => flags |= libc::MS_NODEV,
            MountOption::NoSuid => flags |= libc::MS_NOSUID,
            MountOption::NoExec => flags |= libc::MS_NOEXEC,
            MountOption::NoAtime => flags |= libc::MS_NOATIME,
            MountOption::Sync => flags |= libc::MS_SYNCHRONOUS,
            MountOption::DirSync => flags |= libc::MS_DIRSYNC,
            MountOption::DefaultPermissions => data.push_str(",default_permissions"),
            MountOption::CUSTOM(c) => {
                data.push(',');
                data.push_str(c);
            }
            // FSName is the source, Subtype the type; the rest are the kernel's defaults.
            _ => {}
        }
    }
    // allow_root is allow_other in the kernel; the session refuses other users itself.
    if acl != SessionACL::Owner {
        data.push_str(",allow_other");
    }
    (flags, data)
}

/// Mounts at `mountpoint` as `fuse.packagefs` and returns the `/dev/fuse` descriptor to
/// serve it with, or `None` where fuser must mount instead (not root).
pub fn mount(
    mountpoint: &Path,
    opts: &[MountOption],
    acl: SessionACL,
) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        return Ok(None);
    }
    let dev = c"/dev/fuse";
    // SAFETY: valid C string; the descriptor is owned below.
    let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("/dev/fuse: {e}")));
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let source = opts
        .iter()
        .find_map(|o| match o {
            MountOption::FSName(n) => Some(n.as_str()),
            _ => None,
        })
        .unwrap_or("packagefs");
    let (flags, data) = flags_and_data(opts, acl, fd, uid, gid);
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let c_source = CString::new(source).map_err(|_| invalid("fsname contains a NUL byte"))?;
    let c_target = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| invalid("mount point contains a NUL byte"))?;
    let c_type = CString::new(FSTYPE).expect("no NUL");
    let c_data = CString::new(data).map_err(|_| invalid("an option contains a NUL byte"))?;
    // SAFETY: valid C strings that outlive the call.
    let r = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            c_type.as_ptr(),
            flags,
            c_data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(owned))
}

/// Unmounts `mountpoint` (not lazily: fails with EBUSY while files are open).
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    let c = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the topmost mount at `mountpoint` (`umount2(MNT_DETACH)`; without root,
/// `fusermount3 -u -z`, which unmounts only the caller's own FUSE mounts).
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let out = std::process::Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| std::io::Error::new(e.kind(), format!("fusermount3: {e}")))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            return Err(std::io::Error::other(format!(
                "fusermount3 -u -z: {}",
                msg.trim()
            )));
        }
        return Ok(());
    }
    let c = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount's id (unique among current mounts; reused once it is gone).
    pub id: u64,
    /// The file system's device, `major:minor` (for FUSE, one per connection).
    pub dev: String,
    /// Where it is mounted (unescaped).
    pub point: PathBuf,
    /// The file system type (`fuse.packagefs`, `tmpfs`).
    pub fstype: String,
    /// The mount source.
    pub source: String,
}

impl std::fmt::Display for MountEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.source, self.fstype)
    }
}

/// Every mount this process sees, in mount order (empty if mountinfo cannot be read).
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(l: &str) -> Option<MountEntry> {
    let f: Vec<&str> = l.split(' ').collect();
    let dash = f.iter().position(|x| *x == "-")?;
    Some(MountEntry {
        id: f.first()?.parse().ok()?,
        dev: f.get(2)?.to_string(),
        point: PathBuf::from(std::ffi::OsStr::from_bytes(&format::text::unescape_octal(
            f.get(4)?,
        ))),
        fstype: f.get(dash + 1)?.to_string(),
        source: String::from_utf8_lossy(&format::text::unescape_octal(
            f.get(dash + 2).unwrap_or(&""),
        ))
        .into_owned(),
    })
}

/// The topmost mount at exactly `point` (canonical), the one a path walk reaches.
pub fn mounted_at(point: &Path) -> Option<MountEntry> {
    mounts().into_iter().rev().find(|m| m.point == point)
}

/// What a probe of a mount found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Alive,
    /// Its connection is gone: the daemon died without unmounting (ENOTCONN), or is
    /// dying (ECONNABORTED, for a request that was in flight).
    Dead,
    /// It did not answer within the time given (a hung or stopped daemon).
    NoAnswer,
    /// It failed otherwise.
    Failed(i32),
}

/// One mount, held by an `O_PATH` descriptor of its root, so that what is probed and
/// detached is that very mount, whatever is mounted at the same path meanwhile (another
/// daemon may clear a dead mount and mount its own there at any moment).
#[derive(Debug)]
pub struct Pinned {
    fd: OwnedFd,
    /// The mount's line in the mount table.
    pub entry: MountEntry,
}

impl Pinned {
    /// Pins the topmost mount at exactly `point` (canonical); `None` if nothing is mounted
    /// there. Reaching the root of a dead FUSE mount needs nothing of its daemon.
    pub fn topmost(point: &Path) -> std::io::Result<Option<Pinned>> {
        let c = CString::new(point.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C string; the descriptor is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let id = mount_id(&fd)?;
        Ok(mounts()
            .into_iter()
            .find(|m| m.id == id && m.point == point)
            .map(|entry| Pinned { fd, entry }))
    }

    /// Asks the pinned file system for its statistics: a FUSE `statfs` always reaches the
    /// daemon (nothing caches it, unlike attributes and directory opens), so a dead
    /// connection shows as ENOTCONN. Waits at most `timeout` (in a thread of its own, so
    /// a hung daemon cannot hang the caller).
    pub fn probe(&self, timeout: Duration) -> Probe {
        let Ok(fd) = self.fd.try_clone() else {
            return Probe::Failed(libc::EMFILE);
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                use std::os::fd::AsRawFd;
                // SAFETY: a valid descriptor and out-pointer.
                let r = unsafe {
                    let mut st: libc::statfs = std::mem::zeroed();
                    libc::fstatfs(fd.as_raw_fd(), &mut st)
                };
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                let _ = tx.send(if r == 0 { 0 } else { errno });
            });
        if spawned.is_err() {
            return Probe::Failed(libc::EAGAIN);
        }
        match rx.recv_timeout(timeout) {
            Ok(0) => Probe::Alive,
            Ok(libc::ENOTCONN | libc::ECONNABORTED) => Probe::Dead,
            Ok(e) => Probe::Failed(e),
            Err(_) => Probe::NoAnswer,
        }
    }

    /// Detaches the pinned mount: as root through its descriptor (`umount2` of
    /// `/proc/self/fd/N` unmounts exactly the mount the descriptor is on); without root
    /// with `fusermount3 -u -z` of its path, if it is still the topmost there.
    pub fn detach(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            if mounted_at(&self.entry.point).map(|m| m.id) != Some(self.entry.id) {
                return Err(std::io::Error::other(
                    "another file system is mounted on top of it now",
                ));
            }
            return detach(&self.entry.point);
        }
        let c = CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The id of the mount a descriptor is on (`mnt_id` in `/proc/self/fdinfo`).
fn mount_id(fd: &OwnedFd) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no mnt_id in /proc/self/fdinfo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_flags_and_kernel_options() {
        let opts = [
            MountOption::RO,
            MountOption::FSName("system=/pkg".into()),
            MountOption::Subtype("packagefs".into()),
            MountOption::NoDev,
            MountOption::DefaultPermissions,
            MountOption::NoExec,
            MountOption::Suid,
            MountOption::CUSTOM("max_read=131072".into()),
        ];
        let (flags, data) = flags_and_data(&opts, SessionACL::All, 7, 0, 0);
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC);
        assert_eq!(
            data,
            "fd=7,rootmode=40000,user_id=0,group_id=0,default_permissions,max_read=131072,allow_other"
        );
        let (flags, data) = flags_and_data(&[MountOption::NoSuid], SessionACL::Owner, 3, 1000, 100);
        assert_eq!(flags, libc::MS_NOSUID);
        assert_eq!(data, "fd=3,rootmode=40000,user_id=1000,group_id=100");
    }

    #[test]
    fn parses_mountinfo_lines() {
        let l = r"42 27 0:39 / /tmp/a\040b ro,nodev,relatime shared:1 - fuse.packagefs sys\134x ro,user_id=0";
        let m = parse_mountinfo_line(l).unwrap();
        assert_eq!(m.id, 42);
        assert_eq!(m.dev, "0:39");
        assert_eq!(m.point, PathBuf::from("/tmp/a b"));
        assert_eq!(m.fstype, "fuse.packagefs");
        assert_eq!(m.source, "sys\\x");
        assert_eq!(parse_mountinfo_line("garbage"), None);
        assert_eq!(parse_mountinfo_line("x 1 0:1 / /a rw - tmpfs t rw"), None);
    }
}
