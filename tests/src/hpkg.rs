//! A minimal, independent reader of the `.hpkg` layout (`format/FORMAT.md`): just enough
//! to find where each chunk's stored bytes lie and which files use which chunks, so a test
//! can corrupt one chunk on purpose and know exactly which files must fail.
//!
//! It trusts its input (the tests feed it archives that pkgtool just wrote) and panics on
//! anything unexpected.

use std::collections::BTreeSet;
use std::ops::Range;

/// One chunk index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the stored bytes from the start of the heap.
    pub offset: u64,
    /// Stored (compressed) length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
}

/// A regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the package root (`/`-separated).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The chunks holding its bytes (empty for an empty file).
    pub chunks: Range<u32>,
}

/// The parts of an archive the tests need.
#[derive(Debug)]
pub struct Hpkg {
    /// Nominal chunk size.
    pub chunk_size: u32,
    /// File offset of the heap.
    pub heap_offset: u64,
    /// Length of the heap.
    pub heap_len: u64,
    /// The chunk index.
    pub chunks: Vec<Chunk>,
    /// Every path naming a regular file (hard links appear once per name).
    pub files: Vec<FileEntry>,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

impl Hpkg {
    /// Parses an archive's bytes.
    pub fn parse(b: &[u8]) -> Hpkg {
        assert_eq!(&b[..8], b"\x89HPKG\r\n\x1a", "not an .hpkg archive");
        let chunk_size = u32_at(b, 20);
        let (toc_off, toc_len) = (u64_at(b, 48) as usize, u64_at(b, 56) as usize);
        let (ci_off, ci_len) = (u64_at(b, 64) as usize, u64_at(b, 72) as usize);
        let (heap_offset, heap_len) = (u64_at(b, 80), u64_at(b, 88));
        let chunks = (0..ci_len / 56)
            .map(|i| {
                let e = ci_off + 56 * i;
                Chunk {
                    offset: u64_at(b, e),
                    stored_len: u32_at(b, e + 8),
                    raw_len: u32_at(b, e + 12),
                }
            })
            .collect();
        // The TOC section is a 16-byte frame (method, raw length) and the TOC, compressed or not.
        let frame = &b[toc_off..toc_off + toc_len];
        let raw_len = u64_at(frame, 8) as usize;
        let toc_owned: Vec<u8> = match frame[0] {
            0 => frame[16..].to_vec(),
            1 => zstd::bulk::decompress(&frame[16..], raw_len).expect("zstd TOC"),
            2 => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(&frame[16..])
                    .read_to_end(&mut out)
                    .expect("zlib TOC");
                out
            }
            m => panic!("unknown TOC method {m}"),
        };
        assert_eq!(toc_owned.len(), raw_len);
        let toc = &toc_owned[..];
        let n_inodes = u32_at(toc, 0) as usize;
        let n_dirents = u32_at(toc, 4) as usize;
        let n_xattrs = u32_at(toc, 8) as usize;
        let dirents_off = 32 + 48 * n_inodes;
        let xattrs_off = (dirents_off + 12 * n_dirents).next_multiple_of(8);
        let strings_off = xattrs_off + 16 * n_xattrs;
        let inode = |i: usize| &toc[32 + 48 * i..32 + 48 * (i + 1)];
        let mut files = Vec::new();
        // (entry, path) of directories still to list
        let mut stack = vec![(0usize, String::new())];
        while let Some((dir, path)) = stack.pop() {
            let ino = inode(dir);
            assert_eq!(u32_at(ino, 0) & S_IFMT, S_IFDIR);
            let (first, count) = (u32_at(ino, 28) as usize, u32_at(ino, 32) as usize);
            for d in first..first + count {
                let de = &toc[dirents_off + 12 * d..dirents_off + 12 * (d + 1)];
                let name_off = strings_off + u32_at(de, 0) as usize;
                let name_len = u16_at(de, 8) as usize;
                let name = String::from_utf8_lossy(&toc[name_off..name_off + name_len]);
                let child_path = if path.is_empty() {
                    name.into_owned()
                } else {
                    format!("{path}/{name}")
                };
                let entry = u32_at(de, 4) as usize;
                let ci = inode(entry);
                match u32_at(ci, 0) & S_IFMT {
                    S_IFDIR => stack.push((entry, child_path)),
                    S_IFREG => {
                        let size = u64_at(ci, 40);
                        let (a, off) = (u32_at(ci, 28), u32_at(ci, 32) as u64);
                        let chunks = if size == 0 {
                            0..0
                        } else {
                            a..a + ((off + size - 1) / chunk_size as u64) as u32 + 1
                        };
                        files.push(FileEntry {
                            path: child_path,
                            size,
                            chunks,
                        });
                    }
                    _ => {}
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Hpkg {
            chunk_size,
            heap_offset,
            heap_len,
            chunks,
            files,
        }
    }

    /// The file offset range of a chunk's stored bytes.
    pub fn stored_range(&self, chunk: u32) -> Range<u64> {
        let c = self.chunks[chunk as usize];
        let start = self.heap_offset + c.offset;
        start..start + c.stored_len as u64
    }

    /// Every chunk whose stored bytes include file offset `pos` (identical chunks are
    /// stored once, so there may be several).
    pub fn chunks_at(&self, pos: u64) -> BTreeSet<u32> {
        (0..self.chunks.len() as u32)
            .filter(|&c| self.stored_range(c).contains(&pos))
            .collect()
    }

    /// The paths of the files that use any of `chunks`.
    pub fn files_using(&self, chunks: &BTreeSet<u32>) -> BTreeSet<String> {
        self.files
            .iter()
            .filter(|f| f.chunks.clone().any(|c| chunks.contains(&c)))
            .map(|f| f.path.clone())
            .collect()
    }
}
