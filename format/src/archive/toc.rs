//! The table of contents: flat arrays of inodes, directory entries and extended attributes,
//! plus a string table. The TOC section is a 16-byte frame header (method, raw length)
//! followed by the TOC, compressed with the archive's method (or stored raw, then read in
//! place from the mapped metadata).
//!
//! ```text
//! toc header   32 bytes: n_inodes u32, n_dirents u32, n_xattrs u32, 0 u32, strings_len u64, 0 u64
//! inodes       n_inodes  x 48 bytes
//! dirents      n_dirents x 12 bytes, then zero padding to a multiple of 8
//! xattrs       n_xattrs  x 16 bytes
//! strings      strings_len bytes (names, symlink targets, xattr names and values)
//! ```

use super::le::*;
use super::{align8, check_name, EntryId, TARGET_MAX, TOC_MAX};
use crate::error::{Error, Result};

pub(crate) const TOC_HEADER_LEN: usize = 32;
pub(crate) const INODE_LEN: usize = 48;
pub(crate) const DIRENT_LEN: usize = 12;
pub(crate) const XATTR_LEN: usize = 16;

pub(crate) const S_IFMT: u32 = 0o170000;
pub(crate) const S_IFREG: u32 = 0o100000;
pub(crate) const S_IFDIR: u32 = 0o040000;
pub(crate) const S_IFLNK: u32 = 0o120000;

/// Length of the frame header that starts the TOC section.
pub(crate) const FRAME_LEN: usize = 16;

/// Frames a raw TOC: compresses it with `c` (stored raw if that does not shrink it).
pub(crate) fn pack(raw: &[u8], c: super::chunk::Compression) -> std::io::Result<Vec<u8>> {
    use super::chunk::{compress, Compression, Method};
    // The TOC is compressed on one thread: cap the level so a big TOC stays quick.
    let c = match c {
        Compression::Zstd(l) => Compression::Zstd(l.min(15)),
        other => other,
    };
    let (method, body) = if raw.is_empty() {
        (Method::None, Vec::new())
    } else {
        compress(raw, c)?
    };
    let mut out = Vec::with_capacity(FRAME_LEN + body.len());
    out.push(method as u8);
    out.extend_from_slice(&[0u8; 7]);
    out.extend_from_slice(&(raw.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Where a framed TOC's raw bytes are: in place (stored raw), or decompressed.
pub(crate) enum Unpacked {
    /// The raw TOC is this range of the section.
    InPlace(std::ops::Range<usize>),
    /// The decompressed TOC.
    Owned(Vec<u8>),
}

/// Reads the frame of a TOC section.
/// `minor` is the archive's format minor version (which methods it may use).
pub(crate) fn unpack(section: &[u8], minor: u16) -> Result<Unpacked> {
    use super::chunk::{decompress_toc, Method};
    if section.len() < FRAME_LEN {
        return Err(Error::Truncated {
            section: "toc",
            offset: 0,
            need: FRAME_LEN as u64,
            len: section.len() as u64,
        });
    }
    let method = Method::parse(section[0], "toc frame", minor)?;
    if section[1..8].iter().any(|&b| b != 0) {
        return Err(Error::corrupt("toc frame", "reserved bytes are not zero"));
    }
    let raw_len = u64_at(section, 8);
    let body = &section[FRAME_LEN..];
    match method {
        Method::None => {
            if raw_len != body.len() as u64 {
                return Err(Error::corrupt(
                    "toc frame",
                    format!("raw length {raw_len} but {} bytes stored", body.len()),
                ));
            }
            Ok(Unpacked::InPlace(FRAME_LEN..section.len()))
        }
        _ => {
            // Bound what a hostile frame can make us allocate: a real TOC compresses far
            // less than 256:1.
            if raw_len > TOC_MAX {
                return Err(Error::corrupt(
                    "toc frame",
                    format!("raw length {raw_len} exceeds the limit of {TOC_MAX} (512 MiB)"),
                ));
            }
            let limit = (body.len() as u64)
                .saturating_mul(256)
                .saturating_add(1 << 20);
            if raw_len > limit {
                return Err(Error::corrupt(
                    "toc frame",
                    format!(
                        "raw length {raw_len} is implausible for {} compressed bytes",
                        body.len()
                    ),
                ));
            }
            Ok(Unpacked::Owned(decompress_toc(
                method,
                body,
                raw_len as usize,
            )?))
        }
    }
}

/// Longest xattr value (Linux's limit).
pub const XATTR_VALUE_MAX: usize = 65536;

/// One inode record, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RawInode {
    pub mode: u32,
    pub nlink: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattr_first: u32,
    pub xattr_count: u32,
    /// file: first chunk; dir: first dirent; symlink: target string offset
    pub a: u32,
    /// file: offset in first chunk; dir: dirent count; symlink: target length
    pub b: u32,
    /// dir: parent inode; otherwise 0
    pub c: u32,
    /// file: size; otherwise 0
    pub d: u64,
}

impl RawInode {
    pub(crate) fn to_bytes(self) -> [u8; INODE_LEN] {
        let mut r = [0u8; INODE_LEN];
        put_u32(&mut r, 0, self.mode);
        put_u32(&mut r, 4, self.nlink);
        put_u64(&mut r, 8, self.mtime as u64);
        put_u32(&mut r, 16, self.mtime_nsec);
        put_u32(&mut r, 20, self.xattr_first);
        put_u32(&mut r, 24, self.xattr_count);
        put_u32(&mut r, 28, self.a);
        put_u32(&mut r, 32, self.b);
        put_u32(&mut r, 36, self.c);
        put_u64(&mut r, 40, self.d);
        r
    }

    fn parse(r: &[u8]) -> RawInode {
        RawInode {
            mode: u32_at(r, 0),
            nlink: u32_at(r, 4),
            mtime: i64_at(r, 8),
            mtime_nsec: u32_at(r, 16),
            xattr_first: u32_at(r, 20),
            xattr_count: u32_at(r, 24),
            a: u32_at(r, 28),
            b: u32_at(r, 32),
            c: u32_at(r, 36),
            d: u64_at(r, 40),
        }
    }

    pub(crate) fn kind_bits(&self) -> u32 {
        self.mode & S_IFMT
    }
}

/// Where the tables lie inside the TOC section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TocLayout {
    pub n_inodes: u32,
    pub n_dirents: u32,
    pub n_xattrs: u32,
    pub inodes: usize,
    pub dirents: usize,
    pub xattrs: usize,
    pub strings: usize,
    pub strings_len: usize,
}

impl TocLayout {
    pub(crate) fn compute(
        n_inodes: u32,
        n_dirents: u32,
        n_xattrs: u32,
        strings_len: u64,
    ) -> (TocLayout, u64) {
        let inodes = TOC_HEADER_LEN as u64;
        let dirents = inodes + n_inodes as u64 * INODE_LEN as u64;
        let xattrs = align8(dirents + n_dirents as u64 * DIRENT_LEN as u64);
        let strings = xattrs + n_xattrs as u64 * XATTR_LEN as u64;
        let total = strings + strings_len;
        (
            TocLayout {
                n_inodes,
                n_dirents,
                n_xattrs,
                inodes: inodes as usize,
                dirents: dirents as usize,
                xattrs: xattrs as usize,
                strings: strings as usize,
                strings_len: strings_len as usize,
            },
            total,
        )
    }

    pub(crate) fn parse(toc: &[u8]) -> Result<TocLayout> {
        if toc.len() < TOC_HEADER_LEN {
            return Err(Error::Truncated {
                section: "toc",
                offset: 0,
                need: TOC_HEADER_LEN as u64,
                len: toc.len() as u64,
            });
        }
        let (n_inodes, n_dirents, n_xattrs) = (u32_at(toc, 0), u32_at(toc, 4), u32_at(toc, 8));
        let strings_len = u64_at(toc, 16);
        if u32_at(toc, 12) != 0 || u64_at(toc, 24) != 0 {
            return Err(Error::corrupt("toc header", "reserved fields are not zero"));
        }
        if strings_len > u32::MAX as u64 {
            return Err(Error::corrupt(
                "toc header",
                "string table larger than 4 GiB",
            ));
        }
        if n_inodes == 0 {
            return Err(Error::corrupt("toc header", "no root directory"));
        }
        let (layout, total) = TocLayout::compute(n_inodes, n_dirents, n_xattrs, strings_len);
        if total != toc.len() as u64 {
            return Err(Error::corrupt(
                "toc header",
                format!(
                    "{n_inodes} inodes, {n_dirents} entries, {n_xattrs} xattrs and {strings_len} string bytes need {total} bytes, the section has {}",
                    toc.len()
                ),
            ));
        }
        Ok(layout)
    }
}

/// A validated view of the TOC bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Toc<'a> {
    pub bytes: &'a [u8],
    pub l: TocLayout,
}

impl<'a> Toc<'a> {
    #[inline]
    pub(crate) fn inode(&self, i: EntryId) -> RawInode {
        let off = self.l.inodes + i as usize * INODE_LEN;
        RawInode::parse(&self.bytes[off..off + INODE_LEN])
    }

    /// (name offset, name length, target inode) of dirent `j`.
    #[inline]
    pub(crate) fn dirent(&self, j: u32) -> (u32, u16, EntryId) {
        let off = self.l.dirents + j as usize * DIRENT_LEN;
        let r = &self.bytes[off..off + DIRENT_LEN];
        (u32_at(r, 0), u16_at(r, 8), u32_at(r, 4))
    }

    #[inline]
    pub(crate) fn dirent_name(&self, j: u32) -> &'a [u8] {
        let (off, len, _) = self.dirent(j);
        self.string(off, len as u32).unwrap_or(b"")
    }

    /// (name, value) of xattr record `k`.
    pub(crate) fn xattr(&self, k: u32) -> (&'a [u8], &'a [u8]) {
        let off = self.l.xattrs + k as usize * XATTR_LEN;
        let r = &self.bytes[off..off + XATTR_LEN];
        let name = self
            .string(u32_at(r, 0), u16_at(r, 8) as u32)
            .unwrap_or(b"");
        let value = self.string(u32_at(r, 4), u32_at(r, 12)).unwrap_or(b"");
        (name, value)
    }

    #[inline]
    pub(crate) fn string(&self, off: u32, len: u32) -> Option<&'a [u8]> {
        let start = off as usize;
        let end = start.checked_add(len as usize)?;
        if end > self.l.strings_len {
            return None;
        }
        Some(&self.bytes[self.l.strings + start..self.l.strings + end])
    }

    /// Checks every record once, so that lookups, walks and reads can trust the TOC:
    /// every index in range, names legal and sorted, the directory graph a tree rooted at
    /// entry 0 (each directory linked exactly once, from a lower-numbered directory, so no
    /// cycle is possible), and each file's bytes within the chunk index.
    pub(crate) fn validate(&self, n_chunks: u32, chunk_size: u32) -> Result<()> {
        let n = self.l.n_inodes;
        let root = self.inode(0);
        if root.kind_bits() != S_IFDIR {
            return Err(Error::corrupt("toc entry 0", "the root is not a directory"));
        }
        let mut linked = vec![0u64; (n as usize).div_ceil(64)];
        // Directories' entry ranges (and entries' xattr ranges), taken in entry order, must
        // not overlap: that bounds the work below by the number of records, where shared
        // ranges would let a small hostile TOC cost O(entries x records) to check.
        let (mut next_dirent, mut next_xattr) = (0u32, 0u32);
        for i in 0..n {
            let ino = self.inode(i);
            let bad = |reason: String| Error::corrupt(format!("toc entry {i}"), reason);
            if ino.mode & !0o177777 != 0 {
                return Err(bad(format!("mode {:#o} has unknown bits", ino.mode)));
            }
            if ino.mtime_nsec >= 1_000_000_000 {
                return Err(bad(format!(
                    "mtime nanoseconds {} out of range",
                    ino.mtime_nsec
                )));
            }
            self.validate_xattrs(i, &ino, &mut next_xattr)?;
            match ino.kind_bits() {
                S_IFDIR => {
                    if ino.d != 0 {
                        return Err(bad("directory has a size field".into()));
                    }
                    if i == 0 && ino.c != 0 {
                        return Err(bad("root's parent is not itself".into()));
                    }
                    let end = ino.a as u64 + ino.b as u64;
                    if end > self.l.n_dirents as u64 {
                        return Err(bad(format!(
                            "entries {}..{end} beyond the {} directory entries",
                            ino.a, self.l.n_dirents
                        )));
                    }
                    if ino.b > 0 {
                        if ino.a < next_dirent {
                            return Err(bad(format!(
                                "entries {}..{end} overlap those of an earlier directory",
                                ino.a
                            )));
                        }
                        next_dirent = end as u32;
                    }
                    let mut prev: Option<&[u8]> = None;
                    for j in ino.a..ino.a + ino.b {
                        let (noff, nlen, t) = self.dirent(j);
                        let off = self.l.dirents + j as usize * DIRENT_LEN;
                        if u16_at(self.bytes, off + 10) != 0 {
                            return Err(bad(format!(
                                "directory entry {j}: reserved bytes not zero"
                            )));
                        }
                        let name = self.string(noff, nlen as u32).ok_or_else(|| {
                            bad(format!(
                                "directory entry {j}: name outside the string table"
                            ))
                        })?;
                        check_name(name).map_err(|r| {
                            bad(format!(
                                "directory entry {j} {:?}: {r}",
                                String::from_utf8_lossy(name)
                            ))
                        })?;
                        if prev.is_some_and(|p| p >= name) {
                            return Err(bad(format!(
                                "directory entries not sorted or duplicated at {:?}",
                                String::from_utf8_lossy(name)
                            )));
                        }
                        prev = Some(name);
                        if t >= n {
                            return Err(bad(format!(
                                "directory entry {j} points to entry {t} of {n}"
                            )));
                        }
                        let child = self.inode(t);
                        if child.kind_bits() == S_IFDIR {
                            if t <= i || child.c != i {
                                return Err(bad(format!(
                                    "directory entry {j} links directory {t} whose parent is {}",
                                    child.c
                                )));
                            }
                            let (w, bit) = ((t / 64) as usize, 1u64 << (t % 64));
                            if linked[w] & bit != 0 {
                                return Err(bad(format!("directory {t} is linked twice")));
                            }
                            linked[w] |= bit;
                        }
                    }
                }
                S_IFREG => {
                    if ino.c != 0 {
                        return Err(bad("file has a parent field".into()));
                    }
                    if ino.d == 0 {
                        if ino.a != 0 || ino.b != 0 {
                            return Err(bad("empty file points into the heap".into()));
                        }
                    } else {
                        if ino.b >= chunk_size {
                            return Err(bad(format!(
                                "offset {} in chunk beyond the chunk size",
                                ino.b
                            )));
                        }
                        // u128: a hostile size near 2^64 must not wrap around.
                        let last = ino.a as u128
                            + (ino.b as u128 + ino.d as u128 - 1) / chunk_size as u128;
                        if last >= n_chunks as u128 {
                            return Err(bad(format!(
                                "file bytes reach chunk {last} of {n_chunks}"
                            )));
                        }
                    }
                }
                S_IFLNK => {
                    if ino.c != 0 || ino.d != 0 {
                        return Err(bad("symlink has parent or size fields".into()));
                    }
                    let t = self
                        .string(ino.a, ino.b)
                        .ok_or_else(|| bad("symlink target outside the string table".into()))?;
                    if t.is_empty() || t.len() > TARGET_MAX || t.contains(&0) {
                        return Err(bad("symlink target empty, too long or contains NUL".into()));
                    }
                }
                other => return Err(bad(format!("unsupported file type {other:#o}"))),
            }
        }
        for i in 1..n {
            if self.inode(i).kind_bits() == S_IFDIR
                && linked[(i / 64) as usize] & (1 << (i % 64)) == 0
            {
                return Err(Error::corrupt(
                    format!("toc entry {i}"),
                    "directory is not linked from its parent",
                ));
            }
        }
        Ok(())
    }

    /// Checks every file's bytes against the chunks that hold them, as a read would
    /// (FORMAT.md §4.2): each chunk a file passes through but its last is full
    /// (`raw_len = chunk_size`), and its last byte lies inside its last chunk. Needs a
    /// TOC that passed [`Toc::validate`] and the `raw_len` of every chunk. Linear in the
    /// entries plus the chunks, however the files share chunks.
    pub(crate) fn check_file_ranges(&self, raw_lens: &[u32], chunk_size: u32) -> Result<()> {
        // short[c]: how many of chunks 0..c are not full.
        let mut short = Vec::with_capacity(raw_lens.len() + 1);
        short.push(0u32);
        let mut n_short = 0u32;
        for &r in raw_lens {
            n_short += (r != chunk_size) as u32;
            short.push(n_short);
        }
        let cs = chunk_size as u64;
        for i in 0..self.l.n_inodes {
            let ino = self.inode(i);
            if ino.kind_bits() != S_IFREG || ino.d == 0 {
                continue;
            }
            // Checked by `validate`: b < chunk_size, and the last chunk exists.
            let end = ino.b as u64 + ino.d; // one past the last byte, from chunk a's start
            let (first, last) = (ino.a as usize, ino.a as usize + ((end - 1) / cs) as usize);
            let bad = |c: usize, need: u64| {
                let start = if c == first { ino.b as u64 } else { 0 };
                Error::corrupt(
                    format!("toc entry {i} ({})", self.path_lossy(i)),
                    format!(
                        "file needs bytes {start}..{need} of chunk {c}, which has {}",
                        raw_lens[c]
                    ),
                )
            };
            if short[last] != short[first] {
                let c = (first..last)
                    .find(|&c| raw_lens[c] != chunk_size)
                    .unwrap_or(first);
                return Err(bad(c, cs));
            }
            let need = (end - 1) % cs + 1;
            if need > raw_lens[last] as u64 {
                return Err(bad(last, need));
            }
        }
        Ok(())
    }

    /// A path of entry `e` (`usr/bin/x`), for messages: its first name, lossily decoded.
    /// Needs a TOC that passed [`Toc::validate`]; costs one pass over the directories.
    pub(crate) fn path_lossy(&self, e: EntryId) -> String {
        // (parent, dirent) of the first name of each entry.
        let mut name_of: Vec<Option<(EntryId, u32)>> = vec![None; self.l.n_inodes as usize];
        for d in 0..self.l.n_inodes {
            let ino = self.inode(d);
            if ino.kind_bits() != S_IFDIR {
                continue;
            }
            for j in ino.a..ino.a + ino.b {
                let t = self.dirent(j).2 as usize;
                if name_of[t].is_none() {
                    name_of[t] = Some((d, j));
                }
            }
        }
        let mut names = Vec::new();
        let mut cur = e;
        // The directory graph is a tree (checked), so this ends at the root; the bound is
        // only a second guard.
        while let Some((parent, j)) = name_of[cur as usize] {
            if names.len() > self.l.n_inodes as usize {
                break;
            }
            names.push(self.dirent_name(j));
            cur = parent;
        }
        names.reverse();
        String::from_utf8_lossy(&names.join(&b'/')).into_owned()
    }

    fn validate_xattrs(&self, i: EntryId, ino: &RawInode, next: &mut u32) -> Result<()> {
        let bad = |reason: String| Error::corrupt(format!("toc entry {i}"), reason);
        let end = ino.xattr_first as u64 + ino.xattr_count as u64;
        if end > self.l.n_xattrs as u64 {
            return Err(bad(format!(
                "xattrs {}..{end} beyond the {} records",
                ino.xattr_first, self.l.n_xattrs
            )));
        }
        if ino.xattr_count > 0 {
            if ino.xattr_first < *next {
                return Err(bad(format!(
                    "xattrs {}..{end} overlap those of an earlier entry",
                    ino.xattr_first
                )));
            }
            *next = end as u32;
        }
        let mut prev: Option<&[u8]> = None;
        for k in ino.xattr_first..ino.xattr_first + ino.xattr_count {
            let off = self.l.xattrs + k as usize * XATTR_LEN;
            let r = &self.bytes[off..off + XATTR_LEN];
            if u16_at(r, 10) != 0 {
                return Err(bad(format!("xattr {k}: reserved bytes not zero")));
            }
            let name = self
                .string(u32_at(r, 0), u16_at(r, 8) as u32)
                .ok_or_else(|| bad(format!("xattr {k}: name outside the string table")))?;
            let vlen = u32_at(r, 12);
            if vlen as usize > XATTR_VALUE_MAX || self.string(u32_at(r, 4), vlen).is_none() {
                return Err(bad(format!(
                    "xattr {k}: value outside the string table or too long"
                )));
            }
            if name.is_empty() || name.len() > 255 || name.contains(&0) || !name.contains(&b'.') {
                return Err(bad(format!("xattr {k}: invalid name")));
            }
            if prev.is_some_and(|p| p >= name) {
                return Err(bad(format!("xattr {k}: names not sorted or duplicated")));
            }
            prev = Some(name);
        }
        Ok(())
    }
}
