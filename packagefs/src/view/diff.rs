//! What a switch from one view to the next must invalidate in the kernel's caches.

use super::{Node, View};

/// A kernel cache entry a generation switch must drop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inval {
    /// The name in the directory (positive or negative dentry) now resolves differently.
    Entry {
        /// The directory's inode.
        parent: u64,
        /// The name.
        name: Vec<u8>,
    },
    /// The directory's listing or attributes changed.
    Inode(u64),
}

/// What a switch from `old` to `new` must invalidate: every name that resolves to a
/// different inode (or appeared, or vanished) and every directory whose listing changed.
/// Subtrees served by the same package entry in both views are identical and skipped, so
/// the work is proportional to the merged directories, not to the packages' contents.
pub fn diff(old: &View, new: &View) -> Vec<Inval> {
    let mut out = Vec::new();
    let mut stack = vec![(Node::Union(0), Node::Union(0))];
    while let Some((a, b)) = stack.pop() {
        let ino = old.ino(a);
        if let (Node::Pkg { .. }, Node::Pkg { .. }) = (a, b) {
            if ino == new.ino(b) {
                continue;
            }
        }
        let (Ok(xs), Ok(ys)) = (old.read_dir(a, 0), new.read_dir(b, 0)) else {
            out.push(Inval::Inode(ino));
            continue;
        };
        let mut changed = old.attr(a).ok() != new.attr(b).ok();
        let (mut i, mut j) = (0, 0);
        while i < xs.len() || j < ys.len() {
            let ord = match (xs.get(i), ys.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(y.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    out.push(Inval::Entry {
                        parent: ino,
                        name: xs[i].0.to_vec(),
                    });
                    changed = true;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(Inval::Entry {
                        parent: ino,
                        name: ys[j].0.to_vec(),
                    });
                    changed = true;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (xs[i].1, ys[j].1);
                    if old.ino(x) != new.ino(y) {
                        out.push(Inval::Entry {
                            parent: ino,
                            name: xs[i].0.to_vec(),
                        });
                        changed = true;
                    } else if matches!(x, Node::Union(_) | Node::Special(_))
                        || matches!(y, Node::Union(_) | Node::Special(_))
                    {
                        stack.push((x, y));
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        if changed {
            out.push(Inval::Inode(ino));
        }
    }
    out.sort();
    out.dedup();
    out
}
