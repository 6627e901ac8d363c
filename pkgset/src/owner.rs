//! A user's layer is accessed with its owner's rights, never root's.
//!
//! The daemon runs as root and serves layers that users own and write: every file under
//! such a layer may be a symlink to a root-only file, or a directory may be swapped for a
//! link to one of root's between a check and a use. Rather than prove each path safe,
//! every access to a layer not owned by root is made with the file-system identity of its
//! owner ([`AsOwner`]: `setfsuid`/`setfsgid` and the owner's group alone, on the calling
//! thread only), so the kernel itself refuses what the owner could not do, and everything
//! created there belongs to the owner. Root's privileges reach no further than the owner's.
//! On top of that, layer files are opened without following a final symlink
//! ([`open_in_layer`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::generation::LayerPaths;

/// While alive, the calling thread accesses files as the owner of a layer (when the
/// process is root and the layer is not root's; otherwise it changes nothing). Dropped, the
/// thread's previous file-system identity is back. Nests.
#[derive(Debug)]
pub struct AsOwner {
    prev: Option<(u32, u32, Vec<libc::gid_t>)>,
}

impl AsOwner {
    /// Takes the identity of the owner of `layer`'s directory.
    pub fn enter(layer: &LayerPaths) -> AsOwner {
        match std::fs::metadata(&layer.dir) {
            Ok(md) => AsOwner::of(md.uid(), md.gid()),
            Err(_) => AsOwner { prev: None },
        }
    }

    /// Takes the identity `uid`:`gid` (if the process is root and `uid` is not).
    pub fn of(uid: u32, gid: u32) -> AsOwner {
        // SAFETY: geteuid has no preconditions.
        if uid == 0 || unsafe { libc::geteuid() } != 0 {
            return AsOwner { prev: None };
        }
        // Threads inherit the credentials of the thread that creates them: the thread pool
        // must exist before any thread takes a user's identity, or its workers would keep it.
        let _ = rayon::current_num_threads();
        let groups = thread_groups();
        // Raw syscalls: glibc's setgroups would change every thread of the process; these
        // change only this one (the kernel keeps credentials per thread), and setfsuid and
        // setfsgid are per thread already.
        // SAFETY: plain syscalls with valid arguments; failures are checked below.
        unsafe {
            libc::syscall(libc::SYS_setgroups, 1usize, &gid as *const u32);
        }
        // SAFETY: as above.
        let old_gid = unsafe { libc::setfsgid(gid) } as u32;
        // SAFETY: as above.
        let old_uid = unsafe { libc::setfsuid(uid) } as u32;
        AsOwner {
            prev: Some((old_uid, old_gid, groups)),
        }
    }

    /// The daemon's own identity again (root's, if the process is root), for work on the
    /// daemon's files while a layer's owner is entered: the chunk store of thin packages,
    /// which is the daemon's and not the owner's. Nothing is done here through a path of
    /// the layer. Dropped, the owner's identity is back.
    pub fn daemon() -> AsOwner {
        // SAFETY: geteuid and setfsuid/setfsgid with an invalid id only read.
        let (euid, fsuid) = unsafe { (libc::geteuid(), libc::setfsuid(u32::MAX) as u32) };
        if euid != 0 || fsuid == 0 {
            return AsOwner { prev: None };
        }
        let groups = thread_groups();
        // SAFETY: as in `of`; root regains its file capabilities with fsuid 0.
        let old_gid = unsafe { libc::setfsgid(0) } as u32;
        // SAFETY: as above.
        let old_uid = unsafe { libc::setfsuid(0) } as u32;
        AsOwner {
            prev: Some((old_uid, old_gid, groups)),
        }
    }

    /// True if the thread's identity was changed.
    pub fn is_active(&self) -> bool {
        self.prev.is_some()
    }
}

impl Drop for AsOwner {
    fn drop(&mut self) {
        if let Some((uid, gid, groups)) = self.prev.take() {
            // SAFETY: restoring the identity saved by `of`; root keeps CAP_SETUID/SETGID.
            unsafe {
                libc::setfsuid(uid);
                libc::setfsgid(gid);
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            }
        }
    }
}

/// The calling thread's file-system identity (uid, gid): what a task run on another thread
/// for this one takes with [`AsOwner::of`].
pub fn current() -> (u32, u32) {
    // SAFETY: an invalid id changes nothing and returns the current one.
    unsafe {
        (
            libc::setfsuid(u32::MAX) as u32,
            libc::setfsgid(u32::MAX) as u32,
        )
    }
}

/// The calling thread's supplementary groups.
fn thread_groups() -> Vec<libc::gid_t> {
    // SAFETY: a size query, then a read into a buffer of that size.
    unsafe {
        let n = libc::syscall(
            libc::SYS_getgroups,
            0usize,
            std::ptr::null_mut::<libc::gid_t>(),
        );
        if n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0 as libc::gid_t; n as usize];
        let got = libc::syscall(libc::SYS_getgroups, v.len(), v.as_mut_ptr());
        v.truncate(got.max(0) as usize);
        v
    }
}

/// Opens a file of a layer for reading: a regular file, never through a symlink at its
/// last component (a link in `packages/` or `state/` could point anywhere), never
/// blocking (a FIFO would wait for a writer forever).
pub fn open_in_layer(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a symbolic link (links in a layer are never followed)",
                )
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Gives a user's layer back what an older packagefs made there as root: a `state/`
/// owned by root inside a layer owned by someone else, and everything root owns under
/// it, become the layer owner's (so they, and the daemon acting as them, can write
/// there). Only as root; never through a link: each directory is opened `O_NOFOLLOW`
/// and reached through its descriptor (`/proc/self/fd/N/NAME`), each entry changed
/// with `lchown`. Returns the number of entries changed.
pub fn give_back_state(layer: &LayerPaths) -> io::Result<usize> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(0);
    }
    let owner = std::fs::metadata(&layer.dir)?;
    if owner.uid() == 0 {
        return Ok(0);
    }
    let state = layer.state();
    match std::fs::symlink_metadata(&state) {
        Ok(md) if md.is_dir() && md.uid() == 0 => {}
        _ => return Ok(0),
    }
    fn walk(dir: &Path, uid: u32, gid: u32, depth: usize) -> io::Result<usize> {
        let d = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)?;
        let here = std::path::PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&d)
        ));
        let mut n = 0;
        if d.metadata()?.uid() == 0 {
            std::os::unix::fs::fchown(&d, Some(uid), Some(gid))?;
            n += 1;
        }
        for e in std::fs::read_dir(&here)? {
            let e = e?;
            let p = here.join(e.file_name());
            let md = std::fs::symlink_metadata(&p)?;
            if md.is_dir() {
                if depth < 3 {
                    n += walk(&p, uid, gid, depth + 1)?;
                }
            } else if md.uid() == 0 && md.nlink() == 1 {
                // (A file with other links may be a hard link to one of root's files.)
                std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
                n += 1;
            }
        }
        Ok(n)
    }
    walk(&state, owner.uid(), owner.gid(), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root, a root-only file is out of reach while the thread is a user, and files
    /// made then belong to the user; other threads stay root; dropping restores root.
    #[test]
    fn as_owner_takes_the_owners_rights_on_this_thread_only() {
        let _ = rayon::current_num_threads();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            // Without root there are no rights to lose: the guard must change nothing.
            assert!(!AsOwner::of(65534, 65534).is_active());
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, b"root only").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let open = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(d.path().join("mine"));
        drop(open);
        std::fs::set_permissions(
            d.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        {
            let g = AsOwner::of(65534, 65534);
            assert!(g.is_active());
            let e = std::fs::read(&secret).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert_eq!(current(), (65534, 65534));
            // The thread pool's workers are still root.
            assert_eq!(rayon::join(current, || 0).0, (0, 0));
            std::fs::write(d.path().join("made"), b"x").unwrap();
            let md = std::fs::metadata(d.path().join("made")).unwrap();
            assert_eq!((md.uid(), md.gid()), (65534, 65534));
        }
        assert_eq!(std::fs::read(&secret).unwrap(), b"root only");
    }

    /// A state/ an older packagefs made as root in a user's layer becomes the user's,
    /// links inside it untouched (never followed).
    #[test]
    fn give_back_state_chowns_roots_state_in_a_users_layer_without_following_links() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let layer = LayerPaths::new(d.path().join("layer"));
        std::fs::create_dir_all(layer.generations().join("1")).unwrap();
        std::fs::write(layer.active_list(), b"x").unwrap();
        std::fs::write(layer.generation_list(1), b"x").unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"root's").unwrap();
        std::os::unix::fs::symlink(&outside, layer.state().join("link")).unwrap();
        std::os::unix::fs::chown(&layer.dir, Some(65534), Some(65534)).unwrap();
        // state, active.list, the link itself, generations, generations/1, its list
        assert_eq!(give_back_state(&layer).unwrap(), 6);
        for p in [layer.state(), layer.active_list(), layer.generation_list(1)] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().uid(),
                65534,
                "{}",
                p.display()
            );
        }
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "followed a link"
        );
        assert_eq!(
            give_back_state(&layer).unwrap(),
            0,
            "only once: state/ is the user's"
        );
    }

    #[test]
    fn open_in_layer_refuses_links_and_fifos() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink(&f, d.path().join("l")).unwrap();
        let e = open_in_layer(&d.path().join("l")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let fifo =
            std::ffi::CString::new(d.path().join("p").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(open_in_layer(&d.path().join("p")).is_err());
        assert!(open_in_layer(&f).is_ok());
    }
}
