//! Package deltas: what moves from one version of a package to the next (FORMAT.md §14).
//!
//! ```text
//! build(old, new)   new metadata (zstd against the old metadata) + new trailer, then for
//!                   each stored chunk of the new heap, in heap order:
//!                     COPY     the old package has a chunk with this hash
//!                     PATCH    the new files' bytes, zstd with the old files at the same
//!                              paths as reference prefix; the chunks are re-made by
//!                              compressing those bytes with the new package's method and
//!                              level (checked at build time to give the exact bytes)
//!                     LITERAL  the stored chunk itself (where a patch is not smaller, or
//!                              compressing again does not give the same bytes)
//! apply(old, delta) the metadata (hash = the new id, signature checked), every chunk
//!                   checked against its hash as it is made, the whole package opened
//!                   and checked in a temp file that is renamed into place last
//! ```
//!
//! ```no_run
//! use format::archive::Archive;
//! use format::delta;
//! # fn main() -> format::Result<()> {
//! let old = Archive::open("hello-1.0.0.hpkg".as_ref())?;
//! let new = Archive::open("hello-1.0.1.hpkg".as_ref())?;
//! let stats = delta::write(&old, &new, &delta::DeltaOptions::default(), "hello.delta".as_ref())?;
//! println!("{} bytes instead of {}", stats.delta_size, stats.new_size);
//! let applied = delta::apply(&old, "hello.delta".as_ref(), "hello-1.0.1.hpkg".as_ref(), None)?;
//! assert_eq!(applied.id, new.id());
//! # Ok(()) }
//! ```

mod apply;
mod build;
pub(crate) mod wire;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::archive::{ChunkId, ChunkInfo, PackageId};
use crate::error::{Error, Result};

pub use apply::{apply, Applied};
pub use build::{build, write};
pub use wire::{MAGIC, VERSION_MAJOR, VERSION_MINOR};

/// Largest new metadata a delta may carry: the format's limits (FORMAT.md §10) allow
/// about 737 MiB.
pub(crate) const META_MAX: u64 = 740 << 20;

/// Options for building a delta.
#[derive(Debug, Clone)]
pub struct DeltaOptions {
    /// zstd level of the patches and of the metadata (1 to 22).
    pub level: i32,
}

/// The default zstd level of patches: they are made once and fetched by every machine.
pub const DEFAULT_LEVEL: i32 = 19;

impl Default for DeltaOptions {
    fn default() -> Self {
        DeltaOptions {
            level: DEFAULT_LEVEL,
        }
    }
}

/// What a delta holds, and what the other ways of moving the new package would move.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeltaStats {
    /// The old package's id (hex).
    pub old_id: String,
    /// The new package's id (hex).
    pub new_id: String,
    /// Size of the whole new package file.
    pub new_size: u64,
    /// Size of the new package's metadata (header to chunk index).
    pub new_metadata: u64,
    /// Bytes the metadata takes in the delta.
    pub metadata_encoded: u64,
    /// How: `raw`, `zstd` (against the old metadata) or `zstd-raw-toc` (both with their
    /// TOC uncompressed; FORMAT.md §14.2).
    pub metadata_encoding: &'static str,
    /// Stored chunks in the new heap (identical chunks counted once).
    pub pieces: u64,
    /// Of which the old package has: copied, never shipped.
    pub copied: u64,
    /// Their stored bytes.
    pub copied_bytes: u64,
    /// Of which are made from patches.
    pub patched: u64,
    /// Their stored bytes.
    pub patched_bytes: u64,
    /// Patches.
    pub patches: u64,
    /// Bytes of the patches.
    pub patch_bytes: u64,
    /// Of which are shipped whole.
    pub literal: u64,
    /// Their stored bytes.
    pub literal_bytes: u64,
    /// Of the literal chunks, those compressing again did not reproduce.
    pub not_reproducible: u64,
    /// What chunk dedup alone moves: the metadata, the trailer and every stored chunk
    /// the old package does not have.
    pub dedup_bytes: u64,
    /// Size of the delta file.
    pub delta_size: u64,
}

/// The header of a delta file: which package it applies to and which it makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeltaInfo {
    /// The package the delta applies to.
    #[serde(serialize_with = "ser_id")]
    pub old_id: PackageId,
    /// The package it makes.
    #[serde(serialize_with = "ser_id")]
    pub new_id: PackageId,
    /// Size of the package it makes.
    pub new_size: u64,
    /// Size of the delta file.
    pub delta_size: u64,
    /// The delta format's minor version.
    pub version_minor: u16,
}

fn ser_id<S: serde::Serializer>(id: &PackageId, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_string())
}

/// Reads and checks the header of a delta file (not its body: [`apply`] checks that):
/// for a caller that has to find the old package the delta needs.
pub fn read_info(delta: &Path) -> Result<DeltaInfo> {
    let f = crate::archive::open_regular(delta).map_err(|e| Error::io(delta, e))?;
    let len = f.metadata().map_err(|e| Error::io(delta, e))?.len();
    let h = read_header(&f, delta, len)?;
    Ok(DeltaInfo {
        old_id: h.old_id,
        new_id: h.new_id,
        new_size: h.new_file_size,
        delta_size: len,
        version_minor: h.version_minor,
    })
}

pub(crate) fn read_header(f: &File, path: &Path, len: u64) -> Result<wire::DeltaHeader> {
    let mut b = [0u8; wire::HEADER_LEN];
    let mut r = f;
    let mut got = 0;
    while got < b.len() {
        match r.read(&mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    if got < 8 || b[..8] != wire::MAGIC {
        return Err(wire::corrupt("not a package delta (bad magic)"));
    }
    if got < b.len() {
        return Err(wire::corrupt(format!(
            "the file has {got} bytes, a delta header {}",
            wire::HEADER_LEN
        )));
    }
    wire::DeltaHeader::parse(&b, len)
}

/// The metadata of `a` with its TOC section (frame and compressed bytes) replaced by the
/// uncompressed TOC: what two versions share shows through (FORMAT.md §14.2).
pub(crate) fn expanded_metadata(a: &crate::archive::Archive) -> Vec<u8> {
    let m = a.metadata_bytes();
    let toc = a.header().toc;
    let raw = a.raw_toc();
    let mut v = Vec::with_capacity(m.len() + raw.len());
    v.extend_from_slice(&m[..toc.offset as usize]);
    v.extend_from_slice(raw);
    v.extend_from_slice(&m[toc.end() as usize..]);
    v
}

/// One stored chunk of a heap: the first chunk whose index entry points at it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub chunk: ChunkId,
    pub info: ChunkInfo,
}

/// The distinct stored chunks of a heap, in heap order. Only heaps as the writer lays
/// them out can be rebuilt: each chunk starts where the heap continues, or shares the
/// bytes of an earlier one exactly, and the chunks cover the heap. `Err` says why not.
pub(crate) fn heap_pieces(
    index: &[ChunkInfo],
    heap_len: u64,
) -> std::result::Result<Vec<Piece>, String> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut at: HashMap<u64, usize> = HashMap::new();
    let mut pos = 0u64;
    for (c, info) in index.iter().enumerate() {
        if info.offset == pos {
            at.insert(pos, pieces.len());
            pieces.push(Piece {
                chunk: c as ChunkId,
                info: *info,
            });
            pos += info.stored_len as u64;
        } else if let Some(&p) = at.get(&info.offset) {
            let first = &pieces[p];
            if (first.info.stored_len, first.info.hash) != (info.stored_len, info.hash) {
                return Err(format!(
                    "chunk {c} shares heap bytes at {} with chunk {} but not their length and hash",
                    info.offset, first.chunk
                ));
            }
        } else {
            return Err(format!(
                "chunk {c} is stored at heap offset {}, neither where the heap continues ({pos}) nor at an earlier chunk's bytes",
                info.offset
            ));
        }
    }
    if pos != heap_len {
        return Err(format!(
            "the chunks cover {pos} bytes of a heap of {heap_len}"
        ));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests;
