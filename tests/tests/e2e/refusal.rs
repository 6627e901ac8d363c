//! Packages that must not be mounted (signed by an unknown key, unsigned, truncated,
//! with corrupt metadata) are refused, each with a log line naming the file and the
//! reason, and the good packages of every layer still mount and serve.

use std::path::Path;

use e2e::{log_lines, Keys, Mount, Pkg, Stack, TestTree};

use crate::read;

/// A stack with one good package per layer (`good/system`, `good/user`).
fn good_stack() -> Stack {
    let s = Stack::new(&["system", "user"]);
    for layer in ["system", "user"] {
        let t = TestTree::new();
        t.file(format!("good/{layer}"), format!("{layer} ok\n"));
        s.add(layer, t.path(), &format!("good-{layer}"));
    }
    s
}

fn bad_tree(name: &str) -> TestTree {
    let t = TestTree::new();
    t.file(format!("bad/{name}"), "must not be visible\n");
    t
}

/// The good packages serve and the bad ones' files are not in the view.
fn assert_good_only(m: &Mount) {
    assert_eq!(read(m.join("good/system")), "system ok\n");
    assert_eq!(read(m.join("good/user")), "user ok\n");
    assert!(!m.join("bad").exists(), "a refused package is visible");
}

/// Exactly one log line names `file` and says it was refused, with every `reason` word.
fn assert_refused(m: &Mount, file: &Path, reason: &[&str]) {
    let log = m.log();
    let name = file.file_name().unwrap().to_string_lossy();
    let lines = log_lines(&log, &["refused", &name]);
    assert_eq!(
        lines.len(),
        1,
        "expected one refusal line naming {name}:\n{log}"
    );
    for r in reason {
        assert!(
            lines[0].to_lowercase().contains(r),
            "the refusal of {name} does not say `{r}`: {}",
            lines[0]
        );
    }
}

#[test]
fn package_signed_by_an_untrusted_key_is_refused_and_the_rest_mounts() {
    let s = good_stack();
    let stranger = Keys::new("stranger");
    let t = bad_tree("untrusted");
    let file = Pkg::new(t.path(), "untrusted", "1.0.0")
        .key(&stranger)
        .build(s.layer("user").package("untrusted"));
    let m = s.mount();
    assert_good_only(&m);
    assert_refused(&m, &file, &["trusted"]);
}

#[test]
fn unsigned_package_is_refused_and_the_rest_mounts() {
    let s = good_stack();
    let t = bad_tree("unsigned");
    let file = Pkg::new(t.path(), "unsigned", "1.0.0").build(s.layer("system").package("unsigned"));
    let m = s.mount();
    assert_good_only(&m);
    assert_refused(&m, &file, &["signed"]);
}

#[test]
fn truncated_package_is_refused_and_the_rest_mounts() {
    let s = good_stack();
    let t = bad_tree("truncated");
    t.file("bad/filler", e2e::tree::random_bytes(3, 200_000));
    let file = s.add("system", t.path(), "truncated");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let m = s.mount();
    assert_good_only(&m);
    assert_refused(&m, &file, &["truncated"]);
}

#[test]
fn package_with_corrupt_metadata_is_refused_and_the_rest_mounts() {
    let s = good_stack();
    let t = bad_tree("metadata");
    let file = s.add("user", t.path(), "metadata");
    // flip a byte of the table of contents (inside the signed metadata)
    let mut b = std::fs::read(&file).unwrap();
    let toc = u64::from_le_bytes(b[48..56].try_into().unwrap()) as usize;
    b[toc + 33] ^= 0x01;
    std::fs::write(&file, &b).unwrap();
    let m = s.mount();
    assert_good_only(&m);
    assert_refused(&m, &file, &["corrupt"]);
}

#[test]
fn every_bad_package_at_once_is_refused_and_the_good_ones_serve() {
    let s = good_stack();
    let stranger = Keys::new("stranger");
    let a = bad_tree("a");
    let untrusted = Pkg::new(a.path(), "a", "1.0.0")
        .key(&stranger)
        .build(s.layer("system").package("a"));
    let unsigned = Pkg::new(a.path(), "b", "1.0.0").build(s.layer("user").package("b"));
    let truncated = s.add("user", a.path(), "c");
    let len = std::fs::metadata(&truncated).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let not_a_package = s.layer("system").package("garbage");
    std::fs::write(&not_a_package, "this is not an archive\n").unwrap();
    // a file without the .hpkg suffix is not a package at all
    std::fs::write(
        s.layer("system").path().join("packages/README"),
        "not a package\n",
    )
    .unwrap();
    let m = s.mount();
    assert_good_only(&m);
    assert_refused(&m, &untrusted, &["trusted"]);
    assert_refused(&m, &unsigned, &["signed"]);
    assert_refused(&m, &truncated, &[]);
    assert_refused(&m, &not_a_package, &[]);
    // r11: a file that is not a package is said once, not ignored silently.
    assert_eq!(
        log_lines(&m.log(), &["packages/README", "not a package file"]).len(),
        1,
        "{}",
        m.log()
    );
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o666) },
        0,
        "mkfifo {p:?}"
    );
}

/// A user owns its layer: a FIFO named like a package or put in place of the layer's
/// lock must neither hang the daemon (at mount, or dropped into a live mount) nor keep
/// the good packages out.
#[test]
fn fifos_in_a_user_layer_neither_hang_nor_block_the_mount() {
    let s = good_stack();
    let user = s.layer("user").path().to_owned();
    mkfifo(&user.join("packages/fifo.hpkg"));
    std::fs::create_dir_all(user.join("state")).unwrap();
    mkfifo(&user.join("state/lock"));
    let m = s.builder().start();
    assert_good_only(&m);
    let log = m.log();
    let lines = log_lines(&log, &["refused", "fifo.hpkg", "not a regular file"]);
    assert_eq!(lines.len(), 1, "{log}");
    // dropped into the live mount: refused, the mount keeps serving and switching
    mkfifo(&user.join("packages/late-fifo.hpkg"));
    let t = TestTree::new();
    t.file("good/late", "late ok\n");
    Pkg::new(t.path(), "late", "1.0.0")
        .key(s.keys())
        .build(user.join("packages/late.hpkg"));
    assert!(
        e2e::wait_until(std::time::Duration::from_secs(5), || m
            .join("good/late")
            .exists()),
        "{}",
        m.log()
    );
    assert_good_only(&m);
    assert!(std::fs::symlink_metadata(user.join("state/lock"))
        .unwrap()
        .is_file());
}
