//! Extended attributes of source entries are visible on the mount (getxattr, listxattr).

use std::collections::BTreeSet;

use e2e::{Stack, TestTree};

use crate::assert_errno;

fn stack() -> Stack {
    let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let sys = TestTree::new();
    sys.file("f", "x")
        .xattr("f", "user.mime_type", b"text/plain")
        .xattr("f", "user.empty", b"")
        .xattr("f", "user.binary", &[0, 1, 2, 255, 0])
        .xattr("f", "user.big", &big)
        .file("plain", "no xattrs")
        .dir("d")
        .xattr("d", "user.dir", b"on a directory")
        .file("merged/sys", "")
        .xattr("merged", "user.layer", b"system");
    let user = TestTree::new();
    user.file("u", "user file")
        .xattr("u", "user.origin", b"user layer")
        .file("merged/usr", "")
        .xattr("merged", "user.layer", b"user");
    let s = Stack::new(&["system", "user"]);
    s.add("system", sys.path(), "sys");
    s.add("user", user.path(), "usr");
    s
}

fn get(p: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    xattr::get(p, name).unwrap_or_else(|e| panic!("getxattr {name} on {}: {e}", p.display()))
}

fn list(p: &std::path::Path) -> BTreeSet<String> {
    xattr::list(p)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n.starts_with("user."))
        .collect()
}

#[test]
fn user_xattrs_of_source_files_are_visible() {
    e2e::uring::each(|tr| {
        let s = stack();
        let m = s.builder().transport(tr).start();
        let f = m.join("f");
        assert_eq!(
            get(&f, "user.mime_type").as_deref(),
            Some(&b"text/plain"[..])
        );
        assert_eq!(get(&f, "user.empty").as_deref(), Some(&b""[..]));
        assert_eq!(
            get(&f, "user.binary").as_deref(),
            Some(&[0, 1, 2, 255, 0][..])
        );
        let big: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(get(&f, "user.big"), Some(big));
        assert_eq!(
            list(&f),
            ["user.big", "user.binary", "user.empty", "user.mime_type"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert_eq!(
            get(&m.join("u"), "user.origin").as_deref(),
            Some(&b"user layer"[..])
        );
    });
}

#[test]
fn directory_xattrs_are_visible_and_merged_directories_show_the_top_layers() {
    e2e::uring::each(|tr| {
        let s = stack();
        let m = s.builder().transport(tr).start();
        assert_eq!(
            get(&m.join("d"), "user.dir").as_deref(),
            Some(&b"on a directory"[..])
        );
        assert_eq!(
            get(&m.join("merged"), "user.layer").as_deref(),
            Some(&b"user"[..])
        );
        assert_eq!(
            list(&m.join("merged")),
            BTreeSet::from(["user.layer".to_string()])
        );
    });
}

#[test]
fn absent_xattr_gives_enodata_and_a_plain_file_lists_none() {
    e2e::uring::each(|tr| {
        let s = stack();
        let m = s.builder().transport(tr).start();
        assert_eq!(get(&m.join("f"), "user.nope"), None);
        assert!(list(&m.join("plain")).is_empty());
        // the raw call: ENODATA, and ERANGE for a too small buffer
        let p = std::ffi::CString::new(m.join("f").as_os_str().as_encoded_bytes()).unwrap();
        let name = std::ffi::CString::new("user.nope").unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(r, -1);
        assert_errno::<()>(
            Err(std::io::Error::last_os_error()),
            libc::ENODATA,
            "getxattr",
        );
        let name = std::ffi::CString::new("user.mime_type").unwrap();
        // SAFETY: as above, with a 2-byte buffer.
        let r = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 2) };
        assert_eq!(r, -1);
        assert_errno::<()>(
            Err(std::io::Error::last_os_error()),
            libc::ERANGE,
            "getxattr",
        );
    });
}

/// A package with xattrs dropped into a mount that started without any: with `-o xattrs`
/// they are served; by default they are not (the kernel remembers ENOSYS for the whole
/// mount), and the log names the package and the remedy.
#[test]
fn xattrs_of_a_package_activated_later_need_the_xattrs_option() {
    for served in [true, false] {
        let s = Stack::new(&["system"]);
        s.add(
            "system",
            TestTree::new().file("plain", "no xattrs").path(),
            "plain",
        );
        let mut b = s.builder();
        if served {
            b = b.arg("-o").arg("xattrs");
        }
        let m = b.start();
        // the first request fixes the kernel's view of the mount
        assert_eq!(
            xattr::get(m.join("plain"), "user.nope").ok().flatten(),
            None
        );
        let t = TestTree::new();
        t.file("late", "x").xattr("late", "user.late", b"yes");
        e2e::Pkg::new(t.path(), "late", "1.0.0")
            .key(s.keys())
            .build(s.layer("system").path().join("packages/late.hpkg"));
        let late = m.join("late");
        assert!(
            e2e::wait_until(std::time::Duration::from_secs(5), || late.exists()),
            "{}",
            m.log()
        );
        let got = xattr::get(&late, "user.late");
        if served {
            assert_eq!(got.unwrap().as_deref(), Some(&b"yes"[..]), "{}", m.log());
        } else {
            let e = got.expect_err("xattrs are not served");
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}");
            assert!(
                e2e::wait_until(std::time::Duration::from_secs(5), || m
                    .log()
                    .contains("late-1.0.0")
                    && m.log().contains("mount with -o xattrs")),
                "{}",
                m.log()
            );
        }
    }
}
