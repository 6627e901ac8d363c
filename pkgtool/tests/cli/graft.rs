//! `pkgtool graft deb|tar|dir`: real Debian packages (fetched with apt-get), tarballs in
//! every compression, directories, and hostile input, each refused with one line and no
//! output left behind.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tar::EntryType as T;

use crate::debian::*;
use crate::util::*;

/// `pkgtool graft deb DEBS -o OUT --key K --quiet`, ready for more args.
fn graft_deb(f: &Fixture, debs: &[PathBuf], out: &Path) -> TestCommand {
    let mut c = pkgtool(["graft", "deb"]);
    c.args(debs)
        .arg("-o")
        .arg(out)
        .arg("--key")
        .arg(&f.key.secret)
        .arg("--quiet");
    c
}

fn manifest_of(pkg: &Path) -> serde_json::Value {
    pkgtool(["info", "--json"]).arg(pkg).ok().json()["manifest"].clone()
}

/// Every entry of an extracted tree: path -> (kind and mode, symlink target or file bytes).
fn tree_of(root: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    walk(root)
        .into_iter()
        .map(|e| {
            let mode = e.md.permissions().mode() & 0o7777;
            let (kind, data) = if e.is_symlink() {
                (
                    "l",
                    fs::read_link(&e.path)
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if e.is_dir() {
                ("d", Vec::new())
            } else {
                ("f", fs::read(&e.path).unwrap())
            };
            (
                String::from_utf8_lossy(&e.rel).into_owned(),
                (format!("{kind} {mode:o}"), data),
            )
        })
        .collect()
}

#[test]
fn real_debs_graft_with_their_contents_metadata_and_dependencies() {
    let f = Fixture::new();
    let debs = debs(&[
        "hello",
        "jq",
        "libjq1",
        "libonig5",
        "libc6",
        "libgcc-s1",
        "gcc-12-base",
    ]);
    let out = f.dir.join("out");
    let r = graft_deb(&f, &debs, &out).arg("--json").ok();
    let report = r.json();
    let pkgs = report["packages"].as_array().unwrap();
    assert_eq!(pkgs.len(), 7);
    let by_name = |n: &str| {
        pkgs.iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    // Names, versions and requirements from the control files.
    let jq = by_name("jq");
    let jq_version = jq["origin"]["version"].as_str().unwrap();
    assert!(jq_version.starts_with("1.6-"), "{jq_version}");
    assert!(jq["version"].as_str().unwrap().starts_with("1.6.0+debian."));
    assert_eq!(jq["requires"][0], "libjq1 =1.6.0");
    assert!(jq["requires"][1]
        .as_str()
        .unwrap()
        .starts_with("libc6 >=2."));
    let libgcc = by_name("libgcc-s1");
    assert!(libgcc["requires"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r.as_str().unwrap().starts_with("gcc-12-base =12.")));
    assert!(libgcc["provides"][0]
        .as_str()
        .unwrap()
        .starts_with("libgcc1 "));
    // The libc6 <-> libgcc-s1 cycle is broken at libc6, and said so.
    let libc = by_name("libc6");
    assert_eq!(libc["requires"].as_array().unwrap().len(), 0, "{libc}");
    let unmapped = libc["origin"]["unmapped"].to_string();
    assert!(
        unmapped.contains("dependency cycle libc6 -> libgcc-s1 -> libc6"),
        "{unmapped}"
    );
    assert!(unmapped.contains("Breaks: "), "{unmapped}");
    assert!(libc["origin"]["scripts"]
        .as_array()
        .unwrap()
        .contains(&"postinst".into()));
    // `pkgtool info` shows where a package came from and what was not mapped.
    let info = pkgtool(["info"]).arg(libc["output"].as_str().unwrap()).ok();
    let info = info.stdout_str();
    assert!(info.contains("grafted from: debian libc6 2.36-"), "{info}");
    assert!(
        info.contains("  scripts not run: preinst, postinst"),
        "{info}"
    );
    assert!(info.contains("  unmapped:  Breaks: "), "{info}");
    // Warnings on stderr: scripts not run, the cycle.
    let err = r.stderr_str();
    assert!(
        err.contains("pkgtool: warning: libc6: maintainer scripts not run: "),
        "{err}"
    );
    assert!(
        err.contains("dropped to break the dependency cycle"),
        "{err}"
    );
    assert!(
        err.lines().all(|l| l.starts_with("pkgtool: warning: ")),
        "{err}"
    );
    // The files are there, signed and verified, and the manifest is what info shows.
    for p in pkgs {
        let pkg = PathBuf::from(p["output"].as_str().unwrap());
        assert!(pkg.starts_with(&out) && pkg.is_file(), "{}", pkg.display());
        pkgtool(["verify", "--key"])
            .arg(&f.key.public)
            .arg(&pkg)
            .ok();
        assert_eq!(manifest_of(&pkg)["version"], p["version"]);
    }
    assert_no_temp_left(&out);
    assert_eq!(dir_names(&out).len(), 7, "{:?}", dir_names(&out));
    // hello's manifest is the example in manifests/hello.json, but for the version.
    let hello = by_name("hello");
    let m = manifest_of(Path::new(hello["output"].as_str().unwrap()));
    let example: serde_json::Value = serde_json::from_slice(
        &fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/hello.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut m = m.clone();
    m["version"] = example["version"].clone();
    m["origin"]["version"] = example["origin"]["version"].clone();
    assert_eq!(m, example);
}

#[test]
fn grafted_tree_equals_dpkg_deb_extraction_with_absolute_links_made_relative() {
    let f = Fixture::new();
    let deb = debs(&["libc6"]).remove(0);
    let out = f.dir.join("out");
    graft_deb(&f, std::slice::from_ref(&deb), &out).ok();
    let pkg = fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let ours = f.dir.join("ours");
    pkgtool(["extract"]).arg(&pkg).arg(&ours).ok();
    let theirs = f.dir.join("theirs");
    let (code, text) = run_tool(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&theirs));
    assert_eq!(code, 0, "dpkg-deb -x: {text}");
    let (a, b) = (tree_of(&ours), tree_of(&theirs));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let mut links = 0;
    for (path, (kind, data)) in &b {
        let (okind, odata) = &a[path];
        assert_eq!(okind, kind, "{path}");
        if kind.starts_with('l') && data.starts_with(b"/") {
            // /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 from lib64/ -> ../lib/...
            links += 1;
            let resolved = ours
                .join(Path::new(path).parent().unwrap())
                .join(String::from_utf8_lossy(odata).as_ref());
            assert!(
                !odata.starts_with(b"/"),
                "{path} -> {}",
                String::from_utf8_lossy(odata)
            );
            let canon = fs::canonicalize(&resolved).unwrap();
            assert!(
                canon.starts_with(fs::canonicalize(&ours).unwrap()),
                "{path} resolves to {}",
                canon.display()
            );
            let target = Path::new(std::str::from_utf8(&data[1..]).unwrap());
            assert_eq!(
                fs::read(&canon).unwrap(),
                fs::read(theirs.join(target)).unwrap()
            );
        } else {
            assert!(odata == data, "{path}: contents differ");
        }
    }
    assert!(
        links >= 1,
        "libc6 has an absolute symlink (lib64/ld-linux-x86-64.so.2)"
    );
    // mtimes too
    for e in walk(&theirs).iter().filter(|e| e.is_file()) {
        let o = fs::symlink_metadata(ours.join(Path::new(std::str::from_utf8(&e.rel).unwrap())))
            .unwrap();
        assert_eq!(
            o.mtime(),
            e.md.mtime(),
            "{}",
            String::from_utf8_lossy(&e.rel)
        );
    }
}

#[test]
fn strip_docs_drops_exactly_what_help_says() {
    let help = pkgtool(["graft", "deb", "--help"]).ok();
    let help = help
        .stdout_str()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for d in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ] {
        assert!(help.contains(d), "--help does not name {d}: {help}");
    }
    let f = Fixture::new();
    let deb = debs(&["hello"]);
    let (full, stripped) = (f.dir.join("full"), f.dir.join("stripped"));
    graft_deb(&f, &deb, &full).ok();
    graft_deb(&f, &deb, &stripped).arg("--strip-docs").ok();
    let list = |d: &Path| {
        let pkg = fs::read_dir(d).unwrap().next().unwrap().unwrap().path();
        pkgtool(["list"]).arg(&pkg).ok().stdout_str().to_owned()
    };
    let (a, b) = (list(&full), list(&stripped));
    for d in [
        "usr/share/doc/",
        "usr/share/man/",
        "usr/share/info/",
        "usr/share/locale/",
    ] {
        assert!(a.lines().any(|l| l.starts_with(d)), "hello ships {d}");
        assert!(
            !b.lines().any(|l| l.starts_with(d)),
            "--strip-docs kept {d}"
        );
    }
    assert!(b.lines().any(|l| l == "usr/bin/hello"));
    assert!(b.lines().count() < a.lines().count() / 4);
}

/// A tree with a symlink (absolute and relative), a hard link, odd modes and an empty dir.
fn sample_tree(root: &Path) -> PathBuf {
    let mut t = TestTree::new(root);
    t.dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .file("bin/setuid", b"x", 0o4755)
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/t", "tool")
        .symlink("bin/abs", "/opt/app/bin/tool")
        .dir("share/empty", 0o700)
        .file("share/data", &pseudo_random(300_000, 1), 0o644);
    t.finish()
}

#[test]
fn tarballs_in_every_compression_and_dirs_graft_the_same_tree() {
    let f = Fixture::new();
    let src = sample_tree(&f.dir.join("src"));
    let tarball = f.dir.join("app.tar");
    let (code, text) = run_tool(
        Command::new("tar")
            .args(["--format=gnu", "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    );
    assert_eq!(code, 0, "{text}");
    let raw = fs::read(&tarball).unwrap();
    let mut inputs = vec![tarball.clone()];
    for (ext, data) in [
        ("tar.gz", gz(&raw)),
        ("tar.xz", xz(&raw)),
        ("tar.zst", zst(&raw)),
        ("tar.bz2", bz2(&raw)),
        ("packed", zst(&raw)),
    ] {
        let p = f.dir.join(format!("app.{ext}"));
        fs::write(&p, data).unwrap();
        inputs.push(p);
    }
    let mut ids = Vec::new();
    for input in &inputs {
        let out = f.dir.join(format!(
            "{}.hpkg",
            input.file_name().unwrap().to_string_lossy()
        ));
        let r = pkgtool(["graft", "tar"])
            .arg(input)
            .args([
                "--name",
                "app",
                "--version",
                "1.2",
                "--prefix",
                "opt/app",
                "--summary",
                "an app",
                "--require",
                "libc6 >=2.34",
                "-o",
            ])
            .arg(&out)
            .arg("--key")
            .arg(&f.key.secret)
            .args(["--quiet", "--json"])
            .ok();
        let p = &r.json()["packages"][0];
        assert_eq!(p["version"], "1.2.0", "the Debian-style 1.2 maps to 1.2.0");
        assert_eq!(p["origin"]["from"], "tar");
        assert_eq!(p["origin"]["version"], "1.2");
        assert_eq!(p["requires"][0], "libc6 >=2.34");
        assert_eq!(p["relative_links"], 1);
        ids.push(p["id"].as_str().unwrap().to_owned());
        // The tree, under the prefix, with the absolute link made relative.
        let x = f
            .dir
            .join(format!("x-{}", out.file_name().unwrap().to_string_lossy()));
        pkgtool(["extract"]).arg(&out).arg(&x).ok();
        let app = x.join("opt/app");
        assert_eq!(
            fs::read_link(app.join("bin/abs")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(fs::read_link(app.join("bin/t")).unwrap(), Path::new("tool"));
        assert_eq!(
            fs::read(app.join("share/data")).unwrap(),
            pseudo_random(300_000, 1)
        );
        let long = pkgtool(["list", "-l"]).arg(&out).ok();
        let long = long.stdout_str();
        assert!(
            long.lines()
                .any(|l| l.starts_with("-rwsr-xr-x") && l.ends_with(" opt/app/bin/setuid")),
            "{long}"
        );
        assert!(
            long.lines()
                .any(|l| l.starts_with("drwx------") && l.ends_with(" opt/app/share/empty/")),
            "{long}"
        );
        let (a, b) = (
            fs::metadata(app.join("bin/tool")).unwrap(),
            fs::metadata(app.join("bin/tool2")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "the hard link is kept");
    }
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "every compression gives the same package: {ids:?}"
    );
    // graft dir of the same tree: the same files (the origin differs: dir, not tar).
    let out = f.dir.join("dir.hpkg");
    let r = pkgtool(["graft", "dir"])
        .arg(&src)
        .args([
            "--name",
            "app",
            "--version",
            "1.2.0",
            "--prefix",
            "/opt/app/",
            "-o",
        ])
        .arg(&out)
        .arg("--unsigned")
        .args([
            "--quiet",
            "--json",
            "--compression",
            "zlib:6",
            "--chunk-size",
            "64K",
            "-j",
            "1",
        ])
        .ok();
    let p = &r.json()["packages"][0];
    assert_eq!(p["signer"], serde_json::Value::Null);
    assert_eq!(p["compression"], "zlib:6");
    assert_eq!(p["chunk_size"], 65536);
    assert_eq!(p["origin"]["from"], "dir");
    let (x1, x2) = (f.dir.join("from-dir"), f.dir.join("from-tar"));
    pkgtool(["extract"]).arg(&out).arg(&x1).ok();
    pkgtool(["extract"])
        .arg(f.dir.join("app.tar.hpkg"))
        .arg(&x2)
        .ok();
    assert_eq!(tree_of(&x1), tree_of(&x2));
}

#[test]
fn graft_dir_builds_lz4_packages() {
    let f = Fixture::new();
    let src = sample_tree(&f.dir.join("src"));
    let out = f.dir.join("lz4.hpkg");
    let r = pkgtool(["graft", "dir"])
        .arg(&src)
        .args(["--name", "app", "--version", "1.2.0", "-o"])
        .arg(&out)
        .args(["--unsigned", "--quiet", "--json", "--compression", "lz4"])
        .ok();
    assert_eq!(r.json()["packages"][0]["compression"], "lz4");
    let info = pkgtool(["info", "--json"]).arg(&out).ok().json();
    assert_eq!(info["format_version"], "1.1");
    let x = f.dir.join("x");
    pkgtool(["extract"]).arg(&out).arg(&x).ok();
    assert_eq!(
        fs::read(x.join("share/data")).unwrap(),
        fs::read(src.join("share/data")).unwrap()
    );
}

/// Runs a graft that must fail: exit 1, one line naming `file` and saying `what`, and
/// nothing but the input left in `dir`.
fn refused(mut cmd: TestCommand, file: &str, what: &str, dir: &Path) {
    let r = cmd.fails(1).one_line_error();
    let err = r.stderr_str();
    assert!(err.contains(file), "the error does not name {file}: {err}");
    assert!(
        err.contains(what),
        "{file}: the error does not say {what:?}: {err}"
    );
    assert_eq!(
        dir_names(dir),
        [file.to_owned()].into_iter().collect(),
        "{file}: something was left behind in {}",
        dir.display()
    );
}

#[test]
fn hostile_debs_are_refused_with_one_line_and_nothing_written() {
    let f = Fixture::new();
    let good = good_deb("good");
    let escaping_link = tar_of(&[("./usr/bin/x", T::Symlink, b"", "../../../etc/passwd")]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not-ar.deb",
            b"This is not a Debian package\n".to_vec(),
            "not an ar archive",
        ),
        ("empty.deb", Vec::new(), "not an ar archive"),
        (
            "no-data.deb",
            ar_of(&[
                ("debian-binary", b"2.0\n".to_vec()),
                ("control.tar.xz", control_tar(&control("a", "1.0", ""), &[])),
            ]),
            "no data.tar member",
        ),
        (
            "no-control.deb",
            ar_of(&[
                ("debian-binary", b"2.0\n".to_vec()),
                ("data.tar.xz", xz(&tar_of(&[]))),
            ]),
            "before the control member",
        ),
        (
            "format3.deb",
            ar_of(&[("debian-binary", b"3.0\n".to_vec())]),
            "unsupported .deb format version \"3.0\"",
        ),
        (
            "bz3.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.bz3",
                b"BZ3v1 garbage".to_vec(),
            ),
            "data.tar.bz3: unknown compression \".bz3\"",
        ),
        (
            "truncated.deb",
            good[..good.len() - 40].to_vec(),
            "truncated",
        ),
        ("truncated-control.deb", good[..200].to_vec(), "truncated"),
        (
            "dotdot.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.xz",
                xz(&tar_of(&[("./usr/../../x", T::Regular, b"x", "")])),
            ),
            "entry ./usr/../../x: a `..` component",
        ),
        (
            "absolute.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.gz",
                gz(&tar_of(&[("/etc/passwd", T::Regular, b"x", "")])),
            ),
            "entry /etc/passwd: an absolute path",
        ),
        (
            "symlink.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.zst",
                zst(&escaping_link),
            ),
            "usr/bin/x: symlink to ../../../etc/passwd points out of the package",
        ),
        (
            "abs-symlink.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar",
                tar_of(&[("./x", T::Symlink, b"", "/../etc/passwd")]),
            ),
            "points out of the package",
        ),
        (
            "hardlink.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.xz",
                xz(&tar_of(&[("./x", T::Link, b"", "../etc/passwd")])),
            ),
            "hard link to ../etc/passwd",
        ),
        (
            "hardlink-abs.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.xz",
                xz(&tar_of(&[("./x", T::Link, b"", "/etc/passwd")])),
            ),
            "points out of the package",
        ),
        (
            "device.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.xz",
                xz(&tar_of(&[("./dev/sda", T::Block, b"", "")])),
            ),
            "device or fifo",
        ),
        (
            "not-xz.deb",
            deb(
                &control("a", "1.0", ""),
                "data.tar.xz",
                b"not xz at all".to_vec(),
            ),
            "data.tar.xz",
        ),
        (
            "no-version.deb",
            deb(
                "Package: a\nArchitecture: all\n",
                "data.tar.xz",
                xz(&tar_of(&[])),
            ),
            "malformed control file: field Version is missing",
        ),
        (
            "bad-version.deb",
            deb(
                &control("a", "1.0 beta", ""),
                "data.tar.xz",
                xz(&tar_of(&[])),
            ),
            "malformed control file: Version: ",
        ),
        (
            "bad-name.deb",
            deb(
                &control("Bad_Name", "1.0", ""),
                "data.tar.xz",
                xz(&tar_of(&[])),
            ),
            "malformed control file: Package: ",
        ),
        (
            "bad-depends.deb",
            deb(
                &control("a", "1.0", "Depends: libc6 (>= 2.34\n"),
                "data.tar.xz",
                xz(&tar_of(&[])),
            ),
            "malformed control file: Depends: ",
        ),
        (
            "twice.deb",
            deb(
                "Package: a\nVersion: 1\nPackage: b\n",
                "data.tar.xz",
                xz(&tar_of(&[])),
            ),
            "malformed control file: line 3: field Package appears twice",
        ),
        (
            "binary-control.deb",
            deb("\u{1}\u{2}\u{3}", "data.tar.xz", xz(&tar_of(&[]))),
            "malformed control file",
        ),
        (
            "extra-member.deb",
            ar_of(&[
                ("debian-binary", b"2.0\n".to_vec()),
                ("control.tar.xz", control_tar(&control("a", "1.0", ""), &[])),
                ("data.tar.xz", xz(&tar_of(&[]))),
                ("evil.sh", b"rm -rf /".to_vec()),
            ]),
            "unexpected member \"evil.sh\"",
        ),
    ];
    for (name, bytes, what) in &cases {
        let dir = f.dir.join(format!("case-{name}"));
        fs::create_dir(&dir).unwrap();
        let file = dir.join(name);
        fs::write(&file, bytes).unwrap();
        let out = dir.join("out");
        refused(graft_deb(&f, &[file], &out), name, what, &dir);
        assert!(
            !out.exists(),
            "{name}: the output directory was left behind"
        );
    }
    // A bad .deb in a batch fails the whole batch: the good one is not written either,
    // and an existing output directory keeps only what it had.
    let dir = f.dir.join("batch");
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("keep.txt"), b"mine").unwrap();
    fs::write(dir.join("good.deb"), &good).unwrap();
    fs::write(
        dir.join("bad.deb"),
        deb(
            &control("bad", "1.0", ""),
            "data.tar.zst",
            zst(&escaping_link),
        ),
    )
    .unwrap();
    let r = graft_deb(&f, &[dir.join("good.deb"), dir.join("bad.deb")], &out)
        .fails(1)
        .one_line_error();
    assert!(r.stderr_str().contains("bad.deb"), "{}", r.stderr_str());
    assert_eq!(
        dir_names(&out),
        ["keep.txt".to_owned()].into_iter().collect()
    );
    // The same package twice.
    let r = graft_deb(&f, &[dir.join("good.deb"), dir.join("good.deb")], &out)
        .fails(1)
        .one_line_error();
    assert!(
        r.stderr_str().contains("give each package once"),
        "{}",
        r.stderr_str()
    );
    // And the good one alone works.
    graft_deb(&f, &[dir.join("good.deb")], &out).ok();
    assert_eq!(dir_names(&out).len(), 2);
}

#[test]
fn every_member_compression_dpkg_reads_is_read() {
    let f = Fixture::new();
    let data = tar_of(&[("./usr/bin/x", T::Regular, b"payload\n", "")]);
    let lzma = {
        use std::io::Write;
        let opts = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        let s = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
        let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), s);
        e.write_all(&data).unwrap();
        e.finish().unwrap()
    };
    for (member, bytes) in [
        ("data.tar", data.clone()),
        ("data.tar.gz", gz(&data)),
        ("data.tar.xz", xz(&data)),
        ("data.tar.zst", zst(&data)),
        ("data.tar.bz2", bz2(&data)),
        ("data.tar.lzma", lzma),
    ] {
        let file = f.dir.join(format!("{member}.deb"));
        fs::write(&file, deb(&control("x", "1.0", ""), member, bytes)).unwrap();
        let out = f.dir.join(format!("out-{member}"));
        graft_deb(&f, &[file], &out).ok();
        let pkg = out.join("x_1.0_amd64.hpkg");
        let r = pkgtool(["cat"]).arg(&pkg).arg("usr/bin/x").ok();
        assert_eq!(r.stdout, b"payload\n", "{member}");
    }
}

#[test]
fn hostile_tarballs_and_dirs_are_refused() {
    let f = Fixture::new();
    let tar_cmd = |input: &Path, out: &Path| {
        let mut c = pkgtool(["graft", "tar"]);
        c.arg(input)
            .args(["--name", "t", "--version", "1.0.0", "-o"])
            .arg(out)
            .arg("--key")
            .arg(&f.key.secret);
        c
    };
    let good = tar_of(&[("./a/b", T::Regular, &[5u8; 100_000], "")]);
    let gzipped = gz(&good);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "x.tar.bz3",
            b"BZ3v1 not a known compression".to_vec(),
            "unknown compression",
        ),
        (
            "noext",
            b"just some text, not a tarball".to_vec(),
            "unknown compression",
        ),
        (
            "cut.tar.gz",
            gzipped[..gzipped.len() / 2].to_vec(),
            "truncated",
        ),
        ("cut.tar", good[..20_000].to_vec(), "truncated"),
        (
            "dotdot.tar",
            tar_of(&[("../x", T::Regular, b"x", "")]),
            "entry ../x: a `..` component",
        ),
        (
            "abs.tar.xz",
            xz(&tar_of(&[("/x", T::Regular, b"x", "")])),
            "entry /x: an absolute path",
        ),
        (
            "link.tar",
            tar_of(&[("./a/l", T::Symlink, b"", "../../x")]),
            "a/l: symlink to ../../x points out of the package",
        ),
        (
            "fifo.tar",
            tar_of(&[("./p", T::Fifo, b"", "")]),
            "device or fifo",
        ),
    ];
    for (name, bytes, what) in &cases {
        let dir = f.dir.join(format!("case-{name}"));
        fs::create_dir(&dir).unwrap();
        let input = dir.join(name);
        fs::write(&input, bytes).unwrap();
        let out = dir.join("out.hpkg");
        refused(tar_cmd(&input, &out), name, what, &dir);
        assert!(!out.exists());
        assert_no_temp_left(&dir);
    }
    // Bad options: one line, before anything is read.
    let input = f.dir.join("good.tar");
    fs::write(&input, &good).unwrap();
    let out = f.dir.join("o.hpkg");
    for (args, what) in [
        (vec!["--name", "Bad Name", "--version", "1.0.0"], "--name: "),
        (
            vec!["--name", "ok", "--version", "not a version!"],
            "--version: ",
        ),
        (
            vec!["--name", "ok", "--version", "1.0.0", "--require", "x ~>2"],
            "--require",
        ),
        (
            vec!["--name", "ok", "--version", "1.0.0", "--prefix", "../up"],
            "--prefix",
        ),
    ] {
        let mut c = pkgtool(["graft", "tar"]);
        c.arg(&input)
            .args(&args)
            .arg("-o")
            .arg(&out)
            .arg("--unsigned");
        let r = c.fails(1).one_line_error();
        assert!(
            r.stderr_str().contains(what),
            "{args:?}: {}",
            r.stderr_str()
        );
        assert!(!out.exists());
    }
    pkgtool(["graft", "tar"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .arg("--unsigned")
        .fails(2);
    // A directory with a symlink out of it.
    let src = f.dir.join("escape");
    let mut t = TestTree::new(&src);
    t.file("a", b"a", 0o644)
        .dir("sub", 0o755)
        .symlink("sub/link", "../../../etc/shadow");
    let src = t.finish();
    let mut c = pkgtool(["graft", "dir"]);
    c.arg(&src)
        .args(["--name", "d", "--version", "1.0.0", "-o"])
        .arg(&out)
        .arg("--unsigned");
    let r = c.fails(1).one_line_error();
    assert!(
        r.stderr_str()
            .contains("sub/link: symlink to ../../../etc/shadow points out of the package"),
        "{}",
        r.stderr_str()
    );
    assert!(!out.exists());
}

#[test]
fn ignore_depends_drops_a_dependency_and_says_so() {
    let f = Fixture::new();
    let file = f.dir.join("a.deb");
    let data = xz(&tar_of(&[("./usr/bin/a", T::Regular, b"a", "")]));
    fs::write(
        &file,
        deb(
            &control(
                "a",
                "2:1.5~rc1-3",
                "Depends: libc6 (>= 2.34), systemd | sysvinit-core\nPre-Depends: dpkg (>= 1.19)\n",
            ),
            "data.tar.xz",
            data,
        ),
    )
    .unwrap();
    let out = f.dir.join("out");
    let r = graft_deb(&f, &[file], &out)
        .args(["--ignore-depends", "dpkg,systemd", "--json"])
        .ok();
    let p = &r.json()["packages"][0];
    assert_eq!(p["version"], "1.5.0+epoch.2.pre.rc.1.debian.3");
    assert_eq!(
        p["output"].as_str().unwrap(),
        out.join("a_1.5~rc1-3_amd64.hpkg").to_str().unwrap()
    );
    let reqs: Vec<&str> = p["requires"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(reqs, ["libc6 >=2.34.0", "sysvinit-core *"]);
    let unmapped = p["origin"]["unmapped"].to_string();
    assert!(
        unmapped.contains("Pre-Depends: dpkg (>= 1.19): dropped (--ignore-depends)"),
        "{unmapped}"
    );
    assert!(
        r.stderr_str().contains("requires sysvinit-core"),
        "{}",
        r.stderr_str()
    );
    // The human summary names the mapping.
    let out2 = f.dir.join("out2");
    let r = graft_deb(&f, &[f.dir.join("a.deb")], &out2).ok();
    assert!(
        r.stdout_str()
            .contains("a 1.5.0+epoch.2.pre.rc.1.debian.3   (Debian a 2:1.5~rc1-3 amd64)"),
        "{}",
        r.stdout_str()
    );
    assert!(
        r.stdout_str()
            .contains("requires: dpkg >=1.19.0, libc6 >=2.34.0, systemd *"),
        "{}",
        r.stdout_str()
    );
}

#[test]
fn maintainer_scripts_are_listed_not_run() {
    let f = Fixture::new();
    let marker = f.dir.join("ran");
    let script = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    let names = [
        "preinst", "postinst", "prerm", "postrm", "config", "triggers",
    ];
    let paths: Vec<String> = names.iter().map(|n| format!("./{n}")).collect();
    let ctl = control("s", "1.0", "");
    let mut entries: Vec<Entry> = vec![("./control", T::Regular, ctl.as_bytes(), "")];
    for p in &paths {
        entries.push((p, T::Regular, script.as_bytes(), ""));
    }
    let file = f.dir.join("s.deb");
    fs::write(
        &file,
        ar_of(&[
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar.gz", gz(&tar_of(&entries))),
            (
                "data.tar.xz",
                xz(&tar_of(&[("./etc/s.conf", T::Regular, b"x=1\n", "")])),
            ),
        ]),
    )
    .unwrap();
    let r = graft_deb(&f, &[file], &f.dir.join("out"))
        .arg("--json")
        .ok();
    let p = &r.json()["packages"][0];
    assert_eq!(p["origin"]["scripts"], serde_json::json!(names));
    assert!(r.stderr_str().contains(
        "pkgtool: warning: s: maintainer scripts not run: preinst, postinst, prerm, postrm, config, triggers"
    ), "{}", r.stderr_str());
    assert!(!marker.exists(), "a maintainer script ran");
}

#[test]
fn graft_usage_errors_exit_2() {
    pkgtool(["graft"]).fails(2);
    pkgtool(["graft", "deb", "-o", "x", "--unsigned"]).fails(2);
    pkgtool(["graft", "deb", "a.deb", "-o", "x"])
        .fails(2)
        .stderr_contains("--key");
    pkgtool(["graft", "dir", "d", "--name", "n", "-o", "x", "--unsigned"])
        .fails(2)
        .stderr_contains("--version");
    let r = pkgtool(["graft", "--help"]).ok();
    for sub in ["deb", "tar", "dir"] {
        assert!(r.stdout_str().contains(sub));
    }
}

#[test]
fn dir_hard_links_survive_strip_docs_of_their_first_name() {
    let f = Fixture::new();
    let mut t = TestTree::new(&f.dir.join("src"));
    t.dir("usr/share/doc", 0o755)
        .file("usr/share/doc/notes", b"shared bytes\n", 0o644)
        .dir("zz", 0o755)
        .hardlink("zz/notes", "usr/share/doc/notes")
        .hardlink("zz/again", "usr/share/doc/notes");
    let src = t.finish();
    let out = f.dir.join("d.hpkg");
    pkgtool(["graft", "dir"])
        .arg(&src)
        .args(["--name", "d", "--version", "1.0.0", "--strip-docs", "-o"])
        .arg(&out)
        .arg("--unsigned")
        .ok();
    let r = pkgtool(["cat"]).arg(&out).arg("zz/notes").ok();
    assert_eq!(r.stdout, b"shared bytes\n");
    let list = pkgtool(["list"]).arg(&out).ok();
    assert!(
        !list.stdout_str().contains("usr/share/doc/notes"),
        "{}",
        list.stdout_str()
    );
    let info = pkgtool(["info", "--json"]).arg(&out).ok().json();
    assert_eq!(
        info["hardlinks"], 1,
        "zz/notes and zz/again are one file: {info}"
    );
}

#[test]
fn real_alternatives_and_virtual_packages_map_as_documented() {
    let f = Fixture::new();
    // ucf: Depends: debconf (>= 0.5) | debconf-2.0, sensible-utils; debconf provides
    // the virtual debconf-2.0.
    let debs = debs(&["ucf", "debconf", "sensible-utils"]);
    let r = graft_deb(&f, &debs, &f.dir.join("out")).arg("--json").ok();
    let report = r.json();
    let pkg = |n: &str| {
        report["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()
            .clone()
    };
    let ucf = pkg("ucf");
    assert_eq!(
        ucf["requires"],
        serde_json::json!(["debconf >=0.5.0", "sensible-utils *"])
    );
    let unmapped = ucf["origin"]["unmapped"].to_string();
    assert!(
        unmapped.contains("Depends: debconf (>= 0.5) | debconf-2.0: a requirement cannot name alternatives; requires debconf (>= 0.5)"),
        "{unmapped}"
    );
    assert!(r
        .stderr_str()
        .contains("pkgtool: warning: ucf: Depends: debconf (>= 0.5) | debconf-2.0"));
    let debconf = pkg("debconf");
    assert!(
        debconf["provides"]
            .as_array()
            .unwrap()
            .contains(&"debconf-2.0 0.0.0".into()),
        "{debconf}"
    );
}

/// Watches `dir` as `nobody`; when `pkgtool` first opens one of the decoys (names starting
/// with `a-`), swaps every `zz-*` file for a symlink to `secret` (the file moved aside) and
/// keeps swapping them back and forth until stopped. Returns how many swaps it made.
fn swap_files_when_read(
    dir: PathBuf,
    secret: PathBuf,
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        become_nobody();
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: inotify on a valid path; the fd is closed below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: valid fd and C string.
        assert!(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) } >= 0);
        let targets: Vec<PathBuf> = (0..20).map(|i| dir.join(format!("zz-{i:02}"))).collect();
        let mut buf = vec![0u8; 64 * 1024];
        let mut triggered = false;
        while !triggered && !stop.load(Ordering::Relaxed) {
            // SAFETY: reading into a buffer of the given length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            let mut off = 0usize;
            while off + 16 <= n as usize {
                let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
                let name = &buf[off + 16..off + 16 + len];
                if name.starts_with(b"a-") {
                    triggered = true;
                }
                off += 16 + len;
            }
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(fd) };
        // Swap to the symlink first and hold it a while (the reader is on the decoys),
        // then go back and forth.
        let mut linked = false;
        let started = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            for t in &targets {
                let aside = t.with_extension("aside");
                if linked {
                    let _ = fs::remove_file(t);
                    let _ = fs::rename(&aside, t);
                } else if fs::rename(t, &aside).is_ok() {
                    std::os::unix::fs::symlink(&secret, t).unwrap();
                }
            }
            linked = !linked;
            swaps.fetch_add(1, Ordering::Relaxed);
            if linked && started.elapsed() < Duration::from_millis(200) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    })
}

#[test]
fn graft_dir_never_packages_a_file_swapped_for_a_symlink_to_a_secret() {
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A root-only secret outside the tree, the size of every file of the tree.
    let secret = s.join("secret");
    let marker = b"TOP-SECRET-7d3f9a1c0e5b2846";
    let mut secret_bytes = marker.to_vec();
    secret_bytes.resize(64, b'!');
    fs::write(&secret, &secret_bytes).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();

    let mut swapped = 0;
    for round in 0..4 {
        // The tree belongs to the attacker: decoys read first, targets last.
        let src = s.join(format!("src{round}"));
        fs::create_dir(&src).unwrap();
        for i in 0..1500 {
            let mut b = format!("decoy {i}").into_bytes();
            b.resize(64, b'.');
            fs::write(src.join(format!("a-{i:04}")), b).unwrap();
        }
        for i in 0..20 {
            let mut b = format!("target {i}").into_bytes();
            b.resize(64, b'.');
            fs::write(src.join(format!("zz-{i:02}")), b).unwrap();
        }
        std::os::unix::fs::chown(&src, Some(NOBODY), Some(NOBODY)).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicUsize::new(0));
        let attacker =
            swap_files_when_read(src.clone(), secret.clone(), stop.clone(), swaps.clone());
        let pkg = s.join(format!("round{round}.hpkg"));
        let r = pkgtool(["graft", "dir"])
            .arg(&src)
            .args(["--name", "race", "--version", "1.0.0", "-o"])
            .arg(&pkg)
            .args(["--unsigned", "--quiet", "--compression", "none", "-j", "1"])
            .run();
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        swapped += swaps.load(Ordering::Relaxed);
        if r.code != Some(0) {
            // Refusing is fine: in one line, with nothing written.
            assert_eq!(r.code, Some(1));
            let err = r.stderr_str();
            assert!(
                err.starts_with("pkgtool: ") && err.lines().count() == 1,
                "{err:?}"
            );
            assert!(!pkg.exists());
            continue;
        }
        // The package holds no byte of the secret: not in its raw bytes (stored
        // uncompressed), not in any extracted file.
        let raw = fs::read(&pkg).unwrap();
        assert!(
            !raw.windows(marker.len()).any(|w| w == marker),
            "round {round}: the secret is in the package"
        );
        let out = s.join(format!("out{round}"));
        pkgtool(["extract"]).arg(&pkg).arg(&out).ok();
        for e in walk(&out).into_iter().filter(|e| e.is_file()) {
            let data = fs::read(&e.path).unwrap();
            assert!(
                !data.windows(marker.len()).any(|w| w == marker),
                "round {round}: {} holds the secret",
                e.path.display()
            );
        }
    }
    assert!(swapped > 0, "the attacker never swapped a file");
}

#[test]
fn a_fifo_given_as_the_tarball_or_deb_is_refused_not_waited_on() {
    // Regression: `graft tar` and `graft deb` opened their input with a blocking open,
    // which waits forever for a writer when the input is a FIFO.
    let f = Fixture::new();
    let fifo = f.dir.join("input.tar");
    TestTree::new(&f.dir).fifo("input.tar");
    let out = f.dir.join("out");
    for args in [
        vec!["graft", "tar", "--name", "x", "--version", "1.0.0", "-o"],
        vec!["graft", "deb", "-o"],
    ] {
        let started = Instant::now();
        let r = Command::new("timeout")
            .arg("30")
            .arg(BIN)
            .args(&args)
            .arg(&out)
            .arg("--unsigned")
            .arg(&fifo)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_ne!(r.status.code(), Some(124), "{args:?} waited on the FIFO");
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("pkgtool: ") && err.lines().count() == 1 && err.contains("input.tar"),
            "{args:?}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(!out.exists());
    }
}
