//! The read path: a READ of part of a file, from its chunk spans to bytes.
//!
//! A file being read is an [`OpenFile`]: its package, entry and [`FileExtent`], decoded
//! once from the view (`View::file`). A read walks the extent's spans (computed, not
//! collected), takes each chunk from the shared [`ChunkCache`] (whose loader reads the
//! stored bytes, checks their hash and decompresses them, decoding the chunk's index entry
//! once), and answers with the chunk's own bytes when one chunk holds the range, else with
//! a buffer kept per worker thread: a read allocates nothing once the threads are warm.
//!
//! A sequential reader gets the next chunks decompressed ahead of it on the prefetch
//! threads, so decompression overlaps the kernel copying the previous chunk out. The
//! read-ahead state of each stream (a file read by a process) lives in one of several
//! shards picked by the stream, so readers of different files never wait for each other.

use std::cell::RefCell;
use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};

use format::archive::{ChunkId, ChunkInfo, ChunkSpan, EntryId, FileExtent};
use lru::LruCache;
use tracing::error;

use crate::cache::{Chunk, ChunkCache};
use crate::view::{Error, Package};

/// A regular file being read: its package, its entry and where its bytes lie.
#[derive(Debug, Clone)]
pub struct OpenFile {
    /// The package.
    pub pkg: Arc<Package>,
    /// The entry in its archive.
    pub entry: EntryId,
    /// Where its bytes lie, decoded once.
    pub extent: FileExtent,
}

impl OpenFile {
    /// The file `entry` of `pkg`.
    pub fn new(pkg: Arc<Package>, entry: EntryId) -> Result<OpenFile, Error> {
        match pkg.archive.file_extent(entry) {
            Ok(extent) => Ok(OpenFile { pkg, entry, extent }),
            Err(e) => Err(Error::of_archive(&pkg, e)),
        }
    }
}

/// A stream: a file (inode) read by a process. READ requests name the process, which is
/// the reader's also for the kernel's own read-ahead, as it is issued from the reading
/// task; there are no open handles to hang the state on (the kernel opens files itself).
pub type Stream = (u64, u32);

/// Read-ahead state of a stream.
#[derive(Default)]
struct Readahead {
    /// Where the next sequential read would start.
    next: u64,
    /// How many reads in a row continued the one before.
    run: u32,
    /// One past the highest chunk already handed to the prefetcher.
    prefetched: ChunkId,
}

/// Shards of read-ahead state: a power of two, more than there are readers at once on
/// the machines that run this.
const RA_SHARDS: usize = 16;
/// Streams remembered per shard (the least recently read are forgotten).
const RA_PER_SHARD: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// Reads files through the shared chunk cache, with read-ahead.
pub struct Reader {
    cache: Arc<ChunkCache>,
    readahead: Box<[Mutex<LruCache<Stream, Readahead>>]>,
    /// How far ahead of a sequential reader to decompress, in bytes.
    ahead: u64,
    /// The largest read the kernel sends: a bigger per-thread buffer is not kept.
    max_read: usize,
    prefetch: Option<SyncSender<Job>>,
    /// (slot, chunk) pairs already logged as bad, so each is logged once.
    logged: Arc<Mutex<HashSet<(u32, u32)>>>,
}

impl Reader {
    /// A reader with a chunk cache of `cache_size` bytes that decompresses `ahead` bytes
    /// ahead of sequential readers on `prefetch_threads` threads (0: none).
    pub fn new(cache_size: usize, ahead: u64, max_read: u32, prefetch_threads: usize) -> Reader {
        let prefetch = (prefetch_threads > 0).then(|| {
            let (tx, rx) = sync_channel::<Job>(256);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..prefetch_threads {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("prefetch-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        job();
                    })
                    .expect("spawn prefetch thread");
            }
            tx
        });
        let per_shard = NonZeroUsize::new(RA_PER_SHARD).expect("nonzero");
        Reader {
            cache: Arc::new(ChunkCache::new(cache_size)),
            readahead: (0..RA_SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            ahead,
            max_read: max_read as usize,
            prefetch,
            logged: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The chunk cache.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Reads `size` bytes at `offset` of `f` for `stream`: `answer` gets the bytes straight
    /// from the chunk when one chunk holds the range (no copy), else through a buffer kept
    /// per worker thread (no allocation).
    pub fn read(
        &self,
        stream: Stream,
        f: &OpenFile,
        offset: u64,
        size: u32,
        answer: impl FnOnce(Result<&[u8], Error>),
    ) {
        thread_local! {
            static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let spans = f.extent.spans(offset, size as u64);
        let (Some(first), Some(last)) = (spans.clone().next(), spans.clone().last()) else {
            return answer(Ok(&[]));
        };
        // Read-ahead first, so that the prefetch threads decompress the next chunks while
        // this thread decompresses its own.
        let total = spans.clone().map(|s| s.len as u64).sum();
        let cache_whole = self.prefetch_after(stream, f, offset, total, last.chunk);
        if spans.len() == 1 {
            let mut answer = Some(answer);
            let r = self.with_span(f, &first, cache_whole, |b| {
                if let Some(a) = answer.take() {
                    a(Ok(b))
                }
            });
            if let (Err(e), Some(a)) = (r, answer.take()) {
                a(Err(e));
            }
            return;
        }
        OUT.with(|cell| {
            let mut out = cell.borrow_mut();
            out.clear();
            for s in spans {
                if let Err(e) = self.with_span(f, &s, cache_whole, |b| out.extend_from_slice(b)) {
                    return answer(Err(e));
                }
            }
            answer(Ok(&out));
            // A buffer grown by a rare huge request is not kept.
            if out.capacity() > 2 * self.max_read {
                *out = Vec::new();
            }
        })
    }

    /// Reads `size` bytes at `offset` of `f` for `stream` as [`Reader::read`] does, but
    /// hands them to `sink` span by span, straight from each chunk: no gathering copy, for
    /// a transport that writes the reply into a buffer of its own (the ring's payload,
    /// where a read of several chunks would otherwise be copied twice on the queue's
    /// thread). `sink` may have been given some spans when an error is returned.
    pub fn read_spans(
        &self,
        stream: Stream,
        f: &OpenFile,
        offset: u64,
        size: u32,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let spans = f.extent.spans(offset, size as u64);
        let Some(last) = spans.clone().last() else {
            return Ok(());
        };
        let total = spans.clone().map(|s| s.len as u64).sum();
        let cache_whole = self.prefetch_after(stream, f, offset, total, last.chunk);
        for s in spans {
            self.with_span(f, &s, cache_whole, &mut sink)?;
        }
        Ok(())
    }

    /// The first `N` bytes of `f`, if it has that many and they can be read.
    pub fn head<const N: usize>(&self, f: &OpenFile) -> Option<[u8; N]> {
        let mut h = [0u8; N];
        let mut n = 0;
        for s in f.extent.spans(0, N as u64) {
            let (data, r) = self.span(f, &s).ok()?;
            h[n..n + r.len()].copy_from_slice(&data[r]);
            n += s.len as usize;
        }
        (n == N).then_some(h)
    }

    /// Calls `use_bytes` with the bytes of span `s` of `f`.
    ///
    /// A span that covers its whole chunk is read into a buffer kept per thread and not
    /// cached, unless the chunk is cached or being loaded already, or `cache_whole` (the
    /// stream is read ahead: the prefetch threads put its next chunks in the cache, and a
    /// read that decompressed one on its own beside them would do it twice). The kernel
    /// keeps what it asked for in its page cache, and does not ask for a chunk read whole
    /// again while it does. The cache keeps the chunks read in part, which are what the
    /// next reads want: the rest of a window around a page fault, the next small file in
    /// the same chunk. A cold start of a big program, which reads most of it in windows
    /// around page faults, thus decompresses most of its chunks into memory that is
    /// already mapped, rather than faulting in a fresh cache buffer per chunk, and the
    /// daemon keeps no second copy of what the kernel holds.
    fn with_span<R>(
        &self,
        f: &OpenFile,
        s: &ChunkSpan,
        cache_whole: bool,
        use_bytes: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, Error> {
        thread_local! {
            static WHOLE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let pkg = &f.pkg;
        let info = chunk_info(&self.logged, pkg, s.chunk)?;
        if cache_whole || s.start != 0 || s.len != info.raw_len || self.cache.contains(&info.hash) {
            let (data, r) = self.span_of(f, s, &info)?;
            return Ok(use_bytes(&data[r]));
        }
        WHOLE.with(|cell| {
            // (Never re-entered on a thread; if it were, a buffer of its own would do.)
            let (mut guard, mut own) = (cell.try_borrow_mut().ok(), Vec::new());
            let buf = guard.as_deref_mut().unwrap_or(&mut own);
            pkg.archive
                .read_chunk_of(s.chunk, &info, buf)
                .map_err(|e| chunk_error(&e, &self.logged, pkg, s.chunk))?;
            Ok(use_bytes(&buf[..]))
        })
    }

    /// The chunk holding span `s` of `f`, and the span's byte range in it.
    fn span(&self, f: &OpenFile, s: &ChunkSpan) -> Result<(Chunk, Range<usize>), Error> {
        let info = chunk_info(&self.logged, &f.pkg, s.chunk)?;
        self.span_of(f, s, &info)
    }

    /// [`Reader::span`] for a caller that has the chunk's index entry already.
    fn span_of(
        &self,
        f: &OpenFile,
        s: &ChunkSpan,
        info: &ChunkInfo,
    ) -> Result<(Chunk, Range<usize>), Error> {
        let data = load_chunk_of(&self.cache, &f.pkg, s.chunk, info, &self.logged)?;
        let r = s.start as usize..s.start as usize + s.len as usize;
        if r.end > data.len() {
            return Err(bad_chunk(
                &self.logged,
                &f.pkg,
                s.chunk,
                "chunk is shorter than the file needs",
            ));
        }
        Ok((data, r))
    }

    /// Read-ahead for a sequential reader: if this read (of `len` bytes at `offset`,
    /// ending in chunk `last`) and the one before it each continued the stream's previous
    /// read (a stream's first read counts as continuing if it starts at offset 0), hands
    /// the chunks after it (up to `ahead` bytes) to the prefetch threads, each chunk once.
    /// Returns whether the stream is being read ahead, which is whether its whole chunks
    /// go through the cache (see [`Reader::with_span`]).
    ///
    /// One read continuing another is not enough: a program's page faults fill the holes
    /// between the windows read around earlier faults, and two such fills often meet end
    /// to end by chance (a hole of 8 KiB, then the 216 KiB after it). Decompressing eight
    /// chunks ahead of each took the CPUs from the reads the program was waiting for.
    fn prefetch_after(
        &self,
        stream: Stream,
        f: &OpenFile,
        offset: u64,
        len: u64,
        last: ChunkId,
    ) -> bool {
        let Some(tx) = &self.prefetch else {
            return false;
        };
        let range = f.extent.chunks();
        let cs = f.pkg.archive.header().chunk_size as u64;
        let ahead = self.ahead.div_ceil(cs).max(1) as u32;
        let (from, to) = {
            let shard = (stream.0 ^ (stream.1 as u64).wrapping_mul(0x9e37_79b9)) as usize;
            let mut ra = self.readahead[shard % RA_SHARDS]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let st = ra.get_or_insert_mut(stream, Readahead::default);
            // (A new stream's `next` is 0: a first read from the start counts.)
            st.run = if st.next == offset {
                st.run.saturating_add(1)
            } else {
                0
            };
            st.next = offset + len;
            if st.run < 2 {
                return false;
            }
            let from = (last + 1).max(st.prefetched);
            let to = (last + 1 + ahead).min(range.end);
            if from >= to {
                return true;
            }
            st.prefetched = to;
            (from, to)
        };
        let ar = &f.pkg.archive;
        for c in from..to {
            let Ok(info) = ar.chunk_info(c) else { break };
            if self.cache.contains(&info.hash) {
                continue;
            }
            let (cache, pkg, logged) = (self.cache.clone(), f.pkg.clone(), self.logged.clone());
            // A full queue means the prefetchers are behind: skip, never block.
            let _ = tx.try_send(Box::new(move || {
                let _ = load_chunk(&cache, &pkg, c, &logged);
            }));
        }
        true
    }
}

/// Chunk `chunk` of `pkg` from the cache, loaded (read, checked, decompressed) on a miss.
fn load_chunk(
    cache: &ChunkCache,
    pkg: &Arc<Package>,
    chunk: ChunkId,
    logged: &Mutex<HashSet<(u32, u32)>>,
) -> Result<Chunk, Error> {
    let info = chunk_info(logged, pkg, chunk)?;
    load_chunk_of(cache, pkg, chunk, &info, logged)
}

/// Chunk `chunk`'s index entry, or the error of a READ that needs it.
fn chunk_info(
    logged: &Mutex<HashSet<(u32, u32)>>,
    pkg: &Package,
    chunk: ChunkId,
) -> Result<ChunkInfo, Error> {
    pkg.archive
        .chunk_info(chunk)
        .map_err(|e| bad_chunk(logged, pkg, chunk, &e.to_string()))
}

/// [`load_chunk`] with the chunk's index entry decoded already.
fn load_chunk_of(
    cache: &ChunkCache,
    pkg: &Arc<Package>,
    chunk: ChunkId,
    info: &ChunkInfo,
    logged: &Mutex<HashSet<(u32, u32)>>,
) -> Result<Chunk, Error> {
    cache
        .get(&info.hash, |out| {
            pkg.archive.read_chunk_of(chunk, info, out)
        })
        .map_err(|e| chunk_error(&e, logged, pkg, chunk))
}

/// The error of a READ whose chunk `chunk` of `pkg` failed to load with `e`.
fn chunk_error(
    e: &format::Error,
    logged: &Mutex<HashSet<(u32, u32)>>,
    pkg: &Package,
    chunk: ChunkId,
) -> Error {
    match e {
        // A thin package's chunk that cannot be fetched now: the repository client logs
        // the outage once (not one line per chunk), and a later read tries again.
        format::Error::Fetch { .. } | format::Error::NotLocal { .. } => {
            tracing::debug!(package = %pkg.label(), chunk, "{e}");
            Error::BadChunk { chunk }
        }
        _ => bad_chunk(logged, pkg, chunk, &e.to_string()),
    }
}

/// The error of a chunk that cannot be read, logged once per chunk (with the files that
/// use it failing with EIO until it is fixed, one line is enough).
fn bad_chunk(
    logged: &Mutex<HashSet<(u32, u32)>>,
    pkg: &Package,
    chunk: ChunkId,
    why: &str,
) -> Error {
    if logged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((pkg.slot, chunk))
    {
        // Once per chunk: the walk that names its files costs what a listing of the
        // package costs.
        let users = pkg
            .archive
            .files_using(&std::collections::BTreeSet::from([chunk]))
            .remove(&chunk)
            .unwrap_or_default();
        let mut files: Vec<String> = users
            .iter()
            .take(3)
            .map(|p| format::text::escape(p))
            .collect();
        if users.len() > 3 {
            files.push(format!("and {} more", users.len() - 3));
        }
        error!(
            package = %pkg.label(),
            file = %pkg.path.display(),
            chunk,
            "cannot read chunk: {why}; reads of the files that use it fail with EIO: {}",
            files.join(", ")
        );
    }
    Error::BadChunk { chunk }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Layer, View};
    use format::archive::Tree;

    /// A view of one package holding `files` (path, bytes), built with `chunk_size`.
    fn view_of(files: &[(&str, Vec<u8>)], chunk_size: u32) -> (tempfile::TempDir, View) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for (p, data) in files {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        let tree = Tree::from_dir(&root).unwrap();
        let hpkg = dir.path().join("p.hpkg");
        let manifest =
            format::manifest::Manifest::from_json(br#"{"name":"p","version":"1.0.0"}"#).unwrap();
        let opts = format::archive::BuildOptions {
            chunk_size,
            ..Default::default()
        };
        format::archive::writer::ArchiveWriter::new(&tree, &manifest)
            .options(opts)
            .finish(&hpkg)
            .unwrap();
        let archive = Arc::new(format::archive::Archive::open(&hpkg).unwrap());
        let pkg = Arc::new(Package {
            slot: 0,
            layer: 0,
            path: hpkg,
            archive,
        });
        (dir, View::build(vec![Layer::new("system")], vec![pkg]))
    }

    fn read_all(r: &Reader, f: &OpenFile, offset: u64, size: u32) -> Result<Vec<u8>, Error> {
        read_in((1, 1), r, f, offset, size)
    }

    /// A read by `stream`.
    fn read_in(
        stream: Stream,
        r: &Reader,
        f: &OpenFile,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Error> {
        let mut got = None;
        r.read(stream, f, offset, size, |a| {
            got = Some(a.map(<[u8]>::to_vec))
        });
        got.expect("answered")
    }

    #[test]
    fn reads_within_one_chunk_across_chunks_and_past_the_end() {
        const K: usize = 64 << 10;
        let data: Vec<u8> = (0..10 * K as u32).map(|i| (i * 7 % 251) as u8).collect();
        let (_d, v) = view_of(&[("a", b"head".to_vec()), ("big", data.clone())], K as u32);
        let node = v.lookup_path(b"big").unwrap();
        let f = v.file(node).unwrap();
        let r = Reader::new(1 << 20, 64 << 10, 1 << 20, 1);
        // One chunk (no copy), several chunks (the thread's buffer), the tail, past the end.
        let n = data.len();
        assert_eq!(read_all(&r, &f, 10, 100).unwrap(), &data[10..110]);
        assert_eq!(
            read_all(&r, &f, K as u64 - 5, 3 * K as u32).unwrap(),
            &data[K - 5..4 * K - 5]
        );
        assert_eq!(
            read_all(&r, &f, n as u64 - 10, 4096).unwrap(),
            &data[n - 10..]
        );
        assert!(read_all(&r, &f, n as u64 + 1, 10).unwrap().is_empty());
        // Sequential reads from the start get every byte, whatever the prefetcher does.
        let mut all = Vec::new();
        while all.len() < data.len() {
            all.extend(read_all(&r, &f, all.len() as u64, 48 << 10).unwrap());
        }
        assert_eq!(all, data);
        // Span by span, the same bytes, for every range of the reads above.
        for (off, size) in [
            (10, 100),
            (K as u64 - 5, 3 * K as u32),
            (n as u64 - 10, 4096),
        ] {
            let mut got = Vec::new();
            r.read_spans((2, 2), &f, off, size, |p| got.extend_from_slice(p))
                .unwrap();
            assert_eq!(got, read_all(&r, &f, off, size).unwrap(), "{off} {size}");
        }
        let mut none = Vec::new();
        r.read_spans((2, 2), &f, n as u64 + 1, 10, |p| none.extend_from_slice(p))
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(r.head::<4>(&f), Some([data[0], data[1], data[2], data[3]]));
        let small = v.file(v.lookup_path(b"a").unwrap()).unwrap();
        assert_eq!(
            r.head::<18>(&small),
            None,
            "a 4-byte file has no 18-byte head"
        );
    }

    #[test]
    fn a_corrupt_chunk_fails_its_reads_and_only_those() {
        let a: Vec<u8> = vec![b'a'; 80_000];
        let b: Vec<u8> = (0..80_000u32).map(|i| (i % 13) as u8).collect();
        let (dir, v) = view_of(&[("a", a.clone()), ("b", b.clone())], 64 << 10);
        let fa = v.file(v.lookup_path(b"a").unwrap()).unwrap();
        let fb = v.file(v.lookup_path(b"b").unwrap()).unwrap();
        // Flip a byte of the stored bytes of b's last chunk.
        let last = fb.extent.chunks().end - 1;
        let ar = &fb.pkg.archive;
        let info = ar.chunk_info(last).unwrap();
        let at = ar.header().heap.offset + info.offset + info.stored_len as u64 / 2;
        let path = dir.path().join("p.hpkg");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let r = Reader::new(1 << 20, 0, 1 << 20, 0);
        assert!(matches!(
            read_all(&r, &fb, 79_000, 100),
            Err(Error::BadChunk { chunk }) if chunk == last
        ));
        assert_eq!(read_all(&r, &fa, 0, 80_000).unwrap(), a);
    }

    /// Whether chunk `c` of `f`'s package is in `r`'s cache (or being loaded into it).
    fn cached(r: &Reader, f: &OpenFile, c: ChunkId) -> bool {
        r.cache.contains(&f.pkg.archive.chunk_info(c).unwrap().hash)
    }

    const K: usize = 64 << 10;

    /// One file `big` of `chunks` chunks of 64 KiB: its view (and directory), the file,
    /// its bytes and its first chunk.
    fn big_file(chunks: usize) -> (tempfile::TempDir, View, OpenFile, Vec<u8>, ChunkId) {
        let data: Vec<u8> = (0..(chunks * K) as u32)
            .map(|i| (i * 31 % 253) as u8)
            .collect();
        let (d, v) = view_of(&[("big", data.clone())], K as u32);
        let f = v.file(v.lookup_path(b"big").unwrap()).unwrap();
        let c0 = f.extent.chunks().start;
        (d, v, f, data, c0)
    }

    #[test]
    fn whole_chunks_read_at_random_are_not_cached_and_parts_are() {
        let (_d, _v, f, data, c0) = big_file(16);
        let r = Reader::new(16 << 20, 4 * K as u64, 1 << 20, 1);
        // A window of two whole chunks and half of a third, as a page fault's read-around
        // asks: the whole ones are decompressed for this read only (the kernel keeps
        // them), the part is kept for the read that wants the rest.
        let at = 5 * K as u64;
        assert_eq!(
            read_all(&r, &f, at, 2 * K as u32 + K as u32 / 2).unwrap(),
            &data[5 * K..7 * K + K / 2]
        );
        assert!(!cached(&r, &f, c0 + 5) && !cached(&r, &f, c0 + 6));
        assert!(cached(&r, &f, c0 + 7));
        assert_eq!(r.cache.stats().loads, 1);
        // One whole chunk alone, elsewhere: not cached either; the same bytes.
        assert_eq!(
            read_all(&r, &f, 12 * K as u64, K as u32).unwrap(),
            &data[12 * K..13 * K]
        );
        assert!(!cached(&r, &f, c0 + 12));
        // The rest of the third chunk comes from the cache.
        assert_eq!(
            read_all(&r, &f, 7 * K as u64 + K as u64 / 2, K as u32 / 2).unwrap(),
            &data[7 * K + K / 2..8 * K]
        );
        assert_eq!(r.cache.stats().loads, 1);
        // Span by span (the ring's way), the same.
        let mut got = Vec::new();
        r.read_spans((3, 3), &f, 2 * K as u64, 2 * K as u32, |p| {
            got.extend_from_slice(p)
        })
        .unwrap();
        assert_eq!(got, &data[2 * K..4 * K]);
        assert!(!cached(&r, &f, c0 + 2));
    }

    #[test]
    fn two_reads_that_meet_by_chance_start_no_read_ahead_and_a_sequential_reader_does() {
        let (_d, _v, f, data, c0) = big_file(32);
        let r = Reader::new(16 << 20, 4 * K as u64, 1 << 20, 2);
        // Page faults filling holes: 8 KiB, then the 24 KiB right after it (in the middle
        // of the file, not from its start).
        read_all(&r, &f, 10 * K as u64, 8 << 10).unwrap();
        read_all(&r, &f, 10 * K as u64 + (8 << 10), 24 << 10).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            (11..16).all(|c| !cached(&r, &f, c0 + c)),
            "nothing read ahead of two reads that merely meet"
        );
        // Another process reading from the start: its second read in a row starts the
        // read-ahead, and the chunks after it come into the cache on the prefetch threads.
        let seq = (1, 2);
        read_in(seq, &r, &f, 0, 16 << 10).unwrap();
        read_in(seq, &r, &f, 16 << 10, (128 << 10) - (16 << 10)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(2..6).all(|c| cached(&r, &f, c0 + c)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            (2..6).all(|c| cached(&r, &f, c0 + c)),
            "read ahead: 4 chunks"
        );
        // Its next reads, whole chunks, come from the cache: nothing is decompressed twice.
        let loads = r.cache.stats().loads;
        assert_eq!(
            read_in(seq, &r, &f, 128 << 10, 4 * K as u32).unwrap(),
            &data[2 * K..6 * K]
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(6..10).all(|c| cached(&r, &f, c0 + c)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(r.cache.stats().loads, loads + 4, "only the next 4, ahead");
    }
}
