//! The lazy heap of a thin package: a chunk is taken from the chunk store, or fetched with
//! one Range request together with the adjacent chunks that follow it and are not stored
//! yet (up to [`WINDOW_MAX`] bytes), each checked against the signed chunk index before it
//! is used or stored. Readers on several threads fetch at once.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use format::archive::thin::{Heaps, RemoteHeap, ThinPackage};
use format::archive::ChunkId;

use crate::remote::{Base, Mirror, Mirrors, Policy};
use crate::store::ChunkStore;

/// Most bytes one Range request asks for.
pub const WINDOW_MAX: u64 = 1 << 20;
/// Most chunks one Range request asks for.
pub const WINDOW_CHUNKS: usize = 8;
/// Longest prefetch list (it travels in the thin package's source record, FORMAT.md §12).
pub const PREFETCH_MAX: usize = 4096;

/// Reads a recorded prefetch list (`<package id>.prefetch`: one chunk number a line, in the
/// order of first reads): chunks past `chunks` and repeats dropped, at most
/// [`PREFETCH_MAX`]. A missing file is an empty list.
pub fn read_prefetch(path: &std::path::Path, chunks: u32) -> Result<Vec<u32>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let c: u32 = l
            .trim()
            .parse()
            .map_err(|_| format!("{}:{}: not a chunk number", path.display(), n + 1))?;
        if c < chunks && seen.insert(c) && out.len() < PREFETCH_MAX {
            out.push(c);
        }
    }
    Ok(out)
}

/// Appends the chunks of a package read for the first time to `<dir>/<id>.prefetch`.
#[derive(Debug)]
struct Recorder {
    file: Mutex<std::fs::File>,
    seen: Mutex<std::collections::HashSet<u32>>,
}

/// The heaps of thin packages, over one chunk store; mirrors (and their health) are shared
/// by every package read from them. Given to `pkgset::Opener` by the daemon and by
/// `pkgtool fetch`.
#[derive(Debug)]
pub struct RepoHeaps {
    record: Option<std::path::PathBuf>,
    store: std::sync::OnceLock<Result<Arc<ChunkStore>, String>>,
    at: Option<(std::path::PathBuf, u64)>,
    policy: Policy,
    mirrors: Mutex<HashMap<String, Arc<Mirror>>>,
    /// The heap of each package open now, by id: every file of one package (its copy in
    /// `packages/` and the pool's) shares one heap, so one fetch of a chunk serves all
    /// readers and one prefetch runs per package.
    open: Mutex<HashMap<format::archive::PackageId, std::sync::Weak<LazyHeap>>>,
}

impl RepoHeaps {
    /// Heaps over `store`, reading with `policy`.
    pub fn new(store: Arc<ChunkStore>, policy: Policy) -> RepoHeaps {
        RepoHeaps {
            record: None,
            store: std::sync::OnceLock::from(Ok(store)),
            at: None,
            policy,
            mirrors: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Heaps over the chunk store at `dir` (of `cap` bytes), opened when the first thin
    /// package is: a daemon with no thin package never touches it.
    pub fn at(dir: &std::path::Path, cap: u64, policy: Policy) -> RepoHeaps {
        RepoHeaps {
            record: None,
            store: std::sync::OnceLock::new(),
            at: Some((dir.to_owned(), cap)),
            policy,
            mirrors: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Records the chunks each thin package reads, in the order of first reads, into
    /// `<dir>/<package id>.prefetch` (`pkgtool publish --prefetch DIR` ships them).
    pub fn record_into(&mut self, dir: &std::path::Path) {
        self.record = Some(dir.to_owned());
    }

    /// The chunk store.
    pub fn store(&self) -> Result<&Arc<ChunkStore>, String> {
        self.store
            .get_or_init(|| {
                let (dir, cap) = self.at.clone().unwrap_or_default();
                ChunkStore::open(&dir, cap)
                    .map(Arc::new)
                    .map_err(|e| format!("cannot open the chunk store {}: {e}", dir.display()))
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// The mirrors named by `addresses`, each shared with every other package naming it.
    pub fn mirrors(&self, addresses: &[String]) -> Result<Mirrors, String> {
        let mut known = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        let mut list = Vec::new();
        for a in addresses {
            let m = match known.get(a) {
                Some(m) => m.clone(),
                None => {
                    let m = Arc::new(Mirror::new(Base::parse(a)?));
                    known.insert(a.clone(), m.clone());
                    m
                }
            };
            list.push(m);
        }
        Ok(Mirrors {
            list,
            policy: self.policy,
        })
    }

    /// The lazy heap of `pkg`.
    pub fn heap(&self, pkg: &ThinPackage) -> Result<LazyHeap, String> {
        if !crate::index::valid_digest(&pkg.source.object) {
            return Err(format!(
                "thin package source object {:?} is not a sha256 digest",
                pkg.source.object
            ));
        }
        Ok(LazyHeap {
            pkg: pkg.clone(),
            store: self.store()?.clone(),
            mirrors: self.mirrors(&pkg.source.mirrors)?,
            inflight: Mutex::new(std::collections::HashSet::new()),
            landed: std::sync::Condvar::new(),
            recorder: match &self.record {
                Some(dir) => {
                    let path = dir.join(format!("{}.prefetch", pkg.id));
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    Some(Recorder {
                        file: Mutex::new(file),
                        seen: Mutex::new(std::collections::HashSet::new()),
                    })
                }
                None => None,
            },
        })
    }
}

impl Heaps for RepoHeaps {
    fn open(&self, pkg: &ThinPackage) -> Result<Arc<dyn RemoteHeap>, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, h| h.strong_count() > 0);
        if let Some(h) = open.get(&pkg.id).and_then(|h| h.upgrade()) {
            // The same package through another file: its chunk index is the same (the id
            // pins the metadata), and so are its heap, its fetches and its prefetch.
            return Ok(h);
        }
        let heap = Arc::new(self.heap(pkg)?);
        open.insert(pkg.id, Arc::downgrade(&heap));
        drop(open);
        if !pkg.source.prefetch.is_empty() {
            // In the background, one request at a time: reads come first.
            let h = heap.clone();
            let spawned = std::thread::Builder::new()
                .name("prefetch".into())
                .spawn(move || h.prefetch());
            if let Err(e) = spawned {
                tracing::warn!("cannot start a prefetch thread: {e}");
            }
        }
        Ok(heap)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct LazyHeap {
    pkg: ThinPackage,
    store: Arc<ChunkStore>,
    mirrors: Mirrors,
    /// Chunks some thread is fetching: a reader of one waits for that fetch instead of
    /// asking again, and a window stops before one.
    inflight: Mutex<std::collections::HashSet<usize>>,
    landed: std::sync::Condvar,
    recorder: Option<Recorder>,
}

impl LazyHeap {
    /// The chunks `c..end` one request for chunk `c` fetches: those after it that are
    /// adjacent in the heap and not stored, within the window.
    fn window(&self, c: usize) -> std::ops::Range<usize> {
        self.window_skipping(c, &std::collections::HashSet::new())
    }

    fn window_skipping(
        &self,
        c: usize,
        inflight: &std::collections::HashSet<usize>,
    ) -> std::ops::Range<usize> {
        let ch = &self.pkg.chunks;
        let mut end = c + 1;
        let mut len = ch[c].stored_len as u64;
        while end < ch.len()
            && end - c < WINDOW_CHUNKS
            && ch[end].offset == ch[end - 1].offset + ch[end - 1].stored_len as u64
            && len + ch[end].stored_len as u64 <= WINDOW_MAX
            && !self.store.contains(&ch[end].hash)
            && !inflight.contains(&end)
        {
            len += ch[end].stored_len as u64;
            end += 1;
        }
        c..end
    }

    /// Fetches chunks `range` (adjacent in the heap) with one request, checks each against
    /// the chunk index and stores it; returns their stored bytes.
    pub fn fetch(&self, range: std::ops::Range<usize>) -> Result<Vec<Vec<u8>>, String> {
        let ch = &self.pkg.chunks;
        let first = ch[range.start];
        let len: u64 = ch[range.clone()].iter().map(|i| i.stored_len as u64).sum();
        let split = |b: &[u8]| -> Vec<Vec<u8>> {
            let mut at = 0usize;
            ch[range.clone()]
                .iter()
                .map(|i| {
                    let piece = b[at..at + i.stored_len as usize].to_vec();
                    at += i.stored_len as usize;
                    piece
                })
                .collect()
        };
        let check = |b: &[u8]| -> Result<(), String> {
            for (k, piece) in split(b).iter().enumerate() {
                if blake3::hash(piece).as_bytes() != &ch[range.start + k].hash {
                    return Err(format!(
                        "served bytes of chunk {} that do not match its hash",
                        range.start + k
                    ));
                }
            }
            Ok(())
        };
        let bytes = self.mirrors.fetch_range(
            &self.pkg.source.object,
            self.pkg.heap_offset + first.offset,
            len,
            &check,
        )?;
        let pieces = split(&bytes);
        for (k, piece) in pieces.iter().enumerate() {
            if let Err(e) = self.store.put(&ch[range.start + k].hash, piece) {
                tracing::warn!("cannot store a chunk: {e}");
            }
        }
        Ok(pieces)
    }

    /// Fetches the chunks of the package's prefetch list that are not stored; stops at the
    /// first failure (the mirrors' health decides when reads try again).
    pub fn prefetch(&self) {
        let n = self.pkg.chunks.len();
        let mut fetched = 0usize;
        for &c in &self.pkg.source.prefetch {
            let c = c as usize;
            if c >= n || self.store.contains(&self.pkg.chunks[c].hash) {
                continue;
            }
            let mut buf = Vec::new();
            if let Err(e) = self.load(c, &mut buf) {
                tracing::debug!(package = %self.pkg.id.short(), "prefetch stopped: {e}");
                return;
            }
            fetched += 1;
        }
        tracing::info!(
            package = %self.pkg.id.short(),
            "prefetched {fetched} chunks of {} listed",
            self.pkg.source.prefetch.len()
        );
    }

    /// Every chunk not stored yet, fetched with `parallel` requests in flight; the number
    /// of chunks that could not be fetched, and the first reason.
    pub fn fetch_all(&self, parallel: usize) -> (usize, Option<String>) {
        let ch = &self.pkg.chunks;
        let mut windows = Vec::new();
        let mut c = 0;
        while c < ch.len() {
            if self.store.contains(&ch[c].hash) {
                c += 1;
                continue;
            }
            let w = self.window(c);
            c = w.end;
            windows.push(w);
        }
        let next = Mutex::new(windows.into_iter());
        let failed = Mutex::new((0usize, None::<String>));
        std::thread::scope(|s| {
            for _ in 0..parallel.max(1) {
                s.spawn(|| loop {
                    let w = next.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some(w) = w else { break };
                    if let Err(e) = self.fetch(w.clone()) {
                        let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                        f.0 += w.len();
                        f.1.get_or_insert(e);
                    }
                });
            }
        });
        failed.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

impl RemoteHeap for LazyHeap {
    fn read_stored(&self, c: ChunkId, buf: &mut Vec<u8>) -> io::Result<()> {
        if let Some(r) = &self.recorder {
            if r.seen.lock().unwrap_or_else(|p| p.into_inner()).insert(c) {
                use std::io::Write;
                let mut f = r.file.lock().unwrap_or_else(|p| p.into_inner());
                let _ = writeln!(f, "{c}");
            }
        }
        self.load(c as usize, buf)
    }
}

impl LazyHeap {
    /// Chunk `i`'s stored bytes: from the store, or fetched (waiting for a fetch of it in
    /// flight on another thread).
    fn load(&self, i: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        let c = i;
        let info = self
            .pkg
            .chunks
            .get(i)
            .ok_or_else(|| io::Error::other(format!("no chunk {c}")))?;
        let deadline = std::time::Instant::now() + self.mirrors.policy.timeouts.total * 2;
        let window = loop {
            if let Some(b) = self.store.get(&info.hash) {
                *buf = b;
                return Ok(());
            }
            let mut fl = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if !fl.contains(&i) {
                let w = self.window_skipping(i, &fl);
                fl.extend(w.clone());
                break w;
            }
            // Another thread is fetching it: wait for that (bounded), then look again.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::other(
                    "timed out waiting for another fetch of it",
                ));
            }
            let (fl, _) = self
                .landed
                .wait_timeout(fl, left)
                .unwrap_or_else(|p| p.into_inner());
            if fl.contains(&i) {
                continue;
            }
            drop(fl);
            if self.store.contains(&info.hash) {
                continue;
            }
            // The other fetch failed: this one will not do better now.
            return Err(io::Error::other("the fetch of this chunk failed"));
        };
        let r = self.fetch(window.clone());
        {
            let mut fl = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for k in window {
                fl.remove(&k);
            }
        }
        self.landed.notify_all();
        let mut pieces = r.map_err(io::Error::other)?;
        *buf = pieces.swap_remove(0);
        Ok(())
    }
}
