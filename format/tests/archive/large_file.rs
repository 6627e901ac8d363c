//! A file over 4 GiB (from a sparse source) exercises 64-bit offsets and chunk dedup.

use std::fs::File;
use std::os::unix::fs::FileExt;

use format::archive::{BuildOptions, Compression};

use crate::common::*;

#[test]
fn file_over_4_gib_from_a_sparse_source_round_trips() {
    const SIZE: u64 = (4 << 30) + 12345;
    // On tmpfs a hole reads as the shared zero page; ext4 would zero-fill 4 GiB of page
    // cache first (about 10 s of kernel memset here).
    let shm = std::path::Path::new("/dev/shm");
    let src = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        scratch()
    };
    let p = src.path().join("big.sparse");
    let f = File::create(&p).unwrap();
    f.set_len(SIZE).unwrap();
    let marks: [(u64, &[u8]); 6] = [
        (0, b"start"),
        (4096, b"page"),
        ((1 << 32) - 1, b"A"),          // the last byte below 2^32
        ((1 << 32) + 7, b"past 2^32"),  // offsets that need 64 bits
        (SIZE - 1000, b"near the end"), // in the last, short chunk
        (SIZE - 1, b"Z"),               // the very last byte
    ];
    for (off, bytes) in marks {
        f.write_all_at(bytes, off).unwrap();
    }
    drop(f);
    std::fs::write(src.path().join("small"), "next to a giant\n").unwrap();

    let dir = scratch();
    let out = dir.path().join("big.hpkg");
    let o = BuildOptions {
        compression: Compression::Zstd(3),
        chunk_size: 1 << 20,
        ..BuildOptions::default()
    };
    let rep = build_dir(src.path(), &o, &out);
    assert_eq!(rep.content_bytes, SIZE + 16);
    assert_eq!(rep.chunks as u64, SIZE.div_ceil(1 << 20) + 1);
    assert!(
        rep.deduplicated_chunks as u64 > rep.chunks as u64 - 10,
        "all-zero chunks are stored once: {rep:?}"
    );
    assert!(
        rep.file_size < 1 << 20,
        "archive is small: {} bytes",
        rep.file_size
    );

    let a = open(&out);
    let e = a.lookup_path(b"big.sparse").unwrap().unwrap();
    assert_eq!(a.attr(e).unwrap().size, SIZE);
    for (off, bytes) in marks {
        let mut buf = vec![0xEEu8; bytes.len()];
        assert_eq!(a.read_at(e, off, &mut buf).unwrap(), bytes.len());
        assert_eq!(buf, bytes, "bytes at {off}");
        // And the zeros around each mark.
        let mut around = vec![0xEEu8; 64];
        let start = off.saturating_sub(32);
        let n = a.read_at(e, start, &mut around).unwrap();
        for (i, &b) in around[..n].iter().enumerate() {
            let pos = start + i as u64;
            let want = if (off..off + bytes.len() as u64).contains(&pos) {
                bytes[(pos - off) as usize]
            } else if marks
                .iter()
                .any(|(o, b)| (*o..*o + b.len() as u64).contains(&pos))
            {
                continue;
            } else {
                0
            };
            assert_eq!(b, want, "byte {pos}");
        }
    }
    // A read across the 2^32 boundary, one that stops at the end, one past the end.
    let mut buf = vec![0u8; 16];
    a.read_at(e, (1 << 32) - 8, &mut buf).unwrap();
    assert_eq!(
        &buf[7..],
        b"A\0\0\0\0\0\0\0p",
        "the 'p' of \"past 2^32\" is last"
    );
    assert_eq!(a.read_at(e, SIZE - 4, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"\0\0\0Z");
    assert_eq!(a.read_at(e, SIZE, &mut buf).unwrap(), 0);
    // The chunks holding the marks verify; so does a zero chunk in the middle.
    for off in [0, (1 << 32) - 1, (1 << 32) + 7, SIZE - 1, 2 << 30] {
        let span = a.file_spans(e, off, 1).unwrap()[0];
        a.verify_chunk(span.chunk).unwrap();
    }
    let s = a.lookup_path(b"small").unwrap().unwrap();
    let mut rng = Rng::new(1);
    assert_contents(&a, s, b"next to a giant\n", 3, &mut rng, "small");
}
