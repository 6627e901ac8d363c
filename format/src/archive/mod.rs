//! The `.hpkg` package archive: byte layout, reader and writer.
//!
//! ```text
//! [header 128][manifest][pad][toc][pad][chunk index][pad][heap ...][trailer 136]
//! ```
//! Everything before the heap is the *metadata*; its BLAKE3 hash is the package id, which
//! the trailer records and signs. See `format/FORMAT.md` for every byte.

pub(crate) mod chunk;
pub(crate) mod header;
pub(crate) mod le;
pub mod reader;
pub(crate) mod sign;
pub mod thin;
pub(crate) mod toc;
pub mod tree;
pub mod walk;
pub mod writer;

pub use chunk::{ChunkInfo, Compression, Method};
pub use header::Header;
pub use reader::{
    open_regular, Archive, Attr, ChunkSpan, DirEntry, EntryWalk, FileExtent, Kind, Spans,
};
pub use tree::{Content, NodeId, Tree};
pub use writer::{BuildOptions, BuildReport};

use std::fmt;

/// A package id: the BLAKE3 hash of the archive's metadata.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId(pub [u8; 32]);

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::keys::hex(&self.0))
    }
}

impl fmt::Debug for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageId({self})")
    }
}

impl PackageId {
    /// The first 16 hex digits, for display.
    pub fn short(&self) -> String {
        crate::keys::hex(&self.0[..8])
    }
}

/// Number of an entry (inode) inside one archive; the root directory is entry 0.
pub type EntryId = u32;

/// Number of a chunk inside one archive.
pub type ChunkId = u32;

/// Smallest allowed chunk size (64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest allowed chunk size (1 MiB).
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Default chunk size (256 KiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
/// Longest allowed file name in bytes.
pub const NAME_MAX: usize = 255;
/// Longest allowed symlink target in bytes.
pub const TARGET_MAX: usize = 4095;
/// Largest manifest in bytes.
pub const MANIFEST_MAX: u64 = 1 << 20;
/// Largest (decompressed) table of contents in bytes: 512 MiB, room for several million
/// entries (a million files with long names and an xattr each need about 150 MiB), and a
/// bound on what a reader allocates for a TOC. See FORMAT.md §10.
pub const TOC_MAX: u64 = 512 << 20;
/// Most chunks in one archive: 2^22 (a chunk index of 224 MiB), 256 GiB of unique content
/// at the smallest chunk size and 4 TiB at the largest. See FORMAT.md §10.
pub const CHUNKS_MAX: u64 = 1 << 22;
/// Metadata up to this size is read in one go; larger metadata is first hashed in pieces
/// of this size, so that a file claiming huge sections costs no memory before its hash is
/// known to match.
pub(crate) const META_PIECE: usize = 4 << 20;

pub(crate) fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// Checks a single path component as stored in an archive.
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > NAME_MAX {
        return Err("name longer than 255 bytes");
    }
    if name == b"." || name == b".." {
        return Err("name is `.` or `..`");
    }
    if name.contains(&b'/') {
        return Err("name contains `/`");
    }
    if name.contains(&0) {
        return Err("name contains NUL");
    }
    Ok(())
}
