//! Building a delta: classify each stored chunk of the new heap (copy, patch, literal),
//! make and check the patches, write the file.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufWriter, Write};
use std::path::Path;

use rayon::prelude::*;

use super::wire::{self, DeltaHeader, HEADER_LEN};
use super::{heap_pieces, DeltaOptions, DeltaStats, Piece};
use crate::archive::sign::TRAILER_LEN;
use crate::archive::{chunk, Archive, ChunkId, ChunkInfo, Compression, EntryId, Kind};
use crate::error::{Error, Result};

/// What becomes of one stored chunk of the new heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Copy,
    Literal,
    Patch(usize),
}

/// A patch: a run of consecutive pieces made from the old files `refs`.
struct Unit {
    pieces: std::ops::Range<usize>,
    refs: Vec<Vec<u8>>,
    patch: Vec<u8>,
}

impl Unit {
    /// Bytes of its op in the delta.
    fn op_len(&self) -> u64 {
        1 + 4
            + 2
            + self.refs.iter().map(|r| 2 + r.len() as u64).sum::<u64>()
            + 4
            + self.patch.len() as u64
    }
}

/// Writes a delta from `old` to `new` to the file `out`, atomically: a temp file in the
/// same directory, fsynced and renamed into place; on error nothing is left behind.
pub fn write(old: &Archive, new: &Archive, opts: &DeltaOptions, out: &Path) -> Result<DeltaStats> {
    let tmp = crate::error::temp_beside(out, ".delta-", ".partial")?;
    let tmp_path = tmp.path().to_owned();
    let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
    let stats = build(old, new, opts, &mut w)?;
    w.flush().map_err(|e| Error::io(&tmp_path, e))?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(&tmp_path, e))?;
    crate::error::persist_beside(tmp, out)?;
    Ok(stats)
}

/// Writes a delta from `old` to `new` to `out`; returns what it holds. Both packages
/// are read whole: every chunk the delta ships or patches is checked against its hash.
pub fn build<W: Write>(
    old: &Archive,
    new: &Archive,
    opts: &DeltaOptions,
    out: &mut W,
) -> Result<DeltaStats> {
    if !(1..=22).contains(&opts.level) {
        return Err(Error::Options(format!(
            "delta zstd level {} is not in 1..=22",
            opts.level
        )));
    }
    let nh = new.header();
    let new_index: Vec<ChunkInfo> = (0..new.chunk_count())
        .map(|c| new.chunk_info(c))
        .collect::<Result<_>>()?;
    let pieces = heap_pieces(&new_index, nh.heap.len)
        .map_err(|r| Error::DeltaUnsupported(format!("{}: {r}", new.path().display())))?;
    let mut old_by_hash: HashMap<[u8; 32], ChunkId> = HashMap::new();
    for c in 0..old.chunk_count() {
        old_by_hash.entry(old.chunk_info(c)?.hash).or_insert(c);
    }
    let mut plan: Vec<Plan> = pieces
        .iter()
        .map(|p| {
            if old_by_hash.contains_key(&p.info.hash) {
                Plan::Copy
            } else {
                Plan::Literal
            }
        })
        .collect();
    // A changed chunk can be patched only if compressing its bytes again with the new
    // package's method and level gives exactly its stored bytes.
    let comp = nh.compression;
    let reproducible: Vec<bool> = pieces
        .par_iter()
        .zip(plan.par_iter())
        .map(|(p, pl)| match pl {
            Plan::Copy => Ok(false),
            _ => reproduces(new, p, comp),
        })
        .collect::<Result<_>>()?;
    let changed: BTreeSet<ChunkId> = pieces
        .iter()
        .zip(&plan)
        .filter(|(_, pl)| **pl != Plan::Copy)
        .map(|(p, _)| p.chunk)
        .collect();
    let users = files_using(new, &changed)?;
    let mut refs_of: HashMap<Vec<u8>, Option<(Vec<u8>, u64)>> = HashMap::new();
    let mut units: Vec<Unit> = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        if !reproducible[i] {
            i += 1;
            continue;
        }
        let start = i;
        let (mut target, mut reference) = (0u64, 0u64);
        let mut refs: Vec<Vec<u8>> = Vec::new();
        while i < pieces.len() && reproducible[i] {
            let mut add: Vec<(Vec<u8>, u64)> = Vec::new();
            for path in users.get(&pieces[i].chunk).into_iter().flatten() {
                if !refs_of.contains_key(path) {
                    refs_of.insert(path.clone(), old_file(old, path)?);
                }
                if let Some((p, size)) = &refs_of[path] {
                    if !refs.contains(p) && !add.iter().any(|(q, _)| q == p) {
                        add.push((p.clone(), *size));
                    }
                }
            }
            let more_ref: u64 = add.iter().map(|(_, s)| s).sum();
            let more_target = pieces[i].info.raw_len as u64;
            let too_big = target + more_target > wire::TARGET_MAX
                || reference + more_ref > wire::REF_MAX
                || refs.len() + add.len() > wire::REFS_MAX as usize;
            if too_big {
                break;
            }
            target += more_target;
            reference += more_ref;
            refs.extend(add.into_iter().map(|(p, _)| p));
            i += 1;
        }
        if i == start {
            // Even alone this chunk's old files are too large a reference: it stays
            // literal.
            i += 1;
            continue;
        }
        units.push(Unit {
            pieces: start..i,
            refs,
            patch: Vec::new(),
        });
    }
    // Make the patches (in parallel); keep those smaller than the chunks they replace.
    let level = opts.level;
    units.par_iter_mut().try_for_each(|u| -> Result<()> {
        let reference = read_refs(old, &u.refs)?;
        let mut target = Vec::new();
        let mut raw = Vec::new();
        for p in &pieces[u.pieces.clone()] {
            new.read_chunk(p.chunk, &mut raw)?;
            target.extend_from_slice(&raw);
        }
        u.patch = wire::patch(&reference, &target, level).map_err(|e| Error::io("<zstd>", e))?;
        // The patch must give the bytes back (it is what apply will do).
        match wire::unpatch(&reference, &u.patch, target.len()) {
            Ok(back) if back == target => Ok(()),
            Ok(_) => Err(Error::DeltaUnsupported(
                "zstd did not give a patch's bytes back".into(),
            )),
            Err(r) => Err(Error::DeltaUnsupported(format!(
                "zstd cannot read its own patch: {r}"
            ))),
        }
    })?;
    let mut kept: Vec<Unit> = Vec::new();
    for u in units {
        let whole: u64 = pieces[u.pieces.clone()]
            .iter()
            .map(|p| p.info.stored_len as u64 + 5)
            .sum();
        if u.op_len() < whole {
            for pl in &mut plan[u.pieces.clone()] {
                *pl = Plan::Patch(kept.len());
            }
            kept.push(u);
        }
    }
    let units = kept;

    // The metadata: raw, zstd against the old metadata, or (usually smallest) zstd of the
    // expanded metadata against the old expanded metadata, when packing the new TOC again
    // gives its section's bytes.
    let new_meta = new.metadata_bytes();
    let window = 1usize << wire::WINDOW_LOG_MAX;
    let mut meta_encoding = wire::META_RAW;
    let mut meta_stored = new_meta.to_vec();
    let old_meta = old.metadata_bytes();
    if old_meta.len() + new_meta.len() <= window {
        let z = wire::patch(old_meta, new_meta, level).map_err(|e| Error::io("<zstd>", e))?;
        if z.len() < meta_stored.len() {
            (meta_encoding, meta_stored) = (wire::META_ZSTD_PATCH, z);
        }
    }
    let toc = nh.toc;
    let repacks = crate::archive::toc::pack(new.raw_toc(), nh.compression)
        .is_ok_and(|p| p[..] == new_meta[toc.offset as usize..toc.end() as usize]);
    let (old_exp, new_exp) = (super::expanded_metadata(old), super::expanded_metadata(new));
    if repacks && old_exp.len() + new_exp.len() <= window {
        let z = wire::patch(&old_exp, &new_exp, level).map_err(|e| Error::io("<zstd>", e))?;
        if z.len() + 8 < meta_stored.len() {
            let mut v = (new_exp.len() as u64).to_le_bytes().to_vec();
            v.extend_from_slice(&z);
            (meta_encoding, meta_stored) = (wire::META_ZSTD_PATCH_RAW_TOC, v);
        }
    }

    // The stats, and the body's length.
    let mut st = DeltaStats {
        old_id: old.id().to_string(),
        new_id: new.id().to_string(),
        new_size: nh.file_size,
        new_metadata: new_meta.len() as u64,
        metadata_encoded: meta_stored.len() as u64,
        metadata_encoding: match meta_encoding {
            wire::META_RAW => "raw",
            wire::META_ZSTD_PATCH => "zstd",
            _ => "zstd-raw-toc",
        },
        pieces: pieces.len() as u64,
        patches: units.len() as u64,
        patch_bytes: units.iter().map(|u| u.patch.len() as u64).sum(),
        dedup_bytes: new_meta.len() as u64 + TRAILER_LEN as u64,
        ..Default::default()
    };
    let mut body_len = meta_stored.len() as u64 + TRAILER_LEN as u64 + 1;
    let mut k = 0;
    while k < plan.len() {
        let run = plan[k..].iter().take_while(|&&p| p == plan[k]).count();
        let stored: u64 = pieces[k..k + run]
            .iter()
            .map(|p| p.info.stored_len as u64)
            .sum();
        match plan[k] {
            Plan::Copy => {
                st.copied += run as u64;
                st.copied_bytes += stored;
                body_len += 5;
            }
            Plan::Literal => {
                st.literal += run as u64;
                st.literal_bytes += stored;
                st.dedup_bytes += stored;
                st.not_reproducible += (k..k + run).filter(|&j| !reproducible[j]).count() as u64;
                body_len += 5 + stored;
            }
            Plan::Patch(u) => {
                st.patched += run as u64;
                st.patched_bytes += stored;
                st.dedup_bytes += stored;
                body_len += units[u].op_len();
            }
        }
        k += run;
    }
    // Copy runs longer than u32::MAX pieces cannot happen: at most 2^22 chunks.

    let header = DeltaHeader {
        version_minor: wire::VERSION_MINOR,
        zstd_version: zstd::zstd_safe::version_number(),
        old_id: old.id(),
        new_id: new.id(),
        new_file_size: nh.file_size,
        meta_len: new_meta.len() as u64,
        meta_encoding,
        meta_stored_len: meta_stored.len() as u64,
        body_len,
    };
    let mut w = Hashing {
        w: out,
        h: blake3::Hasher::new(),
        n: 0,
    };
    let werr = |e| Error::io("<delta>", e);
    w.write_all(&header.to_bytes()).map_err(werr)?;
    w.write_all(&meta_stored).map_err(werr)?;
    w.write_all(&new.trailer_bytes()).map_err(werr)?;
    let mut stored = Vec::new();
    let mut k = 0;
    while k < plan.len() {
        let run = plan[k..].iter().take_while(|&&p| p == plan[k]).count();
        match plan[k] {
            Plan::Copy => {
                w.write_all(&[wire::OP_COPY]).map_err(werr)?;
                w.write_all(&(run as u32).to_le_bytes()).map_err(werr)?;
            }
            Plan::Literal => {
                w.write_all(&[wire::OP_LITERAL]).map_err(werr)?;
                w.write_all(&(run as u32).to_le_bytes()).map_err(werr)?;
                for p in &pieces[k..k + run] {
                    new.read_stored(p.chunk, &mut stored)?;
                    if blake3::hash(&stored).as_bytes() != &p.info.hash {
                        return Err(Error::ChunkHash { chunk: p.chunk });
                    }
                    w.write_all(&stored).map_err(werr)?;
                }
            }
            Plan::Patch(u) => {
                let u = &units[u];
                w.write_all(&[wire::OP_PATCH]).map_err(werr)?;
                w.write_all(&(run as u32).to_le_bytes()).map_err(werr)?;
                w.write_all(&(u.refs.len() as u16).to_le_bytes())
                    .map_err(werr)?;
                for r in &u.refs {
                    w.write_all(&(r.len() as u16).to_le_bytes()).map_err(werr)?;
                    w.write_all(r).map_err(werr)?;
                }
                w.write_all(&(u.patch.len() as u32).to_le_bytes())
                    .map_err(werr)?;
                w.write_all(&u.patch).map_err(werr)?;
            }
        }
        k += run;
    }
    w.write_all(&[wire::OP_END]).map_err(werr)?;
    if w.n != (HEADER_LEN as u64) + body_len {
        return Err(Error::DeltaUnsupported(format!(
            "wrote {} body bytes, planned {body_len}",
            w.n - HEADER_LEN as u64
        )));
    }
    let sum = w.h.finalize();
    w.w.write_all(sum.as_bytes()).map_err(werr)?;
    st.delta_size = w.n + wire::CHECKSUM_LEN as u64;
    Ok(st)
}

/// True if compressing chunk `p` of `new` again with `comp` gives its stored bytes.
fn reproduces(new: &Archive, p: &Piece, comp: Compression) -> Result<bool> {
    let mut raw = Vec::new();
    new.read_chunk(p.chunk, &mut raw)?;
    let (m, stored) = chunk::compress(&raw, comp).map_err(|e| Error::io("<compressor>", e))?;
    Ok(m == p.info.method && blake3::hash(&stored).as_bytes() == &p.info.hash)
}

/// The paths of the files of `new` that use each of `chunks` (each file once).
fn files_using(
    new: &Archive,
    chunks: &BTreeSet<ChunkId>,
) -> Result<HashMap<ChunkId, Vec<Vec<u8>>>> {
    let mut map: HashMap<ChunkId, Vec<Vec<u8>>> = HashMap::new();
    if chunks.is_empty() {
        return Ok(map);
    }
    let mut seen: BTreeSet<EntryId> = BTreeSet::new();
    for w in new.walk() {
        if w.attr.kind != Kind::File || !seen.insert(w.entry) {
            continue;
        }
        let range = new.file_chunks(w.entry)?;
        for &c in chunks.range(range.start..range.end) {
            map.entry(c).or_default().push(w.path.clone());
        }
    }
    Ok(map)
}

/// The old version of the file at `path`: the regular file at the same path, or else,
/// in the same directory, one whose name is the same once digits are taken out
/// (`libfoo-1.2.so` for `libfoo-1.3.so`; the last such in name order). Its path and size.
fn old_file(old: &Archive, path: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
    let usable = |e: EntryId| -> Result<Option<u64>> {
        let a = old.attr(e)?;
        Ok((a.kind == Kind::File && a.size > 0 && a.size <= wire::REF_MAX).then_some(a.size))
    };
    if let Some(e) = old.lookup_path(path)? {
        if let Some(size) = usable(e)? {
            return Ok(Some((path.to_vec(), size)));
        }
    }
    let (dir, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    };
    let key = |n: &[u8]| -> Vec<u8> { n.iter().copied().filter(|b| !b.is_ascii_digit()).collect() };
    let k = key(name);
    if k.len() == name.len() {
        return Ok(None);
    }
    let Some(d) = old.lookup_path(dir)? else {
        return Ok(None);
    };
    if old.attr(d)?.kind != Kind::Dir {
        return Ok(None);
    }
    let mut found = None;
    for de in old.read_dir(d)? {
        if key(de.name) == k {
            if let Some(size) = usable(de.entry)? {
                let mut p = dir.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(de.name);
                found = Some((p, size));
            }
        }
    }
    Ok(found)
}

/// The concatenated bytes of the old files `refs` (a patch's reference prefix). `Err`
/// when one is missing or not a regular file; the total is bounded by the caller.
pub(crate) fn read_refs(old: &Archive, refs: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in refs {
        let name = String::from_utf8_lossy(r);
        let e = old
            .lookup_path(r)?
            .ok_or_else(|| wire::corrupt(format!("the old package has no file {name}")))?;
        let a = old.attr(e)?;
        if a.kind != Kind::File {
            return Err(wire::corrupt(format!(
                "{name} is a {} in the old package, not a file",
                a.kind.name()
            )));
        }
        if out.len() as u64 + a.size > wire::REF_MAX {
            return Err(wire::corrupt(format!(
                "a patch's old files exceed {} bytes",
                wire::REF_MAX
            )));
        }
        let start = out.len();
        out.resize(start + a.size as usize, 0);
        let n = old.read_at(e, 0, &mut out[start..])?;
        if n as u64 != a.size {
            return Err(wire::corrupt(format!("{name}: short read")));
        }
    }
    Ok(out)
}

/// A writer that hashes and counts what passes through it.
struct Hashing<'a, W: Write> {
    w: &'a mut W,
    h: blake3::Hasher,
    n: u64,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}
