//! The view is read-only: every call that would change it fails with EROFS, and nothing
//! changes.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use e2e::{sh, Stack, TestTree};

use crate::{assert_errno, read};

const EROFS: i32 = libc::EROFS;

fn stack() -> Stack {
    let t = TestTree::new();
    t.file("etc/conf", "original\n")
        .file("dir/inner", "inner\n")
        .dir("emptydir")
        .symlink("link", "etc/conf")
        .xattr("etc/conf", "user.kept", b"v");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "ro");
    s
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Wraps a libc return value: 0 is Ok, -1 is the errno.
fn libc_result(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[test]
fn creating_entries_fails_with_erofs() {
    e2e::uring::each(|tr| {
        let s = stack();
        let m = s.builder().transport(tr).start();
        assert_errno(fs::File::create(m.join("new")), EROFS, "create a file");
        assert_errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.join("etc/new")),
            EROFS,
            "O_CREAT|O_EXCL",
        );
        assert_errno(fs::create_dir(m.join("newdir")), EROFS, "mkdir");
        assert_errno(
            std::os::unix::fs::symlink("x", m.join("newlink")),
            EROFS,
            "symlink",
        );
        assert_errno(
            fs::hard_link(m.join("etc/conf"), m.join("etc/hard")),
            EROFS,
            "link",
        );
        let fifo = cpath(&m.join("fifo"));
        // SAFETY: valid C string.
        assert_errno(
            libc_result(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }),
            EROFS,
            "mkfifo",
        );
        assert!(!m.join("new").exists() && !m.join("newdir").exists());
    });
}

#[test]
fn changing_existing_entries_fails_with_erofs() {
    e2e::uring::each(|tr| {
        let s = stack();
        let m = s.builder().transport(tr).start();
        let conf = m.join("etc/conf");
        assert_errno(
            OpenOptions::new().write(true).open(&conf),
            EROFS,
            "open O_WRONLY",
        );
        assert_errno(
            OpenOptions::new().read(true).write(true).open(&conf),
            EROFS,
            "open O_RDWR",
        );
        assert_errno(
            OpenOptions::new().append(true).open(&conf),
            EROFS,
            "open O_APPEND",
        );
        assert_errno(fs::File::create(&conf), EROFS, "open O_TRUNC");
        let c = cpath(&conf);
        // SAFETY: valid C strings / arguments below.
        assert_errno(
            libc_result(unsafe { libc::truncate(c.as_ptr(), 0) }),
            EROFS,
            "truncate",
        );
        assert_errno(fs::remove_file(&conf), EROFS, "unlink");
        assert_errno(fs::remove_file(m.join("link")), EROFS, "unlink a symlink");
        assert_errno(fs::remove_dir(m.join("emptydir")), EROFS, "rmdir (empty)");
        assert_errno(fs::remove_dir(m.join("dir")), EROFS, "rmdir (not empty)");
        assert_errno(
            fs::rename(&conf, m.join("etc/renamed")),
            EROFS,
            "rename a file",
        );
        assert_errno(
            fs::rename(m.join("dir"), m.join("dir2")),
            EROFS,
            "rename a dir",
        );
        assert_errno(
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o777)),
            EROFS,
            "chmod",
        );
        assert_errno(
            libc_result(unsafe { libc::chown(c.as_ptr(), 1, 1) }),
            EROFS,
            "chown",
        );
        assert_errno(
            libc_result(unsafe {
                libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0)
            }),
            EROFS,
            "utimensat (touch)",
        );
        assert_errno(
            libc_result(unsafe { libc::access(c.as_ptr(), libc::W_OK) }),
            EROFS,
            "access W_OK",
        );
        // nothing changed
        assert_eq!(read(&conf), "original\n");
        assert_eq!(
            fs::metadata(&conf).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert!(m.join("dir/inner").exists() && m.join("emptydir").is_dir());
    });
}

#[test]
fn setting_or_removing_xattrs_fails_with_erofs() {
    let s = stack();
    let m = s.mount();
    let conf = m.join("etc/conf");
    assert_errno(xattr::set(&conf, "user.new", b"x"), EROFS, "setxattr");
    assert_errno(
        xattr::set(&conf, "user.kept", b"changed"),
        EROFS,
        "setxattr (replace)",
    );
    assert_errno(xattr::remove(&conf, "user.kept"), EROFS, "removexattr");
    assert_eq!(
        xattr::get(&conf, "user.kept").unwrap().as_deref(),
        Some(&b"v"[..])
    );
}

#[test]
fn shell_redirection_touch_and_setfattr_fail_and_leave_the_file_unchanged() {
    let s = stack();
    let m = s.mount();
    let conf = e2e::quote(&m.join("etc/conf"));
    for op in [">", ">>"] {
        let out = sh(&format!("echo changed {op} {conf}"));
        assert!(!out.status.success(), "echo {op} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Read-only file system"), "sh said: {err}");
    }
    let out = sh(&format!("touch {}", e2e::quote(&m.join("touched"))));
    assert!(!out.status.success());
    let out = sh(&format!("setfattr -n user.new -v x {conf}"));
    assert!(!out.status.success(), "setfattr succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Read-only file system"),
        "setfattr said: {err}"
    );
    assert_eq!(read(m.join("etc/conf")), "original\n");
}

/// A terminal ioctl on a package's file fails with ENOTTY, as on any regular file
/// (`isatty()`: every shell script run from a packagefs root asks it), and costs no log
/// line: fuser's default answered ENOSYS with a warning per call, which flooded the
/// console of a machine booted from packages.
#[test]
fn terminal_ioctls_get_enotty_quietly() {
    e2e::uring::each(|tr| {
        let s = stack();
        let m = s.builder().transport(tr).start();
        let f = fs::File::open(m.join("etc/conf")).unwrap();
        for _ in 0..3 {
            // SAFETY: valid descriptor; isatty only reads.
            let r = unsafe { libc::isatty(std::os::fd::AsRawFd::as_raw_fd(&f)) };
            let err = io::Error::last_os_error();
            assert_eq!(r, 0, "isatty of a package file");
            assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
        }
        let log = m.log();
        assert!(
            !log.contains("ioctl"),
            "the daemon logged the ioctls:\n{log}"
        );
    });
}
