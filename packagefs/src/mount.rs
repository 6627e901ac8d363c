//! Mounting as root with the file system type `fuse.packagefs`.
//!
//! fuser's own mount(2) call always says type `fuse`, so `/proc/mounts`, `findmnt -t
//! fuse.packagefs`, `umount -a -t fuse.packagefs` and `df -T` could not tell a packagefs
//! mount from any other FUSE mount. As root we therefore mount ourselves, as libfuse does:
//! open `/dev/fuse`, call mount(2) with type `fuse.packagefs` and the descriptor in the
//! options, and hand the descriptor to fuser. Without the privilege (EPERM) or with
//! `auto_unmount` (which needs `fusermount3` to watch the daemon), fuser mounts through
//! `fusermount3`, which sets the subtype itself.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
/// serve it with, or `None` where fuser must mount instead (not root, `auto_unmount`).
pub fn mount(
    mountpoint: &Path,
    opts: &[MountOption],
    acl: SessionACL,
) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 || opts.contains(&MountOption::AutoUnmount) {
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
}
