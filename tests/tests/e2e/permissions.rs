//! Other users and privileges: file modes hold for users other than root, and file
//! capabilities (like setuid bits) carry no privilege out of non-system layers.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use e2e::{Mount, Stack, TestTree};

const NOBODY: u32 = 65534;

/// Runs `prog ARGS...` as the unprivileged user `nobody`.
fn as_nobody(prog: impl AsRef<std::ffi::OsStr>, args: &[&Path]) -> Output {
    Command::new(prog)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

/// Lets other users through the (0700) temporary directory that holds the mount point.
fn open_parent(m: &Mount) {
    let parent = m.path().parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `secret` (0600), `private/` (0700) holding a world-readable file, `public` (0644).
fn private_stack() -> Stack {
    let t = TestTree::new();
    t.file("secret", "root only\n")
        .chmod("secret", 0o600)
        .file("private/inside", "behind a 0700 directory\n")
        .chmod("private", 0o700)
        .file("public", "for everyone\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "private");
    s
}

/// What `nobody` can read: (public, secret, private/inside).
fn nobody_reads(m: &Mount) -> (bool, bool, bool) {
    open_parent(m);
    let ok = |rel: &str| as_nobody("cat", &[&m.join(rel)]).status.success();
    (ok("public"), ok("secret"), ok("private/inside"))
}

#[test]
fn other_users_cannot_enter_a_mount_without_allow_other() {
    e2e::uring::each(|tr| {
        let s = private_stack();
        let m = s.builder().transport(tr).start();
        assert_eq!(nobody_reads(&m), (false, false, false));
    });
}

#[test]
fn allow_root_lets_root_in_and_no_other_user() {
    // The kernel lets every user through (allow_root is its allow_other); the daemon
    // refuses all but its owner and root, over either transport.
    e2e::uring::each(|tr| {
        let s = private_stack();
        let m = s
            .builder()
            .arg("-o")
            .arg("allow_root")
            .transport(tr)
            .start();
        assert_eq!(nobody_reads(&m), (false, false, false), "{tr:?}");
        assert_eq!(crate::read(m.join("public")), "for everyone\n");
    });
}

#[test]
fn allow_other_with_default_permissions_enforces_file_modes() {
    e2e::uring::each(|tr| {
        let s = private_stack();
        let m = s
            .builder()
            .arg("-o")
            .arg("allow_other,default_permissions")
            .transport(tr)
            .start();
        assert_eq!(
            nobody_reads(&m),
            (true, false, false),
            "(public, secret, private/inside) readable by nobody"
        );
    });
}

#[test]

fn allow_other_enforces_file_modes() {
    let s = private_stack();
    let m = s.builder().arg("-o").arg("allow_other").start();
    assert_eq!(
        nobody_reads(&m),
        (true, false, false),
        "(public, secret, private/inside) readable by nobody"
    );
}

/// `bin/cat` with the file capability cap_dac_read_search (read any file) in `layer`;
/// returns whether `nobody` running it can read a root-only file outside the mount.
/// (`setcap` is libcap2-bin's, which scripts/test installs: a missing one fails the test.)
fn nobody_reads_root_file_with_capable_cat_from(layer: &str) -> bool {
    let t = TestTree::new();
    t.copy_from("bin/cat", "/bin/cat");
    let setcap = Command::new("setcap")
        .arg("cap_dac_read_search+ep")
        .arg(t.join("bin/cat"))
        .output();
    match setcap {
        Ok(o) if o.status.success() => {}
        other => panic!("setcap (package libcap2-bin) is missing or failed: {other:?}"),
    }
    let s = Stack::new(&["system", "user"]);
    s.add(layer, t.path(), "capcat");
    let m = s.builder().arg("-o").arg("allow_other").start();
    open_parent(&m);
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = secret_dir.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // the control: nobody's own cat cannot read it
    assert!(!as_nobody("cat", &[&secret]).status.success());
    as_nobody(m.join("bin/cat"), &[&secret]).status.success()
}

#[test]
fn system_layer_keeps_file_capabilities() {
    assert!(
        nobody_reads_root_file_with_capable_cat_from("system"),
        "a capability of a system-layer program has no effect"
    );
}

#[test]

fn user_layer_file_capabilities_carry_no_privilege() {
    assert!(
        !nobody_reads_root_file_with_capable_cat_from("user"),
        "nobody read a root-only file with a user-layer program's file capability"
    );
}

#[test]

fn user_layer_files_show_no_capability_xattr() {
    let t = TestTree::new();
    // the raw xattr value of `setcap cap_net_raw+ep` (VFS_CAP_REVISION_2)
    let cap: [u8; 20] = [
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    t.file("bin/tool", "#!/bin/sh\n")
        .chmod("bin/tool", 0o755)
        .xattr("bin/tool", "security.capability", &cap);
    let s = Stack::new(&["system", "user"]);
    s.add("user", t.path(), "tool");
    let m = s.mount();
    let got = xattr::get(m.join("bin/tool"), "security.capability").unwrap();
    assert_eq!(got, None, "a user-layer file carries a file capability");
}
