//! Layer stacking: a higher layer's entry hides a lower one's, directories merge, and
//! merged directory listings are complete, sorted and free of duplicates.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use e2e::{log_lines, Pkg, Stack, TestTree};

use crate::{assert_errno, names, read};

/// system and user trees that overlap in every way the view has a rule for.
fn overlapping_stack() -> Stack {
    let sys = TestTree::new();
    sys.file("etc/conf", "system conf\n")
        .file("etc/only-system", "s\n")
        .file("share/dir/from-system", "s\n")
        .file("share/dir/both", "system both\n")
        .file("share/thing/inside", "hidden by the user's file\n")
        .file("share/was-file", "system file\n")
        .file("share/link-target/f", "s\n")
        .file("opt/sub/deep/x", "system deep\n");
    let user = TestTree::new();
    user.file("etc/conf", "user conf, longer than the system one\n")
        .file("etc/only-user", "u\n")
        .file("share/dir/from-user", "u\n")
        .file("share/dir/both", "user both\n")
        .file("share/thing", "user file hides a system directory\n")
        .file("share/was-file/now-dir", "user dir hides a system file\n")
        .symlink("share/link-target", "dir")
        .file("opt/sub/other", "user other\n");
    let s = Stack::new(&["system", "user"]);
    s.add("system", sys.path(), "sys");
    s.add("user", user.path(), "usr");
    s
}

#[test]
fn upper_layer_file_hides_lower_file() {
    let s = overlapping_stack();
    let m = s.mount();
    assert_eq!(
        read(m.join("etc/conf")),
        "user conf, longer than the system one\n"
    );
    let md = std::fs::metadata(m.join("etc/conf")).unwrap();
    assert_eq!(
        md.len(),
        "user conf, longer than the system one\n".len() as u64
    );
    assert_eq!(read(m.join("share/dir/both")), "user both\n");
    assert_eq!(
        names(&m.join("etc")).into_iter().collect::<BTreeSet<_>>(),
        ["conf", "only-system", "only-user"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn directories_of_both_layers_merge() {
    let s = overlapping_stack();
    let m = s.mount();
    let mut got = names(&m.join("share/dir"));
    got.sort();
    assert_eq!(got, ["both", "from-system", "from-user"]);
    assert_eq!(read(m.join("share/dir/from-system")), "s\n");
    assert_eq!(read(m.join("share/dir/from-user")), "u\n");
    // merging goes all the way down
    let mut got = names(&m.join("opt/sub"));
    got.sort();
    assert_eq!(got, ["deep", "other"]);
    assert_eq!(read(m.join("opt/sub/deep/x")), "system deep\n");
}

#[test]
fn upper_file_hides_lower_directory_and_its_contents() {
    let s = overlapping_stack();
    let m = s.mount();
    let md = std::fs::symlink_metadata(m.join("share/thing")).unwrap();
    assert!(md.is_file(), "share/thing is {:?}", md.file_type());
    assert_eq!(
        read(m.join("share/thing")),
        "user file hides a system directory\n"
    );
    assert_errno(
        std::fs::metadata(m.join("share/thing/inside")),
        libc::ENOTDIR,
        "stat share/thing/inside",
    );
}

#[test]
fn upper_directory_hides_lower_file() {
    let s = overlapping_stack();
    let m = s.mount();
    assert!(std::fs::metadata(m.join("share/was-file"))
        .unwrap()
        .is_dir());
    assert_eq!(names(&m.join("share/was-file")), ["now-dir"]);
    // an upper symlink hides a lower directory too
    let md = std::fs::symlink_metadata(m.join("share/link-target")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(m.join("share/link-target")).unwrap(),
        std::path::Path::new("dir")
    );
    let mut via_link = names(&m.join("share/link-target"));
    via_link.sort();
    assert_eq!(via_link, ["both", "from-system", "from-user"]);
}

/// A directory of 1500 names, 1000 from each layer with 500 in common: more than one
/// readdir buffer, so the listing is served in several requests.
#[test]
fn merged_directory_listing_is_sorted_complete_and_without_duplicates() {
    let sys = TestTree::new();
    let user = TestTree::new();
    for i in 0..1000 {
        sys.file(format!("many/name-{i:04}"), format!("system {i}\n"));
        user.file(
            format!("many/name-{:04}", i + 500),
            format!("user {}\n", i + 500),
        );
    }
    let s = Stack::new(&["system", "user"]);
    s.add("system", sys.path(), "sys");
    s.add("user", user.path(), "usr");
    let m = s.mount();
    let first = names(&m.join("many"));
    let mut sorted = first.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(first.len(), 1500, "entries listed (with duplicates)");
    assert_eq!(sorted.len(), 1500, "distinct entries listed");
    assert_eq!(first, sorted, "readdir order is not name order");
    let again = names(&m.join("many"));
    assert_eq!(first, again, "a second listing differs");
    // every listed entry is reachable and comes from the right layer
    for (i, n) in first.iter().enumerate() {
        let want = if i < 500 { "system" } else { "user" };
        assert_eq!(read(m.join("many").join(n)), format!("{want} {i}\n"));
    }
    // ls -f (raw order, no sorting) and find agree
    let out = std::process::Command::new("ls")
        .arg("-f")
        .arg(m.join("many"))
        .output()
        .unwrap();
    let ls: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter(|l| *l != "." && *l != "..")
        .collect();
    assert_eq!(ls, first);
    // the merged directory's link count: 2 + subdirectories (none)
    assert_eq!(std::fs::metadata(m.join("many")).unwrap().nlink(), 2);
}

#[test]
fn three_layers_stack_system_common_user() {
    let sys = TestTree::new();
    sys.file("f/all", "system\n")
        .file("f/sys-common", "system\n")
        .file("f/sys-user", "system\n")
        .file("f/sys", "system\n");
    let common = TestTree::new();
    common
        .file("f/all", "common\n")
        .file("f/sys-common", "common\n")
        .file("f/common-user", "common\n")
        .file("f/common", "common\n");
    let user = TestTree::new();
    user.file("f/all", "user\n")
        .file("f/sys-user", "user\n")
        .file("f/common-user", "user\n")
        .file("f/user", "user\n");
    let s = Stack::new(&["system", "common", "user"]);
    s.add("system", sys.path(), "sys");
    s.add("common", common.path(), "com");
    s.add("user", user.path(), "usr");
    let m = s.mount();
    for (path, want) in [
        ("f/all", "user\n"),
        ("f/sys-common", "common\n"),
        ("f/sys-user", "user\n"),
        ("f/common-user", "user\n"),
        ("f/sys", "system\n"),
        ("f/common", "common\n"),
        ("f/user", "user\n"),
    ] {
        assert_eq!(read(m.join(path)), want, "{path}");
    }
    assert_eq!(
        names(&m.join("f")),
        [
            "all",
            "common",
            "common-user",
            "sys",
            "sys-common",
            "sys-user",
            "user"
        ]
    );
}

#[test]
fn same_layer_conflict_activates_the_first_package_and_refuses_the_other() {
    let a = TestTree::new();
    a.file("etc/shared", "from package a\n")
        .file("etc/a-only", "a\n");
    let b = TestTree::new();
    b.file("etc/shared", "from package b, different\n")
        .file("etc/b-only", "b\n");
    let s = Stack::new(&["system"]);
    s.add("system", a.path(), "aaa");
    s.add("system", b.path(), "bbb");
    let m = s.mount();
    // The set invariant: two packages of one layer never both claim a path. The first
    // generation takes aaa (first by name) and leaves bbb out whole, saying why.
    assert_eq!(read(m.join("etc/shared")), "from package a\n");
    assert_eq!(read(m.join("etc/a-only")), "a\n");
    assert!(!m.join("etc/b-only").exists(), "no part of bbb is shown");
    let log = m.log();
    let lines = log_lines(&log, &["not activated", "etc/shared"]);
    assert_eq!(
        lines.len(),
        1,
        "expected one line naming etc/shared:\n{log}"
    );
    assert!(
        lines[0].contains("aaa") && lines[0].contains("bbb"),
        "the line names both packages: {}",
        lines[0]
    );
}

#[test]
fn only_the_newest_version_of_a_package_in_a_layer_is_shown() {
    let s = Stack::new(&["system"]);
    for (file, version) in [("x-old", "1.0.0"), ("x-new", "1.10.0"), ("x-mid", "1.9.0")] {
        let t = TestTree::new();
        t.file("version", format!("{version}\n"))
            .file(format!("only-in-{version}"), "");
        s.add_pkg("system", file, Pkg::new(t.path(), "x", version));
    }
    let m = s.mount();
    assert_eq!(read(m.join("version")), "1.10.0\n");
    let mut got = names(m.path());
    got.sort();
    assert_eq!(got, ["only-in-1.10.0", "version"]);
}
