//! The fixed 128-byte header at offset 0.

use super::chunk::{Compression, Method, INDEX_ENTRY_LEN};
use super::le::*;
use super::sign::TRAILER_LEN;
use super::toc::FRAME_LEN;
use super::{align8, CHUNKS_MAX, MANIFEST_MAX, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, TOC_MAX};
use crate::error::{Error, Result};

/// The 8 magic bytes every archive starts with.
pub const MAGIC: [u8; 8] = *b"\x89HPKG\r\n\x1a";
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 128;
/// Format major version this crate reads and writes.
pub const VERSION_MAJOR: u16 = 1;
/// The newest format minor version this crate reads and writes. The writer writes the
/// lowest minor that can express the archive: 0, or 1 when it uses lz4 (FORMAT.md §9).
pub const VERSION_MINOR: u16 = 1;
/// Header flag: the trailer carries a signature.
pub const FLAG_SIGNED: u32 = 1;

/// A section: byte offset and length in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Section {
    /// Offset from the start of the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Section {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format major version.
    pub version_major: u16,
    /// Format minor version.
    pub version_minor: u16,
    /// Flags (`FLAG_SIGNED`).
    pub flags: u32,
    /// Nominal (maximum) uncompressed chunk size.
    pub chunk_size: u32,
    /// The compression the archive was built with (chunks that did not shrink are raw).
    pub compression: Compression,
    /// The manifest (JSON).
    pub manifest: Section,
    /// The table of contents.
    pub toc: Section,
    /// The chunk index.
    pub chunk_index: Section,
    /// The heap of stored chunks.
    pub heap: Section,
    /// The trailer (package id and signature).
    pub trailer: Section,
    /// Total uncompressed size of all chunks.
    pub content_size: u64,
    /// Size of the whole file.
    pub file_size: u64,
}

impl Header {
    /// True if the trailer carries a signature.
    pub fn is_signed(&self) -> bool {
        self.flags & FLAG_SIGNED != 0
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        (self.chunk_index.len / INDEX_ENTRY_LEN as u64) as u32
    }

    /// Serializes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        put_u16(&mut b, 8, self.version_major);
        put_u16(&mut b, 10, self.version_minor);
        put_u32(&mut b, 12, HEADER_LEN as u32);
        put_u32(&mut b, 16, self.flags);
        put_u32(&mut b, 20, self.chunk_size);
        b[24] = self.compression.method() as u8;
        put_u32(&mut b, 28, self.compression.level() as u32);
        for (i, s) in [
            self.manifest,
            self.toc,
            self.chunk_index,
            self.heap,
            self.trailer,
        ]
        .iter()
        .enumerate()
        {
            put_u64(&mut b, 32 + 16 * i, s.offset);
            put_u64(&mut b, 40 + 16 * i, s.len);
        }
        put_u64(&mut b, 112, self.content_size);
        put_u64(&mut b, 120, self.file_size);
        b
    }

    /// Parses and validates a header against the real length of the file. Every offset and
    /// length is checked here, so later code may index the sections without further checks.
    pub fn parse(b: &[u8], file_len: u64) -> Result<Header> {
        if b.len() < 8 || file_len < 8 {
            return Err(Error::Truncated {
                section: "header",
                offset: 0,
                need: HEADER_LEN as u64,
                len: file_len,
            });
        }
        if b[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        if b.len() < HEADER_LEN || file_len < HEADER_LEN as u64 {
            return Err(Error::Truncated {
                section: "header",
                offset: 0,
                need: HEADER_LEN as u64,
                len: file_len,
            });
        }
        let bad = |reason: String| Error::corrupt("header", reason);
        let version_major = u16_at(b, 8);
        let version_minor = u16_at(b, 10);
        if version_major != VERSION_MAJOR {
            return Err(Error::UnsupportedVersion {
                major: version_major,
                minor: version_minor,
                known: VERSION_MAJOR,
            });
        }
        let header_len = u32_at(b, 12);
        if header_len as usize != HEADER_LEN {
            return Err(bad(format!(
                "header length {header_len}, expected {HEADER_LEN}"
            )));
        }
        let flags = u32_at(b, 16);
        if flags & !FLAG_SIGNED != 0 {
            return Err(bad(format!("unknown flags {flags:#x}")));
        }
        let chunk_size = u32_at(b, 20);
        if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            return Err(bad(format!(
                "chunk size {chunk_size} is not a power of two from 64 KiB to 1 MiB"
            )));
        }
        let method = Method::parse(b[24], "header", version_minor)?;
        if b[25] != 0 || u16_at(b, 26) != 0 {
            return Err(bad("reserved bytes 25..28 are not zero".into()));
        }
        let level = u32_at(b, 28) as i32;
        let compression = Compression::from_parts(method, level)
            .ok_or_else(|| bad(format!("compression level {level} out of range")))?;
        let sec = |i: usize| Section {
            offset: u64_at(b, 32 + 16 * i),
            len: u64_at(b, 40 + 16 * i),
        };
        let (manifest, toc, chunk_index, heap, trailer) = (sec(0), sec(1), sec(2), sec(3), sec(4));
        let content_size = u64_at(b, 112);
        let file_size = u64_at(b, 120);

        // Sections follow each other in a fixed order, each starting at the previous end
        // rounded up to 8 bytes; lengths are bounded so the arithmetic cannot overflow.
        let mut expect = HEADER_LEN as u64;
        for (name, s, align) in [
            ("manifest", manifest, true),
            ("toc", toc, true),
            ("chunk index", chunk_index, true),
            ("heap", heap, false),
            ("trailer", trailer, false),
        ] {
            if s.offset != expect {
                return Err(bad(format!(
                    "{name} section starts at {}, expected {expect}",
                    s.offset
                )));
            }
            if s.len > file_len {
                return Err(Error::Truncated {
                    section: name,
                    offset: s.offset,
                    need: s.len,
                    len: file_len,
                });
            }
            expect = s.offset + s.len;
            if align {
                expect = align8(expect);
            }
        }
        if manifest.len > MANIFEST_MAX {
            return Err(bad(format!(
                "manifest of {} bytes exceeds 1 MiB",
                manifest.len
            )));
        }
        if toc.len > TOC_MAX + FRAME_LEN as u64 {
            return Err(bad(format!(
                "toc section of {} bytes exceeds the limit of {} (512 MiB + 16)",
                toc.len,
                TOC_MAX + FRAME_LEN as u64
            )));
        }
        if chunk_index.len % INDEX_ENTRY_LEN as u64 != 0 {
            return Err(bad(format!(
                "chunk index length {} is not a multiple of {INDEX_ENTRY_LEN}",
                chunk_index.len
            )));
        }
        if chunk_index.len / INDEX_ENTRY_LEN as u64 > CHUNKS_MAX {
            return Err(bad(format!(
                "{} chunks exceed the limit of {CHUNKS_MAX} (2^22)",
                chunk_index.len / INDEX_ENTRY_LEN as u64
            )));
        }
        if trailer.len != TRAILER_LEN as u64 {
            return Err(bad(format!(
                "trailer length {}, expected {TRAILER_LEN}",
                trailer.len
            )));
        }
        if file_size != trailer.end() {
            return Err(bad(format!(
                "recorded file size {file_size} does not match the end of the trailer {}",
                trailer.end()
            )));
        }
        if file_len < file_size {
            return Err(Error::Truncated {
                section: "trailer",
                offset: trailer.offset,
                need: trailer.len,
                len: file_len,
            });
        }
        if file_len > file_size {
            return Err(bad(format!(
                "{} unexpected bytes after the trailer",
                file_len - file_size
            )));
        }
        let chunks = chunk_index.len / INDEX_ENTRY_LEN as u64;
        if content_size > chunks.saturating_mul(chunk_size as u64) {
            return Err(bad(format!(
                "content size {content_size} exceeds {chunks} chunks of {chunk_size}"
            )));
        }
        Ok(Header {
            version_major,
            version_minor,
            flags,
            chunk_size,
            compression,
            manifest,
            toc,
            chunk_index,
            heap,
            trailer,
            content_size,
            file_size,
        })
    }
}
