//! Signatures and trust: who signed a package, and whether that key is trusted.

use format::archive::{Archive, BuildOptions};
use format::keys::{SecretKey, TrustedKeys};
use format::Error;

use crate::common::layout::*;
use crate::common::*;

#[test]
fn archive_signed_by_the_trusted_key_is_trusted() {
    let dir = scratch();
    let out = dir.path().join("ok.hpkg");
    let rep = write_archive(&fixture_tree(false), &BuildOptions::default(), &out);
    let a = Archive::open(&out).unwrap();
    assert_eq!(rep.signer, Some(key().public().id()));
    assert_eq!(a.signer(), Some(&key().public()));
    assert_eq!(a.check_trust(&trusted()).unwrap(), key().public().id());
}

#[test]
fn archive_signed_by_an_untrusted_key_is_unknown_key() {
    let dir = scratch();
    let out = dir.path().join("other.hpkg");
    let other = SecretKey::from_seed(&[8; 32], "other");
    format::archive::writer::write_archive(
        &fixture_tree(false),
        &manifest(),
        Some(&other),
        &BuildOptions::default(),
        &out,
        &|_, _| {},
    )
    .unwrap();
    let a = Archive::open(&out).expect("a valid signature by any key opens");
    for keys in [trusted(), TrustedKeys::new()] {
        match a.check_trust(&keys) {
            Err(Error::UnknownKey { key }) => assert_eq!(key, other.public().id().to_string()),
            r => panic!("expected UnknownKey, got {r:?}"),
        }
    }
    let e = a.check_trust(&trusted()).unwrap_err().to_string();
    assert!(e.contains("not a trusted key"), "{e}");
    let mut both = trusted();
    both.insert(other.public(), "other");
    assert_eq!(a.check_trust(&both).unwrap(), other.public().id());
}

#[test]
fn unsigned_archive_opens_but_is_not_trusted() {
    let dir = scratch();
    let out = dir.path().join("unsigned.hpkg");
    let rep = write_unsigned(&fixture_tree(false), &BuildOptions::default(), &out);
    assert_eq!(rep.signer, None);
    let a = Archive::open(&out).unwrap();
    assert!(!a.header().is_signed());
    assert!(a.signer().is_none());
    assert!(matches!(a.check_trust(&trusted()), Err(Error::Unsigned)));
    // Unsigned archives are otherwise whole: everything reads.
    for c in 0..a.chunk_count() {
        a.verify_chunk(c).unwrap();
    }
}

#[test]
fn unsigned_archive_with_key_bytes_in_its_trailer_is_corrupt() {
    let dir = scratch();
    let out = dir.path().join("unsigned.hpkg");
    write_unsigned(&fixture_tree(false), &BuildOptions::default(), &out);
    let mut raw = RawArchive::read(&out);
    let t = raw.bytes.len() - TRAILER_LEN;
    raw.bytes[t + 8..t + 40].copy_from_slice(&key().public().to_bytes());
    raw.write(&out);
    let e = Archive::open(&out).unwrap_err().to_string();
    assert!(e.contains("non-zero key or signature"), "{e}");
}

#[test]
fn replacing_the_signer_key_is_a_bad_signature() {
    let dir = scratch();
    let out = dir.path().join("swapped.hpkg");
    write_archive(&fixture_tree(false), &BuildOptions::default(), &out);
    let mut raw = RawArchive::read(&out);
    let t = raw.bytes.len() - TRAILER_LEN;
    let other = SecretKey::from_seed(&[8; 32], "other").public();
    raw.bytes[t + 8..t + 40].copy_from_slice(&other.to_bytes());
    raw.write(&out);
    match Archive::open(&out) {
        Err(Error::BadSignature { key }) => assert_eq!(key, other.id().to_string()),
        r => panic!("expected BadSignature, got {r:?}"),
    }
}

#[test]
fn signature_from_another_package_is_a_bad_signature() {
    let dir = scratch();
    let (a, b) = (dir.path().join("a.hpkg"), dir.path().join("b.hpkg"));
    write_archive(&fixture_tree(false), &BuildOptions::default(), &a);
    write_archive(&fixture_tree(true), &BuildOptions::default(), &b);
    let ra = RawArchive::read(&a);
    let mut rb = RawArchive::read(&b);
    let (ta, tb) = (ra.bytes.len() - TRAILER_LEN, rb.bytes.len() - TRAILER_LEN);
    rb.bytes[tb + 72..tb + 136].copy_from_slice(&ra.bytes[ta + 72..ta + 136]);
    rb.write(&b);
    assert!(matches!(Archive::open(&b), Err(Error::BadSignature { .. })));
}

#[test]
fn signed_flag_cleared_with_signature_left_in_place_is_refused() {
    // Stripping the signature cannot be done by clearing the flag: the stale key bytes
    // are refused, and the flag is in the hashed header, so re-hashing is needed too.
    let dir = scratch();
    let out = dir.path().join("stripped.hpkg");
    write_archive(&fixture_tree(false), &BuildOptions::default(), &out);
    let mut raw = RawArchive::read(&out);
    let flags = raw.u32(H_FLAGS);
    raw.set_u32(H_FLAGS, flags & !1);
    raw.write(&out);
    // The stale key and signature bytes are refused (the trailer is checked first)...
    assert!(matches!(
        Archive::open(&out),
        Err(Error::Corrupt { section, .. }) if section == "trailer"
    ));
    // ...and with them zeroed, the changed header no longer matches the id.
    let t = raw.bytes.len() - TRAILER_LEN;
    raw.bytes[t + 8..t + 40].fill(0);
    raw.bytes[t + 72..t + 136].fill(0);
    raw.write(&out);
    assert!(matches!(
        Archive::open(&out),
        Err(Error::MetadataHash { .. })
    ));
    // Re-sealed properly as unsigned, it opens, and is then merely untrusted.
    raw.reseal();
    raw.write(&out);
    let a = Archive::open(&out).unwrap();
    assert!(matches!(a.check_trust(&trusted()), Err(Error::Unsigned)));
}
