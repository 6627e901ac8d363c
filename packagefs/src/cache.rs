//! One bounded cache of decompressed chunks, shared by all packages and keyed by the hash of
//! the chunk's stored bytes, so identical chunks of different packages are decompressed and
//! held once.
//!
//! The cache is split into shards, each behind its own mutex that is held only to look up or
//! insert, never while reading or decompressing. Concurrent misses on the same chunk
//! decompress it once: the first thread loads it, the others wait for that one result.
//!
//! Chunk buffers are recycled: a buffer the cache evicted (once no reader holds it) goes
//! to a small pool that the next load takes from. A cold sequential reader thus reuses
//! memory that is already mapped instead of faulting in a fresh buffer per chunk (the
//! allocator hands buffers this large straight to mmap/munmap, so that RSS follows the
//! cache), and RSS stays bounded by the cache plus the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;

/// The hash that identifies a chunk's stored bytes.
pub type ChunkHash = [u8; 32];

/// A load failure, shared with every thread that waited for it.
pub type LoadError = Arc<format::Error>;

/// Decompressed chunk bytes, shared.
pub type Chunk = Arc<ChunkBuf>;

/// The bytes of one decompressed chunk. Dropping the last reference hands the buffer
/// back to the pool it came from.
pub struct ChunkBuf {
    data: Vec<u8>,
    pool: Arc<BufPool>,
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.data));
    }
}

/// Spare chunk buffers, at most `max_bytes` of capacity in all.
struct BufPool {
    free: Mutex<(Vec<Vec<u8>>, usize)>,
    max_bytes: usize,
}

impl BufPool {
    /// A spare buffer (with the bytes of its last chunk) or a new empty one.
    fn take(&self) -> Vec<u8> {
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        match f.0.pop() {
            Some(v) => {
                f.1 -= v.capacity();
                v
            }
            None => Vec::new(),
        }
    }

    /// Keeps `v` for a later load if there is room. Its bytes stay: the load overwrites
    /// them (zeroing a buffer first would be a pass over the whole chunk for nothing).
    fn put(&self, v: Vec<u8>) {
        let cap = v.capacity();
        if cap == 0 {
            return;
        }
        let mut f = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if f.1 + cap <= self.max_bytes {
            f.1 += cap;
            f.0.push(v);
        }
    }
}

type Slot = Arc<OnceLock<Result<Chunk, LoadError>>>;

struct Shard {
    lru: LruCache<ChunkHash, Chunk>,
    bytes: usize,
    loading: HashMap<ChunkHash, Slot>,
}

/// Counters, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that loaded (or waited for another thread's load).
    pub misses: u64,
    /// Chunks loaded: read, checked and decompressed.
    pub loads: u64,
    /// Chunks evicted.
    pub evictions: u64,
    /// Bytes held now.
    pub bytes: u64,
}

/// The chunk cache.
pub struct ChunkCache {
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    pool: Arc<BufPool>,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("capacity", &(self.shard_capacity * self.shards.len()))
            .field("stats", &self.stats())
            .finish()
    }
}

impl ChunkCache {
    /// A cache holding at most about `capacity` bytes of decompressed chunks.
    pub fn new(capacity: usize) -> ChunkCache {
        // Shards of at least 4 MiB each (a chunk is at most 1 MiB), at most 16.
        let n = (capacity / (4 << 20)).clamp(1, 16);
        let shards = (0..n)
            .map(|_| {
                Mutex::new(Shard {
                    lru: LruCache::unbounded(),
                    bytes: 0,
                    loading: HashMap::new(),
                })
            })
            .collect();
        ChunkCache {
            shards,
            shard_capacity: capacity / n,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            // An eighth of the cache, 2-16 MiB: enough for the buffers in flight between
            // an eviction and the next load, even with every worker loading.
            pool: Arc::new(BufPool {
                free: Mutex::new((Vec::new(), 0)),
                max_bytes: (capacity / 8).clamp(2 << 20, 16 << 20),
            }),
        }
    }

    fn shard(&self, hash: &ChunkHash) -> &Mutex<Shard> {
        &self.shards[hash[0] as usize % self.shards.len()]
    }

    /// True if the chunk is cached (does not count as a hit and does not touch the LRU order).
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        let s = self.shard(hash).lock().unwrap_or_else(|p| p.into_inner());
        s.lru.contains(hash) || s.loading.contains_key(hash)
    }

    /// The decompressed bytes of the chunk with `hash`, calling `load` on a miss to fill a
    /// buffer (a recycled one, whose old bytes `load` overwrites, or a new empty one). `load` runs without any lock held; if another thread is
    /// loading the same chunk, this waits for it.
    pub fn get<F>(&self, hash: &ChunkHash, load: F) -> Result<Chunk, LoadError>
    where
        F: FnOnce(&mut Vec<u8>) -> format::Result<()>,
    {
        let shard = self.shard(hash);
        // `Some`: this call loads for every caller that comes while it does. `None`: the
        // load this call waited for failed, and this call loads on its own.
        let slot: Option<Slot> = {
            let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = s.lru.get(hash) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v.clone());
            }
            self.misses.fetch_add(1, Ordering::Relaxed);
            match s.loading.get(hash) {
                Some(other) => {
                    let other = other.clone();
                    drop(s);
                    match other.wait() {
                        Ok(v) => return Ok(v.clone()),
                        // The failed load was another caller's: its error names its own
                        // chunk (the same stored bytes can be several chunks, of one
                        // package or several), so this caller loads and reports its own.
                        Err(_) => None,
                    }
                }
                None => {
                    let slot: Slot = Arc::new(OnceLock::new());
                    s.loading.insert(*hash, slot.clone());
                    Some(slot)
                }
            }
        };
        // The decompressed buffer is shared as is, never copied.
        let mut buf = ChunkBuf {
            data: self.pool.take(),
            pool: self.pool.clone(),
        };
        self.loads.fetch_add(1, Ordering::Relaxed);
        let result: Result<Chunk, LoadError> = match load(&mut buf.data) {
            Ok(()) => Ok(Arc::new(buf)),
            Err(e) => Err(Arc::new(e)),
        };
        let mut s = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slot {
            let _ = slot.set(result.clone());
            s.loading.remove(hash);
        }
        if let Ok(v) = &result {
            if s.lru.put(*hash, v.clone()).is_none() {
                s.bytes += v.len();
            }
            while s.bytes > self.shard_capacity {
                match s.lru.pop_lru() {
                    Some((_, old)) => {
                        s.bytes -= old.len();
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
        }
        result
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let bytes = self
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).bytes as u64)
            .sum();
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            loads: self.loads.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes,
        }
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn fill(v: u8, n: usize) -> impl FnOnce(&mut Vec<u8>) -> format::Result<()> {
        move |b| {
            b.clear();
            b.resize(n, v);
            Ok(())
        }
    }

    fn h(i: u8) -> ChunkHash {
        let mut x = [0u8; 32];
        x[0] = i;
        x[1] = i;
        x
    }

    #[test]
    fn caches_and_evicts_by_bytes() {
        let c = ChunkCache::new(4 << 20);
        let loads = AtomicUsize::new(0);
        for round in 0..2 {
            for i in 0..4u8 {
                let v = c
                    .get(&h(i), |b| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        fill(i, 1 << 20)(b)
                    })
                    .unwrap();
                assert_eq!(v[0], i);
            }
            assert_eq!(loads.load(Ordering::SeqCst), 4, "round {round}");
        }
        // A fifth MiB evicts the least recently used.
        c.get(&h(9), fill(9, 1 << 20)).unwrap();
        assert!(c.stats().bytes <= 4 << 20);
        assert_eq!(c.stats().evictions, 1);
        assert!(!c.contains(&h(0)));
        assert!(c.contains(&h(9)));
    }

    #[test]
    fn concurrent_misses_load_once() {
        let c = Arc::new(ChunkCache::new(64 << 20));
        let loads = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, loads) = (c.clone(), loads.clone());
                std::thread::spawn(move || {
                    c.get(&h(1), |b| {
                        loads.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        fill(7, 1000)(b)
                    })
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap()[999], 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn errors_are_not_cached() {
        let c = ChunkCache::new(8 << 20);
        assert!(c
            .get(&h(3), |_| Err(format::Error::ChunkHash { chunk: 3 }))
            .is_err());
        assert!(c.get(&h(3), fill(1, 1)).is_ok());
    }

    #[test]
    fn a_failed_load_reports_the_error_of_the_callers_own_chunk() {
        // Chunks 4 and 5 have the same stored bytes (so the same hash), and both fail to
        // load. The caller for chunk 5 arrives while chunk 4 is loading: it must get (and
        // log) chunk 5's error, not chunk 4's.
        let c = Arc::new(ChunkCache::new(8 << 20));
        let first = {
            let c = c.clone();
            std::thread::spawn(move || {
                let waiting = c.clone();
                c.get(&h(4), move |_| {
                    // Hold the load until the second caller waits for it.
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while waiting.stats().misses < 2 && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(format::Error::ChunkHash { chunk: 4 })
                })
                .err()
            })
        };
        while c.stats().misses < 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let second = c
            .get(&h(4), |_| Err(format::Error::ChunkHash { chunk: 5 }))
            .err()
            .expect("chunk 5 fails");
        let first = first.join().unwrap().expect("chunk 4 fails");
        assert_eq!(first.to_string(), "chunk 4 does not match its hash");
        assert_eq!(second.to_string(), "chunk 5 does not match its hash");
        // And a good load after a failed one is cached as usual.
        assert!(c.get(&h(4), fill(1, 10)).is_ok());
        assert!(c.contains(&h(4)));
    }

    #[test]
    fn evicted_buffers_are_recycled_once_unused() {
        let c = ChunkCache::new(4 << 20);
        let first = c.get(&h(0), fill(0, 1 << 20)).unwrap();
        let first_ptr = first.as_ptr();
        for i in 1..4u8 {
            c.get(&h(i), fill(i, 1 << 20)).unwrap();
        }
        // h(0) is evicted while a reader holds it: its bytes stay intact and the load of
        // h(4) gets a fresh buffer.
        let fifth = c.get(&h(4), fill(4, 1 << 20)).unwrap();
        assert!(!c.contains(&h(0)));
        assert_eq!((first[0], first[(1 << 20) - 1]), (0, 0));
        assert_ne!(fifth.as_ptr(), first_ptr);
        // Once the reader lets go, the buffer goes to the pool and the next load reuses it.
        drop(first);
        let sixth = c.get(&h(5), fill(5, 1 << 20)).unwrap();
        assert_eq!(sixth.as_ptr(), first_ptr);
        assert!(sixth.iter().all(|&b| b == 5));
        assert!(c.stats().bytes <= 4 << 20);
    }
}
