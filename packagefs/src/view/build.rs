//! Building a view: the merge of a stack of layers' active packages (see the module
//! documentation of `view` for the rules).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use format::archive::{EntryId, Kind};

use super::{Conflict, DirInos, Layer, Node, Package, SpecialNode, UDir, UEntry, View, ROOT_INO};

/// The mount's own entries: each layer's directory, reachable through the mount as a
/// symlink (`/.layers/NAME`; `.layers` is found by name but not listed), and links at the root (`/packages`, `/state` of a layer
/// whose directory is the mount point, as in Haiku). Their names hide package entries.
#[derive(Debug, Clone, Default)]
pub struct Shine {
    /// `(layer name, link target)`: `/.layers/NAME -> TARGET`.
    pub layers: Vec<(String, Vec<u8>)>,
    /// `(name, link target)` at the root.
    pub root: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The name of the directory holding the layers' links.
pub const LAYERS_DIR: &[u8] = b".layers";

/// A merged directory still to fill: (its number, its sources, its path).
type Pending = (u32, Vec<(u32, EntryId)>, Vec<u8>);

struct Cand<'a> {
    name: &'a [u8],
    pkg: u32,
    entry: EntryId,
    kind: Kind,
}

impl View {
    /// Builds the view of `packages` (in any order) stacked in `layers`, with fresh
    /// directory numbers and no shine-through (tests, tools).
    pub fn build(layers: Vec<Layer>, packages: Vec<Arc<Package>>) -> View {
        View::build_with(layers, packages, &mut DirInos::default(), &Shine::default())
    }

    /// Builds the view of `packages` stacked in `layers`, numbering merged directories from
    /// `inos` (shared by every generation of a mount) and adding the `shine` entries.
    pub fn build_with(
        layers: Vec<Layer>,
        mut packages: Vec<Arc<Package>>,
        inos: &mut DirInos,
        shine: &Shine,
    ) -> View {
        // Priority order: highest layer first, then (name, version, id) inside a layer.
        packages.sort_by(|a, b| {
            b.layer
                .cmp(&a.layer)
                .then_with(|| a.sort_key().cmp(&b.sort_key()))
        });
        let by_slot = packages
            .iter()
            .enumerate()
            .map(|(i, p)| (p.slot, i as u32))
            .collect();
        let mut v = View {
            layers,
            packages,
            by_slot,
            dirs: Vec::new(),
            entries: Vec::new(),
            names: Vec::new(),
            boundary_parent: HashMap::new(),
            conflicts: Vec::new(),
            dir_ino: vec![ROOT_INO],
            union_by_ino: HashMap::from([(ROOT_INO, 0)]),
            special: Vec::new(),
        };
        let reserved = v.add_specials(shine);
        let pkgs = v.packages.clone();
        let roots: Vec<(u32, EntryId)> = (0..pkgs.len() as u32)
            .map(|p| (p, pkgs[p as usize].archive.root()))
            .collect();
        v.dirs.push(UDir {
            parent: 0,
            first: 0,
            count: 0,
            subdirs: 0,
            attr_src: roots.first().copied(),
        });
        let mut queue: VecDeque<Pending> = VecDeque::new();
        queue.push_back((0, roots, Vec::new()));
        while let Some((d, sources, path)) = queue.pop_front() {
            let mut cands: Vec<Cand<'_>> = Vec::new();
            for &(p, e) in &sources {
                let ar = &pkgs[p as usize].archive;
                let Ok(iter) = ar.read_dir(e) else { continue };
                for de in iter {
                    let Ok(attr) = ar.attr(de.entry) else {
                        continue;
                    };
                    cands.push(Cand {
                        name: de.name,
                        pkg: p,
                        entry: de.entry,
                        kind: attr.kind,
                    });
                }
            }
            // Stable by name, then by priority (package index).
            cands.sort_by(|a, b| a.name.cmp(b.name).then(a.pkg.cmp(&b.pkg)));
            let first = v.entries.len() as u32;
            let mut subdirs = 0;
            let mut i = 0;
            while i < cands.len() {
                let mut j = i + 1;
                while j < cands.len() && cands[j].name == cands[i].name {
                    j += 1;
                }
                let group = &cands[i..j];
                i = j;
                let top = &group[0];
                if d == 0 && reserved.iter().any(|r| r.as_slice() == top.name) {
                    v.conflicts.push(Conflict {
                        path: String::from_utf8_lossy(top.name).into_owned(),
                        layer: v
                            .layers
                            .get(pkgs[top.pkg as usize].layer)
                            .map(|l| l.name.clone())
                            .unwrap_or_default(),
                        winner: "packagefs (shine-through)".into(),
                        loser: pkgs[top.pkg as usize].label(),
                    });
                    continue;
                }
                let top_layer = pkgs[top.pkg as usize].layer;
                let mut child_path = path.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(top.name);
                let target = if top.kind == Kind::Dir {
                    subdirs += 1;
                    for c in group
                        .iter()
                        .filter(|c| c.kind != Kind::Dir && pkgs[c.pkg as usize].layer == top_layer)
                    {
                        v.conflict(&child_path, top_layer, top.pkg, c.pkg);
                    }
                    let dir_srcs: Vec<(u32, EntryId)> = group
                        .iter()
                        .filter(|c| c.kind == Kind::Dir)
                        .map(|c| (c.pkg, c.entry))
                        .collect();
                    if dir_srcs.len() == 1 {
                        v.boundary_parent
                            .insert((top.pkg, top.entry), v.dir_ino[d as usize]);
                        Node::Pkg {
                            pkg: top.pkg,
                            entry: top.entry,
                        }
                    } else {
                        let nd = v.dirs.len() as u32;
                        let ino = inos.get(&child_path);
                        v.dir_ino.push(ino);
                        v.union_by_ino.insert(ino, nd);
                        v.dirs.push(UDir {
                            parent: d,
                            first: 0,
                            count: 0,
                            subdirs: 0,
                            attr_src: Some(dir_srcs[0]),
                        });
                        queue.push_back((nd, dir_srcs, child_path));
                        Node::Union(nd)
                    }
                } else {
                    for c in group[1..]
                        .iter()
                        .filter(|c| pkgs[c.pkg as usize].layer == top_layer)
                    {
                        let (a, b) = (
                            &pkgs[top.pkg as usize].archive,
                            &pkgs[c.pkg as usize].archive,
                        );
                        if !format::archive::reader::same_entry(a, top.entry, b, c.entry) {
                            v.conflict(&child_path, top_layer, top.pkg, c.pkg);
                        }
                    }
                    Node::Pkg {
                        pkg: top.pkg,
                        entry: top.entry,
                    }
                };
                let name_off = v.names.len() as u32;
                v.names.extend_from_slice(top.name);
                v.entries.push(UEntry {
                    name_off,
                    name_len: top.name.len() as u16,
                    target,
                });
            }
            if d == 0 {
                // The mount's own entries join the root, in name order.
                for (i, sp) in v.special.iter().enumerate() {
                    // `.layers` is found by name but not listed (like ZFS's `.zfs`), so
                    // find, du, tar and diff -r of the mount see the packages only.
                    if sp.parent != Node::Union(0) || sp.name == LAYERS_DIR {
                        continue;
                    }
                    if sp.target.is_none() {
                        subdirs += 1;
                    }
                    let name_off = v.names.len() as u32;
                    v.names.extend_from_slice(&sp.name);
                    v.entries.push(UEntry {
                        name_off,
                        name_len: sp.name.len() as u16,
                        target: Node::Special(i as u32),
                    });
                }
                let names = &v.names;
                let name = |e: &UEntry| {
                    &names[e.name_off as usize..e.name_off as usize + e.name_len as usize]
                };
                v.entries[first as usize..].sort_by(|a, b| name(a).cmp(name(b)));
            }
            let ud = &mut v.dirs[d as usize];
            ud.first = first;
            ud.count = v.entries.len() as u32 - first;
            ud.subdirs = subdirs;
        }
        v
    }

    /// Adds the shine-through nodes; returns the root names they take.
    fn add_specials(&mut self, shine: &Shine) -> Vec<Vec<u8>> {
        let mut reserved = Vec::new();
        if !shine.layers.is_empty() {
            self.special.push(SpecialNode {
                name: LAYERS_DIR.to_vec(),
                target: None,
                parent: Node::Union(0),
                children: Vec::new(),
            });
            reserved.push(LAYERS_DIR.to_vec());
            let mut kids: Vec<(Vec<u8>, Vec<u8>)> = shine
                .layers
                .iter()
                .map(|(n, t)| (n.as_bytes().to_vec(), t.clone()))
                .collect();
            kids.sort();
            kids.dedup_by(|a, b| a.0 == b.0);
            for (name, target) in kids {
                let i = self.special.len() as u32;
                self.special.push(SpecialNode {
                    name,
                    target: Some(target),
                    parent: Node::Special(0),
                    children: Vec::new(),
                });
                self.special[0].children.push(i);
            }
        }
        for (name, target) in &shine.root {
            if name.is_empty() || reserved.contains(name) || name.contains(&b'/') {
                continue;
            }
            reserved.push(name.clone());
            self.special.push(SpecialNode {
                name: name.clone(),
                target: Some(target.clone()),
                parent: Node::Union(0),
                children: Vec::new(),
            });
        }
        reserved
    }

    fn conflict(&mut self, path: &[u8], layer: usize, winner: u32, loser: u32) {
        self.conflicts.push(Conflict {
            path: String::from_utf8_lossy(path).into_owned(),
            layer: self
                .layers
                .get(layer)
                .map(|l| l.name.clone())
                .unwrap_or_default(),
            winner: self.packages[winner as usize].label(),
            loser: self.packages[loser as usize].label(),
        });
    }
}
