//! Bad invocations: a one-line error naming the culprit and exit 1 (a bad mount point, a
//! missing layer directory, a busy mount point) or exit 2 (bad usage), and no mount left.

use std::path::Path;

use e2e::mount::Finished;
use e2e::mountinfo;
use e2e::{run_packagefs, Stack, TestTree};

use crate::read;

fn stack() -> Stack {
    let t = TestTree::new();
    t.file("hello", "hello\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "hello");
    s
}

/// `--layer system=DIR --trusted-keys KEYS EXTRA... MNT`
fn run(s: &Stack, layer_dir: &Path, extra: &[&str], mnt: &Path) -> Finished {
    let mut args: Vec<std::ffi::OsString> = vec!["--layer".into()];
    let mut spec = std::ffi::OsString::from("system=");
    spec.push(layer_dir);
    args.push(spec);
    args.push("--trusted-keys".into());
    args.push(s.keys().trusted().into());
    args.extend(extra.iter().map(Into::into));
    args.push(mnt.into());
    run_packagefs(args)
}

/// Exit `code`, and a line `packagefs: ...` that contains every one of `needles`.
fn assert_fails(f: &Finished, code: i32, needles: &[&str]) {
    assert_eq!(f.code(), code, "exit status; output:\n{}", f.stderr);
    let found = f
        .stderr
        .lines()
        .any(|l| l.starts_with("packagefs: ") && needles.iter().all(|n| l.contains(n)));
    assert!(
        found,
        "no `packagefs: ` line naming {needles:?}:\n{}",
        f.stderr
    );
}

fn assert_nothing_mounted_under(dir: &Path) {
    let fuse: Vec<_> = mountinfo::mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    assert!(fuse.is_empty(), "left mounted: {fuse:?}");
}

#[test]
fn missing_mount_point_exits_1_naming_it() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("does-not-exist");
    let f = run(&s, s.layer("system").path(), &[], &mnt);
    assert_fails(&f, 1, &[&mnt.to_string_lossy()]);
    assert!(!mnt.exists(), "the mount point was created");
    assert_nothing_mounted_under(dir.path());
}

#[test]
fn mount_point_that_is_a_file_exits_1_naming_it() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("a-file");
    std::fs::write(&mnt, "x").unwrap();
    let f = run(&s, s.layer("system").path(), &[], &mnt);
    assert_fails(&f, 1, &[&mnt.to_string_lossy(), "not a directory"]);
    assert_nothing_mounted_under(dir.path());
}

#[test]
fn missing_layer_directory_exits_1_naming_it() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-layer");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let f = run(&s, &missing, &[], &mnt);
    assert_fails(&f, 1, &[&missing.to_string_lossy()]);
    assert_nothing_mounted_under(dir.path());
}

#[test]
fn missing_trusted_keys_directory_exits_1_naming_it() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let keys = dir.path().join("no-keys");
    let mut spec = std::ffi::OsString::from("system=");
    spec.push(s.layer("system").path());
    let f = run_packagefs([
        "--layer".into(),
        spec,
        "--trusted-keys".into(),
        keys.clone().into_os_string(),
        mnt.into_os_string(),
    ]);
    assert_fails(&f, 1, &[&keys.to_string_lossy()]);
    assert_nothing_mounted_under(dir.path());
}

#[test]
fn a_fifo_among_the_trusted_keys_exits_1_naming_it_before_mounting() {
    // A FIFO named like a key used to block the daemon, silently, before it mounted.
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    for e in std::fs::read_dir(s.keys().trusted()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), keys.join(e.file_name())).unwrap();
    }
    let fifo = keys.join("trap.pub");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let mut spec = std::ffi::OsString::from("system=");
    spec.push(s.layer("system").path());
    let f = run_packagefs([
        "--layer".into(),
        spec,
        "--trusted-keys".into(),
        keys.into_os_string(),
        mnt.into_os_string(),
    ]);
    assert_fails(&f, 1, &[&fifo.to_string_lossy(), "not a regular file"]);
    assert_nothing_mounted_under(dir.path());
}

#[test]
fn busy_mount_point_exits_1_naming_it_and_the_first_mount_keeps_serving() {
    let s = stack();
    let m = s.mount();
    let f = run(&s, s.layer("system").path(), &[], m.path());
    assert_fails(&f, 1, &[&m.path().to_string_lossy(), "busy"]);
    assert_eq!(read(m.join("hello")), "hello\n");
    let stacked = mountinfo::mounts()
        .iter()
        .filter(|e| e.mount_point == m.path())
        .count();
    assert_eq!(
        stacked, 1,
        "a second file system is stacked on the mount point"
    );
}

#[test]
fn bad_usage_exits_2() {
    let s = stack();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let layer = s.layer("system").path();
    for extra in [
        &["--no-such-option"][..],
        &["--cache-size", "lots"],
        &["--cache-size", "1K"],
        &["--threads", "many"],
        &["--layer", "no-equals-sign"],
        &["--layer", "bad/name=/tmp"],
        &["--layer", "system=/tmp"],
    ] {
        let f = run(&s, layer, extra, &mnt);
        assert_eq!(f.code(), 2, "{extra:?}: exit status; output:\n{}", f.stderr);
        assert!(!f.stderr.trim().is_empty(), "{extra:?}: no message");
        assert!(
            !f.stderr.contains("panicked"),
            "{extra:?}: panicked:\n{}",
            f.stderr
        );
    }
    // no mount point at all, and no layer at all
    let f = run_packagefs(["--trusted-keys", "/nonexistent"]);
    assert_eq!(f.code(), 2, "{}", f.stderr);
    let f = run_packagefs([mnt.as_os_str()]);
    assert_eq!(f.code(), 2, "{}", f.stderr);
    assert_nothing_mounted_under(dir.path());
}
