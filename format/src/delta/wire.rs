//! The delta file's bytes: the fixed header, the op codes, a bounded reader of the body,
//! and zstd with a reference prefix (patch-from). See FORMAT.md §14.

use std::io::Read;

use crate::archive::le::*;
use crate::archive::PackageId;
use crate::error::{Error, Result};

/// The 8 magic bytes every delta starts with (`\x89HDLT\r\n\x1a`).
pub const MAGIC: [u8; 8] = *b"\x89HDLT\r\n\x1a";
/// Length of the delta header.
pub const HEADER_LEN: usize = 128;
/// Length of the checksum that ends a delta (BLAKE3 of every byte before it).
pub const CHECKSUM_LEN: usize = 32;
/// Delta format major version.
pub const VERSION_MAJOR: u16 = 1;
/// Delta format minor version.
pub const VERSION_MINOR: u16 = 0;

/// How the new package's metadata is carried.
pub(crate) const META_RAW: u8 = 0;
/// zstd with the old package's metadata as reference prefix.
pub(crate) const META_ZSTD_PATCH: u8 = 1;
/// zstd of the *expanded* metadata (the TOC section replaced by the uncompressed TOC)
/// with the old package's expanded metadata as reference prefix, after a u64 length.
pub(crate) const META_ZSTD_PATCH_RAW_TOC: u8 = 2;

/// Op codes of the body.
pub(crate) const OP_END: u8 = 0;
pub(crate) const OP_COPY: u8 = 1;
pub(crate) const OP_LITERAL: u8 = 2;
pub(crate) const OP_PATCH: u8 = 3;

/// Most bytes of old files one patch may use as its reference.
pub(crate) const REF_MAX: u64 = 64 << 20;
/// Most bytes (uncompressed) one patch may produce.
pub(crate) const TARGET_MAX: u64 = 8 << 20;
/// Most old files one patch may name.
pub(crate) const REFS_MAX: u16 = 4096;
/// Largest stored chunk a delta rebuilds (a writer never stores more than the chunk size).
pub(crate) const STORED_MAX: u32 = 2 * crate::archive::MAX_CHUNK_SIZE;
/// The zstd window of a patch covers its reference and its output: at most 2^27 bytes.
pub(crate) const WINDOW_LOG_MAX: u32 = 27;

/// The fixed header of a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeltaHeader {
    pub version_minor: u16,
    /// `ZSTD_versionNumber()` of the builder (informational: which compressor
    /// reproduced the chunks).
    pub zstd_version: u32,
    pub old_id: PackageId,
    pub new_id: PackageId,
    pub new_file_size: u64,
    pub meta_len: u64,
    pub meta_encoding: u8,
    pub meta_stored_len: u64,
    pub body_len: u64,
}

impl DeltaHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        put_u16(&mut b, 8, VERSION_MAJOR);
        put_u16(&mut b, 10, self.version_minor);
        put_u32(&mut b, 12, HEADER_LEN as u32);
        put_u32(&mut b, 20, self.zstd_version);
        b[24..56].copy_from_slice(&self.old_id.0);
        b[56..88].copy_from_slice(&self.new_id.0);
        put_u64(&mut b, 88, self.new_file_size);
        put_u64(&mut b, 96, self.meta_len);
        b[104] = self.meta_encoding;
        put_u64(&mut b, 112, self.meta_stored_len);
        put_u64(&mut b, 120, self.body_len);
        b
    }

    /// Parses and checks the header of a delta file of `file_len` bytes.
    pub fn parse(b: &[u8], file_len: u64) -> Result<DeltaHeader> {
        if b.len() < HEADER_LEN || b[..8] != MAGIC {
            return Err(corrupt("not a package delta (bad magic)"));
        }
        let major = u16_at(b, 8);
        let minor = u16_at(b, 10);
        if major != VERSION_MAJOR {
            return Err(corrupt(format!(
                "delta format version {major}.{minor} (this reader knows {VERSION_MAJOR}.x)"
            )));
        }
        if u32_at(b, 12) != HEADER_LEN as u32 {
            return Err(corrupt(format!(
                "header length {} is not {HEADER_LEN}",
                u32_at(b, 12)
            )));
        }
        if u32_at(b, 16) != 0 || b[105..112].iter().any(|&x| x != 0) {
            return Err(corrupt("header: reserved bytes or flags are not zero"));
        }
        let id = |at: usize| {
            let mut v = [0u8; 32];
            v.copy_from_slice(&b[at..at + 32]);
            PackageId(v)
        };
        let h = DeltaHeader {
            version_minor: minor,
            zstd_version: u32_at(b, 20),
            old_id: id(24),
            new_id: id(56),
            new_file_size: u64_at(b, 88),
            meta_len: u64_at(b, 96),
            meta_encoding: b[104],
            meta_stored_len: u64_at(b, 112),
            body_len: u64_at(b, 120),
        };
        let want = (HEADER_LEN as u64 + CHECKSUM_LEN as u64).checked_add(h.body_len);
        if want != Some(file_len) {
            return Err(corrupt(format!(
                "the header says {} body bytes, the file has {} bytes (truncated or extended)",
                h.body_len, file_len
            )));
        }
        if h.meta_encoding > META_ZSTD_PATCH_RAW_TOC {
            return Err(corrupt(format!(
                "unknown metadata encoding {}",
                h.meta_encoding
            )));
        }
        if h.meta_encoding == META_RAW && h.meta_stored_len != h.meta_len {
            return Err(corrupt("raw metadata of the wrong length"));
        }
        if h.meta_encoding == META_ZSTD_PATCH_RAW_TOC && h.meta_stored_len < 8 {
            return Err(corrupt("expanded metadata without its length"));
        }
        if h.meta_stored_len > h.body_len {
            return Err(corrupt("the metadata runs past the end of the delta"));
        }
        let meta_max = super::META_MAX;
        if h.meta_len < crate::archive::header::HEADER_LEN as u64 || h.meta_len > meta_max {
            return Err(corrupt(format!(
                "new metadata of {} bytes (must be 128 to {meta_max})",
                h.meta_len
            )));
        }
        if h.new_file_size < h.meta_len {
            return Err(corrupt("the new package is smaller than its metadata"));
        }
        Ok(h)
    }
}

pub(crate) fn corrupt(reason: impl Into<String>) -> Error {
    Error::DeltaCorrupt {
        reason: reason.into(),
    }
}

/// Reads the body of a delta, never past its end, never allocating more than what is
/// left of it: every length is checked before it is used.
pub(crate) struct Body<R> {
    r: R,
    /// Offset in the delta file of the next byte.
    pub pos: u64,
    /// Offset of the body's end.
    pub end: u64,
}

impl<R: Read> Body<R> {
    pub fn new(r: R, start: u64, end: u64) -> Body<R> {
        Body { r, pos: start, end }
    }

    pub fn left(&self) -> u64 {
        self.end - self.pos
    }

    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.left() {
            return Err(corrupt(format!(
                "at byte {}: {what} needs {n} bytes, the body has {} left",
                self.pos,
                self.left()
            )));
        }
        Ok(())
    }

    pub fn read_into(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.need(buf.len() as u64, what)?;
        self.r
            .read_exact(buf)
            .map_err(|e| corrupt(format!("at byte {}: {what}: {e}", self.pos)))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    pub fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        self.need(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.read_into(&mut v, what)?;
        Ok(v)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_into(&mut b, what)?;
        Ok(b[0])
    }

    pub fn u16(&mut self, what: &str) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_into(&mut b, what)?;
        Ok(u16::from_le_bytes(b))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_into(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// The smallest window log (at least 10) whose window holds `n` bytes.
fn window_log(n: usize) -> u32 {
    let mut log = 10;
    while log < WINDOW_LOG_MAX && (1usize << log) < n {
        log += 1;
    }
    log
}

fn zstd_error(code: usize) -> String {
    zstd::zstd_safe::get_error_name(code).to_string()
}

/// Compresses `target` with zstd at `level`, `reference` as its prefix (zstd's
/// patch-from): matches may point into the reference, which the decoder must be given.
pub(crate) fn patch(reference: &[u8], target: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let err = |c: usize| std::io::Error::other(format!("zstd: {}", zstd_error(c)));
    let mut cctx = CCtx::try_create().ok_or_else(|| std::io::Error::other("zstd: no memory"))?;
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(
        reference.len() + target.len(),
    )))
    .map_err(err)?;
    cctx.set_parameter(CParameter::ContentSizeFlag(true))
        .map_err(err)?;
    cctx.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(err)?;
    cctx.ref_prefix(reference).map_err(err)?;
    let mut dst = Vec::with_capacity(zstd::zstd_safe::compress_bound(target.len()));
    cctx.compress2(&mut dst, target).map_err(err)?;
    Ok(dst)
}

/// Decompresses a [`patch`] against `reference` into exactly `target_len` bytes; any
/// other length is an error (`Err` holds the reason).
pub(crate) fn unpatch(
    reference: &[u8],
    patch: &[u8],
    target_len: usize,
) -> std::result::Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut dctx = DCtx::try_create().ok_or("zstd: no memory")?;
    dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))
        .map_err(zstd_error)?;
    dctx.ref_prefix(reference).map_err(zstd_error)?;
    // The output buffer's capacity bounds what the decoder writes: a patch that would
    // produce more is an error, not an allocation.
    let mut out = Vec::with_capacity(target_len);
    let n = dctx.decompress(&mut out, patch).map_err(zstd_error)?;
    if n != target_len {
        return Err(format!("produced {n} bytes, expected {target_len}"));
    }
    Ok(out)
}
