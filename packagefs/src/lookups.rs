//! The package inodes the kernel holds, so that a file stays readable as long as the kernel
//! can send requests for it, whatever view is current.
//!
//! The file system answers `open` with ENOSYS, which makes the kernel open files itself
//! (no OPEN, FLUSH or RELEASE round trip per file; reads name the inode, not an open
//! handle). What an open handle used to guarantee, that a file open across a generation
//! switch keeps reading the bytes of its package, now rests on the kernel's lookup count:
//! the kernel keeps an inode, and may read it, from the reply that handed it out (LOOKUP,
//! or an entry of READDIRPLUS) until it sends FORGET for it, which it does not do while
//! the file is open or mapped (a running program). This table counts those lookups per
//! package inode and holds each such inode's package, so a read of an inode whose package
//! has left the view is still answered. A package is let go (its file closed, its disk
//! space freed if deleted) when the kernel has forgotten its last inode.
//!
//! Only package entries are counted: merged directories and the `.layers` entries are
//! numbered for the life of the mount and never read with `read`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use format::archive::EntryId;

use crate::view::{split_pkg_ino, Package};

struct SlotRefs {
    pkg: Arc<Package>,
    /// Lookup count per entry; entries at zero are removed.
    counts: HashMap<EntryId, u64>,
}

/// Lookup counts of package inodes, sharded by package slot.
pub struct Lookups {
    shards: Box<[Mutex<HashMap<u32, SlotRefs>>]>,
}

impl Default for Lookups {
    fn default() -> Self {
        Lookups {
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Lookups {
    fn shard(&self, slot: u32) -> std::sync::MutexGuard<'_, HashMap<u32, SlotRefs>> {
        self.shards[slot as usize % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The kernel was handed inode `ino`, entry `entry` of `pkg`, once more.
    pub fn add(&self, ino: u64, pkg: &Arc<Package>) {
        let Some((slot, entry)) = split_pkg_ino(ino) else {
            return;
        };
        let mut s = self.shard(slot);
        let refs = s.entry(slot).or_insert_with(|| SlotRefs {
            pkg: pkg.clone(),
            counts: HashMap::new(),
        });
        *refs.counts.entry(entry).or_insert(0) += 1;
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let Some((slot, entry)) = split_pkg_ino(ino) else {
            return;
        };
        let mut s = self.shard(slot);
        let Some(refs) = s.get_mut(&slot) else {
            return;
        };
        if let Some(c) = refs.counts.get_mut(&entry) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                refs.counts.remove(&entry);
            }
        }
        if refs.counts.is_empty() {
            s.remove(&slot);
        }
    }

    /// The package and entry of `ino` if the kernel still holds it.
    pub fn get(&self, ino: u64) -> Option<(Arc<Package>, EntryId)> {
        let (slot, entry) = split_pkg_ino(ino)?;
        let s = self.shard(slot);
        let refs = s.get(&slot)?;
        refs.counts
            .contains_key(&entry)
            .then(|| (refs.pkg.clone(), entry))
    }

    /// Packages held, and inodes counted (for logs and tests).
    pub fn held(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(p, i), s| {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            (
                p + s.len(),
                i + s.values().map(|r| r.counts.len()).sum::<usize>(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::tests::{make, Spec};

    fn pkg(dir: &std::path::Path, slot: u32) -> Arc<Package> {
        let spec = Spec {
            name: "p",
            version: "1.0.0",
            layer: 0,
            entries: &[("a", "f:alpha"), ("b", "f:beta")],
        };
        make(dir, slot, &spec)
    }

    fn ino(slot: u32, entry: EntryId) -> u64 {
        crate::view::pkg_ino(slot, entry)
    }

    #[test]
    fn a_package_is_held_until_its_last_inode_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let p = pkg(dir.path(), 7);
        let weak = Arc::downgrade(&p);
        let l = Lookups::default();
        l.add(ino(7, 1), &p);
        l.add(ino(7, 1), &p);
        l.add(ino(7, 2), &p);
        drop(p);
        assert_eq!(l.held(), (1, 2));
        let (got, entry) = l.get(ino(7, 1)).unwrap();
        assert_eq!((got.slot, entry), (7, 1));
        drop(got);
        assert!(l.get(ino(8, 1)).is_none(), "another slot");
        assert!(l.get(ino(7, 3)).is_none(), "an entry never handed out");
        // Lookups are forgotten in any grouping; a package goes with its last inode.
        l.forget(ino(7, 1), 1);
        assert!(l.get(ino(7, 1)).is_some());
        l.forget(ino(7, 1), 1);
        assert!(l.get(ino(7, 1)).is_none());
        assert!(weak.upgrade().is_some(), "entry 2 still holds the package");
        l.forget(ino(7, 2), 5);
        assert_eq!(l.held(), (0, 0));
        assert!(weak.upgrade().is_none(), "the package was let go");
    }

    #[test]
    fn other_inodes_and_unknown_forgets_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = pkg(dir.path(), 0);
        let l = Lookups::default();
        l.add(1, &p);
        l.add(crate::view::SPECIAL_INO_BASE, &p);
        assert_eq!(l.held(), (0, 0));
        l.forget(ino(3, 1), 1);
        l.forget(1, 1);
        l.add(ino(0, 1), &p);
        l.forget(ino(0, 2), 1);
        assert_eq!(l.held(), (1, 1));
    }
}
