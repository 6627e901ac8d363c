//! Reading an archive: open (validate everything before use), look up, list, stat, read.
//!
//! Opening checks the header's sections against the format's limits, the signature in the
//! trailer against the embedded key (and, for [`Archive::open_trusted`], the signer against
//! the trusted keys), then reads the metadata (header, manifest, TOC, chunk index) into
//! memory (never a memory map: see `Archive::load`) and checks it once: its hash against
//! the trailer's package id (large metadata is hashed in pieces before it is allocated),
//! every record of the TOC and chunk index, and every file's bytes against its chunks.
//! Time and memory are proportional to the metadata, not the data. File bytes are read
//! with positioned reads, chunk by chunk; a chunk's hash is checked before it is
//! decompressed.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chunk::{self, ChunkInfo, INDEX_ENTRY_LEN};
use super::header::{Header, HEADER_LEN};
use super::sign::{Trailer, TRAILER_LEN};
use super::thin::{self, Heaps, RemoteHeap, Source, ThinHeader, ThinPackage, THIN_HEADER_LEN};
use super::toc::{RawInode, Toc, TocLayout, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::{ChunkId, EntryId, PackageId};
use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey, TrustedKeys};
use crate::manifest::Manifest;

/// The kind of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Kind {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
        }
    }

    fn of(mode: u32) -> Kind {
        match mode & S_IFMT {
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => Kind::File,
        }
    }
}

/// The attributes of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// File type.
    pub kind: Kind,
    /// Permission bits, including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    /// Number of names (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Size in bytes (symlinks: target length; directories: 0).
    pub size: u64,
    /// Modification time (seconds since the epoch).
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
}

impl Attr {
    /// The full `st_mode` (type and permission bits).
    pub fn mode(&self) -> u32 {
        self.perm
            | match self.kind {
                Kind::File => S_IFREG,
                Kind::Dir => S_IFDIR,
                Kind::Symlink => S_IFLNK,
            }
    }
}

/// One directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The name (never empty, never `.` or `..`, no `/` or NUL).
    pub name: &'a [u8],
    /// The entry it names.
    pub entry: EntryId,
}

/// Iterator over a directory's entries, in name order. `nth` is O(1), so a readdir that
/// resumes at an offset does not rescan.
#[derive(Debug, Clone)]
pub struct DirIter<'a> {
    toc: Toc<'a>,
    range: Range<u32>,
}

impl<'a> Iterator for DirIter<'a> {
    type Item = DirEntry<'a>;

    fn next(&mut self) -> Option<DirEntry<'a>> {
        let j = self.range.next()?;
        let (_, _, entry) = self.toc.dirent(j);
        Some(DirEntry {
            name: self.toc.dirent_name(j),
            entry,
        })
    }

    fn nth(&mut self, n: usize) -> Option<DirEntry<'a>> {
        let skip = n.min(self.range.len()) as u32;
        self.range.start += skip;
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.range.len(), Some(self.range.len()))
    }
}

impl ExactSizeIterator for DirIter<'_> {}

/// A part of a file that lies in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// The chunk.
    pub chunk: ChunkId,
    /// Offset of the part inside the chunk's uncompressed bytes.
    pub start: u32,
    /// Length of the part.
    pub len: u32,
}

/// Where a regular file's bytes lie: a run of the heap's uncompressed bytes, starting
/// `skip` bytes into chunk `first` (files are packed back to back; FORMAT.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileExtent {
    first: ChunkId,
    skip: u32,
    size: u64,
    chunk_size: u32,
}

impl FileExtent {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Every chunk the file uses.
    pub fn chunks(&self) -> Range<ChunkId> {
        if self.size == 0 {
            return 0..0;
        }
        let last = self.first as u64 + (self.skip as u64 + self.size - 1) / self.chunk_size as u64;
        self.first..last as ChunkId + 1
    }

    /// The chunks holding bytes `offset .. offset + len` (clipped to the size), in order.
    /// Computed as iterated: no allocation.
    pub fn spans(&self, offset: u64, len: u64) -> Spans {
        Spans {
            ext: *self,
            pos: offset,
            end: offset.saturating_add(len).min(self.size),
        }
    }
}

/// The spans of part of a file (see [`FileExtent::spans`]).
#[derive(Debug, Clone)]
pub struct Spans {
    ext: FileExtent,
    pos: u64,
    end: u64,
}

impl Iterator for Spans {
    type Item = ChunkSpan;

    fn next(&mut self) -> Option<ChunkSpan> {
        if self.pos >= self.end {
            return None;
        }
        let cs = self.ext.chunk_size as u64;
        let abs = self.ext.skip as u64 + self.pos;
        let start = abs % cs;
        let n = (cs - start).min(self.end - self.pos);
        self.pos += n;
        Some(ChunkSpan {
            chunk: (self.ext.first as u64 + abs / cs) as ChunkId,
            start: start as u32,
            len: n as u32,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.pos >= self.end {
            return (0, Some(0));
        }
        let cs = self.ext.chunk_size as u64;
        let abs = self.ext.skip as u64 + self.pos;
        let first = abs / cs;
        let last = (abs + (self.end - self.pos) - 1) / cs;
        let n = (last - first + 1) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Spans {}

/// An open package archive. `Send + Sync`: one archive serves any number of threads.
#[derive(Debug)]
pub struct Archive {
    path: PathBuf,
    file: File,
    /// Everything before the heap: header, manifest, TOC, chunk index.
    meta: Vec<u8>,
    header: Header,
    toc: TocLayout,
    /// The raw TOC: in place in `meta` (this range) or decompressed (`toc_owned`).
    toc_range: std::ops::Range<usize>,
    toc_owned: Option<Vec<u8>>,
    trailer: Trailer,
    manifest: Manifest,
    /// A thin package's source and heap; `None` for a whole package (heap in `file`).
    thin: Option<(Source, Arc<dyn RemoteHeap>)>,
}

impl Archive {
    /// Opens and validates an archive.
    pub fn open(path: &Path) -> Result<Archive> {
        let file = open_regular(path).map_err(|e| Error::io(path, e))?;
        Archive::from_file(file, path)
    }

    /// Validates an archive from an open file; `path` is used in messages.
    pub fn from_file(file: File, path: &Path) -> Result<Archive> {
        Archive::load(file, path, None)
    }

    /// Opens an archive that must be signed by one of `keys` (the daemon's and the set
    /// commands' way in). The signature over the package id recorded in the trailer is
    /// checked, and the signer's trust, *before* the metadata is read or hashed: a package
    /// nobody trusted signed costs the header and the trailer, whatever sizes it claims.
    pub fn open_trusted(path: &Path, keys: &TrustedKeys) -> Result<Archive> {
        let file = open_regular(path).map_err(|e| Error::io(path, e))?;
        Archive::from_file_trusted(file, path, keys)
    }

    /// [`Archive::open_trusted`] on an open file; `path` is used in messages.
    pub fn from_file_trusted(file: File, path: &Path, keys: &TrustedKeys) -> Result<Archive> {
        Archive::load(file, path, Some(keys))
    }

    /// Opens a package file that may be thin (FORMAT.md §12): the heap of a thin package is
    /// read through `heaps`. Without `keys`, any signer (or none) is accepted, as
    /// [`Archive::from_file`] does.
    pub fn from_file_with(
        file: File,
        path: &Path,
        keys: Option<&TrustedKeys>,
        heaps: &dyn Heaps,
    ) -> Result<Archive> {
        Archive::load_with(file, path, keys, Some(heaps))
    }

    fn load(file: File, path: &Path, keys: Option<&TrustedKeys>) -> Result<Archive> {
        Archive::load_with(file, path, keys, None)
    }

    fn load_with(
        file: File,
        path: &Path,
        keys: Option<&TrustedKeys>,
        heaps: Option<&dyn Heaps>,
    ) -> Result<Archive> {
        let ioerr = |e| Error::io(path, e);
        let md = file.metadata().map_err(ioerr)?;
        if !md.is_file() {
            return Err(Error::io(
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let real_len = md.len();
        // A thin package (FORMAT.md §12) is the metadata and trailer of a whole one behind
        // a thin header: the embedded header is checked against the whole package's size
        // it records, and the heap is read elsewhere.
        let mut th = [0u8; THIN_HEADER_LEN];
        let n = read_full_at(&file, &mut th, 0).map_err(ioerr)?;
        let thin_header = if n >= 8 && th[..8] == thin::THIN_MAGIC {
            Some(ThinHeader::parse(&th[..n], real_len)?)
        } else {
            None
        };
        let base = if thin_header.is_some() {
            THIN_HEADER_LEN as u64
        } else {
            0
        };
        let mut hb = [0u8; HEADER_LEN];
        let n = read_full_at(&file, &mut hb, base).map_err(ioerr)?;
        let file_len = match thin_header {
            Some(_) if n == HEADER_LEN => {
                u64::from_le_bytes(hb[120..128].try_into().unwrap_or([0; 8]))
            }
            Some(_) => 0,
            None => real_len,
        };
        // Every section length is checked against the limits of FORMAT.md §10 here, so
        // what follows reads at most about 740 MiB of metadata, whatever the file claims.
        let header = Header::parse(&hb[..n], file_len)?;
        if let Some(t) = thin_header {
            if t.meta_len != header.heap.offset {
                return Err(Error::corrupt(
                    "thin header",
                    format!(
                        "metadata of {} bytes, the package header says {}",
                        t.meta_len, header.heap.offset
                    ),
                ));
            }
        }
        let trailer_at = match thin_header {
            Some(t) => t.trailer_offset(),
            None => header.trailer.offset,
        };
        let mut tb = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut tb, trailer_at).map_err(ioerr)?;
        // The signature over the id the trailer claims is checked first (it costs one
        // signature check), and then the signer's trust when it matters: an unsigned or
        // untrusted package is refused before its metadata is read.
        let trailer = Trailer::parse(&tb, header.is_signed())?;
        if let Some(keys) = keys {
            trailer.check_trust(keys)?;
        }
        // The metadata is read into memory, not mapped: a package file truncated while it
        // is open (`cp new.hpkg packages/same-name.hpkg` writes into the same file) would
        // make any access to a mapped page past the new end kill the process with SIGBUS,
        // and with it a whole mount. Read, a changed file costs EIO on the chunks that
        // no longer match their hashes, and nothing else.
        let meta_len = usize::try_from(header.heap.offset).map_err(|_| {
            Error::corrupt(
                "header",
                "the metadata is larger than this machine's memory",
            )
        })?;
        let hash_mismatch = |actual: &blake3::Hash| Error::MetadataHash {
            expected: crate::keys::hex(&tb[40..72]),
            actual: actual.to_hex().to_string(),
        };
        if meta_len > super::META_PIECE {
            // Large metadata is hashed in pieces first, so that claimed sizes cost no
            // memory until the bytes are known to be the ones the trailer names.
            let actual = hash_in_pieces(&file, base, header.heap.offset).map_err(|e| match e {
                Some(e) => ioerr(e),
                None => Error::Truncated {
                    section: "metadata",
                    offset: 0,
                    need: header.heap.offset,
                    len: file_len,
                },
            })?;
            if actual.as_bytes()[..] != tb[40..72] {
                return Err(hash_mismatch(&actual));
            }
        }
        let mut meta = Vec::new();
        meta.try_reserve_exact(meta_len).map_err(|_| {
            Error::corrupt(
                "header",
                format!("cannot allocate {meta_len} bytes for the metadata"),
            )
        })?;
        meta.resize(meta_len, 0);
        let got = read_full_at(&file, &mut meta, base).map_err(ioerr)?;
        if got != meta_len {
            return Err(Error::Truncated {
                section: "metadata",
                offset: 0,
                need: header.heap.offset,
                len: got as u64,
            });
        }
        // Hashed (again) as read: these are the bytes used from here on.
        let actual = blake3::hash(&meta);
        if actual.as_bytes()[..] != tb[40..72] {
            return Err(hash_mismatch(&actual));
        }
        let m = &meta[header.manifest.offset as usize..header.manifest.end() as usize];
        let manifest = Manifest::from_json(m)?;
        let section = &meta[header.toc.offset as usize..header.toc.end() as usize];
        let (toc_range, toc_owned) = match super::toc::unpack(section, header.version_minor)? {
            super::toc::Unpacked::InPlace(r) => (
                header.toc.offset as usize + r.start..header.toc.offset as usize + r.end,
                None,
            ),
            super::toc::Unpacked::Owned(v) => (0..v.len(), Some(v)),
        };
        let toc_bytes = match &toc_owned {
            Some(v) => &v[..],
            None => &meta[toc_range.clone()],
        };
        let toc = TocLayout::parse(toc_bytes)?;
        let source = match thin_header {
            Some(t) => {
                let mut sb = vec![0u8; t.source_len as usize];
                file.read_exact_at(&mut sb, t.source_offset())
                    .map_err(ioerr)?;
                Some(thin::parse_source(&sb)?)
            }
            None => None,
        };
        let mut archive = Archive {
            path: path.to_owned(),
            file,
            meta,
            header,
            toc,
            toc_range,
            toc_owned,
            trailer,
            manifest,
            thin: None,
        };
        let n_chunks = archive.header.chunk_count();
        let mut raw_total = 0u64;
        let mut raw_lens = Vec::with_capacity(n_chunks as usize);
        for c in 0..n_chunks {
            let raw_len = archive.parse_chunk(c)?.raw_len;
            raw_total += raw_len as u64;
            raw_lens.push(raw_len);
        }
        if raw_total != archive.header.content_size {
            return Err(Error::corrupt(
                "chunk index",
                format!(
                    "chunks hold {raw_total} bytes, the header says {}",
                    archive.header.content_size
                ),
            ));
        }
        let toc = archive.toc_view();
        toc.validate(n_chunks, archive.header.chunk_size)?;
        toc.check_file_ranges(&raw_lens, archive.header.chunk_size)?;
        if let Some(source) = source {
            let heap: Arc<dyn RemoteHeap> = match heaps {
                Some(h) => {
                    let chunks = (0..n_chunks)
                        .map(|c| archive.parse_chunk(c))
                        .collect::<Result<Vec<_>>>()?;
                    let pkg = ThinPackage {
                        id: archive.id(),
                        source: source.clone(),
                        heap_offset: archive.header.heap.offset,
                        file_size: archive.header.file_size,
                        chunks,
                    };
                    h.open(&pkg).map_err(|reason| Error::Fetch {
                        chunk: None,
                        reason,
                    })?
                }
                None => Arc::new(thin::NoHeap),
            };
            archive.thin = Some((source, heap));
        }
        Ok(archive)
    }

    /// True for a thin package (FORMAT.md §12): its heap is elsewhere.
    pub fn is_thin(&self) -> bool {
        self.thin.is_some()
    }

    /// Where a thin package's heap lives.
    pub fn thin_source(&self) -> Option<&Source> {
        self.thin.as_ref().map(|(s, _)| s)
    }

    /// The metadata as read and hashed: bytes 0 .. heap.offset of the whole package.
    pub fn metadata_bytes(&self) -> &[u8] {
        &self.meta
    }

    /// The trailer's 136 bytes (the id, and the key and signature when signed).
    pub fn trailer_bytes(&self) -> [u8; TRAILER_LEN] {
        self.trailer.to_bytes()
    }

    /// The bytes of a thin package of this one, whose heap lives at `source`.
    pub fn thin_bytes(&self, source: &Source) -> Result<Vec<u8>> {
        thin::assemble(&self.meta, &self.trailer.to_bytes(), source)
    }

    fn toc_view(&self) -> Toc<'_> {
        Toc {
            bytes: match &self.toc_owned {
                Some(v) => &v[..],
                None => &self.meta[self.toc_range.clone()],
            },
            l: self.toc,
        }
    }

    fn parse_chunk(&self, c: ChunkId) -> Result<ChunkInfo> {
        if c >= self.header.chunk_count() {
            return Err(Error::corrupt("chunk index", format!("no chunk {c}")));
        }
        let off = self.header.chunk_index.offset as usize + c as usize * INDEX_ENTRY_LEN;
        ChunkInfo::parse(
            &self.meta[off..off + INDEX_ENTRY_LEN],
            c,
            self.header.heap.len,
            self.header.chunk_size,
            self.header.version_minor,
        )
    }

    /// The table of contents, uncompressed.
    pub(crate) fn raw_toc(&self) -> &[u8] {
        self.toc_view().bytes
    }

    /// The path the archive was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The package id (BLAKE3 of the metadata).
    pub fn id(&self) -> PackageId {
        self.trailer.id
    }

    /// The signer's public key (the signature over the id has been verified against it),
    /// or `None` for an unsigned archive. Whether the key is trusted is [`Archive::check_trust`].
    pub fn signer(&self) -> Option<&PublicKey> {
        self.trailer.signature.as_ref().map(|(k, _)| k)
    }

    /// Checks that the archive is signed by one of `keys`; returns the key id.
    pub fn check_trust(&self, keys: &TrustedKeys) -> Result<KeyId> {
        self.trailer.check_trust(keys)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's bytes as stored.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.meta[self.header.manifest.offset as usize..self.header.manifest.end() as usize]
    }

    /// Number of entries (inodes), including the root.
    pub fn entry_count(&self) -> u32 {
        self.toc.n_inodes
    }

    /// Number of extended attributes of all entries (the TOC's xattr table).
    pub fn xattr_count(&self) -> u32 {
        self.toc.n_xattrs
    }

    /// Number of directory entries (names).
    pub fn name_count(&self) -> u32 {
        self.toc.n_dirents
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.header.chunk_count()
    }

    /// The root directory.
    pub fn root(&self) -> EntryId {
        0
    }

    fn raw(&self, e: EntryId) -> Result<RawInode> {
        if e >= self.toc.n_inodes {
            return Err(Error::NoEntry(e));
        }
        Ok(self.toc_view().inode(e))
    }

    fn raw_kind(&self, e: EntryId, wanted: Kind) -> Result<RawInode> {
        let r = self.raw(e)?;
        let k = Kind::of(r.mode);
        if k != wanted {
            return Err(Error::WrongKind {
                entry: e,
                wanted,
                actual: k,
            });
        }
        Ok(r)
    }

    /// The attributes of an entry.
    pub fn attr(&self, e: EntryId) -> Result<Attr> {
        let r = self.raw(e)?;
        let kind = Kind::of(r.mode);
        Ok(Attr {
            kind,
            perm: r.mode & 0o7777,
            nlink: r.nlink,
            size: match kind {
                Kind::File => r.d,
                Kind::Symlink => r.b as u64,
                Kind::Dir => 0,
            },
            mtime: r.mtime,
            mtime_nsec: r.mtime_nsec,
        })
    }

    /// The parent of a directory (the root is its own parent).
    pub fn parent(&self, dir: EntryId) -> Result<EntryId> {
        Ok(self.raw_kind(dir, Kind::Dir)?.c)
    }

    /// Finds `name` in directory `dir` by binary search.
    pub fn lookup(&self, dir: EntryId, name: &[u8]) -> Result<Option<EntryId>> {
        let r = self.raw_kind(dir, Kind::Dir)?;
        let toc = self.toc_view();
        let (mut lo, mut hi) = (r.a, r.a + r.b);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match toc.dirent_name(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(toc.dirent(mid).2)),
            }
        }
        Ok(None)
    }

    /// Resolves a relative path (`usr/bin/x`; empty is the root) without following symlinks.
    pub fn lookup_path(&self, path: &[u8]) -> Result<Option<EntryId>> {
        let mut cur = self.root();
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            if Kind::of(self.raw(cur)?.mode) != Kind::Dir {
                return Ok(None);
            }
            match self.lookup(cur, comp)? {
                Some(n) => cur = n,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// The entries of a directory, in name order (without `.` and `..`).
    pub fn read_dir(&self, dir: EntryId) -> Result<DirIter<'_>> {
        let r = self.raw_kind(dir, Kind::Dir)?;
        Ok(DirIter {
            toc: self.toc_view(),
            range: r.a..r.a + r.b,
        })
    }

    /// The target of a symbolic link.
    pub fn read_link(&self, e: EntryId) -> Result<&[u8]> {
        let r = self.raw_kind(e, Kind::Symlink)?;
        self.toc_view()
            .string(r.a, r.b)
            .ok_or_else(|| Error::corrupt(format!("toc entry {e}"), "symlink target"))
    }

    /// The extended attributes of an entry, sorted by name.
    pub fn xattrs(&self, e: EntryId) -> Result<impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_> {
        let r = self.raw(e)?;
        let toc = self.toc_view();
        Ok((r.xattr_first..r.xattr_first + r.xattr_count).map(move |k| toc.xattr(k)))
    }

    /// One extended attribute by name.
    pub fn xattr(&self, e: EntryId, name: &[u8]) -> Result<Option<&[u8]>> {
        Ok(self.xattrs(e)?.find(|(n, _)| *n == name).map(|(_, v)| v))
    }

    /// The chunk index entry of chunk `c`.
    pub fn chunk_info(&self, c: ChunkId) -> Result<ChunkInfo> {
        self.parse_chunk(c)
    }

    /// Reads the stored (compressed) bytes of chunk `c` into `buf`.
    pub fn read_stored(&self, c: ChunkId, buf: &mut Vec<u8>) -> Result<ChunkInfo> {
        let info = self.parse_chunk(c)?;
        self.read_stored_of(c, &info, buf)?;
        Ok(info)
    }

    /// Reads the stored bytes of chunk `c`, which `info` (its entry of this archive's chunk
    /// index) names: from the file, or a thin package's heap.
    fn read_stored_of(&self, c: ChunkId, info: &ChunkInfo, buf: &mut Vec<u8>) -> Result<()> {
        if let Some((_, heap)) = &self.thin {
            heap.read_stored(c, buf).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::NotLocal { chunk: c }
                } else {
                    Error::Fetch {
                        chunk: Some(c),
                        reason: e.to_string(),
                    }
                }
            })?;
            if buf.len() != info.stored_len as usize {
                return Err(Error::ChunkHash { chunk: c });
            }
            return Ok(());
        }
        // Every byte is overwritten by the read: no need to clear a recycled buffer first.
        buf.resize(info.stored_len as usize, 0);
        self.file
            .read_exact_at(buf, self.header.heap.offset + info.offset)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads chunk `c`, checks its hash, and decompresses it into `out`.
    pub fn read_chunk(&self, c: ChunkId, out: &mut Vec<u8>) -> Result<()> {
        let info = self.parse_chunk(c)?;
        self.read_chunk_of(c, &info, out)
    }

    /// [`Archive::read_chunk`] for a caller that holds chunk `c`'s index entry already
    /// (from [`Archive::chunk_info`]): the entry is not decoded again.
    ///
    /// The stored bytes go through a buffer kept per thread, so a reader that loads chunk
    /// after chunk allocates nothing but `out` (which it may recycle too).
    pub fn read_chunk_of(&self, c: ChunkId, info: &ChunkInfo, out: &mut Vec<u8>) -> Result<()> {
        thread_local! {
            static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        STORED.with(|cell| {
            // (Never re-entered on a thread; if it were, a buffer of its own would do.)
            let (mut guard, mut own) = (cell.try_borrow_mut().ok(), Vec::new());
            let stored = guard.as_deref_mut().unwrap_or(&mut own);
            self.read_stored_of(c, info, stored)?;
            chunk::verify_and_decompress(c, info, stored, out)
        })
    }

    /// Checks chunk `c`'s stored bytes against their hash and that they decompress.
    pub fn verify_chunk(&self, c: ChunkId) -> Result<()> {
        let mut out = Vec::new();
        self.read_chunk(c, &mut out)
    }

    /// Where file `e`'s bytes lie in the heap, decoded once: what a reader of the file
    /// keeps so that each request costs no further decode of its inode.
    pub fn file_extent(&self, e: EntryId) -> Result<FileExtent> {
        let r = self.raw_kind(e, Kind::File)?;
        Ok(FileExtent {
            first: r.a,
            skip: r.b,
            size: r.d,
            chunk_size: self.header.chunk_size,
        })
    }

    /// The chunks holding bytes `offset .. offset + len` of file `e` (clipped to its size).
    pub fn file_spans(&self, e: EntryId, offset: u64, len: u64) -> Result<Vec<ChunkSpan>> {
        Ok(self.file_extent(e)?.spans(offset, len).collect())
    }

    /// Every chunk file `e` uses.
    pub fn file_chunks(&self, e: EntryId) -> Result<Range<ChunkId>> {
        Ok(self.file_extent(e)?.chunks())
    }

    /// Reads bytes of file `e` at `offset` into `buf`, getting each chunk's decompressed bytes
    /// from `load` (which is how a cache sits above the archive). Returns the number of bytes
    /// read: less than `buf.len()` only at the end of the file.
    pub fn read_at_with<D, F>(
        &self,
        e: EntryId,
        offset: u64,
        buf: &mut [u8],
        mut load: F,
    ) -> Result<usize>
    where
        D: AsRef<[u8]>,
        F: FnMut(ChunkId) -> Result<D>,
    {
        let mut done = 0usize;
        for span in self.file_extent(e)?.spans(offset, buf.len() as u64) {
            let data = load(span.chunk)?;
            let data = data.as_ref();
            let (s, n) = (span.start as usize, span.len as usize);
            let src = data.get(s..s + n).ok_or_else(|| {
                Error::corrupt(
                    format!("toc entry {e}"),
                    format!(
                        "file needs bytes {s}..{} of chunk {}, which has {}",
                        s + n,
                        span.chunk,
                        data.len()
                    ),
                )
            })?;
            buf[done..done + n].copy_from_slice(src);
            done += n;
        }
        Ok(done)
    }

    /// Reads bytes of file `e` at `offset` into `buf`, decompressing the chunks it needs
    /// (no caching: use [`Archive::read_at_with`] or [`Archive::open_file`] for repeated reads).
    pub fn read_at(&self, e: EntryId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let mut scratch = Vec::new();
        self.read_at_with(e, offset, buf, |c| {
            let mut out = Vec::new();
            let info = self.read_stored(c, &mut scratch)?;
            chunk::verify_and_decompress(c, &info, &scratch, &mut out)?;
            Ok(out)
        })
    }

    /// A sequential reader over file `e` that decompresses each chunk once.
    pub fn open_file(&self, e: EntryId) -> Result<FileReader<'_>> {
        let size = self.attr(e)?.size;
        self.raw_kind(e, Kind::File)?;
        Ok(FileReader {
            archive: self,
            entry: e,
            pos: 0,
            size,
            chunk: None,
            data: Vec::new(),
            stored: Vec::new(),
        })
    }

    /// Every entry but the root, depth first in name order, with its attributes and
    /// without its path: a hard-linked file appears once per name. Each step costs O(1),
    /// where [`Archive::walk`] copies out the path of every entry, which costs the depth of
    /// the entry (quadratic in the depth of a deep tree). For whoever only counts or
    /// checks entries.
    pub fn walk_entries(&self) -> EntryWalk<'_> {
        let root = self
            .read_dir(self.root())
            .expect("root is a directory (checked at open)");
        EntryWalk {
            archive: self,
            stack: vec![root],
        }
    }

    /// The paths (relative to the root, as bytes) of the files that use each of `chunks`,
    /// in walk order: what a damaged chunk costs, for `pkgtool verify` and the daemon's
    /// log. One walk of the tree.
    pub fn files_using(
        &self,
        chunks: &std::collections::BTreeSet<ChunkId>,
    ) -> std::collections::BTreeMap<ChunkId, Vec<Vec<u8>>> {
        let mut map: std::collections::BTreeMap<ChunkId, Vec<Vec<u8>>> = Default::default();
        if chunks.is_empty() {
            return map;
        }
        for w in self.walk() {
            if w.attr.kind != Kind::File {
                continue;
            }
            let Ok(range) = self.file_chunks(w.entry) else {
                continue;
            };
            for &c in chunks.range(range.start..range.end) {
                map.entry(c).or_default().push(w.path.clone());
            }
        }
        map
    }

    /// Every entry but the root, depth first in name order, with its path relative to the
    /// root (`usr/bin/x`). A hard-linked file appears once per name. Each item owns its
    /// path, so a walk costs the sum of the path lengths; see [`Archive::walk_entries`].
    pub fn walk(&self) -> Walk<'_> {
        let root = self
            .read_dir(self.root())
            .expect("root is a directory (checked at open)");
        Walk {
            archive: self,
            stack: vec![(root, 0)],
            path: Vec::new(),
        }
    }
}

/// See [`Archive::walk_entries`].
pub struct EntryWalk<'a> {
    archive: &'a Archive,
    stack: Vec<DirIter<'a>>,
}

impl Iterator for EntryWalk<'_> {
    type Item = (EntryId, Attr);

    fn next(&mut self) -> Option<(EntryId, Attr)> {
        loop {
            let iter = self.stack.last_mut()?;
            match iter.next() {
                None => {
                    self.stack.pop();
                }
                Some(de) => {
                    let attr = self.archive.attr(de.entry).ok()?;
                    if attr.kind == Kind::Dir {
                        if let Ok(it) = self.archive.read_dir(de.entry) {
                            self.stack.push(it);
                        }
                    }
                    return Some((de.entry, attr));
                }
            }
        }
    }
}

/// See [`Archive::walk`].
pub struct Walk<'a> {
    archive: &'a Archive,
    stack: Vec<(DirIter<'a>, usize)>,
    path: Vec<u8>,
}

/// One item of a [`Walk`].
#[derive(Debug, Clone)]
pub struct WalkEntry {
    /// Path relative to the root, `/`-separated.
    pub path: Vec<u8>,
    /// The entry.
    pub entry: EntryId,
    /// Its attributes.
    pub attr: Attr,
}

impl Iterator for Walk<'_> {
    type Item = WalkEntry;

    fn next(&mut self) -> Option<WalkEntry> {
        loop {
            let (iter, base) = self.stack.last_mut()?;
            let base = *base;
            match iter.next() {
                None => {
                    self.stack.pop();
                }
                Some(de) => {
                    self.path.truncate(base);
                    if base > 0 {
                        self.path.push(b'/');
                    }
                    self.path.extend_from_slice(de.name);
                    let attr = self.archive.attr(de.entry).ok()?;
                    let item = WalkEntry {
                        path: self.path.clone(),
                        entry: de.entry,
                        attr,
                    };
                    if attr.kind == Kind::Dir {
                        if let Ok(it) = self.archive.read_dir(de.entry) {
                            self.stack.push((it, self.path.len()));
                        }
                    }
                    return Some(item);
                }
            }
        }
    }
}

/// A sequential reader over one file: see [`Archive::open_file`].
pub struct FileReader<'a> {
    archive: &'a Archive,
    entry: EntryId,
    pos: u64,
    size: u64,
    chunk: Option<ChunkId>,
    data: Vec<u8>,
    stored: Vec<u8>,
}

impl FileReader<'_> {
    /// Reads the next bytes; `Ok(0)` at the end of the file.
    pub fn read_next(&mut self, buf: &mut [u8]) -> Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let span = self
            .archive
            .file_spans(self.entry, self.pos, buf.len() as u64)?[0];
        if self.chunk != Some(span.chunk) {
            self.chunk = None;
            let info = self.archive.read_stored(span.chunk, &mut self.stored)?;
            chunk::verify_and_decompress(span.chunk, &info, &self.stored, &mut self.data)?;
            self.chunk = Some(span.chunk);
        }
        let (s, n) = (span.start as usize, span.len as usize);
        let src = self.data.get(s..s + n).ok_or_else(|| {
            Error::corrupt(
                format!("toc entry {}", self.entry),
                format!("chunk {} too short", span.chunk),
            )
        })?;
        buf[..n].copy_from_slice(src);
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_next(buf).map_err(io::Error::other)
    }
}

/// Opens `path` for reading if it is a regular file (following symlinks), without ever
/// blocking or touching anything else: a FIFO dropped where packages are expected would
/// block a plain open until a writer comes (a daemon opening it would hang), and opening
/// a device can have effects of its own. Non-blocking and checked before and after.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let not_regular = || io::Error::new(io::ErrorKind::InvalidInput, "not a regular file");
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// BLAKE3 of the first `len` bytes of `f`, read in pieces of [`super::META_PIECE`] bytes.
/// `Err(None)` if the file is shorter.
fn hash_in_pieces(f: &File, base: u64, len: u64) -> Result<blake3::Hash, Option<io::Error>> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; super::META_PIECE];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        let got = read_full_at(f, &mut buf[..n], base + off).map_err(Some)?;
        if got != n {
            return Err(None);
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize())
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// True if two entries (of the same or different archives) have the same type, permission
/// bits and contents (bytes, or symlink target); directories compare equal by kind alone.
pub fn same_entry(a: &Archive, ea: EntryId, b: &Archive, eb: EntryId) -> bool {
    let (Ok(x), Ok(y)) = (a.attr(ea), b.attr(eb)) else {
        return false;
    };
    if x.kind != y.kind || x.perm != y.perm || x.size != y.size {
        return false;
    }
    match x.kind {
        Kind::Dir => true,
        Kind::Symlink => a.read_link(ea).ok() == b.read_link(eb).ok(),
        Kind::File => {
            let (Ok(mut ra), Ok(mut rb)) = (a.open_file(ea), b.open_file(eb)) else {
                return false;
            };
            let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            loop {
                let Ok(n) = read_full(&mut ra, &mut ba) else {
                    return false;
                };
                let Ok(m) = read_full(&mut rb, &mut bb) else {
                    return false;
                };
                if n != m || ba[..n] != bb[..m] {
                    return false;
                }
                if n == 0 {
                    return true;
                }
            }
        }
    }
}

fn read_full(r: &mut FileReader<'_>, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = r.read_next(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}
