//! `pkgtool keygen`: mode 0600 secret key, public key, id; never overwrites a key.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::util::*;

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let s = Scratch::new();
    let k = keygen(s.path(), "bob");
    let mode = fs::metadata(&k.secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "bob.key mode {mode:o}");
    let public = fs::read_to_string(&k.public).unwrap();
    let secret = fs::read(&k.secret).unwrap();
    // The secret (field 2 of the .key file) never appears in the .pub file.
    let secret_text = String::from_utf8(secret.clone()).unwrap();
    let seed = secret_text.split_whitespace().nth(1).expect("a key field");
    assert!(seed.len() >= 32 && !public.contains(seed), "{public}");
    assert_eq!(
        fs::metadata(&k.public).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // Again: refused, and both files are unchanged.
    pkgtool(["keygen", "bob", "--dir"])
        .arg(s.path())
        .fails(1)
        .one_line_error()
        .stderr_contains("bob.");
    assert_eq!(fs::read(&k.secret).unwrap(), secret);
    assert_eq!(fs::read_to_string(&k.public).unwrap(), public);
    // Only the public key exists: still refused, and no secret key appears.
    fs::remove_file(&k.secret).unwrap();
    pkgtool(["keygen", "bob", "--dir"])
        .arg(s.path())
        .fails(1)
        .one_line_error();
    assert!(!k.secret.exists());

    // Another key has another id; a package signed with it names that id.
    let other = keygen(s.path(), "carol");
    assert_ne!(other.id, k.id);
    let m = write_manifest(s.path(), "k", "0.1.0");
    let pkg = s.join("k.hpkg");
    pkgtool(["build", "-q", "--key"])
        .arg(&other.secret)
        .arg("--manifest")
        .arg(&m)
        .arg(&odd().src)
        .arg("-o")
        .arg(&pkg)
        .ok();
    let v = pkgtool(["info", "--json"]).arg(&pkg).ok().json();
    assert_eq!(v["signer"], other.id.as_str());
    // Into a directory that does not exist.
    pkgtool(["keygen", "dave", "--dir"])
        .arg(s.join("nowhere"))
        .fails(1)
        .one_line_error();
}

#[test]
fn r14_keygen_takes_a_path_like_ssh_keygen_f() {
    let s = Scratch::new();
    fs::create_dir(s.join("keys")).unwrap();
    let r = pkgtool(["keygen"]).arg(s.join("keys/alice")).ok();
    let secret = s.join("keys/alice.key");
    let public = s.join("keys/alice.pub");
    assert!(
        r.stdout_str()
            .contains(&format!("secret key: {}", secret.display())),
        "{}",
        r.stdout_str()
    );
    assert_eq!(
        fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The key is named after the last component, not the path.
    let text = fs::read_to_string(&public).unwrap();
    assert!(text.trim_end().ends_with(" alice"), "{text}");
    assert!(!text.contains("keys/"), "{text}");
    // Relative to --dir, and the same name cannot be written twice.
    fs::create_dir(s.join("d")).unwrap();
    fs::create_dir(s.join("d/sub")).unwrap();
    pkgtool(["keygen", "sub/bob", "--dir"])
        .arg(s.join("d"))
        .ok();
    assert!(s.join("d/sub/bob.key").is_file() && s.join("d/sub/bob.pub").is_file());
    pkgtool(["keygen"])
        .arg(s.join("keys/alice"))
        .fails(1)
        .one_line_error()
        .stderr_contains("alice.key");
    // A directory that does not exist, and a path without a name.
    pkgtool(["keygen"])
        .arg(s.join("nowhere/carol"))
        .fails(1)
        .one_line_error()
        .stderr_contains("nowhere");
    pkgtool(["keygen"])
        .arg(s.join("keys/.."))
        .fails(1)
        .one_line_error()
        .stderr_contains("not a key name");
}
