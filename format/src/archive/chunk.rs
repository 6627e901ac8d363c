//! Chunks: compression methods, the chunk index, and compressing / verifying / decompressing
//! one chunk.

use std::cell::RefCell;
use std::fmt;
use std::io::Write;
use std::str::FromStr;

use super::le::*;
use super::ChunkId;
use crate::error::{Error, Result};

/// Length of one chunk index entry.
pub const INDEX_ENTRY_LEN: usize = 56;

/// How one chunk's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Method {
    /// Stored as is.
    None = 0,
    /// A zstd frame.
    Zstd = 1,
    /// A zlib stream (RFC 1950).
    Zlib = 2,
    /// One lz4 block (no frame, no size prefix; format 1.1).
    Lz4 = 3,
}

impl Method {
    pub(crate) fn from_u8(v: u8) -> Option<Method> {
        match v {
            0 => Some(Method::None),
            1 => Some(Method::Zstd),
            2 => Some(Method::Zlib),
            3 => Some(Method::Lz4),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Zstd => "zstd",
            Method::Zlib => "zlib",
            Method::Lz4 => "lz4",
        }
    }

    /// The lowest format minor version in which the method may appear (FORMAT.md §9).
    pub fn min_minor(self) -> u16 {
        match self {
            Method::None | Method::Zstd | Method::Zlib => 0,
            Method::Lz4 => 1,
        }
    }

    /// Reads a method byte of `what` (`header`, `toc frame`, `chunk 7`) in an archive of
    /// format minor version `minor`: an unknown byte is refused as unknown (a newer format,
    /// or corruption), and a method newer than the archive's version as corrupt.
    pub(crate) fn parse(v: u8, what: &str, minor: u16) -> Result<Method> {
        let m = Method::from_u8(v).ok_or_else(|| Error::UnknownMethod {
            what: what.to_owned(),
            method: v,
            minor,
        })?;
        if m.min_minor() > minor {
            return Err(Error::corrupt(
                what,
                format!(
                    "compression method {v} ({}) needs format 1.{}, the archive says 1.{minor}",
                    m.name(),
                    m.min_minor()
                ),
            ));
        }
        Ok(m)
    }
}

/// Compression chosen at build time: a method and its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store every chunk raw.
    None,
    /// zstd at a level from 1 to 22.
    Zstd(i32),
    /// zlib at a level from 0 to 9.
    Zlib(u32),
    /// lz4 (block format; it has no levels). Compresses less than zstd and costs less CPU
    /// to decompress (`docs/benchmarks.md`).
    Lz4,
}

/// The default zstd level. Decompression speed does not depend on the level, so the level
/// only trades build time against size; measured by `scripts/bench-build` on
/// `/usr/share` + `/usr/include` (630 MiB) with 256 KiB chunks on 2 cores
/// (`docs/benchmarks.md`): level 6 5.9 s, 226.3 MB; 9 7.5 s, 223.0 MB; 12 22.7 s,
/// 221.4 MB; 15 42.3 s, 212.6 MB. Level 9 is the knee: 12 costs three times as long for
/// 0.7% less, 6 saves a fifth of the time for 1.5% more. Level 15 (or 19) is for release
/// builds where every byte of a download counts: 4.6% smaller for 5.7x the time.
pub const DEFAULT_ZSTD_LEVEL: i32 = 9;
/// The default zlib level.
pub const DEFAULT_ZLIB_LEVEL: u32 = 6;

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(DEFAULT_ZSTD_LEVEL)
    }
}

impl Compression {
    /// The method.
    pub fn method(&self) -> Method {
        match self {
            Compression::None => Method::None,
            Compression::Zstd(_) => Method::Zstd,
            Compression::Zlib(_) => Method::Zlib,
            Compression::Lz4 => Method::Lz4,
        }
    }

    /// The level (0 for none and lz4).
    pub fn level(&self) -> i32 {
        match *self {
            Compression::None | Compression::Lz4 => 0,
            Compression::Zstd(l) => l,
            Compression::Zlib(l) => l as i32,
        }
    }

    pub(crate) fn from_parts(method: Method, level: i32) -> Option<Compression> {
        match method {
            Method::None if level == 0 => Some(Compression::None),
            Method::Zstd if (1..=22).contains(&level) => Some(Compression::Zstd(level)),
            Method::Zlib if (0..=9).contains(&level) => Some(Compression::Zlib(level as u32)),
            Method::Lz4 if level == 0 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::Zlib(l) => write!(f, "zlib:{l}"),
            Compression::Lz4 => f.write_str("lz4"),
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    /// Parses `zstd`, `zstd:LEVEL`, `zlib`, `zlib:LEVEL`, `lz4` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let parse = |l: &str, lo: i32, hi: i32| -> Result<i32, String> {
            match l.parse::<i32>() {
                Ok(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(format!(
                    "{name} level must be a number from {lo} to {hi}, not `{l}`"
                )),
            }
        };
        match name {
            "zstd" => Ok(Compression::Zstd(match level {
                Some(l) => parse(l, 1, 22)?,
                None => DEFAULT_ZSTD_LEVEL,
            })),
            "zlib" => Ok(Compression::Zlib(match level {
                Some(l) => parse(l, 0, 9)? as u32,
                None => DEFAULT_ZLIB_LEVEL,
            })),
            "none" if level.is_none() => Ok(Compression::None),
            "lz4" if level.is_none() => Ok(Compression::Lz4),
            "lz4" => Err(format!("lz4 has no levels: `{s}` (use lz4)")),
            _ => Err(format!(
                "unknown compression `{s}` (expected zstd[:LEVEL], zlib[:LEVEL], lz4 or none)"
            )),
        }
    }
}

/// One chunk index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Offset of the stored bytes from the start of the heap.
    pub offset: u64,
    /// Length of the stored bytes.
    pub stored_len: u32,
    /// Length after decompression.
    pub raw_len: u32,
    /// How the bytes are stored.
    pub method: Method,
    /// BLAKE3 hash of the stored bytes.
    pub hash: [u8; 32],
}

impl ChunkInfo {
    pub(crate) fn to_bytes(self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        put_u64(&mut b, 0, self.offset);
        put_u32(&mut b, 8, self.stored_len);
        put_u32(&mut b, 12, self.raw_len);
        b[16] = self.method as u8;
        b[24..56].copy_from_slice(&self.hash);
        b
    }

    /// Parses and checks one entry against the heap length and chunk size.
    /// `minor` is the archive's format minor version (which methods it may use).
    pub(crate) fn parse(
        b: &[u8],
        chunk: ChunkId,
        heap_len: u64,
        chunk_size: u32,
        minor: u16,
    ) -> Result<Self> {
        let what = format!("chunk index entry {chunk}");
        let bad = |reason: String| Error::corrupt(what.as_str(), reason);
        let offset = u64_at(b, 0);
        let stored_len = u32_at(b, 8);
        let raw_len = u32_at(b, 12);
        let method = Method::parse(b[16], &what, minor)?;
        if b[17..24].iter().any(|&x| x != 0) {
            return Err(bad("reserved bytes are not zero".into()));
        }
        if raw_len == 0 || raw_len > chunk_size {
            return Err(bad(format!(
                "uncompressed length {raw_len} not in 1..={chunk_size}"
            )));
        }
        if stored_len == 0 || (method == Method::None && stored_len != raw_len) {
            return Err(bad(format!("stored length {stored_len} is impossible")));
        }
        if offset
            .checked_add(stored_len as u64)
            .is_none_or(|end| end > heap_len)
        {
            return Err(bad(format!(
                "bytes {offset}+{stored_len} lie outside the heap of {heap_len} bytes"
            )));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[24..56]);
        Ok(ChunkInfo {
            offset,
            stored_len,
            raw_len,
            method,
            hash,
        })
    }
}

thread_local! {
    static ZSTD_C: RefCell<std::collections::HashMap<i32, zstd::bulk::Compressor<'static>>> = RefCell::new(std::collections::HashMap::new());
    static ZSTD_D: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses one chunk; returns the method actually used (raw when compression does not
/// shrink the chunk) and the stored bytes.
pub(crate) fn compress(raw: &[u8], c: Compression) -> std::io::Result<(Method, Vec<u8>)> {
    let out = match c {
        Compression::None => None,
        Compression::Zstd(level) => ZSTD_C.with(|cell| -> std::io::Result<_> {
            let mut map = cell.borrow_mut();
            // Already-compressed data (.gz, .png, .jpg, ...) does not shrink at any level: a
            // fast level-1 probe finds it, and the expensive levels are spent only on data
            // that pays them back. (A probe that does not fit in 97% of the chunk means
            // incompressible: the chunk is stored raw.)
            //
            // The probe starts with a sample of the chunk, an eighth of the cost: when the
            // sample shrinks, the chunk is taken as compressible (the final size check still
            // stores raw whatever does not shrink). Only a sample that does not shrink is
            // confirmed on the whole chunk, which may hold compressible data further on.
            if level >= PROBE_FROM_LEVEL {
                let probe = compressor(&mut map, 1)?;
                let shrinks = |probe: &mut zstd::bulk::Compressor<'static>, part: &[u8]| {
                    let mut dst = Vec::with_capacity(part.len() * 97 / 100);
                    probe.compress_to_buffer(part, &mut dst).is_ok()
                };
                let sample = &raw[..raw.len().min(PROBE_SAMPLE)];
                if !shrinks(probe, sample) && (sample.len() == raw.len() || !shrinks(probe, raw)) {
                    return Ok(None);
                }
            }
            let comp = compressor(&mut map, level)?;
            let mut dst = Vec::with_capacity(raw.len());
            // A result that does not fit in raw.len() bytes does not shrink: store raw.
            match comp.compress_to_buffer(raw, &mut dst) {
                Ok(_) => Ok(Some((Method::Zstd, dst))),
                Err(_) => Ok(None),
            }
        })?,
        Compression::Zlib(level) => {
            let mut enc = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(raw.len() / 2),
                flate2::Compression::new(level),
            );
            enc.write_all(raw)?;
            Some((Method::Zlib, enc.finish()?))
        }
        // No probe: lz4 gives up on incompressible input faster than a zstd level-1 probe
        // would look at it, so it is its own probe. Like every method, what does not
        // shrink is stored raw (below).
        Compression::Lz4 => Some((Method::Lz4, lz4_flex::block::compress(raw))),
    };
    Ok(match out {
        Some((m, v)) if v.len() < raw.len() => (m, v),
        _ => (Method::None, raw.to_vec()),
    })
}

/// zstd levels from which a chunk is first probed at level 1 (below, the probe costs about
/// as much as it saves).
const PROBE_FROM_LEVEL: i32 = 6;

/// Bytes of a chunk probed first.
const PROBE_SAMPLE: usize = 32 * 1024;

fn compressor<'m>(
    map: &'m mut std::collections::HashMap<i32, zstd::bulk::Compressor<'static>>,
    level: i32,
) -> std::io::Result<&'m mut zstd::bulk::Compressor<'static>> {
    match map.entry(level) {
        std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
        std::collections::hash_map::Entry::Vacant(e) => {
            Ok(e.insert(zstd::bulk::Compressor::new(level)?))
        }
    }
}

/// Checks the stored bytes of a chunk against its hash, then decompresses them into `out`
/// (cleared first). A chunk that fails the hash is never decompressed.
pub(crate) fn verify_and_decompress(
    chunk: ChunkId,
    info: &ChunkInfo,
    stored: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    if blake3::hash(stored).as_bytes() != &info.hash {
        return Err(Error::ChunkHash { chunk });
    }
    decompress(chunk, info, stored, out)
}

/// Decompresses a framed TOC of exactly `raw_len` bytes.
pub(crate) fn decompress_toc(method: Method, body: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let info = ChunkInfo {
        offset: 0,
        stored_len: body.len() as u32,
        raw_len: raw_len as u32,
        method,
        hash: [0; 32],
    };
    if raw_len > u32::MAX as usize || body.len() > u32::MAX as usize {
        return Err(Error::corrupt("toc frame", "larger than 4 GiB"));
    }
    let mut out = Vec::new();
    decompress(u32::MAX, &info, body, &mut out).map_err(|e| match e {
        Error::Decompress { reason, .. } => {
            Error::corrupt("toc frame", format!("does not decompress: {reason}"))
        }
        other => other,
    })?;
    Ok(out)
}

/// Decodes the lz4 block `stored` into `out` (of the chunk's raw length) with the reference
/// library's `LZ4_decompress_safe`, which never reads past `stored` nor writes past `out`
/// whatever the block holds. Returns how many bytes it wrote.
fn lz4_decode(stored: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    // Both lengths fit: a chunk is at most 1 MiB (checked when its index entry is parsed).
    let (Ok(src_len), Ok(dst_len)) = (i32::try_from(stored.len()), i32::try_from(out.len())) else {
        return Err("lz4: block larger than 2 GiB".into());
    };
    // SAFETY: the pointers and lengths are those of two live, non-overlapping slices,
    // `out` writable; LZ4_decompress_safe reads at most `src_len` bytes of the one and
    // writes at most `dst_len` bytes of the other, and returns a negative number for a
    // malformed block (lz4.h: "protected against malicious data packets").
    let n = unsafe {
        lz4_sys::LZ4_decompress_safe(
            stored.as_ptr().cast(),
            out.as_mut_ptr().cast(),
            src_len,
            dst_len,
        )
    };
    usize::try_from(n).map_err(|_| "lz4: malformed block".to_string())
}

/// Decompresses `stored` into `out`, which ends up holding exactly the chunk's bytes:
/// whatever `out` held is overwritten, and its allocation is reused (a recycled buffer
/// that already holds `raw_len` bytes is written in place, not cleared first).
fn decompress(chunk: ChunkId, info: &ChunkInfo, stored: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let raw_len = info.raw_len as usize;
    let fail = |reason: String| Error::Decompress { chunk, reason };
    match info.method {
        Method::None => {
            out.clear();
            out.extend_from_slice(stored)
        }
        Method::Zstd => {
            // Written from the start of the allocation, whatever `out` held.
            out.clear();
            out.reserve_exact(raw_len);
            ZSTD_D.with(|cell| -> Result<()> {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| fail(e.to_string()))?);
                }
                let d = slot.as_mut().expect("just set");
                d.decompress_to_buffer(stored, out)
                    .map_err(|e| fail(e.to_string()))?;
                Ok(())
            })?;
        }
        Method::Zlib => {
            out.clear();
            out.reserve_exact(raw_len);
            let mut d = flate2::Decompress::new(true);
            // Decompress into at most raw_len + 1 bytes so a stream that is too long is caught
            // without ever allocating more than that.
            out.resize(raw_len + 1, 0);
            let status = d
                .decompress(stored, out, flate2::FlushDecompress::Finish)
                .map_err(|e| fail(e.to_string()))?;
            out.truncate(d.total_out() as usize);
            if status != flate2::Status::StreamEnd {
                return Err(fail("zlib stream does not end where the chunk does".into()));
            }
        }
        Method::Lz4 => {
            // The block carries no length: it is decoded into exactly raw_len bytes, and a
            // block that would write more fails (never a write or read out of bounds); one
            // that writes less is caught below.
            // A recycled buffer is written over as it is: zeroing it first would be a
            // pass over the whole chunk for nothing.
            out.truncate(raw_len);
            out.resize(raw_len, 0);
            let n = lz4_decode(stored, out).map_err(fail)?;
            out.truncate(n);
        }
    }
    if out.len() != raw_len {
        return Err(fail(format!(
            "decompressed to {} bytes, expected {raw_len}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parses() {
        assert_eq!(
            "zstd".parse::<Compression>().unwrap(),
            Compression::default()
        );
        assert_eq!(
            "zstd:19".parse::<Compression>().unwrap(),
            Compression::Zstd(19)
        );
        assert_eq!(
            "zlib:9".parse::<Compression>().unwrap(),
            Compression::Zlib(9)
        );
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("zstd:23".parse::<Compression>().is_err());
        assert_eq!("lz4".parse::<Compression>().unwrap(), Compression::Lz4);
        assert_eq!(Compression::Lz4.to_string(), "lz4");
        assert!("lz4:9".parse::<Compression>().is_err());
        assert!("lz5".parse::<Compression>().is_err());
        assert!("none:3".parse::<Compression>().is_err());
    }

    #[test]
    fn round_trips_each_method() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for c in [
            Compression::None,
            Compression::Zstd(3),
            Compression::Zlib(6),
            Compression::Lz4,
        ] {
            let (m, stored) = compress(&raw, c).unwrap();
            assert_eq!(m, c.method());
            let info = ChunkInfo {
                offset: 0,
                stored_len: stored.len() as u32,
                raw_len: raw.len() as u32,
                method: m,
                hash: *blake3::hash(&stored).as_bytes(),
            };
            let mut out = Vec::new();
            verify_and_decompress(0, &info, &stored, &mut out).unwrap();
            assert_eq!(out, raw);
            // Into a used buffer (as the daemon recycles them): longer, shorter, the
            // same length with other bytes. Exactly the chunk, nothing of the old bytes.
            for used in [vec![0xaa; 150_000], vec![0xbb; 1_000], vec![0xcc; 100_000]] {
                let mut out = used;
                verify_and_decompress(0, &info, &stored, &mut out).unwrap();
                assert!(out == raw, "{c:?} into a used buffer");
            }
            let mut bad = stored.clone();
            bad[stored.len() / 2] ^= 1;
            assert!(matches!(
                verify_and_decompress(0, &info, &bad, &mut out),
                Err(Error::ChunkHash { chunk: 0 })
            ));
        }
    }

    #[test]
    fn incompressible_is_stored_raw() {
        let mut raw = vec![0u8; 65536];
        let mut x = 0x1234_5678u32;
        for b in raw.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        assert_eq!(
            compress(&raw, Compression::Zstd(19)).unwrap().0,
            Method::None
        );
        assert_eq!(
            compress(&raw, Compression::Zlib(9)).unwrap().0,
            Method::None
        );
        let (m, stored) = compress(&raw, Compression::Lz4).unwrap();
        assert_eq!((m, &stored[..]), (Method::None, &raw[..]));
    }

    fn lz4_info(stored: &[u8], raw_len: u32) -> ChunkInfo {
        ChunkInfo {
            offset: 0,
            stored_len: stored.len() as u32,
            raw_len,
            method: Method::Lz4,
            hash: *blake3::hash(stored).as_bytes(),
        }
    }

    #[test]
    fn lz4_garbage_and_damaged_blocks_never_write_outside_the_chunk() {
        let raw: Vec<u8> = (0..65_536u32).map(|i| ((i / 7) % 251) as u8).collect();
        let good = lz4_flex::block::compress(&raw);
        // A small xorshift: the same cases on every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for case in 0..3000 {
            let block: Vec<u8> = if case % 2 == 0 {
                (0..(next() % 600) as usize).map(|_| next() as u8).collect()
            } else {
                let mut b = good.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % b.len();
                    b[at] = next() as u8;
                }
                b.truncate(b.len() - (next() as usize % 8));
                b
            };
            // The chunk between two guard areas that must stay as they are.
            let mut mem = vec![0x5au8; 4096 + raw.len() + 4096];
            let (lo, rest) = mem.split_at_mut(4096);
            let (out, hi) = rest.split_at_mut(raw.len());
            if let Ok(n) = lz4_decode(&block, out) {
                assert!(n <= raw.len());
            }
            assert!(
                lo.iter().chain(hi.iter()).all(|&b| b == 0x5a),
                "case {case}"
            );
        }
        let mut out = vec![0u8; raw.len()];
        assert_eq!(lz4_decode(&good, &mut out), Ok(raw.len()));
        assert_eq!(out, raw);
    }

    #[test]
    fn lz4_of_the_wrong_length_is_an_error() {
        let raw: Vec<u8> = (0..70_000u32).map(|i| (i % 13) as u8).collect();
        let stored = lz4_flex::block::compress(&raw);
        let mut out = vec![7u8; 10];
        for claimed in [raw.len() as u32 - 1, raw.len() as u32 + 1, 1] {
            let e = verify_and_decompress(3, &lz4_info(&stored, claimed), &stored, &mut out)
                .unwrap_err();
            assert!(matches!(e, Error::Decompress { chunk: 3, .. }), "{e}");
        }
        // Cut short, the block decodes to fewer bytes or fails; either way an error.
        for cut in [1, stored.len() / 2, stored.len() - 1] {
            let s = &stored[..cut];
            let e =
                verify_and_decompress(3, &lz4_info(s, raw.len() as u32), s, &mut out).unwrap_err();
            assert!(matches!(e, Error::Decompress { chunk: 3, .. }), "{e}");
        }
    }

    #[test]
    fn method_bytes_are_checked_against_the_version() {
        assert_eq!(Method::parse(3, "chunk 1", 1).unwrap(), Method::Lz4);
        assert_eq!(Method::parse(1, "chunk 1", 0).unwrap(), Method::Zstd);
        let e = Method::parse(3, "chunk 1", 0).unwrap_err().to_string();
        assert!(e.contains("needs format 1.1"), "{e}");
        let e = Method::parse(4, "chunk index entry 9", 2)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "chunk index entry 9: unknown compression method 4 (the archive is format 1.2; \
             this reader knows methods 0 to 3, up to format 1.1)"
        );
    }
}
