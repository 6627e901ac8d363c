//! The local chunk store: stored (compressed) chunk bytes keyed by their BLAKE3 hash, shared
//! by every package and version, so no chunk is fetched twice.
//!
//! ```text
//! <dir>/chunks/<2 hex>/<64 hex>   one chunk's stored bytes; its name is their hash
//! <dir>/pins/<package id>          hashes (one per line) never evicted
//! <dir>/tmp/                       writes in progress (renamed into chunks/ when whole)
//! ```
//!
//! Writes go to a temp file renamed into place, so a crash leaves a whole chunk or none; a
//! file is checked against its name on every read anyway, and one that does not match is
//! deleted and never served. The store is bounded: past its size, the least recently used
//! chunks that no pin names are deleted (down to 90%, so eviction is not paid per write).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

/// Largest stored chunk (a chunk of the largest chunk size, stored raw).
pub const CHUNK_FILE_MAX: u64 = format::archive::MAX_CHUNK_SIZE as u64;

/// A chunk's hash.
pub type Hash = [u8; 32];

#[derive(Debug, Default)]
struct Inner {
    /// size, last use
    entries: HashMap<Hash, (u64, u64)>,
    total: u64,
    tick: u64,
    pinned: HashSet<Hash>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    cap: u64,
    inner: Mutex<Inner>,
}

fn hex(b: &[u8]) -> String {
    format::keys::hex(b)
}

fn unhex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

impl ChunkStore {
    /// Opens (creating) the store at `dir`, holding at most `cap` bytes of chunks beside
    /// the pinned ones.
    pub fn open(dir: &Path, cap: u64) -> io::Result<ChunkStore> {
        if !dir.exists() {
            // Private: the chunks of every layer's packages, whoever may read those.
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        for d in ["chunks", "pins", "tmp"] {
            fs::create_dir_all(dir.join(d))?;
        }
        // Writes a crash interrupted.
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        let mut inner = Inner::default();
        let mut found: Vec<(std::time::SystemTime, Hash, u64)> = Vec::new();
        for sub in fs::read_dir(dir.join("chunks"))?.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let (Some(h), Ok(md)) = (f.file_name().to_str().and_then(unhex), f.metadata())
                else {
                    continue;
                };
                found.push((md.modified().unwrap_or(std::time::UNIX_EPOCH), h, md.len()));
            }
        }
        found.sort();
        for (_, h, len) in found {
            inner.tick += 1;
            inner.entries.insert(h, (len, inner.tick));
            inner.total += len;
        }
        for e in fs::read_dir(dir.join("pins"))?.flatten() {
            if let Ok(text) = fs::read_to_string(e.path()) {
                inner.pinned.extend(text.lines().filter_map(unhex));
            }
        }
        Ok(ChunkStore {
            dir: dir.to_owned(),
            cap,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, h: &Hash) -> PathBuf {
        let x = hex(h);
        self.dir.join("chunks").join(&x[..2]).join(x)
    }

    /// True if the store holds chunk `h` (not checked: [`ChunkStore::get`] checks).
    pub fn contains(&self, h: &Hash) -> bool {
        self.lock().entries.contains_key(h)
    }

    /// Bytes of chunks held.
    pub fn total(&self) -> u64 {
        self.lock().total
    }

    /// Chunk `h`'s bytes, checked against `h`; a file that does not match is deleted.
    pub fn get(&self, h: &Hash) -> Option<Vec<u8>> {
        let p = self.path(h);
        let mut buf = Vec::new();
        let read =
            fs::File::open(&p).and_then(|f| f.take(CHUNK_FILE_MAX + 1).read_to_end(&mut buf));
        if read.is_err() {
            self.forget(h);
            return None;
        }
        if blake3::hash(&buf).as_bytes() != h {
            warn!(chunk = %hex(h), "a stored chunk does not match its hash: deleted");
            let _ = fs::remove_file(&p);
            self.forget(h);
            return None;
        }
        let mut i = self.lock();
        i.tick += 1;
        let t = i.tick;
        let len = buf.len() as u64;
        match i.entries.get_mut(h) {
            Some(e) => e.1 = t,
            None => {
                // Stored by another process sharing the store.
                i.entries.insert(*h, (len, t));
                i.total += len;
            }
        }
        Some(buf)
    }

    fn forget(&self, h: &Hash) {
        let mut i = self.lock();
        if let Some((len, _)) = i.entries.remove(h) {
            i.total -= len;
        }
    }

    /// Stores `bytes` as chunk `h` if they match it (wrong bytes are never stored: `false`).
    pub fn put(&self, h: &Hash, bytes: &[u8]) -> io::Result<bool> {
        if blake3::hash(bytes).as_bytes() != h || bytes.len() as u64 > CHUNK_FILE_MAX {
            return Ok(false);
        }
        if self.contains(h) {
            return Ok(true);
        }
        let dst = self.path(h);
        if let Some(d) = dst.parent() {
            fs::create_dir_all(d)?;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix("chunk-")
            .tempfile_in(self.dir.join("tmp"))?;
        tmp.write_all(bytes)?;
        tmp.persist(&dst).map_err(|e| e.error)?;
        {
            let mut i = self.lock();
            i.tick += 1;
            let t = i.tick;
            if i.entries.insert(*h, (bytes.len() as u64, t)).is_none() {
                i.total += bytes.len() as u64;
            }
        }
        self.evict();
        Ok(true)
    }

    /// Deletes least recently used unpinned chunks while the store is over its size.
    fn evict(&self) {
        let mut i = self.lock();
        if i.total <= self.cap {
            return;
        }
        let goal = self.cap / 10 * 9;
        let mut order: Vec<(u64, Hash, u64)> = i
            .entries
            .iter()
            .filter(|(h, _)| !i.pinned.contains(*h))
            .map(|(h, (len, t))| (*t, *h, *len))
            .collect();
        order.sort_unstable();
        for (_, h, len) in order {
            if i.total <= goal {
                break;
            }
            let _ = fs::remove_file(self.path(&h));
            i.entries.remove(&h);
            i.total -= len;
        }
    }

    /// Pins the chunks of package `id`: never evicted until [`ChunkStore::unpin`].
    pub fn pin(&self, id: &format::archive::PackageId, hashes: &[Hash]) -> io::Result<()> {
        let text: String = hashes.iter().map(|h| hex(h) + "\n").collect();
        let mut tmp = tempfile::Builder::new()
            .prefix("pin-")
            .tempfile_in(self.dir.join("tmp"))?;
        tmp.write_all(text.as_bytes())?;
        tmp.persist(self.dir.join("pins").join(id.to_string()))
            .map_err(|e| e.error)?;
        self.lock().pinned.extend(hashes.iter().copied());
        Ok(())
    }

    /// Drops package `id`'s pin.
    pub fn unpin(&self, id: &format::archive::PackageId) -> io::Result<()> {
        match fs::remove_file(self.dir.join("pins").join(id.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut pinned = HashSet::new();
        for e in fs::read_dir(self.dir.join("pins"))?.flatten() {
            if let Ok(text) = fs::read_to_string(e.path()) {
                pinned.extend(text.lines().filter_map(unhex));
            }
        }
        self.lock().pinned = pinned;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u8) -> (Hash, Vec<u8>) {
        let b = vec![i; 1000];
        (*blake3::hash(&b).as_bytes(), b)
    }

    #[test]
    fn stores_only_matching_bytes_and_never_serves_a_damaged_file() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path(), 1 << 20).unwrap();
        let (h, b) = chunk(1);
        assert!(!s.put(&h, b"other bytes").unwrap());
        assert!(s.get(&h).is_none());
        assert!(s.put(&h, &b).unwrap());
        assert_eq!(s.get(&h).unwrap(), b);
        // Damaged on disk: deleted, not served.
        fs::write(s.path(&h), b"rot").unwrap();
        assert!(s.get(&h).is_none());
        assert!(!s.path(&h).exists());
        // A reopened store knows what is there, and drops unfinished writes.
        s.put(&h, &b).unwrap();
        fs::write(d.path().join("tmp/chunk-x"), b"half").unwrap();
        let s = ChunkStore::open(d.path(), 1 << 20).unwrap();
        assert!(s.contains(&h) && s.total() == 1000);
        assert!(!d.path().join("tmp/chunk-x").exists());
    }

    #[test]
    fn evicts_least_recently_used_but_never_pinned() {
        let d = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(d.path(), 3500).unwrap();
        let c: Vec<_> = (0..6).map(chunk).collect();
        s.pin(&format::archive::PackageId([7; 32]), &[c[0].0])
            .unwrap();
        s.put(&c[0].0, &c[0].1).unwrap();
        s.put(&c[1].0, &c[1].1).unwrap();
        s.put(&c[2].0, &c[2].1).unwrap();
        s.get(&c[1].0).unwrap(); // 2 is now the least recently used
        s.put(&c[3].0, &c[3].1).unwrap(); // 4000 > 3500: evict to 3150
        assert!(s.contains(&c[0].0), "pinned");
        assert!(!s.contains(&c[2].0), "least recently used");
        assert!(s.contains(&c[1].0) && s.contains(&c[3].0));
        assert!(s.total() <= 3500);
        s.unpin(&format::archive::PackageId([7; 32])).unwrap();
        for x in &c[4..] {
            s.put(&x.0, &x.1).unwrap();
        }
        assert!(!s.contains(&c[0].0), "unpinned, then evicted");
    }
}
