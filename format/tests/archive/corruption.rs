//! Damaged archives: every truncation and every bit flip is an error (never a panic, never
//! wrong bytes), found at open for the metadata and at read for the heap; a damaged chunk
//! fails exactly the files that use it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use format::archive::{Archive, Compression, Kind};
use format::Error;

use crate::common::*;

fn small_archive(dir: &Path) -> PathBuf {
    let out = dir.join("small.hpkg");
    write_archive(
        &fixture_tree(false),
        &opts(Compression::default(), 64 * 1024),
        &out,
    );
    out
}

/// Where each region of an archive lies.
struct Regions {
    metadata: Range<usize>,
    heap: Range<usize>,
    trailer: Range<usize>,
}

fn regions(raw: &RawArchive) -> Regions {
    let (heap_off, heap_len) = raw.section(layout::HEAP);
    let (trailer_off, trailer_len) = raw.section(layout::TRAILER);
    Regions {
        metadata: 0..heap_off,
        heap: heap_off..heap_off + heap_len,
        trailer: trailer_off..trailer_off + trailer_len,
    }
}

/// The message of a caught panic.
fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    let dir = scratch();
    let good = small_archive(dir.path());
    let bytes = fs::read(&good).unwrap();
    assert!(open_and_read_all(&good).is_ok());
    let cut = dir.path().join("cut.hpkg");
    fs::write(&cut, &bytes).unwrap();
    let f = OpenOptions::new().write(true).open(&cut).unwrap();
    let mut problems = Vec::new();
    for len in (0..bytes.len()).rev() {
        f.set_len(len as u64).unwrap();
        match catch_unwind(|| Archive::open(&cut)) {
            Ok(Err(Error::Truncated { .. })) => {}
            Ok(Err(e)) => problems.push(format!("cut at {len}: not `Truncated` but {e}")),
            Ok(Ok(_)) => problems.push(format!("cut at {len}: opened")),
            Err(p) => problems.push(format!("cut at {len}: panic: {}", panic_text(p))),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} truncations:\n{}",
        problems.len(),
        bytes.len(),
        problems.join("\n")
    );
    // The message says what is missing.
    fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    let e = Archive::open(&cut).unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("trailer"), "{e}");
}

#[test]
fn bytes_after_the_trailer_are_an_error() {
    let dir = scratch();
    let good = small_archive(dir.path());
    let mut bytes = fs::read(&good).unwrap();
    bytes.push(0);
    fs::write(&good, &bytes).unwrap();
    let e = Archive::open(&good).unwrap_err().to_string();
    assert!(e.contains("1 unexpected bytes after the trailer"), "{e}");
}

/// Checks one damaged archive; returns a description of what went wrong, if anything.
fn check_flip(path: &Path, pos: usize, r: &Regions, raw: &RawArchive) -> Option<String> {
    let result = catch_unwind(AssertUnwindSafe(|| match Archive::open(path) {
        Err(e) => Err((true, e)),
        Ok(a) => read_all(&a).map_err(|e| (false, e)),
    }));
    let (at_open, e) = match result {
        Err(p) => return Some(format!("panic: {}", panic_text(p))),
        Ok(Ok(())) => return Some("no error at open or read".into()),
        Ok(Err(x)) => x,
    };
    if r.heap.contains(&pos) {
        // Every heap byte belongs to a chunk (the writer leaves no gaps); the chunk holding
        // the flipped byte, or one sharing its stored bytes, must fail its hash.
        let holds = |c: u32| raw.stored(c).contains(&pos);
        match e {
            Error::ChunkHash { chunk } if !at_open && holds(chunk) => None,
            e => Some(format!(
                "heap flip: expected ChunkHash at read, got {e} (at open: {at_open})"
            )),
        }
    } else if !at_open {
        Some(format!("flip outside the heap found only at read: {e}"))
    } else if r.metadata.contains(&pos) {
        match e {
            Error::MetadataHash { .. }
            | Error::UnsupportedVersion { .. }
            | Error::UnknownMethod { .. } => None,
            e if e.is_corruption() => None,
            e => Some(format!("metadata flip: unexpected error {e}")),
        }
    } else {
        assert!(r.trailer.contains(&pos));
        match e {
            Error::MetadataHash { .. } | Error::BadSignature { .. } | Error::Corrupt { .. } => None,
            e => Some(format!("trailer flip: unexpected error {e}")),
        }
    }
}

#[test]
fn bit_flip_anywhere_is_an_error_at_open_or_read() {
    let dir = scratch();
    let good = small_archive(dir.path());
    let raw = RawArchive::read(&good);
    let r = regions(&raw);
    assert_eq!(r.trailer.end, raw.bytes.len());
    assert!(r.heap.len() > 500, "heap of {} bytes", r.heap.len());
    let path = dir.path().join("flip.hpkg");
    raw.write(&path);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let mut problems = Vec::new();
    let mut flips = 0;
    for pos in 0..raw.bytes.len() {
        for bit in 0..8 {
            f.write_all_at(&[raw.bytes[pos] ^ (1 << bit)], pos as u64)
                .unwrap();
            flips += 1;
            if let Some(p) = check_flip(&path, pos, &r, &raw) {
                problems.push(format!("byte {pos} bit {bit}: {p}"));
            }
        }
        f.write_all_at(&raw.bytes[pos..pos + 1], pos as u64)
            .unwrap();
    }
    assert!(
        problems.is_empty(),
        "{} of {flips} bit flips:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // And the restored file is good again.
    assert!(open_and_read_all(&path).is_ok());
}

#[test]
fn metadata_flip_is_reported_as_a_hash_mismatch_naming_both_ids() {
    let dir = scratch();
    let good = small_archive(dir.path());
    let mut raw = RawArchive::read(&good);
    let (toc, len) = raw.section(layout::TOC);
    raw.bytes[toc + len / 2] ^= 0x10; // the hash is checked before the TOC is even unpacked
    raw.write(&good);
    match Archive::open(&good) {
        Err(Error::MetadataHash { expected, actual }) => {
            assert_ne!(expected, actual);
            assert_eq!(expected.len(), 64);
        }
        other => panic!("expected MetadataHash, got {other:?}"),
    }
}

/// Flips one byte in the stored bytes of chunk `c` of a copy of the archive at `good` and
/// checks that exactly the files using a chunk with those stored bytes fail, with
/// `ChunkHash`, while every other file still reads exactly its source bytes.
fn flip_chunk_and_check(good: &Path, src: &Path, c: u32, copy: &Path) -> usize {
    let mut raw = RawArchive::read(good);
    let stored = raw.stored(c);
    let pos = stored.start + stored.len() / 2;
    raw.bytes[pos] ^= 0x40;
    raw.write(copy);
    let a = Archive::open(copy).expect("metadata is intact");
    let bad: BTreeSet<u32> = (0..a.chunk_count())
        .filter(|&k| raw.stored(k).contains(&pos))
        .collect();
    assert!(bad.contains(&c));
    let mut failed = 0;
    let mut seen = BTreeSet::new();
    for w in a.walk() {
        if w.attr.kind != Kind::File || !seen.insert(w.entry) {
            continue;
        }
        let uses_bad = a.file_chunks(w.entry).unwrap().any(|k| bad.contains(&k));
        let mut buf = vec![0u8; w.attr.size as usize];
        let what = String::from_utf8_lossy(&w.path).into_owned();
        match a.read_at(w.entry, 0, &mut buf) {
            Err(Error::ChunkHash { chunk }) => {
                assert!(uses_bad, "{what}: failed but uses none of {bad:?}");
                assert!(bad.contains(&chunk), "{what}: blamed chunk {chunk}");
                assert!(read_stream_err(&a, w.entry), "{what}: io::Read also fails");
                failed += 1;
                // The parts of the file in other chunks still read.
                for span in a.file_spans(w.entry, 0, u64::MAX).unwrap() {
                    if !bad.contains(&span.chunk) {
                        a.verify_chunk(span.chunk).unwrap();
                    }
                }
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
            Ok(n) => {
                assert!(!uses_bad, "{what}: read although it uses {bad:?}");
                assert_eq!(n, buf.len());
                let want = fs::read(join(src, &w.path)).unwrap();
                assert!(buf == want, "{what}: contents differ");
            }
        }
    }
    for k in 0..a.chunk_count() {
        match a.verify_chunk(k) {
            Ok(()) => assert!(!bad.contains(&k)),
            Err(Error::ChunkHash { chunk }) => assert!(chunk == k && bad.contains(&k)),
            Err(e) => panic!("chunk {k}: {e}"),
        }
    }
    failed
}

fn read_stream_err(a: &Archive, e: u32) -> bool {
    use std::io::Read;
    let mut out = Vec::new();
    a.open_file(e).unwrap().read_to_end(&mut out).is_err()
}

#[test]
fn flipped_byte_in_one_chunk_fails_exactly_the_files_using_it() {
    let Some(src) = real_tree("/usr/share/doc") else {
        return;
    };
    let dir = scratch();
    let good = dir.path().join("doc.hpkg");
    build_dir(src, &opts(Compression::Zstd(3), 64 * 1024), &good);
    let a = open(&good);
    // Files per chunk: pick the chunk shared by the most files, and a chunk in the middle
    // of the largest multi-chunk file.
    let mut users = vec![0u32; a.chunk_count() as usize];
    let mut largest = (0u64, 0u32);
    let mut seen = BTreeSet::new();
    for w in a.walk() {
        if w.attr.kind == Kind::File && seen.insert(w.entry) {
            for c in a.file_chunks(w.entry).unwrap() {
                users[c as usize] += 1;
            }
            largest = largest.max((w.attr.size, w.entry));
        }
    }
    let shared = (0..a.chunk_count())
        .max_by_key(|&c| users[c as usize])
        .unwrap();
    assert!(
        users[shared as usize] > 10,
        "a chunk shared by many small files"
    );
    let range = a.file_chunks(largest.1).unwrap();
    assert!(range.len() >= 3, "largest file spans several chunks");
    let middle = range.start + range.len() as u32 / 2;
    drop(a);
    let copy = dir.path().join("damaged.hpkg");
    let n = flip_chunk_and_check(&good, src, shared, &copy);
    assert!(n >= users[shared as usize] as usize, "{n} files failed");
    let n = flip_chunk_and_check(&good, src, middle, &copy);
    assert!(n >= 1);
}
