//! `pkgtool delta` and `pkgtool apply-delta`: byte-identical packages from deltas, on
//! built trees and on two versions of a real Debian package; wrong and damaged deltas
//! refused with one line, nothing written.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::*;

/// A tree of a "program", a "library", docs; `v` changes a few bytes of each binary.
fn tree(root: &Path, v: u8) {
    let mut x = 0x9e37_79b9u32;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 4 == 0 {
                    b'a' + (x % 26) as u8
                } else {
                    (x >> 9) as u8 & 0x7f
                }
            })
            .collect()
    };
    let mut prog = bytes(700_000);
    let mut lib = bytes(300_000);
    let (pl, ll) = (prog.len(), lib.len());
    for k in 0..v as usize * 7 {
        prog[(k * 7919) % pl] ^= 0x55;
        lib[(k * 104_729) % ll] ^= 0x33;
    }
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("lib")).unwrap();
    fs::create_dir_all(root.join("share/doc")).unwrap();
    fs::write(root.join("bin/prog"), prog).unwrap();
    fs::write(root.join("lib/libx.so.1"), lib).unwrap();
    fs::write(
        root.join("share/doc/README"),
        "same in every version\n".repeat(50),
    )
    .unwrap();
    fs::write(root.join("share/doc/VERSION"), format!("{v}\n")).unwrap();
}

struct Two {
    s: Scratch,
    f: Fixture,
    old: PathBuf,
    new: PathBuf,
}

fn two_versions() -> Two {
    let s = Scratch::new();
    let f = Fixture::new();
    let (t1, t2) = (s.join("t1"), s.join("t2"));
    tree(&t1, 1);
    tree(&t2, 2);
    let (old, new) = (s.join("x-1.hpkg"), s.join("x-2.hpkg"));
    f.build(&t1, &old).ok();
    let m2 = write_manifest(s.path(), "testpkg", "1.2.4");
    pkgtool(["build", "--quiet", "--key"])
        .arg(&f.key.secret)
        .arg("--manifest")
        .arg(&m2)
        .arg(&t2)
        .arg("-o")
        .arg(&new)
        .ok();
    Two { s, f, old, new }
}

fn delta(old: &Path, new: &Path, out: &Path) -> Run {
    pkgtool(["delta"]).arg(old).arg(new).arg("-o").arg(out).ok()
}

fn apply(old: &Path, d: &Path, out: &Path) -> TestCommand {
    let mut c = pkgtool(["apply-delta"]);
    c.arg(old).arg(d).arg("-o").arg(out);
    c
}

fn id_of(pkg: &Path) -> String {
    pkgtool(["info", "--json"]).arg(pkg).ok().json()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn delta_then_apply_gives_the_new_package_byte_for_byte() {
    let t = two_versions();
    let d = t.s.join("x.delta");
    let r = delta(&t.old, &t.new, &d);
    r.stdout_contains("x.delta: ")
        .stdout_contains("copied from the old package");
    let out = t.s.join("made.hpkg");
    let r = apply(&t.old, &d, &out)
        .arg("--key")
        .arg(&t.f.key.public)
        .ok();
    r.stdout_contains(&id_of(&t.new))
        .stdout_contains("signed by trusted key");
    assert_eq!(fs::read(&out).unwrap(), fs::read(&t.new).unwrap());
    pkgtool(["verify", "--key"])
        .arg(&t.f.key.public)
        .arg(&out)
        .ok();
    // Much smaller than the package: two binaries with a few bytes changed.
    let (dl, nl) = (
        fs::metadata(&d).unwrap().len(),
        fs::metadata(&t.new).unwrap().len(),
    );
    assert!(dl * 10 < nl, "delta {dl} bytes, package {nl}");
    assert_no_temp_left(t.s.path());
}

#[test]
fn json_reports_what_moves() {
    let t = two_versions();
    let d = t.s.join("x.delta");
    let r = pkgtool(["delta", "--json"])
        .arg(&t.old)
        .arg(&t.new)
        .arg("-o")
        .arg(&d)
        .ok();
    let j = r.json();
    assert_eq!(j["new_id"].as_str().unwrap(), id_of(&t.new));
    assert_eq!(j["old_id"].as_str().unwrap(), id_of(&t.old));
    assert_eq!(
        j["delta_size"].as_u64().unwrap(),
        fs::metadata(&d).unwrap().len()
    );
    assert!(j["patched"].as_u64().unwrap() > 0, "{j}");
    assert!(j["copied"].as_u64().unwrap() > 0, "{j}");
    assert!(j["delta_size"].as_u64() < j["dedup_bytes"].as_u64(), "{j}");
    let out = t.s.join("made.hpkg");
    let j = apply(&t.old, &d, &out)
        .arg("--json")
        .arg("--key")
        .arg(&t.f.key.public)
        .ok()
        .json();
    assert_eq!(j["trusted"], true);
    assert_eq!(j["id"].as_str().unwrap(), id_of(&t.new));
    assert_eq!(j["version"].as_str().unwrap(), "1.2.4");
}

#[test]
fn a_delta_applied_to_another_package_is_refused_naming_both_ids() {
    let t = two_versions();
    let d = t.s.join("x.delta");
    delta(&t.old, &t.new, &d);
    let out = t.s.join("made.hpkg");
    let r = apply(&t.new, &d, &out).run().fails(1).one_line_error();
    r.stderr_contains(&id_of(&t.old))
        .stderr_contains(&id_of(&t.new))
        .stderr_contains("the delta applies to package");
    assert!(!out.exists());
    assert_no_temp_left(t.s.path());
}

#[test]
fn damaged_or_foreign_deltas_are_refused_with_one_line() {
    let t = two_versions();
    let d = t.s.join("x.delta");
    delta(&t.old, &t.new, &d);
    let good = fs::read(&d).unwrap();
    let bad = t.s.join("bad.delta");
    let out = t.s.join("made.hpkg");
    for at in [200, good.len() / 2, good.len() - 40] {
        let mut v = good.clone();
        v[at] ^= 0x04;
        fs::write(&bad, v).unwrap();
        apply(&t.old, &bad, &out)
            .run()
            .fails(1)
            .one_line_error()
            .stderr_contains("corrupt delta");
    }
    fs::write(&bad, &good[..good.len() - 1]).unwrap();
    apply(&t.old, &bad, &out)
        .run()
        .fails(1)
        .one_line_error()
        .stderr_contains("corrupt delta");
    // A package is not a delta.
    apply(&t.old, &t.new, &out)
        .run()
        .fails(1)
        .one_line_error()
        .stderr_contains("not a package delta");
    // Signed by a key that is not trusted.
    let other = keygen(t.s.path(), "mallory");
    apply(&t.old, &d, &out)
        .arg("--key")
        .arg(&other.public)
        .run()
        .fails(1)
        .one_line_error()
        .stderr_contains("not a trusted key");
    assert!(!out.exists());
    assert_no_temp_left(t.s.path());
}

#[test]
fn identical_packages_give_a_delta_of_a_few_hundred_bytes() {
    let t = two_versions();
    let d = t.s.join("same.delta");
    delta(&t.old, &t.old, &d);
    let n = fs::metadata(&d).unwrap().len();
    assert!(n < 1024, "{n} bytes");
    let out = t.s.join("same.hpkg");
    apply(&t.old, &d, &out)
        .arg("--key")
        .arg(&t.f.key.public)
        .ok();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&t.old).unwrap());
}

/// The two newest versions apt offers of `name`, each grafted into a package.
fn grafted_versions(s: &Scratch, f: &Fixture, name: &str) -> Option<[(String, PathBuf); 2]> {
    let v = e2e::debian::versions(name);
    if v.len() < 2 {
        eprintln!("only {} version(s) of {name} here: {v:?}", v.len());
        return None;
    }
    let mut out = Vec::new();
    for ver in &v[..2] {
        let deb = e2e::debian::deb_version(name, ver);
        let dir = s.join(format!("g-{}", out.len()));
        fs::create_dir(&dir).unwrap();
        pkgtool(["graft", "deb"])
            .arg(&deb)
            .arg("-o")
            .arg(&dir)
            .arg("--key")
            .arg(&f.key.secret)
            .arg("--quiet")
            .ok();
        let pkg = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
        out.push((ver.clone(), pkg));
    }
    let new = out.remove(0);
    Some([out.remove(0), new])
}

#[test]
fn r16_real_debian_update_moves_as_a_small_delta() {
    let s = Scratch::new();
    let f = Fixture::new();
    // libssl3: bookworm, bookworm-updates and bookworm-security carry different versions.
    let Some([(ov, old), (nv, new)]) = grafted_versions(&s, &f, "libssl3") else {
        panic!("apt offers fewer than two versions of libssl3: the delta test needs them");
    };
    let d = s.join("libssl3.delta");
    let j = pkgtool(["delta", "--json"])
        .arg(&old)
        .arg(&new)
        .arg("-o")
        .arg(&d)
        .ok()
        .json();
    let out = s.join("made.hpkg");
    apply(&old, &d, &out).arg("--key").arg(&f.key.public).ok();
    assert_eq!(fs::read(&out).unwrap(), fs::read(&new).unwrap());
    pkgtool(["verify", "--key"])
        .arg(&f.key.public)
        .arg(&out)
        .ok();
    let size = |k: &str| j[k].as_u64().unwrap();
    eprintln!(
        "libssl3 {ov} -> {nv}: package {} B, chunk dedup alone {} B, delta {} B",
        size("new_size"),
        size("dedup_bytes"),
        size("delta_size")
    );
    assert_eq!(size("delta_size"), fs::metadata(&d).unwrap().len());
    assert!(size("delta_size") * 3 < size("new_size"), "{j}");
    assert!(size("delta_size") * 3 < size("dedup_bytes"), "{j}");
    // The new package's changed binaries moved as patches, not whole.
    assert!(
        size("patched") > 0 && size("patch_bytes") < size("patched_bytes") / 2,
        "{j}"
    );
    assert_no_temp_left(s.path());
}
