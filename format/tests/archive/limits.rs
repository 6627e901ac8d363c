//! The limits of FORMAT.md §10 and the order of the checks at open: what a file that
//! claims huge sections costs before it is refused. The files are sparse: they claim
//! hundreds of MiB (or GiB) and hold a few KB.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use format::archive::{Archive, BuildOptions};
use format::keys::SecretKey;
use format::Error;

use crate::common::*;

/// A sparse file laid out as FORMAT.md says, claiming a TOC section of `toc_len` bytes
/// (zero but its frame: stored raw) and `chunks` zero chunk index entries, with an empty
/// heap, and a trailer whose id is not the metadata's hash, signed (validly, over that id)
/// by `signer` or unsigned.
fn sparse_archive(path: &Path, toc_len: u64, chunks: u64, signer: Option<&SecretKey>) {
    let manifest = br#"{"name":"giant","version":"1.0.0"}"#;
    let align8 = |x: u64| x.next_multiple_of(8);
    let m_off = 128u64;
    let t_off = align8(m_off + manifest.len() as u64);
    let i_off = align8(t_off + toc_len);
    let h_off = align8(i_off + chunks * 56);
    let end = h_off + 136;
    let mut h = [0u8; 128];
    h[..8].copy_from_slice(b"\x89HPKG\r\n\x1a");
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[12..16].copy_from_slice(&128u32.to_le_bytes());
    h[16..20].copy_from_slice(&(signer.is_some() as u32).to_le_bytes());
    h[20..24].copy_from_slice(&(64u32 * 1024).to_le_bytes());
    let sections = [
        (m_off, manifest.len() as u64),
        (t_off, toc_len),
        (i_off, chunks * 56),
        (h_off, 0),
        (h_off, 136),
    ];
    for (i, (off, len)) in sections.into_iter().enumerate() {
        h[32 + 16 * i..40 + 16 * i].copy_from_slice(&off.to_le_bytes());
        h[40 + 16 * i..48 + 16 * i].copy_from_slice(&len.to_le_bytes());
    }
    h[120..128].copy_from_slice(&end.to_le_bytes());
    let mut frame = [0u8; 16];
    frame[8..16].copy_from_slice(&(toc_len - 16).to_le_bytes());
    let id = [0x5au8; 32];
    let mut tr = [0u8; 136];
    tr[..8].copy_from_slice(b"HPKGSIG1");
    tr[40..72].copy_from_slice(&id);
    if let Some(k) = signer {
        tr[8..40].copy_from_slice(&k.public().to_bytes());
        tr[72..136].copy_from_slice(&k.sign(&id));
    }
    let f = fs::File::create(path).unwrap();
    f.set_len(end).unwrap();
    f.write_all_at(&h, 0).unwrap();
    f.write_all_at(manifest, m_off).unwrap();
    f.write_all_at(&frame, t_off).unwrap();
    f.write_all_at(&tr, h_off).unwrap();
}

fn open_err(path: &Path) -> (Error, Duration) {
    let t = Instant::now();
    let e = Archive::open(path).expect_err("refused");
    (e, t.elapsed())
}

#[test]
fn sections_beyond_the_limits_are_refused_from_the_header_alone() {
    let dir = scratch();
    let p = dir.path().join("giant.hpkg");
    for (toc_len, chunks, expect) in [
        (
            6u64 << 30,
            0u64,
            "toc section of 6442450944 bytes exceeds the limit",
        ),
        ((512 << 20) + 17, 0, "exceeds the limit of 536870928"),
        (
            48,
            (1 << 22) + 1,
            "4194305 chunks exceed the limit of 4194304",
        ),
    ] {
        sparse_archive(&p, toc_len, chunks, Some(&key()));
        let (e, took) = open_err(&p);
        assert!(
            matches!(&e, Error::Corrupt { section, .. } if section == "header")
                && e.to_string().contains(expect),
            "{e}"
        );
        // From the header alone: no hashing of what it claims.
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
}

#[test]
fn a_trusted_open_refuses_the_signer_before_reading_the_metadata() {
    // 400 MiB of claimed metadata, within the limits, whose hash is not the id: a plain
    // open must hash it to find out; a trusted open refuses the signer first.
    let dir = scratch();
    let p = dir.path().join("giant.hpkg");
    let stranger = SecretKey::from_seed(&[9; 32], "stranger");
    sparse_archive(&p, 400 << 20, 0, Some(&stranger));
    let e = Archive::open_trusted(&p, &trusted()).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownKey { key } if *key == stranger.public().id().to_string()),
        "{e}"
    );
    sparse_archive(&p, 400 << 20, 0, None);
    let e = Archive::open_trusted(&p, &trusted()).unwrap_err();
    assert!(matches!(e, Error::Unsigned), "{e}");
    // Signed by the trusted key over an id that is not the metadata's: refused by hash.
    sparse_archive(&p, 400 << 20, 0, Some(&key()));
    let e = Archive::open_trusted(&p, &trusted()).unwrap_err();
    assert!(matches!(e, Error::MetadataHash { .. }), "{e}");
    // A plain open hashes first (in pieces) and refuses by hash too.
    let (e, _) = open_err(&p);
    assert!(matches!(e, Error::MetadataHash { .. }), "{e}");
}

#[test]
fn a_good_archive_opens_trusted() {
    let dir = scratch();
    let p = dir.path().join("good.hpkg");
    write_archive(&fixture_tree(true), &BuildOptions::default(), &p);
    let a = Archive::open_trusted(&p, &trusted()).unwrap();
    read_all(&a).unwrap();
    let other = {
        let mut k = format::keys::TrustedKeys::new();
        k.insert(SecretKey::from_seed(&[9; 32], "other").public(), "other");
        k
    };
    assert!(matches!(
        Archive::open_trusted(&p, &other),
        Err(Error::UnknownKey { .. })
    ));
}
