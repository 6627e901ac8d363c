//! Fuzzes the archive reader: `Archive::open`, then everything a reader does with an open
//! archive (walk, lookup, read_dir, attr, read_at, open_file, read_link, xattrs, chunks).
//!
//! Two input modes. An input that starts with `F` is a list of field patches (see
//! `format_fuzz::apply_patches`) applied to one of the good seed archives: mutations then
//! land on fields, with any value, which byte-level mutation of a whole archive rarely
//! does. Any other input is an archive, tried as given (the header checks and the metadata
//! hash) and then *re-sealed* (chunk hashes, package id and signature recomputed, the
//! signature with a fixed key). Patched archives are re-sealed too, so mutations get past
//! the hashes to the structural validation, the decompressors and the read paths.
//!
//! Besides "no panic", it checks invariants: every walked path looks up to its entry,
//! every name of a directory is found by `lookup`, and `read_at` and `open_file` agree.

#![no_main]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use format::archive::{Archive, Kind};
use format::keys::TrustedKeys;
use format_fuzz::{apply_patches, key, reseal, PATCH_MODE};
use libfuzzer_sys::fuzz_target;

/// Files read per input, bytes read per file, chunks verified per input, entries walked.
const MAX_FILES: usize = 64;
const MAX_FILE_BYTES: u64 = 256 * 1024;
const MAX_CHUNKS: u32 = 64;
const MAX_ENTRIES: usize = 4096;

fn scratch_dir() -> std::path::PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// One scratch file per process: unnamed (O_TMPFILE), in /dev/shm when there is one, so
/// nothing is left behind and the input never touches a disk.
fn scratch() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| tempfile::tempfile_in(scratch_dir()).expect("scratch file"))
}

/// The seed archives' bytes, built once per process.
fn bases() -> &'static [Vec<u8>] {
    static BASES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BASES.get_or_init(|| {
        let dir = tempfile::tempdir_in(scratch_dir()).expect("temp dir");
        format_fuzz::seeds()
            .iter()
            .map(|s| {
                let p = dir.path().join(s.name);
                format_fuzz::build(s, &p);
                format_fuzz::with_raw_toc(&std::fs::read(&p).expect("read seed"))
            })
            .collect()
    })
}

fn open(data: &[u8]) -> Option<Archive> {
    let f = scratch();
    f.set_len(0).expect("truncate scratch");
    f.write_all_at(data, 0).expect("write scratch");
    let file = f.try_clone().expect("dup scratch");
    Archive::from_file(file, Path::new("fuzz-input")).ok()
}

fn exercise(a: &Archive) {
    let _ = (
        a.id(),
        a.header(),
        a.manifest(),
        a.manifest_bytes(),
        a.signer(),
    );
    let mut keys = TrustedKeys::new();
    let _ = a.check_trust(&keys);
    keys.insert(key().public(), "fuzz");
    let _ = a.check_trust(&keys);
    let _ = (a.entry_count(), a.name_count(), a.chunk_count());
    // Out-of-range entries are errors, not panics.
    for e in [a.entry_count(), u32::MAX] {
        assert!(a.attr(e).is_err());
        assert!(a.read_dir(e).is_err());
        assert!(a.read_at(e, 0, &mut [0; 4]).is_err());
    }
    let mut files = 0;
    for w in a.walk().take(MAX_ENTRIES) {
        let e = w.entry;
        assert_eq!(
            a.lookup_path(&w.path)
                .expect("lookup_path on a walked path"),
            Some(e),
            "walked path does not look up to its entry"
        );
        let _ = a.xattrs(e).map(|x| x.count());
        let _ = a.xattr(e, b"user.fuzz");
        match w.attr.kind {
            Kind::Dir => {
                let _ = a.parent(e);
                if let Ok(it) = a.read_dir(e) {
                    for d in it.take(256) {
                        assert_eq!(a.lookup(e, d.name).ok().flatten(), Some(d.entry));
                    }
                }
                let _ = a.read_dir(e).map(|mut it| it.nth(3));
                let _ = a.lookup(e, b"\xffno such name");
            }
            Kind::Symlink => {
                let _ = a.read_link(e);
            }
            Kind::File if files < MAX_FILES => {
                files += 1;
                read_file(a, e, w.attr.size);
            }
            Kind::File => {}
        }
    }
    for c in 0..a.chunk_count().min(MAX_CHUNKS) {
        let _ = a.chunk_info(c);
        let _ = a.verify_chunk(c);
    }
}

fn read_file(a: &Archive, e: u32, size: u64) {
    let _ = a.file_chunks(e);
    let _ = a.file_spans(e, 0, u64::MAX).map(|s| s.len());
    let n = size.min(MAX_FILE_BYTES) as usize;
    let mut whole = vec![0u8; n];
    let direct = a.read_at(e, 0, &mut whole);
    // The same bytes through the sequential reader.
    if let Ok(mut r) = a.open_file(e) {
        let mut streamed = Vec::with_capacity(n);
        let mut buf = [0u8; 7000];
        while streamed.len() < n {
            match r.read_next(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => streamed.extend_from_slice(&buf[..k]),
            }
        }
        if let Ok(k) = direct {
            if streamed.len() >= k {
                assert!(
                    streamed[..k] == whole[..k],
                    "read_at and open_file disagree"
                );
            }
        }
    }
    // Reads at awkward offsets.
    let mut small = [0u8; 17];
    for off in [size.saturating_sub(1), size / 2, size, u64::MAX - 3] {
        let _ = a.read_at(e, off, &mut small);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&PATCH_MODE) {
        let Some(&which) = data.get(1) else { return };
        let bases = bases();
        let patched = apply_patches(&bases[which as usize % bases.len()], &data[2..]);
        if let Some(a) = reseal(&patched).as_deref().and_then(open) {
            exercise(&a);
        }
        return;
    }
    if let Some(a) = open(data) {
        exercise(&a);
    }
    if let Some(a) = reseal(data).as_deref().and_then(open) {
        exercise(&a);
    }
});
