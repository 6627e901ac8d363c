//! Inode numbers, in one place: stable for the life of the mount, across generations.

use std::collections::HashMap;

use format::archive::EntryId;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// First inode number of the mount's own nodes (below `1 << 32`, above any merged directory).
pub const SPECIAL_INO_BASE: u64 = 0xffff_0000;

/// Inode numbers from here on are package entries: `(slot + 1) << 32 | entry`.
pub const PKG_INO_BASE: u64 = 1 << 32;

/// Inode numbers of merged directories, by path, for the life of the mount: a directory
/// keeps its number across generations, so the kernel's caches stay valid for it.
#[derive(Debug)]
pub struct DirInos {
    by_path: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl Default for DirInos {
    fn default() -> Self {
        DirInos {
            by_path: HashMap::new(),
            next: ROOT_INO + 1,
        }
    }
}

impl DirInos {
    pub(super) fn get(&mut self, path: &[u8]) -> u64 {
        if path.is_empty() {
            return ROOT_INO;
        }
        if let Some(&i) = self.by_path.get(path) {
            return i;
        }
        let i = self.next;
        // 4 billion distinct merged directories in one mount's life would be needed to run
        // into the special numbers; past that, numbers are reused (still unique per view
        // for all practical purposes).
        self.next = if self.next + 1 >= SPECIAL_INO_BASE {
            ROOT_INO + 1
        } else {
            self.next + 1
        };
        self.by_path.insert(path.to_vec(), i);
        i
    }
}

/// The inode number of entry `entry` of the package in slot `slot`: `(slot + 1) << 32 |
/// entry` (at least [`PKG_INO_BASE`]; hard links inside a package share it).
pub fn pkg_ino(slot: u32, entry: EntryId) -> u64 {
    ((slot as u64 + 1) << 32) | entry as u64
}

/// The (slot, entry) of a package inode number; `None` for the other inodes.
pub fn split_pkg_ino(ino: u64) -> Option<(u32, EntryId)> {
    (ino >= PKG_INO_BASE).then(|| (((ino >> 32) - 1) as u32, (ino & 0xffff_ffff) as EntryId))
}
