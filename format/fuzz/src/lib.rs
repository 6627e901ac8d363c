//! Shared by the `open_read` fuzz target and the `make_corpus` example: the seed archives,
//! re-sealing (recomputing what the hashes and the signature protect), and field patching
//! (the structure-aware input mode of `open_read`).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use format::archive::tree::Meta;
use format::archive::writer::write_archive;
use format::archive::{BuildOptions, Compression, Content, Tree};
use format::keys::SecretKey;
use format::manifest::Manifest;

/// First byte of an input in field-patch mode (archives start with 0x89).
pub const PATCH_MODE: u8 = b'F';
/// Length of one field-patch record: kind u8, field u8, index u16, value u64 (LE).
pub const RECORD_LEN: usize = 12;

const HEADER_LEN: usize = 128;
const TRAILER_LEN: usize = 136;
const INDEX_ENTRY_LEN: usize = 56;
/// The TOC section starts with a frame: method u8, 7 zero bytes, raw length u64.
const TOC_FRAME_LEN: usize = 16;

/// The fixed signing key of fuzz inputs.
pub fn key() -> &'static SecretKey {
    static KEY: OnceLock<SecretKey> = OnceLock::new();
    KEY.get_or_init(|| SecretKey::from_seed(&[7; 32], "fuzz"))
}

fn text(n: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0;
    while v.len() < n {
        v.extend_from_slice(format!("line {i} of a compressible file\n").as_bytes());
        i += 1;
    }
    v.truncate(n);
    v
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn file(t: &mut Tree, dir: u32, name: &str, body: Vec<u8>) -> u32 {
    let b: Arc<[u8]> = body.into();
    let len = b.len() as u64;
    let meta = Meta::new(0o644, 1_700_000_000);
    t.add_file(dir, name.as_bytes(), Content::Bytes(b), len, meta)
        .expect("add file")
}

/// A small tree with one of everything; `big` adds a file spanning two chunks.
fn everything(big: bool) -> Tree {
    let mut t = Tree::new();
    let root = t.root();
    t.set_xattr(root, b"user.root", b"r").unwrap();
    let bin = t.add_dir(root, b"bin", Meta::new(0o755, 1)).unwrap();
    let tool = file(&mut t, bin, "tool", b"#!/bin/sh\necho hi\n".to_vec());
    t.set_meta(tool, Meta::new(0o4755, 2));
    t.add_hardlink(bin, b"tool-alias", tool).unwrap();
    file(&mut t, bin, "empty", Vec::new());
    let share = t.add_dir(root, b"share", Meta::new(0o755, 3)).unwrap();
    let doc = t.add_dir(share, b"doc", Meta::new(0o755, 4)).unwrap();
    let readme = file(&mut t, doc, "README", text(300));
    t.set_xattr(readme, b"user.comment", b"hello").unwrap();
    t.set_xattr(readme, b"user.mime", b"text/plain").unwrap();
    file(&mut t, doc, "copy-of-README", text(300));
    file(&mut t, doc, "noise.bin", noise(200));
    t.add_symlink(root, b"readme", b"share/doc/README", Meta::new(0o777, 5))
        .unwrap();
    t.add_dir(root, b"empty-dir", Meta::new(0o700, 6)).unwrap();
    if big {
        file(&mut t, share, "big.txt", text(70_000));
    }
    t
}

/// One seed archive.
pub struct Seed {
    /// File name stem in the corpus.
    pub name: &'static str,
    /// The tree.
    pub tree: Tree,
    /// How to build it.
    pub opts: BuildOptions,
    /// Signed with [`key`], or not signed.
    pub signed: bool,
}

/// The seed archives: every kind of entry, every compression, raw and compressed chunks, a
/// file spanning chunks, hard links, xattrs, signed and unsigned.
pub fn seeds() -> Vec<Seed> {
    let opts = |compression, chunk_size| BuildOptions {
        compression,
        chunk_size,
        threads: 1,
        source_date_epoch: None,
    };
    let seed = |name, tree, opts, signed| Seed {
        name,
        tree,
        opts,
        signed,
    };
    vec![
        seed(
            "empty-signed",
            Tree::new(),
            opts(Compression::default(), 1 << 16),
            true,
        ),
        seed(
            "empty-unsigned",
            Tree::new(),
            opts(Compression::None, 1 << 16),
            false,
        ),
        seed(
            "small-zstd",
            everything(false),
            opts(Compression::Zstd(3), 1 << 16),
            true,
        ),
        seed(
            "small-zlib",
            everything(false),
            opts(Compression::Zlib(6), 1 << 20),
            true,
        ),
        seed(
            "small-none-unsigned",
            everything(false),
            opts(Compression::None, 1 << 16),
            false,
        ),
        seed(
            "big-zstd",
            everything(true),
            opts(Compression::Zstd(19), 1 << 16),
            true,
        ),
        seed(
            "big-zlib",
            everything(true),
            opts(Compression::Zlib(9), 1 << 16),
            false,
        ),
    ]
}

/// Writes a seed archive to `out`.
pub fn build(seed: &Seed, out: &Path) -> u64 {
    let manifest = Manifest::from_json(
        br#"{"name": "fuzz.seed", "version": "1.0.0", "summary": "seed",
             "requires": [{"api": "core.io", "version": "~2.1"}]}"#,
    )
    .expect("manifest");
    let key = seed.signed.then(key);
    write_archive(&seed.tree, &manifest, key, &seed.opts, out, &|_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", seed.name))
        .file_size
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Recomputes the chunk hashes, the package id and the signature (with [`key`], if the
/// header's signed flag is set), using the header's own offsets where they make sense, so
/// that a mutated archive gets past the hashes to the structural checks. `None` if the
/// input is too short to hold a header and a trailer.
pub fn reseal(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < HEADER_LEN + TRAILER_LEN {
        return None;
    }
    let mut b = data.to_vec();
    let t = b.len() - TRAILER_LEN;
    let heap_off = usize::try_from(u64_at(&b, 80)).ok().filter(|&h| h <= t)?;
    let index_off = usize::try_from(u64_at(&b, 64)).unwrap_or(usize::MAX);
    let index_len = usize::try_from(u64_at(&b, 72)).unwrap_or(usize::MAX);
    if let Some(end) = index_off.checked_add(index_len).filter(|&e| e <= heap_off) {
        for e in (index_off..end)
            .step_by(INDEX_ENTRY_LEN)
            .take(4096)
            .filter(|e| e + INDEX_ENTRY_LEN <= end)
        {
            let off = usize::try_from(u64_at(&b, e)).unwrap_or(usize::MAX);
            let len = u32_at(&b, e + 8) as usize;
            let range = heap_off
                .checked_add(off)
                .and_then(|s| Some(s..s.checked_add(len)?))
                .filter(|r| r.end <= t);
            if let Some(r) = range {
                let h = blake3::hash(&b[r]);
                b[e + 24..e + 56].copy_from_slice(h.as_bytes());
            }
        }
    }
    let id = *blake3::hash(&b[..heap_off]).as_bytes();
    b[t + 40..t + 72].copy_from_slice(&id);
    if u32_at(&b, 16) & 1 != 0 {
        b[t + 8..t + 40].copy_from_slice(&key().public().to_bytes());
        b[t + 72..t + 136].copy_from_slice(&key().sign(&id));
    } else {
        b[t + 8..t + 40].fill(0);
        b[t + 72..t + 136].fill(0);
    }
    Some(b)
}

fn align8(x: usize) -> usize {
    x.next_multiple_of(8)
}

/// A good archive with its TOC stored raw (frame method 0, read in place by the reader)
/// and the later sections moved to fit, re-sealed: the form [`apply_patches`] needs, so that
/// TOC records can be patched where they lie.
pub fn with_raw_toc(b: &[u8]) -> Vec<u8> {
    let sec = |i: usize| {
        (
            u64_at(b, 32 + 16 * i) as usize,
            u64_at(b, 40 + 16 * i) as usize,
        )
    };
    let ((m_off, m_len), (t_off, t_len), (i_off, i_len), (h_off, h_len)) =
        (sec(0), sec(1), sec(2), sec(3));
    let frame = &b[t_off..t_off + t_len];
    let raw_len = u64_at(frame, 8) as usize;
    let body = &frame[TOC_FRAME_LEN..];
    let toc = match frame[0] {
        0 => body.to_vec(),
        1 => zstd::bulk::decompress(body, raw_len).expect("zstd TOC"),
        _ => {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(body), &mut out)
                .expect("zlib TOC");
            out
        }
    };
    let mut out = b[..m_off + m_len].to_vec();
    let toc_off = align8(out.len());
    out.resize(toc_off, 0);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(toc.len() as u64).to_le_bytes());
    out.extend_from_slice(&toc);
    let toc_len = out.len() - toc_off;
    let index_off = align8(out.len());
    out.resize(index_off, 0);
    out.extend_from_slice(&b[i_off..i_off + i_len]);
    let heap_off = align8(out.len());
    out.resize(heap_off, 0);
    out.extend_from_slice(&b[h_off..h_off + h_len]);
    let trailer_off = out.len();
    out.extend_from_slice(&b[b.len() - TRAILER_LEN..]);
    let file_size = out.len() as u64;
    for (i, off, len) in [
        (1, toc_off, toc_len),
        (2, index_off, i_len),
        (3, heap_off, h_len),
        (4, trailer_off, TRAILER_LEN),
    ] {
        out[32 + 16 * i..40 + 16 * i].copy_from_slice(&(off as u64).to_le_bytes());
        out[40 + 16 * i..48 + 16 * i].copy_from_slice(&(len as u64).to_le_bytes());
    }
    out[120..128].copy_from_slice(&file_size.to_le_bytes());
    reseal(&out).expect("long enough")
}

/// Where the records of a (good) archive lie, so patches address fields, not bytes.
struct Layout {
    toc: usize,
    inodes: (usize, usize),
    dirents: (usize, usize),
    xattrs: (usize, usize),
    strings: (usize, usize),
    index: (usize, usize),
    heap: (usize, usize),
}

impl Layout {
    fn of(b: &[u8]) -> Layout {
        // The TOC is stored raw after its frame (see `with_raw_toc`).
        let toc = u64_at(b, 48) as usize + TOC_FRAME_LEN;
        let (ni, nd, nx) = (
            u32_at(b, toc) as usize,
            u32_at(b, toc + 4) as usize,
            u32_at(b, toc + 8) as usize,
        );
        let inodes = toc + 32;
        let dirents = inodes + ni * 48;
        let xattrs = toc + (dirents - toc + nd * 12).next_multiple_of(8);
        let strings = xattrs + nx * 16;
        let index = u64_at(b, 64) as usize;
        Layout {
            toc,
            inodes: (inodes, ni),
            dirents: (dirents, nd),
            xattrs: (xattrs, nx),
            strings: (strings, u64_at(b, toc + 16) as usize),
            index: (index, u64_at(b, 72) as usize / INDEX_ENTRY_LEN),
            heap: (u64_at(b, 80) as usize, u64_at(b, 88) as usize),
        }
    }
}

/// (offset, width) of the fields of each record type.
const HEADER_FIELDS: &[(usize, usize)] = &[
    (8, 2),
    (10, 2),
    (12, 4),
    (16, 4),
    (20, 4),
    (24, 1),
    (25, 1),
    (28, 4),
    (32, 8),
    (40, 8),
    (48, 8),
    (56, 8),
    (64, 8),
    (72, 8),
    (80, 8),
    (88, 8),
    (96, 8),
    (104, 8),
    (112, 8),
    (120, 8),
];
/// Relative to the TOC section: the frame's method and raw length, then the TOC header.
const TOC_FIELDS: &[(usize, usize)] = &[
    (0, 1),
    (8, 8),
    (16, 4),
    (20, 4),
    (24, 4),
    (28, 4),
    (32, 8),
    (40, 8),
];
const INODE_FIELDS: &[(usize, usize)] = &[
    (0, 4),
    (4, 4),
    (8, 8),
    (16, 4),
    (20, 4),
    (24, 4),
    (28, 4),
    (32, 4),
    (36, 4),
    (40, 8),
];
const DIRENT_FIELDS: &[(usize, usize)] = &[(0, 4), (4, 4), (8, 2), (10, 2)];
const XATTR_FIELDS: &[(usize, usize)] = &[(0, 4), (4, 4), (8, 2), (10, 2), (12, 4)];
const CHUNK_FIELDS: &[(usize, usize)] = &[(0, 8), (8, 4), (12, 4), (16, 1), (17, 1), (24, 8)];

/// How many fields each record type of [`apply_patches`] has (the last two, string and
/// heap bytes, have one).
pub fn field_counts() -> [usize; 8] {
    [
        HEADER_FIELDS.len(),
        TOC_FIELDS.len(),
        INODE_FIELDS.len(),
        DIRENT_FIELDS.len(),
        XATTR_FIELDS.len(),
        CHUNK_FIELDS.len(),
        1,
        1,
    ]
}

/// Boundary values for field patches.
pub const SPECIAL: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    u64::MAX,
    u64::MAX - 1,
    u64::MAX - 7,
    u32::MAX as u64,
    u32::MAX as u64 - 1,
    1 << 32,
    u16::MAX as u64,
    1 << 16,
    (1 << 16) - 1,
    1 << 20,
    1 << 31,
    1 << 63,
    i64::MAX as u64,
    255,
    256,
    4095,
    4096,
    65536 + 1,
    1_000_000_000,
];

fn put(b: &mut [u8], off: usize, width: usize, value: u64, add: bool) {
    let Some(field) = b.get_mut(off..off + width) else {
        return;
    };
    let mut cur = [0u8; 8];
    cur[..width].copy_from_slice(field);
    let v = if add {
        u64::from_le_bytes(cur).wrapping_add(value)
    } else {
        value
    };
    field.copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Applies field-patch records to a good archive in the form of [`with_raw_toc`].
///
/// Each record is `kind u8, field u8, index u16, value u64`. Bits 0..=2 of `kind` pick the
/// record type (header, TOC section: frame and header, inode, dirent, xattr, chunk index
/// entry, string byte, heap byte); bit 7 whether `value` is added to the field (wrapping:
/// small deltas and -1) or replaces it; bit 6 whether `value` is used as is or picks one of
/// [`SPECIAL`] (boundary values that random 64-bit numbers almost never hit). `field` picks
/// the field (modulo the record's field count), `index` the record. Offsets come from the
/// unpatched archive, so a patched count does not move later patches.
pub fn apply_patches(base: &[u8], records: &[u8]) -> Vec<u8> {
    let l = Layout::of(base);
    let mut b = base.to_vec();
    for r in records.chunks_exact(RECORD_LEN).take(16) {
        let (kind, add, special) = (r[0] & 7, r[0] & 0x80 != 0, r[0] & 0x40 != 0);
        let field = r[1] as usize;
        let index = u16::from_le_bytes([r[2], r[3]]) as usize;
        let mut value = u64::from_le_bytes(r[4..12].try_into().unwrap());
        if special {
            value = SPECIAL[(value % SPECIAL.len() as u64) as usize];
        }
        let pick = |fields: &[(usize, usize)]| fields[field % fields.len()];
        let record = |(start, n): (usize, usize), len: usize| start + (index % n.max(1)) * len;
        let (off, width) = match kind {
            0 => pick(HEADER_FIELDS),
            1 => {
                let (o, w) = pick(TOC_FIELDS);
                (l.toc - TOC_FRAME_LEN + o, w)
            }
            2 => {
                let (o, w) = pick(INODE_FIELDS);
                (record(l.inodes, 48) + o, w)
            }
            3 if l.dirents.1 > 0 => {
                let (o, w) = pick(DIRENT_FIELDS);
                (record(l.dirents, 12) + o, w)
            }
            4 if l.xattrs.1 > 0 => {
                let (o, w) = pick(XATTR_FIELDS);
                (record(l.xattrs, 16) + o, w)
            }
            5 if l.index.1 > 0 => {
                let (o, w) = pick(CHUNK_FIELDS);
                (record(l.index, INDEX_ENTRY_LEN) + o, w)
            }
            6 if l.strings.1 > 0 => (l.strings.0 + index % l.strings.1, 1),
            7 if l.heap.1 > 0 => (l.heap.0 + index % l.heap.1, 1),
            _ => continue,
        };
        put(&mut b, off, width, value, add);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::archive::Archive;

    /// The patch-mode bases must be good archives, equal to the seeds entry for entry.
    #[test]
    fn raw_toc_bases_open_and_match_their_seeds() {
        let dir = tempfile::tempdir().unwrap();
        for seed in seeds() {
            let p = dir.path().join(seed.name);
            build(&seed, &p);
            let base = with_raw_toc(&std::fs::read(&p).unwrap());
            let q = dir.path().join(format!("{}.raw-toc", seed.name));
            std::fs::write(&q, apply_patches(&base, &[])).unwrap();
            let (a, b) = (Archive::open(&p).unwrap(), Archive::open(&q).unwrap());
            assert_eq!(b.header().toc.len as usize, {
                let l = Layout::of(&base);
                l.strings.0 + l.strings.1 - b.header().toc.offset as usize
            });
            let walk = |x: &Archive| x.walk().map(|w| (w.path, w.attr)).collect::<Vec<_>>();
            assert_eq!(walk(&a), walk(&b), "{}", seed.name);
            for c in 0..b.chunk_count() {
                b.verify_chunk(c).unwrap();
            }
        }
    }
}
