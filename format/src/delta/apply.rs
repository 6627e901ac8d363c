//! Applying a delta: the new package is made in a temp file next to the output, every
//! chunk checked against its hash as it is written, the whole opened and checked (id,
//! signature, trust when keys are given), and only then renamed into place.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use super::build::read_refs;
use super::wire::{self, corrupt, Body, HEADER_LEN};
use super::{heap_pieces, read_header, Piece};
use crate::archive::chunk::{self, ChunkInfo, INDEX_ENTRY_LEN};
use crate::archive::header::Header;
use crate::archive::sign::{Trailer, TRAILER_LEN};
use crate::archive::{Archive, ChunkId, PackageId};
use crate::error::{Error, Result};
use crate::keys::TrustedKeys;

/// What [`apply`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new package's id (checked against its metadata, and its signature).
    pub id: PackageId,
    /// The id of the package the delta was applied to.
    pub old_id: PackageId,
    /// Size of the package written.
    pub file_size: u64,
}

/// Applies the delta file `delta` to `old`, writing the new package to `out`.
///
/// A delta made from another package is refused before anything is written
/// ([`Error::DeltaWrongBase`], naming both ids). The new package is written to a temp
/// file in `out`'s directory; every chunk is checked against the new chunk index as it
/// is written; at the end the file is opened as any package is (its metadata must hash
/// to the signed id; with `keys`, its signer must be trusted), fsynced, and renamed to
/// `out`. On any error nothing is left behind.
pub fn apply(
    old: &Archive,
    delta: &Path,
    out: &Path,
    keys: Option<&TrustedKeys>,
) -> Result<Applied> {
    let f = crate::archive::open_regular(delta).map_err(|e| Error::io(delta, e))?;
    let len = f.metadata().map_err(|e| Error::io(delta, e))?.len();
    let h = read_header(&f, delta, len)?;
    if h.old_id != old.id() {
        return Err(Error::DeltaWrongBase {
            wanted: h.old_id.to_string(),
            actual: old.id().to_string(),
        });
    }
    check_sum(&f, delta, len)?;
    let body_end = HEADER_LEN as u64 + h.body_len;
    let mut r = BufReader::with_capacity(1 << 20, &f);
    r.seek(SeekFrom::Start(HEADER_LEN as u64))
        .map_err(|e| Error::io(delta, e))?;
    let mut body = Body::new(r, HEADER_LEN as u64, body_end);

    // The metadata: its hash must be the new id the delta names.
    let stored = body.bytes(h.meta_stored_len, "the metadata")?;
    let meta = match h.meta_encoding {
        wire::META_RAW => stored,
        wire::META_ZSTD_PATCH => unpatch_bounded(old.metadata_bytes(), &stored, h.meta_len)?,
        _ => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&stored[..8]);
            let exp_len = u64::from_le_bytes(len);
            if exp_len > super::META_MAX + crate::archive::TOC_MAX {
                return Err(corrupt(format!("expanded metadata of {exp_len} bytes")));
            }
            let exp = unpatch_bounded(&super::expanded_metadata(old), &stored[8..], exp_len)?;
            repack(&exp, h.meta_len, h.new_file_size)?
        }
    };
    let actual = PackageId(*blake3::hash(&meta).as_bytes());
    if actual != h.new_id {
        return Err(corrupt(format!(
            "the metadata hashes to {actual}, not to the new package id {}",
            h.new_id
        )));
    }
    let header = Header::parse(&meta[..crate::archive::header::HEADER_LEN], h.new_file_size)?;
    if header.heap.offset != h.meta_len {
        return Err(corrupt("the metadata does not end where the heap starts"));
    }
    let mut tb = [0u8; TRAILER_LEN];
    body.read_into(&mut tb, "the trailer")?;
    let trailer = Trailer::parse(&tb, header.is_signed())?;
    if trailer.id != h.new_id {
        return Err(corrupt(format!(
            "the trailer names package {}, the delta {}",
            trailer.id, h.new_id
        )));
    }
    if let Some(keys) = keys {
        trailer.check_trust(keys)?;
    }
    let n = header.chunk_count();
    let mut index: Vec<ChunkInfo> = Vec::with_capacity(n as usize);
    for c in 0..n {
        let off = header.chunk_index.offset as usize + c as usize * INDEX_ENTRY_LEN;
        index.push(ChunkInfo::parse(
            &meta[off..off + INDEX_ENTRY_LEN],
            c,
            header.heap.len,
            header.chunk_size,
            header.version_minor,
        )?);
    }
    let pieces = heap_pieces(&index, header.heap.len).map_err(corrupt)?;

    let tmp = crate::error::temp_beside(out, ".hpkg-", ".partial")?;
    let tmp_path = tmp.path().to_owned();
    let ioerr = |e| Error::io(&tmp_path, e);
    tmp.as_file().write_all_at(&meta, 0).map_err(ioerr)?;
    drop(meta);
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
    w.seek(SeekFrom::Start(header.heap.offset)).map_err(ioerr)?;
    let mut old_by_hash: HashMap<[u8; 32], ChunkId> = HashMap::new();
    for c in 0..old.chunk_count() {
        old_by_hash.entry(old.chunk_info(c)?.hash).or_insert(c);
    }
    let mut next = 0usize;
    let mut buf = Vec::new();
    loop {
        let at = body.pos;
        let op = body.u8("an op")?;
        if op == wire::OP_END {
            break;
        }
        let count = body.u32("an op's count")? as usize;
        if count == 0 || count > pieces.len() - next {
            return Err(corrupt(format!(
                "at byte {at}: an op for {count} chunks, {} are left",
                pieces.len() - next
            )));
        }
        let run = &pieces[next..next + count];
        match op {
            wire::OP_COPY => {
                for p in run {
                    let c = *old_by_hash.get(&p.info.hash).ok_or_else(|| {
                        corrupt(format!(
                            "at byte {at}: chunk {} is to be copied, the old package has no such chunk",
                            p.chunk
                        ))
                    })?;
                    old.read_stored(c, &mut buf)?;
                    put(&mut w, p, &buf, &tmp_path, "copied from the old package")?;
                }
            }
            wire::OP_LITERAL => {
                for p in run {
                    if p.info.stored_len > wire::STORED_MAX {
                        return Err(corrupt(format!(
                            "chunk {} claims {} stored bytes",
                            p.chunk, p.info.stored_len
                        )));
                    }
                    buf.resize(p.info.stored_len as usize, 0);
                    body.read_into(&mut buf, "a literal chunk")?;
                    put(&mut w, p, &buf, &tmp_path, "shipped whole")?;
                }
            }
            wire::OP_PATCH => {
                patch_op(old, &mut body, &mut w, run, &header, at, &tmp_path)?;
            }
            other => return Err(corrupt(format!("at byte {at}: unknown op {other}"))),
        }
        next += count;
    }
    if next != pieces.len() {
        return Err(corrupt(format!(
            "the delta ends after {next} of {} chunks",
            pieces.len()
        )));
    }
    if body.left() != 0 {
        return Err(corrupt(format!(
            "{} bytes after the end of the ops",
            body.left()
        )));
    }
    w.flush().map_err(ioerr)?;
    drop(w);
    let file = tmp.as_file();
    file.write_all_at(&tb, header.trailer.offset)
        .map_err(ioerr)?;
    file.set_len(header.file_size).map_err(ioerr)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(ioerr)?;
    file.sync_all().map_err(ioerr)?;
    // Opened as any package is: the id, the signature, every structural rule.
    let reopened = File::open(&tmp_path).map_err(ioerr)?;
    let check = match keys {
        Some(k) => Archive::from_file_trusted(reopened, &tmp_path, k)?,
        None => Archive::from_file(reopened, &tmp_path)?,
    };
    if check.id() != h.new_id {
        return Err(corrupt("the package made is not the one the delta names"));
    }
    drop(check);
    crate::error::persist_beside(tmp, out)?;
    Ok(Applied {
        id: h.new_id,
        old_id: h.old_id,
        file_size: header.file_size,
    })
}

/// Decompresses a metadata patch against `reference` into exactly `len` bytes, refusing
/// first a length no real metadata reaches from so few bytes (no allocation for a bomb).
fn unpatch_bounded(reference: &[u8], patch: &[u8], len: u64) -> Result<Vec<u8>> {
    let bound = reference.len() as u64 + 256 * patch.len() as u64 + (1 << 20);
    if len > bound {
        return Err(corrupt(format!(
            "metadata of {len} bytes from {} stored",
            patch.len()
        )));
    }
    wire::unpatch(reference, patch, len as usize)
        .map_err(|r| corrupt(format!("the metadata does not decompress: {r}")))
}

/// The metadata from its expanded form (FORMAT.md §14.2): the TOC packed again with the
/// header's compression, as the writer packs it, between the bytes before and after it.
fn repack(exp: &[u8], meta_len: u64, file_size: u64) -> Result<Vec<u8>> {
    let hl = crate::archive::header::HEADER_LEN;
    if exp.len() < hl {
        return Err(corrupt("expanded metadata shorter than a header"));
    }
    let header = Header::parse(&exp[..hl], file_size)?;
    let toc = header.toc;
    let tail = meta_len.checked_sub(toc.end());
    let raw_len = tail.and_then(|t| (exp.len() as u64).checked_sub(toc.offset + t));
    let (Some(tail), Some(raw_len)) = (tail, raw_len) else {
        return Err(corrupt("expanded metadata does not fit its header"));
    };
    if raw_len > crate::archive::TOC_MAX {
        return Err(corrupt(format!("a TOC of {raw_len} bytes")));
    }
    let raw_end = (toc.offset + raw_len) as usize;
    let packed = crate::archive::toc::pack(&exp[toc.offset as usize..raw_end], header.compression)
        .map_err(|e| Error::io("<compressor>", e))?;
    if packed.len() as u64 != toc.len {
        return Err(corrupt(format!(
            "the TOC packs to {} bytes, the header says {} (a different compressor version than the delta's builder?)",
            packed.len(),
            toc.len
        )));
    }
    let mut meta = Vec::with_capacity(meta_len as usize);
    meta.extend_from_slice(&exp[..toc.offset as usize]);
    meta.extend_from_slice(&packed);
    meta.extend_from_slice(&exp[raw_end..]);
    debug_assert_eq!(meta.len() as u64, toc.end() + tail);
    Ok(meta)
}

/// Checks the delta's last 32 bytes: the BLAKE3 hash of all before them.
fn check_sum(f: &File, path: &Path, len: u64) -> Result<()> {
    let end = len - wire::CHECKSUM_LEN as u64;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < end {
        let n = (end - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos)
            .map_err(|e| Error::io(path, e))?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    let mut sum = [0u8; 32];
    f.read_exact_at(&mut sum, end)
        .map_err(|e| Error::io(path, e))?;
    if h.finalize().as_bytes() != &sum {
        return Err(corrupt(
            "its bytes do not match its checksum (damaged or cut short)",
        ));
    }
    Ok(())
}

/// Writes a stored chunk after checking it against the new chunk index.
fn put(w: &mut impl Write, p: &Piece, stored: &[u8], path: &Path, how: &str) -> Result<()> {
    if stored.len() != p.info.stored_len as usize || blake3::hash(stored).as_bytes() != &p.info.hash
    {
        return Err(Error::DeltaChunk {
            chunk: p.chunk,
            reason: format!("the bytes {how} do not match its hash"),
        });
    }
    w.write_all(stored).map_err(|e| Error::io(path, e))
}

/// One PATCH op: old files, patch, the new chunks' bytes, compressed again and checked.
fn patch_op<R: Read>(
    old: &Archive,
    body: &mut Body<R>,
    w: &mut impl Write,
    run: &[Piece],
    header: &Header,
    at: u64,
    path: &Path,
) -> Result<()> {
    let n_refs = body.u16("a patch's file count")?;
    if n_refs > wire::REFS_MAX {
        return Err(corrupt(format!(
            "at byte {at}: a patch names {n_refs} old files"
        )));
    }
    let mut refs = Vec::with_capacity(n_refs as usize);
    for _ in 0..n_refs {
        let l = body.u16("a file name's length")?;
        refs.push(body.bytes(l as u64, "a file name")?);
    }
    let patch_len = body.u32("a patch's length")?;
    let patch = body.bytes(patch_len as u64, "a patch")?;
    let target: u64 = run.iter().map(|p| p.info.raw_len as u64).sum();
    if target > wire::TARGET_MAX {
        return Err(corrupt(format!(
            "at byte {at}: a patch for {target} bytes (at most {})",
            wire::TARGET_MAX
        )));
    }
    let reference = read_refs(old, &refs)?;
    let raw = wire::unpatch(&reference, &patch, target as usize)
        .map_err(|r| corrupt(format!("at byte {at}: a patch does not decompress: {r}")))?;
    let mut pos = 0usize;
    for p in run {
        let part = &raw[pos..pos + p.info.raw_len as usize];
        pos += p.info.raw_len as usize;
        let (m, stored) =
            chunk::compress(part, header.compression).map_err(|e| Error::io("<compressor>", e))?;
        if m != p.info.method || blake3::hash(&stored).as_bytes() != &p.info.hash {
            return Err(Error::DeltaChunk {
                chunk: p.chunk,
                reason: format!(
                    "compressed again ({}) its bytes do not match its hash (a different compressor version than the delta's builder?)",
                    header.compression
                ),
            });
        }
        w.write_all(&stored).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}
