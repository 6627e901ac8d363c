//! `pkgtool verify`: trust (right key, other key, key directories, unsigned packages).

use std::fs;

use crate::util::*;

#[test]
fn verify_accepts_the_signing_key_and_refuses_another() {
    let b = odd();
    let shared = &Fixture::shared().key;
    let s = Scratch::new();
    let other = keygen(s.path(), "other");
    assert_ne!(other.id, shared.id);

    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--key")
        .arg(&shared.public)
        .ok();
    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--key")
        .arg(&other.public)
        .fails(1)
        .one_line_error()
        .stderr_contains(&shared.id)
        .stderr_contains("not a trusted key");
    // A secret key is not a trust anchor.
    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--key")
        .arg(&shared.secret)
        .fails(1)
        .one_line_error();
    // Integrity alone does not need a key.
    pkgtool(["verify", "--integrity-only"]).arg(&b.pkg).ok();
}

#[test]
fn verify_with_trusted_keys_dir() {
    let b = odd();
    let shared = &Fixture::shared().key;
    let s = Scratch::new();
    let with = s.join("with");
    let without = s.join("without");
    let empty = s.join("empty");
    for d in [&with, &without, &empty] {
        fs::create_dir(d).unwrap();
    }
    let other = keygen(&without, "other");
    fs::copy(&other.public, with.join("other.pub")).unwrap();
    fs::copy(&shared.public, with.join("shared.pub")).unwrap();
    fs::write(with.join("README"), "not a key, ignored\n").unwrap();

    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--trusted-keys")
        .arg(&with)
        .ok()
        .stdout_contains(&shared.id);
    for dir in [&without, &empty] {
        pkgtool(["verify"])
            .arg(&b.pkg)
            .arg("--trusted-keys")
            .arg(dir)
            .fails(1)
            .one_line_error()
            .stderr_contains(&shared.id);
    }
    // A broken .pub file is an error, never silently skipped.
    fs::write(
        with.join("broken.pub"),
        "packagefs-public-key-v1 zz broken\n",
    )
    .unwrap();
    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--trusted-keys")
        .arg(&with)
        .fails(1)
        .one_line_error()
        .stderr_contains("broken.pub");
    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--trusted-keys")
        .arg(s.join("no-such-dir"))
        .fails(1)
        .one_line_error()
        .stderr_contains("no-such-dir");
}

#[test]
fn verify_refuses_an_unsigned_package() {
    let f = Fixture::new();
    let pkg = f.dir.join("unsigned.hpkg");
    pkgtool(["build", "--unsigned", "-q", "--manifest"])
        .arg(&f.manifest)
        .arg(&odd().src)
        .arg("-o")
        .arg(&pkg)
        .ok();
    pkgtool(["verify"])
        .arg(&pkg)
        .arg("--key")
        .arg(&f.key.public)
        .fails(1)
        .one_line_error()
        .stderr_contains("not signed");
    pkgtool(["verify"])
        .arg(&pkg)
        .arg("--trusted-keys")
        .arg(&f.dir)
        .fails(1)
        .one_line_error()
        .stderr_contains("not signed");
    let v = pkgtool(["verify", "--json", "--key"])
        .arg(&f.key.public)
        .arg(&pkg)
        .fails(1)
        .json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["trusted"], false);
}

#[test]
fn verify_without_keys_says_how_to_pass_them() {
    // The default trust source, /etc/packagefs/keys, is hidden (an empty tmpfs over
    // /etc/packagefs in a private mount namespace) where the machine has one, so the test
    // runs on every machine and leaves the host's keys alone.
    let script = r#"
        [ -d /etc/packagefs ] && { mount -t tmpfs tmpfs /etc/packagefs || exit 90; }
        exec "$1" verify "$2"
    "#;
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_pkgtool"))
        .arg(&odd().pkg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains("--key"), "{err}");
}
