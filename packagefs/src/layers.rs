//! Loading a layer's packages: every `.hpkg` in `<layer>/packages/`, opened, checked and
//! trusted, or refused with the reason. (The package-set library will add dependency
//! resolution and generations; until then every valid package is active.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use format::archive::Archive;
use format::keys::TrustedKeys;

use crate::view::Package;

/// A layer directory given on the command line.
#[derive(Debug, Clone)]
pub struct LayerDir {
    /// Layer name (`system`, `common`, `user`, ...).
    pub name: String,
    /// Its directory (holding `packages/`).
    pub dir: PathBuf,
}

/// A package that was not activated, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The package file.
    pub path: PathBuf,
    /// Why (one line).
    pub reason: String,
}

/// Hands out package slots: each opened package gets the next number, for the life of the
/// mount.
#[derive(Debug, Default)]
pub struct Slots {
    next: u32,
}

impl Slots {
    /// The next free slot.
    pub fn take(&mut self) -> u32 {
        let s = self.next;
        self.next += 1;
        s
    }
}

/// Opens and checks every package of every layer. Returns the packages to activate and the
/// refused ones. Inside one layer, when several versions of one package are present only the
/// newest is activated.
pub fn load(
    layers: &[LayerDir],
    keys: &TrustedKeys,
    slots: &mut Slots,
) -> (Vec<Arc<Package>>, Vec<Refusal>) {
    let mut active = Vec::new();
    let mut refused = Vec::new();
    for (li, layer) in layers.iter().enumerate() {
        let dir = layer.dir.join("packages");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "hpkg"))
                .collect(),
            Err(e) => {
                refused.push(Refusal {
                    path: dir.clone(),
                    reason: format!("cannot read the package directory: {e}"),
                });
                continue;
            }
        };
        files.sort();
        // name -> newest package of that name in this layer
        let mut newest: BTreeMap<String, Package> = BTreeMap::new();
        for path in files {
            match open_trusted(&path, keys) {
                Ok(archive) => {
                    let p = Package {
                        slot: 0,
                        layer: li,
                        path,
                        archive,
                    };
                    let name = p.archive.manifest().name.clone();
                    match newest.get(&name) {
                        Some(old)
                            if old.archive.manifest().version >= p.archive.manifest().version =>
                        {
                            refused.push(Refusal {
                                reason: format!(
                                    "superseded by {} in {}",
                                    old.label(),
                                    old.path.display()
                                ),
                                path: p.path,
                            });
                        }
                        _ => {
                            if let Some(old) = newest.insert(name, p) {
                                let by = newest[&old.archive.manifest().name].label();
                                refused.push(Refusal {
                                    reason: format!("superseded by {by}"),
                                    path: old.path,
                                });
                            }
                        }
                    }
                }
                Err(reason) => refused.push(Refusal { path, reason }),
            }
        }
        for (_, mut p) in newest {
            p.slot = slots.take();
            active.push(Arc::new(p));
        }
    }
    (active, refused)
}

/// Opens an archive and checks it is signed by a trusted key; the error is one line.
pub fn open_trusted(path: &Path, keys: &TrustedKeys) -> Result<Archive, String> {
    let a = Archive::open(path).map_err(|e| one_line(&e))?;
    a.check_trust(keys).map_err(|e| one_line(&e))?;
    Ok(a)
}

/// An error and its sources on one line.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}
