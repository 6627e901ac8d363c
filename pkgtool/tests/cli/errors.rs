//! Bad input: damaged or wrong package files, bad manifests, keys and source trees, and
//! unwritable outputs. Each is exit 1 with one line on stderr, and a failed build leaves
//! neither an output file nor a temp file behind.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::*;

/// info, list, cat and verify on `pkg` all exit 1 with one `pkgtool: ` line naming `name`.
fn readers_fail(pkg: &Path, name: &str, what: &str) {
    let key = &Fixture::shared().key.public;
    let runs = [
        pkgtool(["info"]).arg(pkg).run(),
        pkgtool(["list", "-l"]).arg(pkg).run(),
        pkgtool(["cat"]).arg(pkg).arg("README").run(),
        pkgtool(["verify", "--key"]).arg(key).arg(pkg).run(),
    ];
    for r in runs {
        assert_eq!(r.code, Some(1), "{what}: `{}`: exit {:?}", r.shown, r.code);
        let r = r.one_line_error();
        assert!(
            r.stderr_str().contains(name),
            "{what}: `{}` does not name {name}: {}",
            r.shown,
            r.stderr_str()
        );
    }
}

#[test]
fn truncated_and_extended_archives_are_refused() {
    let b = odd();
    let orig = fs::read(&b.pkg).unwrap();
    let len = orig.len() as u64;
    let (heap, heap_len) = section(&orig, HEAP);
    let (toc, _) = section(&orig, TOC);
    let s = Scratch::new();
    let pkg = s.join("cut.hpkg");
    for cut in [
        1,
        7,
        8,
        64,
        127,
        128,
        129,
        toc + 5,
        heap - 1,
        heap,
        heap + heap_len / 2,
        len - 136,
        len - 1,
    ] {
        fs::write(&pkg, &orig[..cut as usize]).unwrap();
        readers_fail(&pkg, "cut.hpkg", &format!("cut at {cut} of {len}"));
    }
    let mut longer = orig.clone();
    longer.push(0);
    fs::write(&pkg, &longer).unwrap();
    readers_fail(&pkg, "cut.hpkg", "one byte appended");
}

#[test]
fn non_archives_are_refused() {
    let s = Scratch::new();
    let empty = s.join("empty.hpkg");
    fs::write(&empty, b"").unwrap();
    readers_fail(&empty, "empty.hpkg", "empty file");
    let text = s.join("text.hpkg");
    fs::write(&text, b"{\"name\": \"not an archive\"}\n".repeat(20)).unwrap();
    readers_fail(&text, "text.hpkg", "a JSON file");
    let dir = s.join("dir.hpkg");
    fs::create_dir(&dir).unwrap();
    readers_fail(&dir, "dir.hpkg", "a directory");
    readers_fail(&s.join("missing.hpkg"), "missing.hpkg", "a missing file");
}

/// Runs a build that must fail with one line containing each of `needles`, and checks that
/// the output directory is as it was (no output, no temp file).
fn build_fails(cmd: &mut TestCommand, out_dir: &Path, needles: &[&str]) {
    let before = dir_names(out_dir);
    let mut r = cmd.fails(1).one_line_error();
    for n in needles {
        r = r.stderr_contains(n);
    }
    assert_eq!(
        dir_names(out_dir),
        before,
        "a failed build changed {}",
        out_dir.display()
    );
    assert_no_temp_left(out_dir);
}

#[test]
fn invalid_manifests_are_refused_naming_the_field() {
    let f = Fixture::new();
    let src = &odd().src;
    let s = Scratch::new();
    let out = s.join("out.hpkg");
    let cases: [(&str, &[&str]); 6] = [
        (r#"{"name": "x", "version": "1.0"}"#, &["version", "1.0"]),
        (
            r#"{"name": "x", "version": "1.0.0", "nmae": "y"}"#,
            &["nmae", "unknown field"],
        ),
        (r#"{"version": "1.0.0"}"#, &["name", "missing"]),
        (r#"{"name": "x"}"#, &["version", "missing"]),
        (
            r#"{"name": "x", "version": "1.0.0", "requires": [{"api": "y", "version": "bogus"}]}"#,
            &["requires[0].version"],
        ),
        ("this is not JSON", &["JSON"]),
    ];
    for (text, needles) in cases {
        let m = s.join("manifest.json");
        fs::write(&m, text).unwrap();
        build_fails(
            pkgtool(["build", "-q", "--key"])
                .arg(&f.key.secret)
                .arg("--manifest")
                .arg(&m)
                .arg(src)
                .arg("-o")
                .arg(&out),
            s.path(),
            needles,
        );
    }
    // A missing manifest file is named.
    build_fails(
        pkgtool(["build", "-q", "--key"])
            .arg(&f.key.secret)
            .arg("--manifest")
            .arg(s.join("no-manifest.json"))
            .arg(src)
            .arg("-o")
            .arg(&out),
        s.path(),
        &["no-manifest.json"],
    );
}

#[test]
fn bad_keys_and_environment_are_refused() {
    let f = Fixture::new();
    let src = &odd().src;
    let s = Scratch::new();
    let out = s.join("out.hpkg");
    // A public key where the secret key belongs.
    build_fails(
        pkgtool(["build", "-q", "--key"])
            .arg(&f.key.public)
            .arg("--manifest")
            .arg(&f.manifest)
            .arg(src)
            .arg("-o")
            .arg(&out),
        s.path(),
        &["alice.pub"],
    );
    build_fails(
        pkgtool(["build", "-q", "--key"])
            .arg(s.join("nokey.key"))
            .arg("--manifest")
            .arg(&f.manifest)
            .arg(src)
            .arg("-o")
            .arg(&out),
        s.path(),
        &["nokey.key"],
    );
    build_fails(
        f.build(src, &out).env("SOURCE_DATE_EPOCH", "yesterday"),
        s.path(),
        &["SOURCE_DATE_EPOCH"],
    );
}

#[test]
fn unpackageable_sources_are_refused_naming_the_path() {
    let f = Fixture::new();
    let s = Scratch::new();
    let out_dir = s.join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("pkg.hpkg");

    // A FIFO cannot be read without blocking; the build must name it (not hang on it).
    let src = s.join("src");
    TestTree::new(&src)
        .file("a", b"fine\n", 0o644)
        .dir("sub", 0o755)
        .fifo("sub/the-fifo")
        .finish();
    build_fails(&mut f.build(&src, &out), &out_dir, &["sub/the-fifo"]);

    // The source is missing, or not a directory.
    build_fails(
        &mut f.build(&s.join("nowhere"), &out),
        &out_dir,
        &["nowhere"],
    );
    build_fails(
        &mut f.build(&src.join("a"), &out),
        &out_dir,
        &["not a directory"],
    );
}

#[test]
fn unwritable_outputs_leave_nothing_behind() {
    let f = Fixture::new();
    let src = &odd().src;
    let s = Scratch::new();

    // The output directory does not exist.
    build_fails(
        &mut f.build(src, &s.join("no/such/dir/out.hpkg")),
        s.path(),
        &["no/such/dir"],
    );
    // A component of the output path is a file.
    fs::write(s.join("file"), b"x").unwrap();
    build_fails(
        &mut f.build(src, &s.join("file/out.hpkg")),
        s.path(),
        &["file"],
    );
    // The output is an existing directory: the failure comes at the final rename, after the
    // temp file was written, and the temp file must go.
    let target = s.join("target.hpkg");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), b"keep me").unwrap();
    build_fails(&mut f.build(src, &target), s.path(), &["target.hpkg"]);
    assert_eq!(fs::read(target.join("keep")).unwrap(), b"keep me");
    // A directory root cannot write to (skipped when root, who can write anywhere).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let ro = s.join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        build_fails(&mut f.build(src, &ro.join("out.hpkg")), &ro, &["ro"]);
    }
}

#[test]
fn failed_rebuild_leaves_the_existing_package_untouched() {
    let f = Fixture::new();
    let s = Scratch::new();
    let src = s.join("src");
    TestTree::new(&src)
        .file("a", b"version one\n", 0o644)
        .finish();
    let out_dir = s.join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("pkg.hpkg");
    f.build(&src, &out).ok();
    let before = fs::read(&out).unwrap();

    fs::write(src.join("a"), b"version two\n").unwrap();
    TestTree::new(&src).fifo("fifo");
    build_fails(&mut f.build(&src, &out), &out_dir, &["fifo"]);
    let bad = s.join("bad.json");
    fs::write(&bad, r#"{"name": "x", "version": "one"}"#).unwrap();
    build_fails(
        pkgtool(["build", "-q", "--key"])
            .arg(&f.key.secret)
            .arg("--manifest")
            .arg(&bad)
            .arg(&src)
            .arg("-o")
            .arg(&out),
        &out_dir,
        &["version"],
    );
    assert!(
        fs::read(&out).unwrap() == before,
        "a failed rebuild changed the package"
    );
    assert_eq!(
        pkgtool(["cat"]).arg(&out).arg("a").ok().stdout,
        b"version one\n"
    );
}
