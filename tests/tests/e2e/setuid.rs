//! setuid and setgid bits survive only in the `system` layer (`nosuid` semantics for every
//! other layer); other permission bits, including sticky, are untouched.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use e2e::{Stack, TestTree};

/// The same special files in every layer, each under a directory named after its layer.
fn special_tree(layer: &str) -> TestTree {
    let t = TestTree::new();
    t.file(format!("{layer}/suid"), "#!/bin/sh\n")
        .chmod(format!("{layer}/suid"), 0o4755)
        .file(format!("{layer}/sgid"), "#!/bin/sh\n")
        .chmod(format!("{layer}/sgid"), 0o2755)
        .file(format!("{layer}/both"), "#!/bin/sh\n")
        .chmod(format!("{layer}/both"), 0o6711)
        .dir(format!("{layer}/sgid-dir"))
        .chmod(format!("{layer}/sgid-dir"), 0o2775)
        .dir(format!("{layer}/sticky"))
        .chmod(format!("{layer}/sticky"), 0o1777)
        // the same path in every layer: the top one is shown
        .file("shadowed", layer)
        .chmod("shadowed", 0o4755);
    t
}

fn stack() -> Stack {
    let s = Stack::new(&["system", "common", "user"]);
    for layer in ["system", "common", "user"] {
        let t = special_tree(layer);
        s.add(layer, t.path(), layer);
    }
    s
}

fn mode(m: &e2e::Mount, p: &str) -> u32 {
    std::fs::symlink_metadata(m.join(p)).unwrap().mode() & 0o7777
}

#[test]
fn system_layer_keeps_setuid_and_setgid_bits() {
    let s = stack();
    let m = s.mount();
    assert_eq!(mode(&m, "system/suid"), 0o4755);
    assert_eq!(mode(&m, "system/sgid"), 0o2755);
    assert_eq!(mode(&m, "system/both"), 0o6711);
    assert_eq!(mode(&m, "system/sgid-dir"), 0o2775);
    assert_eq!(mode(&m, "system/sticky"), 0o1777);
}

#[test]
fn user_layer_loses_setuid_and_setgid_bits() {
    let s = stack();
    let m = s.mount();
    assert_eq!(mode(&m, "user/suid"), 0o755);
    assert_eq!(mode(&m, "user/sgid"), 0o755);
    assert_eq!(mode(&m, "user/both"), 0o711);
    assert_eq!(mode(&m, "user/sgid-dir"), 0o775);
    assert_eq!(mode(&m, "user/sticky"), 0o1777, "sticky is not a privilege");
    // the user's file hides the system's setuid file of the same path: no bits either
    assert_eq!(std::fs::read_to_string(m.join("shadowed")).unwrap(), "user");
    assert_eq!(mode(&m, "shadowed"), 0o755);
}

#[test]
fn common_layer_loses_setuid_and_setgid_bits() {
    let s = stack();
    let m = s.mount();
    assert_eq!(mode(&m, "common/suid"), 0o755);
    assert_eq!(mode(&m, "common/sgid"), 0o755);
    assert_eq!(mode(&m, "common/both"), 0o711);
}

/// Runs a setuid-root copy of `id -u` from `layer` as the unprivileged user `nobody` and
/// returns the effective uid it reports.
fn euid_of_setuid_id_in(layer: &str) -> String {
    let t = TestTree::new();
    t.copy_from("bin/id", "/usr/bin/id").chmod("bin/id", 0o4755);
    let s = Stack::new(&["system", "user"]);
    s.add(layer, t.path(), "id");
    let m = s.builder().arg("-o").arg("allow_other").start();
    // let `nobody` through the (0700) temporary directory holding the mount point
    let parent = m.path().parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = 65534;
    let out = std::process::Command::new(m.join("bin/id"))
        .arg("-u")
        .uid(nobody)
        .gid(nobody)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn user_layer_setuid_file_does_not_raise_privileges() {
    assert_eq!(euid_of_setuid_id_in("user"), "65534");
}

#[test]
fn system_layer_setuid_file_runs_as_its_owner() {
    assert_eq!(euid_of_setuid_id_in("system"), "0");
}
