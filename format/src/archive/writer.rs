//! Writing an archive from a [`Tree`]: number the entries, dedup contents, lay contents out
//! in chunks, compress chunks in parallel, write to a temp file, sign, rename into place.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;

use rayon::prelude::*;

use super::chunk::{self, ChunkInfo, Compression, INDEX_ENTRY_LEN};
use super::header::{Header, Section, FLAG_SIGNED, HEADER_LEN, VERSION_MAJOR};
use super::sign::{Trailer, TRAILER_LEN};
use super::toc::{
    RawInode, TocLayout, DIRENT_LEN, S_IFDIR, S_IFLNK, S_IFREG, TOC_HEADER_LEN, XATTR_LEN,
};
use super::tree::{Content, NodeId, NodeKind, Tree};
use super::{align8, PackageId, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::error::{Error, Result};
use crate::keys::{KeyId, SecretKey};
use crate::manifest::Manifest;

/// Options for building an archive.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Compression method and level.
    pub compression: Compression,
    /// Uncompressed chunk size: a power of two from 64 KiB to 1 MiB.
    pub chunk_size: u32,
    /// Worker threads for compression (0: one per core).
    pub threads: usize,
    /// Clamp every mtime to at most this (from `SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            compression: Compression::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            source_date_epoch: None,
        }
    }
}

impl BuildOptions {
    /// Options with `SOURCE_DATE_EPOCH` taken from the environment (if set and valid).
    pub fn from_env() -> Result<BuildOptions> {
        let mut o = BuildOptions::default();
        if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
            let t = v.trim().parse::<i64>().map_err(|_| {
                Error::Options(format!(
                    "SOURCE_DATE_EPOCH `{v}` is not a number of seconds"
                ))
            })?;
            o.source_date_epoch = Some(t);
        }
        Ok(o)
    }
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The package id.
    pub id: PackageId,
    /// The signer's key id, if signed.
    pub signer: Option<KeyId>,
    /// Regular files (each hard-linked file once).
    pub files: u64,
    /// Directories, including the root.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Extra names of hard-linked entries.
    pub hardlinks: u64,
    /// Files whose contents were identical to an earlier file's and stored once.
    pub deduplicated_files: u64,
    /// Sum of all file sizes.
    pub content_bytes: u64,
    /// Bytes of unique content, i.e. uncompressed heap size.
    pub unique_bytes: u64,
    /// Compressed heap size.
    pub heap_bytes: u64,
    /// Chunks in the chunk index.
    pub chunks: u32,
    /// Chunks whose stored bytes were identical to an earlier chunk's and stored once.
    pub deduplicated_chunks: u32,
    /// Size of the archive file.
    pub file_size: u64,
}

/// One piece of a blob inside a chunk.
#[derive(Debug, Clone, Copy)]
struct Piece {
    blob: u32,
    blob_off: u64,
    len: u32,
}

/// A compressed chunk on its way to the heap.
struct Compressed {
    method: chunk::Method,
    stored: Vec<u8>,
    raw_len: u32,
    hash: [u8; 32],
}

#[derive(Debug, Default)]
struct ChunkPlan {
    raw_len: u32,
    pieces: Vec<Piece>,
}

/// Writes `tree` as a package archive to `out`: [`ArchiveWriter`] with its steps given
/// at once (`key` signs; `progress` is called with bytes done and total).
pub fn write_archive(
    tree: &Tree,
    manifest: &Manifest,
    key: Option<&SecretKey>,
    opts: &BuildOptions,
    out: &Path,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<BuildReport> {
    ArchiveWriter::new(tree, manifest)
        .signed_by(key)
        .options(opts.clone())
        .progress(progress)
        .finish(out)
}

/// Builds a package archive from a [`Tree`] and a [`Manifest`]:
///
/// ```text
/// ArchiveWriter::new(&tree, &manifest).signed_by(Some(&key)).options(opts).finish(out)
///   number   entries in depth-first preorder (a directory before its children)
///   dedup    identical file contents stored once (only same-size files are hashed)
///   layout   contents in chunks: small files packed by kind, large ones chunk-aligned
///   toc      inodes, entries, names, xattrs
///   heap     chunks compressed in parallel, a batch written while the next compresses
///   seal     header, manifest, TOC, chunk index; their hash is the id; signed trailer;
///            fsync, renamed into place (a temp file in the same directory until then)
/// ```
pub struct ArchiveWriter<'a> {
    tree: &'a Tree,
    manifest: &'a Manifest,
    key: Option<&'a SecretKey>,
    opts: BuildOptions,
    progress: &'a (dyn Fn(u64, u64) + Sync),
}

/// A unique content: the node that supplies its bytes, and its size.
type Blob = (NodeId, u64);
/// Where a blob starts: its first chunk, and its offset in that chunk.
type Loc = (u32, u32);

/// What the first steps decided: the entries' numbering and where each file's bytes go.
struct Layout {
    /// The tree's nodes in entry order.
    order: Vec<NodeId>,
    /// Each node's entry number.
    entry_of: Vec<u32>,
    /// Unique contents.
    blobs: Vec<Blob>,
    /// Each non-empty file's blob.
    blob_of_file: HashMap<NodeId, u32>,
    /// Where each blob starts.
    blob_loc: Vec<Loc>,
    /// The chunks to compress.
    chunks: Vec<ChunkPlan>,
}

fn empty_report(key: Option<&SecretKey>) -> BuildReport {
    BuildReport {
        id: PackageId([0; 32]),
        signer: key.map(|k| k.public().id()),
        files: 0,
        dirs: 0,
        symlinks: 0,
        hardlinks: 0,
        deduplicated_files: 0,
        content_bytes: 0,
        unique_bytes: 0,
        heap_bytes: 0,
        chunks: 0,
        deduplicated_chunks: 0,
        file_size: 0,
    }
}

fn no_progress(_: u64, _: u64) {}

impl<'a> ArchiveWriter<'a> {
    /// A writer of `tree` with `manifest`, unsigned, with the default options.
    pub fn new(tree: &'a Tree, manifest: &'a Manifest) -> ArchiveWriter<'a> {
        ArchiveWriter {
            tree,
            manifest,
            key: None,
            opts: BuildOptions::default(),
            progress: &no_progress,
        }
    }

    /// Signs with `key` (`None`: unsigned; packagefs refuses to mount such a package).
    pub fn signed_by(mut self, key: Option<&'a SecretKey>) -> Self {
        self.key = key;
        self
    }

    /// Compression, chunk size, threads, `SOURCE_DATE_EPOCH`.
    pub fn options(mut self, opts: BuildOptions) -> Self {
        self.opts = opts;
        self
    }

    /// Called with (bytes done, bytes total) of content as chunks are written.
    pub fn progress(mut self, progress: &'a (dyn Fn(u64, u64) + Sync)) -> Self {
        self.progress = progress;
        self
    }

    /// Writes the archive to `out`, atomically: a temp file in the same directory renamed
    /// into place; on error nothing is left behind.
    pub fn finish(self, out: &Path) -> Result<BuildReport> {
        let cs = self.opts.chunk_size;
        if !cs.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(Error::Options(format!(
                "chunk size {cs} must be a power of two from 64 KiB to 1 MiB"
            )));
        }
        self.manifest.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.opts.threads)
            .build()
            .map_err(|e| Error::Options(format!("cannot start worker threads: {e}")))?;
        let mut report = empty_report(self.key);
        let (order, entry_of) = self.number(&mut report)?;
        let (blobs, blob_of_file) = self.dedup(&order, &pool, &mut report)?;
        let (chunks, blob_loc) = self.layout(&blobs)?;
        report.chunks = chunks.len() as u32;
        report.unique_bytes = chunks.iter().map(|c| c.raw_len as u64).sum();
        let l = Layout {
            order,
            entry_of,
            blobs,
            blob_of_file,
            blob_loc,
            chunks,
        };
        let toc = build_toc(
            self.tree,
            &l.order,
            &l.entry_of,
            &l.blob_of_file,
            &l.blob_loc,
            &self.opts,
            &mut report,
        )?;
        let toc = super::toc::pack(&toc, self.opts.compression)
            .map_err(|e| Error::io("<compressor>", e))?;
        self.seal(out, &l, &toc, &pool, report)
    }

    /// Step 1: entries in depth-first preorder, children sorted by name: a directory's
    /// children always get higher numbers than the directory (the reader relies on that).
    fn number(&self, report: &mut BuildReport) -> Result<(Vec<NodeId>, Vec<u32>)> {
        let tree = self.tree;
        let mut entry_of: Vec<u32> = vec![u32::MAX; tree.nodes.len()];
        let mut order: Vec<NodeId> = Vec::new();
        let mut stack: Vec<NodeId> = vec![0];
        while let Some(n) = stack.pop() {
            if entry_of[n as usize] != u32::MAX {
                report.hardlinks += 1;
                continue;
            }
            entry_of[n as usize] = order.len() as u32;
            order.push(n);
            if let NodeKind::Dir(ch) = &tree.nodes[n as usize].kind {
                stack.extend(ch.values().rev());
            }
        }
        if order.len() > u32::MAX as usize - 1 {
            return Err(Error::Options("too many entries".into()));
        }
        Ok((order, entry_of))
    }

    /// Step 2: identical file contents stored once. Only files whose size occurs more than
    /// once can be duplicates, so only those are hashed (a file is otherwise read exactly
    /// once). Returns the unique contents (node, size) and each file's.
    fn dedup(
        &self,
        order: &[NodeId],
        pool: &rayon::ThreadPool,
        report: &mut BuildReport,
    ) -> Result<(Vec<Blob>, HashMap<NodeId, u32>)> {
        let tree = self.tree;
        let files: Vec<NodeId> = order
            .iter()
            .copied()
            .filter(|&n| matches!(tree.nodes[n as usize].kind, NodeKind::File { .. }))
            .collect();
        let size_of = |n: NodeId| match &tree.nodes[n as usize].kind {
            NodeKind::File { size, .. } => *size,
            _ => 0,
        };
        let mut by_size: HashMap<u64, u32> = HashMap::new();
        for &f in &files {
            *by_size.entry(size_of(f)).or_default() += 1;
        }
        let to_hash: Vec<NodeId> = files
            .iter()
            .copied()
            .filter(|&f| size_of(f) > 0 && by_size[&size_of(f)] > 1)
            .collect();
        let hashes: Vec<(NodeId, [u8; 32])> = pool.install(|| {
            to_hash
                .par_iter()
                .map(|&f| Ok((f, hash_content(tree, f)?)))
                .collect::<Result<Vec<_>>>()
        })?;
        let hash_of: HashMap<NodeId, [u8; 32]> = hashes.into_iter().collect();
        let mut blobs: Vec<Blob> = Vec::new();
        let mut blob_of_file: HashMap<NodeId, u32> = HashMap::new();
        let mut blob_by_hash: HashMap<(u64, [u8; 32]), u32> = HashMap::new();
        for &f in &files {
            let size = size_of(f);
            report.files += 1;
            report.content_bytes += size;
            if size == 0 {
                continue;
            }
            if let Some(h) = hash_of.get(&f) {
                if let Some(&b) = blob_by_hash.get(&(size, *h)) {
                    blob_of_file.insert(f, b);
                    report.deduplicated_files += 1;
                    continue;
                }
                blob_by_hash.insert((size, *h), blobs.len() as u32);
            }
            blob_of_file.insert(f, blobs.len() as u32);
            blobs.push((f, size));
        }
        Ok((blobs, blob_of_file))
    }

    /// Step 3: contents in chunks. A blob smaller than a chunk lies inside one chunk,
    /// packed with its neighbours; a larger one starts its own chunk and fills whole
    /// chunks, so identical large files in different packages give identical chunks.
    /// Small files are grouped by kind: by file name extension, already-compressed kinds
    /// (.gz, .png, ...) last. Chunks of one kind compress better, and chunks of compressed
    /// data are recognised by the compressor's probe and stored without the expensive
    /// levels. Inside a group the depth-first order is kept. Returns the chunks and each
    /// blob's (first chunk, offset).
    fn layout(&self, blobs: &[Blob]) -> Result<(Vec<ChunkPlan>, Vec<Loc>)> {
        let cs = self.opts.chunk_size;
        let tree = self.tree;
        let mut layout_order: Vec<u32> = (0..blobs.len() as u32).collect();
        layout_order.sort_by_cached_key(|&b| {
            let (node, size) = blobs[b as usize];
            if size >= cs as u64 {
                return (0u8, Vec::new());
            }
            let ext = extension(&tree.nodes[node as usize].origin);
            (1 + u8::from(is_compressed_kind(&ext)), ext)
        });
        let mut chunks: Vec<ChunkPlan> = Vec::new();
        let mut open = false;
        let mut blob_loc: Vec<Loc> = vec![(0, 0); blobs.len()];
        for &b in &layout_order {
            let size = blobs[b as usize].1;
            if size >= cs as u64 {
                open = false;
                blob_loc[b as usize] = (chunks.len() as u32, 0);
                let mut off = 0u64;
                while off < size {
                    let len = (size - off).min(cs as u64) as u32;
                    chunks.push(ChunkPlan {
                        raw_len: len,
                        pieces: vec![Piece {
                            blob: b,
                            blob_off: off,
                            len,
                        }],
                    });
                    off += len as u64;
                }
            } else {
                let size = size as u32;
                if !open || chunks.last().is_some_and(|c| c.raw_len + size > cs) {
                    chunks.push(ChunkPlan::default());
                    open = true;
                }
                let idx = chunks.len() as u32 - 1;
                let c = chunks.last_mut().expect("pushed above");
                blob_loc[b as usize] = (idx, c.raw_len);
                c.pieces.push(Piece {
                    blob: b,
                    blob_off: 0,
                    len: size,
                });
                c.raw_len += size;
            }
            if chunks.len() as u64 > super::CHUNKS_MAX {
                return Err(Error::Options(format!(
                    "more than {} chunks (the format's limit); choose a larger chunk size",
                    super::CHUNKS_MAX
                )));
            }
        }
        Ok((chunks, blob_loc))
    }

    /// Steps 5 to 7: the sections, the heap, the metadata and the signed trailer, written
    /// to a temp file that is renamed to `out` last.
    fn seal(
        &self,
        out: &Path,
        l: &Layout,
        toc: &[u8],
        pool: &rayon::ThreadPool,
        mut report: BuildReport,
    ) -> Result<BuildReport> {
        let manifest_bytes = self.manifest.to_json();
        let n_chunks = l.chunks.len() as u32;
        // Everything but the heap and the trailer is known now.
        let manifest_sec = Section {
            offset: HEADER_LEN as u64,
            len: manifest_bytes.len() as u64,
        };
        let toc_sec = Section {
            offset: align8(manifest_sec.end()),
            len: toc.len() as u64,
        };
        let index_sec = Section {
            offset: align8(toc_sec.end()),
            len: n_chunks as u64 * INDEX_ENTRY_LEN as u64,
        };
        let heap_off = align8(index_sec.end());
        let tmp = crate::error::temp_beside(out, ".hpkg-", ".partial")?;
        let tmp_path = tmp.path().to_owned();
        let ioerr = |e| Error::io(&tmp_path, e);
        let (index, heap_len) =
            self.write_heap(tmp.as_file(), &tmp_path, heap_off, l, pool, &mut report)?;
        report.heap_bytes = heap_len;

        // The metadata: header, manifest, TOC and chunk index; its hash is the package id.
        let heap = Section {
            offset: heap_off,
            len: heap_len,
        };
        let trailer_sec = Section {
            offset: heap.end(),
            len: TRAILER_LEN as u64,
        };
        let header = Header {
            version_major: VERSION_MAJOR,
            // The lowest minor that can express the archive: only lz4 (in the header, the
            // TOC frame and the chunks of an lz4 build) needs 1.1, so other archives stay
            // 1.0 and byte-identical to what earlier writers made.
            version_minor: self.opts.compression.method().min_minor(),
            flags: if self.key.is_some() { FLAG_SIGNED } else { 0 },
            chunk_size: self.opts.chunk_size,
            compression: self.opts.compression,
            manifest: manifest_sec,
            toc: toc_sec,
            chunk_index: index_sec,
            heap,
            trailer: trailer_sec,
            content_size: report.unique_bytes,
            file_size: trailer_sec.end(),
        };
        let mut meta = vec![0u8; heap_off as usize];
        meta[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        meta[manifest_sec.offset as usize..manifest_sec.end() as usize]
            .copy_from_slice(&manifest_bytes);
        meta[toc_sec.offset as usize..toc_sec.end() as usize].copy_from_slice(toc);
        for (i, c) in index.iter().enumerate() {
            let off = index_sec.offset as usize + i * INDEX_ENTRY_LEN;
            meta[off..off + INDEX_ENTRY_LEN].copy_from_slice(&c.to_bytes());
        }
        let id = PackageId(*blake3::hash(&meta).as_bytes());
        report.id = id;
        let trailer = Trailer::new(id, self.key).to_bytes();
        let f = tmp.as_file();
        f.write_all_at(&meta, 0).map_err(ioerr)?;
        f.write_all_at(&trailer, trailer_sec.offset)
            .map_err(ioerr)?;
        f.set_len(trailer_sec.end()).map_err(ioerr)?;
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(ioerr)?;
        f.sync_all().map_err(ioerr)?;
        report.file_size = trailer_sec.end();
        crate::error::persist_beside(tmp, out)?;
        Ok(report)
    }

    /// Step 6: compresses and writes the heap at `heap_off`, a batch of chunks at a time
    /// (bounded memory), chunks of a batch in parallel; while one batch is written (in
    /// order, identical stored chunks once), the next is compressed, so that the threads
    /// do not wait for the writer. Each chunk's hash is computed by the thread that
    /// compressed it. Returns the chunk index and the heap's length.
    #[allow(clippy::too_many_arguments)]
    fn write_heap(
        &self,
        file: &File,
        path: &Path,
        heap_off: u64,
        l: &Layout,
        pool: &rayon::ThreadPool,
        report: &mut BuildReport,
    ) -> Result<(Vec<ChunkInfo>, u64)> {
        let tree = self.tree;
        let opts = &self.opts;
        let cs = opts.chunk_size;
        let progress = self.progress;
        let ioerr = |e| Error::io(path, e);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.seek(SeekFrom::Start(heap_off)).map_err(ioerr)?;
        let mut index: Vec<ChunkInfo> = Vec::with_capacity(l.chunks.len());
        let mut seen: HashMap<([u8; 32], u32), u64> = HashMap::new();
        let mut heap_len = 0u64;
        let mut done = 0u64;
        let total = report.unique_bytes;
        progress(0, total);
        // Big enough that the threads rarely idle at the end of a batch; two batches (one
        // being written, one compressed) are bounded to ~64 MiB.
        let batch = (pool.current_num_threads() * 32).clamp(16, (32 << 20) / cs as usize);
        // All-zero full chunks (sparse files, zero-filled images) are compressed once.
        let zero_chunk: std::sync::OnceLock<(chunk::Method, Vec<u8>)> = std::sync::OnceLock::new();
        let blobs = &l.blobs;
        let compress_batch = |group: &[ChunkPlan]| -> Result<Vec<Compressed>> {
            group
                .par_iter()
                .map(|plan| {
                    let raw = assemble(tree, blobs, plan)?;
                    let zero = plan.raw_len == cs && raw.iter().all(|&b| b == 0);
                    let (method, stored) = match zero_chunk.get() {
                        Some((m, stored)) if zero => (*m, stored.clone()),
                        _ => {
                            let (m, stored) = chunk::compress(&raw, opts.compression)
                                .map_err(|e| Error::io("<compressor>", e))?;
                            if zero {
                                let _ = zero_chunk.set((m, stored.clone()));
                            }
                            (m, stored)
                        }
                    };
                    Ok(Compressed {
                        hash: *blake3::hash(&stored).as_bytes(),
                        method,
                        stored,
                        raw_len: plan.raw_len,
                    })
                })
                .collect()
        };
        let mut write_batch = |results: Vec<Compressed>| -> Result<()> {
            for c in results {
                let key = (c.hash, c.stored.len() as u32);
                let offset = match seen.get(&key) {
                    Some(&off) => {
                        report.deduplicated_chunks += 1;
                        off
                    }
                    None => {
                        w.write_all(&c.stored).map_err(ioerr)?;
                        let off = heap_len;
                        heap_len += c.stored.len() as u64;
                        seen.insert(key, off);
                        off
                    }
                };
                index.push(ChunkInfo {
                    offset,
                    stored_len: c.stored.len() as u32,
                    raw_len: c.raw_len,
                    method: c.method,
                    hash: c.hash,
                });
                done += c.raw_len as u64;
            }
            progress(done, total);
            Ok(())
        };
        pool.install(|| -> Result<()> {
            let mut pending: Option<Vec<Compressed>> = None;
            for group in l.chunks.chunks(batch) {
                let (compressed, written) = match pending.take() {
                    Some(prev) => rayon::join(|| compress_batch(group), || write_batch(prev)),
                    None => (compress_batch(group), Ok(())),
                };
                written?;
                pending = Some(compressed?);
            }
            match pending {
                Some(last) => write_batch(last),
                None => Ok(()),
            }
        })?;
        w.flush().map_err(ioerr)?;
        drop(w);
        Ok((index, heap_len))
    }
}

/// The lowercase extension of a file name (`tar.gz` -> `gz`), empty if none.
fn extension(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.extension()
        .map(|e| e.as_bytes().to_ascii_lowercase())
        .unwrap_or_default()
}

/// File kinds whose contents are already compressed.
fn is_compressed_kind(ext: &[u8]) -> bool {
    const KINDS: &[&[u8]] = &[
        b"gz",
        b"tgz",
        b"xz",
        b"txz",
        b"bz2",
        b"zst",
        b"lz",
        b"lzma",
        b"lz4",
        b"zip",
        b"jar",
        b"apk",
        b"deb",
        b"rpm",
        b"7z",
        b"png",
        b"jpg",
        b"jpeg",
        b"gif",
        b"webp",
        b"avif",
        b"woff",
        b"woff2",
        b"mp3",
        b"ogg",
        b"oga",
        b"opus",
        b"flac",
        b"mp4",
        b"mkv",
        b"webm",
        b"pdf",
        b"hpkg",
        b"squashfs",
    ];
    KINDS.contains(&ext)
}

fn hash_content(tree: &Tree, f: NodeId) -> Result<[u8; 32]> {
    match &tree.nodes[f as usize].kind {
        NodeKind::File {
            content: Content::Bytes(b),
            ..
        } => Ok(*blake3::hash(b).as_bytes()),
        NodeKind::File { content, size } => {
            let (file, p) = open_content(content)?;
            let mut h = blake3::Hasher::new();
            let n = h
                .update_reader(file.take(*size + 1))
                .map_err(|e| Error::io(p, e))?
                .count();
            if n != *size {
                return Err(changed(p));
            }
            Ok(*h.finalize().as_bytes())
        }
        _ => Ok([0; 32]),
    }
}

/// Opens the file a node's content is read from: a walked file without following a link
/// or waiting on a FIFO, and only if it is still the file walked.
fn open_content(content: &Content) -> Result<(File, &Path)> {
    match content {
        Content::Path(p) => Ok((File::open(p).map_err(|e| Error::io(p, e))?, p)),
        Content::Walked { path, dev, ino } => {
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(path)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ELOOP) => replaced(path),
                    _ => Error::io(path, e),
                })?;
            let md = f.metadata().map_err(|e| Error::io(path, e))?;
            if !md.is_file() || md.dev() != *dev || md.ino() != *ino {
                return Err(replaced(path));
            }
            Ok((f, path))
        }
        Content::Bytes(_) => unreachable!("bytes are not opened"),
    }
}

fn replaced(p: &Path) -> Error {
    Error::Source {
        path: p.to_owned(),
        reason: "replaced by another file while being packaged".into(),
    }
}

fn changed(p: &Path) -> Error {
    Error::Source {
        path: p.to_owned(),
        reason: "file changed size while being packaged".into(),
    }
}

/// Reads the uncompressed bytes of one planned chunk.
fn assemble(tree: &Tree, blobs: &[(NodeId, u64)], plan: &ChunkPlan) -> Result<Vec<u8>> {
    let mut raw = vec![0u8; plan.raw_len as usize];
    let mut pos = 0usize;
    for p in &plan.pieces {
        let (node, size) = blobs[p.blob as usize];
        let dst = &mut raw[pos..pos + p.len as usize];
        match &tree.nodes[node as usize].kind {
            NodeKind::File {
                content: Content::Bytes(b),
                ..
            } => dst.copy_from_slice(&b[p.blob_off as usize..p.blob_off as usize + p.len as usize]),
            NodeKind::File { content, .. } => {
                let (f, path) = open_content(content)?;
                if p.len >= 64 * 1024 && is_hole(&f, p.blob_off, p.len as u64) {
                    // A hole of a sparse file reads as zeros, which `raw` already holds:
                    // skip the read (a 4 GiB sparse file then costs what its data costs).
                    pos += p.len as usize;
                    if p.blob_off + p.len as u64 == size {
                        let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
                        if len != size {
                            return Err(changed(path));
                        }
                    }
                    continue;
                }
                f.read_exact_at(dst, p.blob_off).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        changed(path)
                    } else {
                        Error::io(path, e)
                    }
                })?;
                if p.blob_off + p.len as u64 == size {
                    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
                    if len != size {
                        return Err(changed(path));
                    }
                }
            }
            _ => unreachable!("blobs are regular files"),
        }
        pos += p.len as usize;
    }
    Ok(raw)
}

/// True if bytes `off .. off + len` of `f` are a hole (no data: they read as zeros).
fn is_hole(f: &File, off: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a valid fd; it only moves this descriptor's offset, which positioned
    // reads do not use.
    let next_data = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if next_data < 0 {
        // ENXIO: no data at or after `off`; anything else (e.g. EINVAL): cannot tell.
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    next_data as u64 >= off + len
}

struct Strings {
    bytes: Vec<u8>,
    index: HashMap<Vec<u8>, u32>,
}

impl Strings {
    fn add(&mut self, s: &[u8]) -> Result<u32> {
        if let Some(&o) = self.index.get(s) {
            return Ok(o);
        }
        let off = self.bytes.len();
        if off + s.len() > u32::MAX as usize {
            return Err(Error::Options("string table larger than 4 GiB".into()));
        }
        self.bytes.extend_from_slice(s);
        self.index.insert(s.to_vec(), off as u32);
        Ok(off as u32)
    }
}

fn build_toc(
    tree: &Tree,
    order: &[NodeId],
    entry_of: &[u32],
    blob_of_file: &HashMap<NodeId, u32>,
    blob_loc: &[(u32, u32)],
    opts: &BuildOptions,
    report: &mut BuildReport,
) -> Result<Vec<u8>> {
    let mut strings = Strings {
        bytes: Vec::new(),
        index: HashMap::new(),
    };
    let mut inodes: Vec<RawInode> = Vec::with_capacity(order.len());
    let mut dirents: Vec<(u32, u16, u32)> = Vec::new();
    let mut xattrs: Vec<(u32, u16, u32, u32)> = Vec::new();
    let mut nlink: Vec<u32> = vec![0; order.len()];
    let mut parent: Vec<u32> = vec![0; order.len()];
    for (e, &n) in order.iter().enumerate() {
        if let NodeKind::Dir(ch) = &tree.nodes[n as usize].kind {
            for &c in ch.values() {
                let ce = entry_of[c as usize] as usize;
                nlink[ce] += 1;
                if matches!(tree.nodes[c as usize].kind, NodeKind::Dir(_)) {
                    parent[ce] = e as u32;
                    nlink[e] += 1;
                }
            }
        }
    }
    for (e, &n) in order.iter().enumerate() {
        let node = &tree.nodes[n as usize];
        let mtime = match opts.source_date_epoch {
            Some(t) if node.mtime > t => t,
            _ => node.mtime,
        };
        let mtime_nsec = match opts.source_date_epoch {
            Some(t) if node.mtime >= t => 0,
            _ => node.mtime_nsec,
        };
        let xattr_first = xattrs.len() as u32;
        for (k, v) in &node.xattrs {
            let ko = strings.add(k)?;
            let vo = strings.add(v)?;
            xattrs.push((ko, k.len() as u16, vo, v.len() as u32));
        }
        let mut ino = RawInode {
            mode: node.perm & 0o7777,
            nlink: 0,
            mtime,
            mtime_nsec,
            xattr_first,
            xattr_count: node.xattrs.len() as u32,
            ..RawInode::default()
        };
        match &node.kind {
            NodeKind::Dir(ch) => {
                report.dirs += 1;
                ino.mode |= S_IFDIR;
                ino.nlink = nlink[e] + 2 - u32::from(e != 0);
                ino.a = dirents.len() as u32;
                ino.b = ch.len() as u32;
                ino.c = parent[e];
                for (name, &c) in ch {
                    let o = strings.add(name)?;
                    dirents.push((o, name.len() as u16, entry_of[c as usize]));
                }
            }
            NodeKind::File { size, .. } => {
                ino.mode |= S_IFREG;
                ino.nlink = nlink[e];
                ino.d = *size;
                if let Some(&b) = blob_of_file.get(&n) {
                    let (c, off) = blob_loc[b as usize];
                    ino.a = c;
                    ino.b = off;
                }
            }
            NodeKind::Symlink(t) => {
                report.symlinks += 1;
                ino.mode |= S_IFLNK;
                ino.nlink = nlink[e];
                ino.a = strings.add(t)?;
                ino.b = t.len() as u32;
            }
        }
        inodes.push(ino);
    }
    if dirents.len() > u32::MAX as usize || xattrs.len() > u32::MAX as usize {
        return Err(Error::Options(
            "too many directory entries or xattrs".into(),
        ));
    }
    let (l, total) = TocLayout::compute(
        inodes.len() as u32,
        dirents.len() as u32,
        xattrs.len() as u32,
        strings.bytes.len() as u64,
    );
    if total > super::TOC_MAX {
        return Err(Error::Options(format!(
            "the table of contents needs {total} bytes, more than the format's limit of {} (512 MiB)",
            super::TOC_MAX
        )));
    }
    let mut toc = vec![0u8; total as usize];
    use super::le::{put_u16, put_u32, put_u64};
    put_u32(&mut toc, 0, l.n_inodes);
    put_u32(&mut toc, 4, l.n_dirents);
    put_u32(&mut toc, 8, l.n_xattrs);
    put_u64(&mut toc, 16, l.strings_len as u64);
    debug_assert_eq!(l.inodes, TOC_HEADER_LEN);
    for (i, ino) in inodes.iter().enumerate() {
        let off = l.inodes + i * super::toc::INODE_LEN;
        toc[off..off + super::toc::INODE_LEN].copy_from_slice(&ino.to_bytes());
    }
    for (j, &(o, len, t)) in dirents.iter().enumerate() {
        let off = l.dirents + j * DIRENT_LEN;
        put_u32(&mut toc, off, o);
        put_u32(&mut toc, off + 4, t);
        put_u16(&mut toc, off + 8, len);
    }
    for (k, &(no, nl, vo, vl)) in xattrs.iter().enumerate() {
        let off = l.xattrs + k * XATTR_LEN;
        put_u32(&mut toc, off, no);
        put_u32(&mut toc, off + 4, vo);
        put_u16(&mut toc, off + 8, nl);
        put_u32(&mut toc, off + 12, vl);
    }
    toc[l.strings..].copy_from_slice(&strings.bytes);
    Ok(toc)
}
