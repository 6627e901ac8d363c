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
