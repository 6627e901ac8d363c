//! Thin packages: a package's signed metadata and trailer, and where its heap lives.
//!
//! ```text
//! [thin header 32][metadata: the package's bytes 0 .. heap.offset][trailer 136][source JSON]
//! ```
//!
//! The metadata and the trailer are byte for byte those of the whole package, so a thin
//! package has the same id and signature, and its chunk index pins every heap byte. The
//! heap itself is read through a [`RemoteHeap`] that the caller supplies ([`Heaps`]):
//! this crate knows no network. Without one, the chunks of a thin package fail to read
//! with [`crate::Error::NotLocal`] and everything else (manifest, TOC, stat, list) works.
//! See FORMAT.md §12.

use std::fmt;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::le::*;
use super::{ChunkId, ChunkInfo, PackageId};
use crate::error::{Error, Result};

/// The 8 magic bytes a thin package starts with (a whole package's are `\x89HPKG\r\n\x1a`).
pub const THIN_MAGIC: [u8; 8] = *b"\x89HPKT\r\n\x1a";
/// Length of the thin header.
pub const THIN_HEADER_LEN: usize = 32;
/// The thin format version this crate reads and writes.
pub const THIN_VERSION: u16 = 1;
/// Largest source record.
pub const SOURCE_MAX: u64 = 64 * 1024;
/// Most mirrors in a source record.
pub const MIRRORS_MAX: usize = 16;

/// Where a thin package's heap lives: the same object (the whole package) on each mirror,
/// tried in order. Not signed, and need not be: every heap byte is pinned by the chunk
/// index, so a wrong mirror costs time, never wrong data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Repository addresses (`http://host:port/path/`, `oci://host:port/name`), in order.
    pub mirrors: Vec<String>,
    /// The whole package inside each repository: a path relative to an HTTP repository
    /// (`packages/NAME-VERSION-ID.hpkg`), or a blob digest (`sha256:...`) in a registry.
    pub object: String,
    /// Chunks to fetch in the background once the package is opened, in order (those read
    /// during a recorded first start); chunk numbers past the end are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefetch: Vec<u32>,
}

impl Source {
    /// Checks the record's rules (FORMAT.md §12).
    pub fn validate(&self) -> Result<()> {
        let bad = |r: String| Error::corrupt("thin source", r);
        if self.mirrors.is_empty() || self.mirrors.len() > MIRRORS_MAX {
            return Err(bad(format!(
                "{} mirrors (1 to {MIRRORS_MAX} allowed)",
                self.mirrors.len()
            )));
        }
        let printable = |s: &str| {
            !s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| (0x21..0x7f).contains(&b))
        };
        for m in &self.mirrors {
            if !printable(m) {
                return Err(bad(format!("mirror {m:?} is not a printable address")));
            }
        }
        if !printable(&self.object) || self.object.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(bad(format!(
                "object {:?} is not a plain path or digest",
                self.object
            )));
        }
        Ok(())
    }
}

/// What a [`Heaps`] needs to read a thin package's heap: the source, where the heap lies in
/// the whole package, and every chunk's place and hash (the signed chunk index).
#[derive(Debug, Clone)]
pub struct ThinPackage {
    /// The package id.
    pub id: PackageId,
    /// Where the whole package lives.
    pub source: Source,
    /// Offset of the heap in the whole package.
    pub heap_offset: u64,
    /// Length of the whole package.
    pub file_size: u64,
    /// The chunk index, by chunk number.
    pub chunks: Vec<ChunkInfo>,
}

/// Reads the stored bytes of a thin package's chunks.
pub trait RemoteHeap: Send + Sync + fmt::Debug {
    /// Puts exactly the stored bytes of chunk `c` into `buf`, having checked them against
    /// the chunk's hash (the reader checks again before it decompresses).
    fn read_stored(&self, c: ChunkId, buf: &mut Vec<u8>) -> io::Result<()>;
}

/// Supplies the heaps of thin packages as they are opened (the daemon's: a repository
/// client with a local chunk store).
pub trait Heaps: Send + Sync + fmt::Debug {
    /// The heap of `pkg`.
    fn open(&self, pkg: &ThinPackage) -> std::result::Result<Arc<dyn RemoteHeap>, String>;
}

/// The parsed thin header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ThinHeader {
    pub meta_len: u64,
    pub source_len: u64,
}

impl ThinHeader {
    pub(crate) fn to_bytes(self) -> [u8; THIN_HEADER_LEN] {
        let mut b = [0u8; THIN_HEADER_LEN];
        b[..8].copy_from_slice(&THIN_MAGIC);
        put_u16(&mut b, 8, THIN_VERSION);
        put_u64(&mut b, 16, self.meta_len);
        put_u64(&mut b, 24, self.source_len);
        b
    }

    /// Parses the thin header of a file of `file_len` bytes.
    pub(crate) fn parse(b: &[u8], file_len: u64) -> Result<ThinHeader> {
        let bad = |r: String| Error::corrupt("thin header", r);
        if b.len() < THIN_HEADER_LEN {
            return Err(Error::Truncated {
                section: "thin header",
                offset: 0,
                need: THIN_HEADER_LEN as u64,
                len: file_len,
            });
        }
        let version = u16_at(b, 8);
        if version != THIN_VERSION {
            return Err(bad(format!(
                "thin package version {version} (this reader knows {THIN_VERSION})"
            )));
        }
        if b[10..16].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes are not zero".into()));
        }
        let h = ThinHeader {
            meta_len: u64_at(b, 16),
            source_len: u64_at(b, 24),
        };
        if h.source_len == 0 || h.source_len > SOURCE_MAX {
            return Err(bad(format!(
                "source record of {} bytes (1 to {SOURCE_MAX} allowed)",
                h.source_len
            )));
        }
        let want = (THIN_HEADER_LEN as u64)
            .checked_add(h.meta_len)
            .and_then(|x| x.checked_add(super::sign::TRAILER_LEN as u64))
            .and_then(|x| x.checked_add(h.source_len));
        if want != Some(file_len) {
            return Err(bad(format!(
                "the sections claim {} bytes, the file has {file_len}",
                want.map_or("more than 2^64".to_string(), |w| w.to_string())
            )));
        }
        Ok(h)
    }

    pub(crate) fn trailer_offset(&self) -> u64 {
        THIN_HEADER_LEN as u64 + self.meta_len
    }

    pub(crate) fn source_offset(&self) -> u64 {
        self.trailer_offset() + super::sign::TRAILER_LEN as u64
    }
}

/// Parses a source record.
pub(crate) fn parse_source(b: &[u8]) -> Result<Source> {
    let s: Source = serde_json::from_slice(b)
        .map_err(|e| Error::corrupt("thin source", format!("not a source record: {e}")))?;
    s.validate()?;
    Ok(s)
}

/// The heap of a thin package that no [`Heaps`] was given for.
#[derive(Debug)]
pub(crate) struct NoHeap;

impl RemoteHeap for NoHeap {
    fn read_stored(&self, _c: ChunkId, _buf: &mut Vec<u8>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            "not on this machine",
        ))
    }
}

/// The bytes of a thin package from a package's metadata (bytes 0 .. heap.offset), its
/// trailer and a source. Nothing is checked here: open the result to check it.
pub fn assemble(meta: &[u8], trailer: &[u8], source: &Source) -> Result<Vec<u8>> {
    source.validate()?;
    let src = serde_json::to_vec(source).map_err(|e| Error::Options(e.to_string()))?;
    let h = ThinHeader {
        meta_len: meta.len() as u64,
        source_len: src.len() as u64,
    };
    let mut out = Vec::with_capacity(THIN_HEADER_LEN + meta.len() + trailer.len() + src.len());
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(trailer);
    out.extend_from_slice(&src);
    Ok(out)
}
