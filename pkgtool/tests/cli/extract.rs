//! `pkgtool extract` safety: it never writes outside the target, never follows a symlink,
//! never touches a non-empty target, and leaves nothing behind when it fails.

use std::fs;
use std::path::Path;

use crate::util::*;

fn extract(pkg: &Path, dest: &Path) -> TestCommand {
    let mut c = pkgtool(["extract"]);
    c.arg(pkg).arg(dest);
    c
}

#[test]
fn refuses_a_non_empty_target_and_changes_nothing() {
    let b = odd();
    let s = Scratch::new();
    let dest = s.join("dest");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("README"), b"mine").unwrap();
    extract(&b.pkg, &dest)
        .fails(1)
        .one_line_error()
        .stderr_contains("not empty");
    assert_eq!(dir_names(&dest), ["README".to_string()].into());
    assert_eq!(fs::read(dest.join("README")).unwrap(), b"mine");
    assert_eq!(dir_names(s.path()), ["dest".to_string()].into());

    // A file as target.
    let file = s.join("file");
    fs::write(&file, b"a file").unwrap();
    extract(&b.pkg, &file).fails(1).one_line_error();
    assert_eq!(fs::read(&file).unwrap(), b"a file");
    // A target whose parent does not exist.
    extract(&b.pkg, &s.join("no/such/parent"))
        .fails(1)
        .one_line_error();
    assert_eq!(
        dir_names(s.path()),
        ["dest".to_string(), "file".to_string()].into()
    );
}

#[test]
fn refuses_a_target_that_is_a_symlink() {
    let b = odd();
    let s = Scratch::new();
    let elsewhere = s.join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let link = s.join("link");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    extract(&b.pkg, &link).fails(1).one_line_error();
    // With a trailing slash the kernel follows the link; still refused.
    let mut slash = link.clone().into_os_string();
    slash.push("/");
    extract(&b.pkg, Path::new(&slash)).fails(1).one_line_error();
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        dir_names(&elsewhere).is_empty(),
        "extract wrote through the symlink"
    );
    assert_no_temp_left(s.path());
}

#[test]
fn extracts_into_an_empty_or_relative_target() {
    let b = odd();
    let s = Scratch::new();
    let dest = s.join("empty");
    fs::create_dir(&dest).unwrap();
    extract(&b.pkg, &dest).ok();
    assert_eq!(
        fs::read(dest.join("README")).unwrap(),
        b"hello, packagefs\n"
    );
    // A relative target (its parent is the current directory).
    let mut c = extract(&b.pkg, Path::new("rel"));
    c.command().current_dir(s.path());
    c.ok();
    assert_eq!(
        fs::read(s.join("rel/README")).unwrap(),
        b"hello, packagefs\n"
    );
    assert_no_temp_left(s.path());
}

#[test]
fn refuses_targets_named_dot_or_dot_dot_clearly() {
    // Regression: `extract PKG .` in an empty directory failed with "Device or resource
    // busy" (the temp sibling of `.` is inside `.`); now it is refused up front.
    let b = odd();
    let s = Scratch::new();
    let cwd = s.join("empty");
    fs::create_dir(&cwd).unwrap();
    for dest in [".", "..", "./", "sub/.", "sub/..", "/"] {
        let mut c = extract(&b.pkg, Path::new(dest));
        c.command().current_dir(&cwd);
        c.fails(1)
            .one_line_error()
            .stderr_contains("name the target directory");
    }
    assert!(dir_names(&cwd).is_empty());
    assert_eq!(dir_names(s.path()), ["empty".to_string()].into());
}

#[test]
fn symlinks_are_created_as_symlinks_never_followed() {
    let f = Fixture::new();
    let s = Scratch::new();
    let victim = s.join("victim");
    fs::create_dir(&victim).unwrap();
    let planted = victim.join("planted");
    let src = s.join("src");
    TestTree::new(&src)
        .symlink("evil", planted.as_os_str().as_encoded_bytes())
        .symlink("evildir", victim.as_os_str().as_encoded_bytes())
        .symlink("up", "../../../../../../../../../../tmp")
        .file("file", b"a file after the links\n", 0o644)
        .dir("z", 0o755)
        .file("z/inside", b"inside\n", 0o644)
        .finish();
    let pkg = s.join("evil.hpkg");
    f.build(&src, &pkg).ok();
    let out = s.join("out");
    extract(&pkg, &out).ok();
    for (name, target) in [("evil", planted.as_path()), ("evildir", victim.as_path())] {
        let p = out.join(name);
        assert!(
            fs::symlink_metadata(&p).unwrap().file_type().is_symlink(),
            "{name}"
        );
        assert_eq!(fs::read_link(&p).unwrap(), target);
    }
    assert!(
        fs::symlink_metadata(&planted).is_err(),
        "something was written at the target"
    );
    assert!(
        dir_names(&victim).is_empty(),
        "something was written into the victim dir"
    );
    assert_eq!(fs::read(out.join("z/inside")).unwrap(), b"inside\n");
}

#[test]
fn failed_extraction_leaves_no_partial_target() {
    let b = odd();
    let s = Scratch::new();
    let mut bytes = fs::read(&b.pkg).unwrap();
    let (heap, heap_len) = section(&bytes, HEAP);
    // The last chunk is read after most files were written.
    bytes[(heap + heap_len - 10) as usize] ^= 0xff;
    let pkg = s.join("bad.hpkg");
    fs::write(&pkg, &bytes).unwrap();
    let parent = s.join("parent");
    fs::create_dir(&parent).unwrap();

    let dest = parent.join("dest");
    extract(&pkg, &dest)
        .fails(1)
        .one_line_error()
        .stderr_contains("chunk");
    assert!(
        fs::symlink_metadata(&dest).is_err(),
        "a partial target was left"
    );
    assert!(
        dir_names(&parent).is_empty(),
        "left behind: {:?}",
        dir_names(&parent)
    );

    // An existing empty target stays empty.
    fs::create_dir(&dest).unwrap();
    extract(&pkg, &dest).fails(1).one_line_error();
    assert!(dir_names(&dest).is_empty());
    assert_eq!(dir_names(&parent), ["dest".to_string()].into());
}
