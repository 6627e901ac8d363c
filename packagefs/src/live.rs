//! The live package set of a mount: at mount, each layer's `state/active.list` (the first
//! generation is created from `packages/` if there is none); afterwards, every change the
//! watcher reports — a package file dropped into or deleted from `packages/`, an
//! `active.list` replaced — goes through the package-set library (`pkgset`, the same code
//! as `pkgtool`) and becomes a new generation and a new [`View`], or is refused with a log
//! line and the view stays as it was.
//!
//! Packages keep their slot (and so their inode numbers) for as long as the mount lives,
//! merged directories keep their numbers by path ([`DirInos`]): a switch changes only the
//! inodes of what really changed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use format::active_list::ActiveList;
use format::archive::PackageId;
use format::keys::TrustedKeys;
use pkgset::generation::{self, Lock};
use pkgset::stack::{is_package_name, list_of, now_utc, one_line};
use pkgset::{plan, Candidate, Change, Opener, Plan, Stack};
use tracing::{debug, error, info, warn};

use crate::view::{DirInos, Layer, Package, Shine, View};

/// What the watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A file appeared in (or was written to) a layer's `packages/`. `complete` when it was
    /// closed after writing or moved in; a bare creation may be a copy just starting (or a
    /// hard link, which is complete at once).
    Added {
        /// The layer.
        layer: usize,
        /// The file name.
        name: OsString,
        /// The file is complete (closed after writing, or moved in).
        complete: bool,
    },
    /// A file left a layer's `packages/`.
    Removed {
        /// The layer.
        layer: usize,
        /// The file name.
        name: OsString,
    },
    /// A layer's `state/active.list` was replaced.
    ListChanged {
        /// The layer.
        layer: usize,
    },
    /// Events were lost: compare everything with the disk.
    Rescan,
}

/// The live state of a mount's layers.
pub struct Live {
    stack: Stack,
    layers: Vec<Layer>,
    opener: Opener,
    shine: Shine,
    inos: DirInos,
    slots: HashMap<(usize, PackageId), u32>,
    packages: HashMap<(usize, PackageId), Arc<Package>>,
    /// The current set of each layer.
    sets: Vec<Vec<Candidate>>,
    /// The list each layer's set was adopted from (its metadata is restored on a refusal).
    lists: Vec<Option<ActiveList>>,
    /// Per layer: `packages/` file name -> the package it holds.
    files: Vec<HashMap<OsString, PackageId>>,
    /// Per layer: files seen being created that did not open yet (a copy in progress).
    pending: Vec<BTreeSet<OsString>>,
    /// Per layer: dropped packages refused because of the set (say, a requirement not yet
    /// there); retried after every change, so an app and its library can be dropped in
    /// either order.
    waiting: Vec<BTreeSet<OsString>>,
    /// Per layer: when its set last changed from outside (a rollback, pkgtool, an admin;
    /// the mount counts as one). A file in `packages/` older than that was there when the
    /// set was chosen, so its events (late ones, say, of pkgtool's own copies) are not drops.
    settled: Vec<Option<SystemTime>>,
    /// Per layer: the mtime of `active.list` when the daemon last read or wrote it. A
    /// different one means someone else wrote it, even with the same packages (an install
    /// and a rollback between two looks).
    seen: Vec<Option<SystemTime>>,
    /// When the opener last forgot deleted files (a stat per known file: not every batch).
    pruned: std::time::Instant,
    /// How long the last `apply` waited for the layers' locks (a writer finishing: its
    /// fsyncs of the state directory).
    pub lock_wait: std::time::Duration,
}

/// The modification time of layer `l`'s `active.list`.
fn list_mtime(stack: &Stack, l: usize) -> Option<SystemTime> {
    std::fs::metadata(stack.layers[l].paths.active_list())
        .and_then(|m| m.modified())
        .ok()
}

/// A file's change time (updated by writes, renames and links, unlike its mtime).
fn ctime(md: &std::fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    let (s, ns) = (md.ctime(), md.ctime_nsec());
    if s >= 0 {
        SystemTime::UNIX_EPOCH + std::time::Duration::new(s as u64, ns as u32)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Ids of a set.
fn ids(set: &[Candidate]) -> HashSet<PackageId> {
    set.iter().map(|c| c.id()).collect()
}

impl Live {
    /// Loads the layers (under their locks) and builds the first view. A layer whose
    /// `active.list` names a package that cannot be opened falls back to its newest
    /// generation that can, with an error logged; the list on disk is left for the admin.
    pub fn start(stack: Stack, keys: TrustedKeys, shine: Shine) -> anyhow::Result<(Live, View)> {
        let layers = stack.layers.iter().map(|l| Layer::new(&l.name)).collect();
        let n = stack.layers.len();
        let mut live = Live {
            layers,
            opener: Opener::new(keys),
            shine,
            inos: DirInos::default(),
            slots: HashMap::new(),
            packages: HashMap::new(),
            sets: Vec::new(),
            lists: Vec::new(),
            files: vec![HashMap::new(); n],
            pending: vec![BTreeSet::new(); n],
            waiting: vec![BTreeSet::new(); n],
            settled: vec![None; n],
            seen: vec![None; n],
            pruned: std::time::Instant::now(),
            lock_wait: std::time::Duration::ZERO,
            stack,
        };
        let locks = live.lock_all()?;
        let names = live.stack.names();
        // Layers whose set was read from their active.list (not made afresh from packages/).
        let mut from_list = Vec::new();
        for l in 0..n {
            let spec = &live.stack.layers[l];
            let pk = spec.paths.packages();
            if let Err(e) = std::fs::create_dir_all(&pk) {
                warn!(layer = %spec.name, "cannot create {}: {e}", pk.display());
            }
            let (set, list) = match live.stack.load_active(l, &mut live.opener) {
                Ok(ls) if ls.list.is_some() => {
                    from_list.push(l);
                    (ls.packages, ls.list)
                }
                Ok(_) => {
                    let (cands, refused) = live.stack.scan(l, &mut live.opener)?;
                    for r in &refused {
                        warn!(layer = %spec.name, package = %r.path.display(), "refused: {}", r.reason);
                    }
                    let mut cur = live.sets.clone();
                    cur.push(Vec::new());
                    let p = plan(&names, &cur, l, &[], Change::Initial(cands))
                        .map_err(|r| anyhow::anyhow!("layer {}: {r}", spec.name))?;
                    for s in &p.skipped {
                        warn!(layer = %spec.name, "not activated: {s}");
                    }
                    if p.is_empty() {
                        (Vec::new(), None)
                    } else {
                        let gens =
                            live.stack
                                .commit(&p, "first generation from packages/", &now_utc())?;
                        info!(layer = %spec.name, generation = ?gens.first().map(|g| g.1),
                              "first generation: {}", p.summary());
                        let list = generation::read_list(&spec.paths.active_list())?;
                        (p.sets[l].clone(), list)
                    }
                }
                Err(e) => {
                    error!(layer = %spec.name, "cannot activate state/active.list: {}", one_line(&e));
                    live.fallback(l)
                }
            };
            live.sets.push(set);
            live.lists.push(list);
        }
        if let Err(r) = pkgset::check(&names, &live.sets.concat()) {
            for p in &r.problems {
                error!("the active set breaks the invariant: {p}");
            }
        }
        let mut arrived = Vec::new();
        for l in 0..n {
            live.rescan_files(l);
            live.settled[l] = list_mtime(&live.stack, l);
            live.seen[l] = live.settled[l];
            if from_list.contains(&l) {
                arrived.extend(live.arrived_while_down(l));
            }
        }
        drop(locks);
        // Files dropped while no daemon watched are drops like any other (as Haiku's
        // package daemon activates at boot what was copied in while the system was off).
        if !arrived.is_empty() {
            match live.apply(arrived) {
                Ok(Some(view)) => return Ok((live, view)),
                Ok(None) => {}
                Err(e) => error!(
                    "cannot activate the packages dropped while unmounted: {}",
                    one_line(e.as_ref())
                ),
            }
        }
        let view = live.build_view();
        Ok((live, view))
    }

    /// The files of layer `l`'s `packages/` that changed after its `active.list` was last
    /// written and hold a package that is not active: dropped while no daemon watched.
    /// Files older than the list were there when its set was chosen (the newer versions a
    /// rollback left inactive, say). A pool link removed by `gc` changes a file's ctime
    /// too, so files older than the pool's last change do not count either. A file
    /// deleted while unmounted is not noticed: its package stays active, from the pool,
    /// until `pkgtool remove`.
    fn arrived_while_down(&self, l: usize) -> Vec<Event> {
        let Some(list) = self.settled[l] else {
            return Vec::new();
        };
        let pool = std::fs::metadata(self.stack.layers[l].paths.pool())
            .and_then(|m| m.modified())
            .ok();
        let settled = pool.map_or(list, |p| p.max(list));
        let active = ids(&self.sets[l]);
        let dir = self.stack.layers[l].paths.packages();
        let mut names: Vec<&OsString> = self.files[l]
            .iter()
            .filter(|(name, id)| {
                !active.contains(id)
                    && std::fs::symlink_metadata(dir.join(name))
                        .is_ok_and(|md| ctime(&md) > settled)
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| Event::Added {
                layer: l,
                name: name.clone(),
                complete: true,
            })
            .collect()
    }

    /// The newest generation of layer `l` whose packages all open.
    fn fallback(&mut self, l: usize) -> (Vec<Candidate>, Option<ActiveList>) {
        let spec = &self.stack.layers[l];
        let numbers = generation::generation_numbers(&spec.paths).unwrap_or_default();
        for n in numbers.into_iter().rev() {
            let Ok(Some(list)) = generation::read_list(&spec.paths.generation_list(n)) else {
                continue;
            };
            if let Ok(set) = self.stack.open_list(l, &list, &mut self.opener) {
                warn!(layer = %spec.name, "serving generation {n} instead");
                return (set, Some(list));
            }
        }
        self.degraded(l)
    }

    /// No generation of layer `l` opens whole (a package file changed in place spoils its
    /// pool copy, which every generation naming it shares): serve what opens of its
    /// `active.list` (else of its newest generation), minus what is then left with an unmet
    /// requirement, all named in the log. Nothing is written: the list on disk stays for
    /// the admin, and the next change records a generation from what is served.
    fn degraded(&mut self, l: usize) -> (Vec<Candidate>, Option<ActiveList>) {
        let spec = self.stack.layers[l].clone();
        let newest = || {
            generation::generation_numbers(&spec.paths)
                .unwrap_or_default()
                .into_iter()
                .rev()
                .find_map(|n| {
                    generation::read_list(&spec.paths.generation_list(n))
                        .ok()
                        .flatten()
                })
        };
        let Some(list) = generation::read_list(&spec.paths.active_list())
            .ok()
            .flatten()
            .or_else(newest)
        else {
            error!(layer = %spec.name, "no generation can be activated: the layer is empty");
            return (Vec::new(), None);
        };
        let mut cands = Vec::new();
        let mut broken = Vec::new();
        for e in &list.entries {
            let one = ActiveList {
                meta: Default::default(),
                entries: vec![e.clone()],
            };
            match self.stack.open_list(l, &one, &mut self.opener) {
                Ok(mut c) => cands.append(&mut c),
                Err(err) => broken.push(one_line(&err)),
            }
        }
        let mut cur = self.sets.clone();
        cur.truncate(l);
        cur.push(Vec::new());
        let names = self.stack.names();
        match plan(&names, &cur, l, &[], Change::Initial(cands)) {
            Ok(p) => {
                for b in &broken {
                    error!(layer = %spec.name, "not served: {b}");
                }
                for s in &p.skipped {
                    error!(layer = %spec.name, "not served: {s}");
                }
                error!(
                    layer = %spec.name,
                    "no generation opens whole: serving {} of the {} packages of {}",
                    p.sets[l].len(),
                    list.entries.len(),
                    list.generation().map_or("the active list".to_string(), |g| format!("generation {g}"))
                );
                (p.sets[l].clone(), None)
            }
            Err(r) => {
                error!(layer = %spec.name, "no generation can be activated ({r}): the layer is empty");
                (Vec::new(), None)
            }
        }
    }

    fn lock_all(&self) -> anyhow::Result<Vec<Lock>> {
        // Always in layer order, so two lockers never wait on each other.
        let mut v = Vec::new();
        for l in &self.stack.layers {
            v.push(Lock::acquire(&l.paths)?);
        }
        Ok(v)
    }

    /// Re-reads which file of `packages/` holds which package.
    fn rescan_files(&mut self, l: usize) -> Vec<Event> {
        let mut events = Vec::new();
        let Ok(paths) = self.stack.package_files(l) else {
            return events;
        };
        let mut now: HashMap<OsString, PackageId> = HashMap::new();
        for p in paths {
            let name = p.file_name().unwrap_or_default().to_owned();
            match self.opener.open(&p) {
                Ok(a) => {
                    if self.files[l].get(&name) != Some(&a.id()) {
                        events.push(Event::Added {
                            layer: l,
                            name: name.clone(),
                            complete: true,
                        });
                    }
                    now.insert(name, a.id());
                }
                Err(_) => {
                    if !self.files[l].contains_key(&name) {
                        events.push(Event::Added {
                            layer: l,
                            name: name.clone(),
                            complete: false,
                        });
                    }
                }
            }
        }
        for name in self.files[l].keys() {
            if !now.contains_key(name) {
                events.push(Event::Removed {
                    layer: l,
                    name: name.clone(),
                });
            }
        }
        self.files[l] = now;
        events
    }

    /// The view of the current sets.
    pub fn build_view(&mut self) -> View {
        let mut pkgs = Vec::new();
        let mut keep = HashSet::new();
        for (l, set) in self.sets.iter().enumerate() {
            for c in set {
                let key = (l, c.id());
                keep.insert(key);
                let next = self.slots.len() as u32;
                let slot = *self.slots.entry(key).or_insert(next);
                let p = self
                    .packages
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(Package {
                            slot,
                            layer: l,
                            path: c.path.clone(),
                            archive: c.archive.clone(),
                        })
                    })
                    .clone();
                pkgs.push(p);
            }
        }
        self.packages.retain(|k, _| keep.contains(k));
        View::build_with(self.layers.clone(), pkgs, &mut self.inos, &self.shine)
    }

    /// Applies a batch of events. Returns the new view if the active set changed.
    pub fn apply(&mut self, events: Vec<Event>) -> anyhow::Result<Option<View>> {
        let t0 = std::time::Instant::now();
        let _locks = self.lock_all()?;
        self.lock_wait = t0.elapsed();
        debug!("locked in {:?}", t0.elapsed());
        let before: Vec<HashSet<PackageId>> = self.sets.iter().map(|s| ids(s)).collect();
        let n = self.stack.layers.len();
        // 1. Lists replaced on disk (a rollback, pkgtool, an admin's edit). Always compared:
        //    this is also how the daemon notices changes pkgtool made.
        let outside: Vec<bool> = (0..n).map(|l| self.adopt_list(l)).collect();
        debug!("lists compared in {:?}", t0.elapsed());
        // File events queued before an outside change of a layer's list were seen by
        // whoever wrote it (pkgtool's own copies and deletions; a rollback overrides them):
        // they are dropped. inotify keeps order, so those are the events before the list's
        // last event in this batch, or all of them if that event has not arrived yet.
        let mut added: Vec<Vec<(OsString, bool)>> = vec![Vec::new(); n];
        let mut removed: Vec<Vec<OsString>> = vec![Vec::new(); n];
        let mut list_seen = vec![false; n];
        let mut rescan = false;
        for e in events {
            match e {
                Event::Added {
                    layer,
                    name,
                    complete,
                } if layer < n => {
                    if let Some(x) = added[layer].iter_mut().find(|(m, _)| *m == name) {
                        x.1 |= complete;
                    } else {
                        added[layer].push((name, complete));
                    }
                }
                Event::Removed { layer, name } if layer < n => {
                    added[layer].retain(|(m, _)| *m != name);
                    removed[layer].push(name);
                }
                Event::ListChanged { layer } if layer < n && outside[layer] => {
                    list_seen[layer] = true;
                    added[layer].clear();
                    removed[layer].clear();
                }
                Event::Rescan => rescan = true,
                _ => {}
            }
        }
        for l in 0..n {
            if outside[l] && !list_seen[l] {
                added[l].clear();
                removed[l].clear();
            }
            if outside[l] {
                // Learn which file holds which package now, without treating it as news.
                self.rescan_files(l);
            }
        }
        debug!("events sorted in {:?}", t0.elapsed());
        if rescan {
            for (l, (a, r)) in added.iter_mut().zip(removed.iter_mut()).enumerate() {
                for e in self.rescan_files_diff(l) {
                    match e {
                        Event::Added { name, complete, .. } => a.push((name, complete)),
                        Event::Removed { name, .. } => r.push(name),
                        _ => {}
                    }
                }
            }
        }
        // 2. Dropped files; 3. deleted ones (after, so an upgrade dropped with its old
        //    file deleted replaces instead of cascading).
        for (l, names) in added.iter().enumerate() {
            self.add_files(l, names);
        }
        for (l, names) in removed.iter().enumerate() {
            self.remove_files(l, names);
        }
        let changed =
            |sets: &[Vec<Candidate>]| sets.iter().map(|s| ids(s)).collect::<Vec<_>>() != before;
        // Refused drops get another chance once the set changed; until nothing more moves.
        while changed(&self.sets) && self.waiting.iter().any(|w| !w.is_empty()) {
            let mut progress = false;
            for l in 0..n {
                let retry: Vec<(OsString, bool)> = std::mem::take(&mut self.waiting[l])
                    .into_iter()
                    .filter(|name| self.files[l].contains_key(name))
                    .map(|name| (name, true))
                    .collect();
                let before_l = ids(&self.sets[l]);
                self.add_files(l, &retry);
                progress |= ids(&self.sets[l]) != before_l;
            }
            if !progress {
                break;
            }
        }
        if self.pruned.elapsed() > std::time::Duration::from_secs(5) {
            self.opener.prune();
            self.pruned = std::time::Instant::now();
        }
        let after: Vec<HashSet<PackageId>> = self.sets.iter().map(|s| ids(s)).collect();
        if before == after {
            return Ok(None);
        }
        debug!("changes applied in {:?}", t0.elapsed());
        let v = self.build_view();
        debug!("view built in {:?}", t0.elapsed());
        Ok(Some(v))
    }

    /// Like `rescan_files`, without updating the map (the add/remove steps do).
    fn rescan_files_diff(&mut self, l: usize) -> Vec<Event> {
        let saved = self.files[l].clone();
        let events = self.rescan_files(l);
        self.files[l] = saved;
        events
    }

    /// If layer `l`'s `active.list` on disk names another set than the current one, switch
    /// to it (checked), recording it as a generation if it is not one; refuse otherwise and
    /// put the current list back. Returns true if the list on disk was changed from outside.
    fn adopt_list(&mut self, l: usize) -> bool {
        let spec = self.stack.layers[l].clone();
        let path = spec.paths.active_list();
        let stamp = list_mtime(&self.stack, l);
        let rewritten = stamp != self.seen[l];
        if rewritten {
            self.seen[l] = stamp;
            self.settled[l] = stamp;
        }
        let disk = match generation::read_list(&path) {
            Ok(Some(d)) => d,
            Ok(None) => {
                if self.lists[l].is_some() {
                    warn!(layer = %spec.name, "state/active.list was deleted; keeping the active set and writing it back");
                    self.restore_list(l, None);
                }
                return false;
            }
            Err(e) => {
                warn!(layer = %spec.name, "refused state/active.list: {}", one_line(&e));
                self.restore_list(l, Some(&path));
                return true;
            }
        };
        if list_of(&self.sets[l]).same_packages(&disk) {
            self.lists[l] = Some(disk);
            return rewritten;
        }
        let t0 = std::time::Instant::now();
        let set = match self.stack.open_list(l, &disk, &mut self.opener) {
            Ok(s) => s,
            Err(e) => {
                warn!(layer = %spec.name, "refused state/active.list: {}; the view is unchanged", one_line(&e));
                self.restore_list(l, Some(&path));
                return true;
            }
        };
        debug!(layer = %spec.name, "list opened in {:?}", t0.elapsed());
        let names = self.stack.names();
        let planned = plan(&names, &self.sets, l, &[], Change::Replace(set));
        debug!(layer = %spec.name, "list checked in {:?}", t0.elapsed());
        match planned {
            Ok(p) => {
                let is_generation = disk.generation().is_some_and(|g| {
                    generation::read_list(&spec.paths.generation_list(g))
                        .ok()
                        .flatten()
                        .is_some_and(|gl| gl.same_packages(&disk))
                });
                let gen = if is_generation {
                    disk.generation()
                } else {
                    match self.stack.commit(&p, "active.list replaced", &now_utc()) {
                        Ok(g) => g.first().map(|g| g.1),
                        Err(e) => {
                            error!(layer = %spec.name, "cannot record the new set: {}", one_line(&e));
                            return true;
                        }
                    }
                };
                info!(layer = %spec.name, generation = ?gen, "switched: {}", p.summary());
                self.settled[l] = list_mtime(&self.stack, l);
                self.seen[l] = self.settled[l];
                self.sets[l] = p.sets[l].clone();
                self.lists[l] = generation::read_list(&path).ok().flatten();
                true
            }
            Err(r) => {
                warn!(layer = %spec.name, "refused state/active.list: {r}; the view is unchanged");
                self.restore_list(l, Some(&path));
                true
            }
        }
    }

    /// Puts the current set's list back as `active.list`, keeping a refused one as
    /// `active.list.refused`.
    fn restore_list(&mut self, l: usize, refused: Option<&std::path::Path>) {
        let spec = &self.stack.layers[l];
        if let Some(p) = refused {
            // (Only a regular file of a list's size is kept: never block on a FIFO.)
            if let Ok(bytes) = generation::read_state_bytes(p, format::active_list::MAX_LEN as u64)
            {
                let keep = spec.paths.state().join("active.list.refused");
                let _ = generation::write_atomic(&keep, &bytes);
            }
        }
        let list = self.lists[l]
            .clone()
            .unwrap_or_else(|| list_of(&self.sets[l]));
        if let Err(e) =
            generation::write_atomic(&spec.paths.active_list(), list.to_text().as_bytes())
        {
            error!(layer = %spec.name, "cannot restore state/active.list: {}", one_line(&e));
        }
        self.seen[l] = list_mtime(&self.stack, l);
    }

    fn add_files(&mut self, l: usize, names: &[(OsString, bool)]) {
        let spec = self.stack.layers[l].clone();
        let mut new = Vec::new();
        let mut replaced_ids = Vec::new();
        for (name, complete) in names {
            let Some(s) = name.to_str().filter(|s| is_package_name(s)) else {
                continue;
            };
            let path = spec.paths.packages().join(name);
            if let (Some(settled), Ok(md)) = (self.settled[l], std::fs::symlink_metadata(&path)) {
                let changed = ctime(&md);
                if changed < settled {
                    debug!(layer = %spec.name, "{s}: there before the set last changed; not a drop");
                    if let Ok(a) = self.opener.open(&path) {
                        self.files[l].insert(name.clone(), a.id());
                    }
                    self.pending[l].remove(name);
                    continue;
                }
            }
            match self.opener.open(&path) {
                Ok(a) => {
                    self.pending[l].remove(name);
                    if let Some(old) = self.files[l].insert(name.clone(), a.id()) {
                        if old != a.id() {
                            replaced_ids.push(old);
                        }
                    }
                    new.push(Candidate {
                        layer: l,
                        path,
                        archive: a,
                    });
                }
                Err(reason) if !complete && !path.exists() => {
                    debug!(layer = %spec.name, "{s}: gone before it could be read ({reason})");
                }
                Err(reason) if !complete => {
                    debug!(layer = %spec.name, "{s}: not readable yet ({reason}); waiting for the writer to close it");
                    self.pending[l].insert(name.clone());
                }
                Err(reason) => {
                    self.pending[l].remove(name);
                    self.files[l].remove(name);
                    warn!(layer = %spec.name, package = %path.display(), "refused: {reason}; the view is unchanged");
                }
            }
        }
        let active = ids(&self.sets[l]);
        new.retain(|c| !active.contains(&c.id()));
        if !new.is_empty() {
            let (available, _) = self.stack.scan(l, &mut self.opener).unwrap_or_default();
            // The whole drop at once (an app with its libraries); if refused, one by one, so
            // one bad file does not keep the good ones out.
            if !self.install(l, new.clone(), &available) && new.len() > 1 {
                for c in new {
                    self.install(l, vec![c], &available);
                }
            }
        }
        // A file replaced under the same name by another package: the old one is gone.
        let still: HashSet<PackageId> = self.files[l].values().copied().collect();
        let gone: Vec<PackageId> = replaced_ids
            .into_iter()
            .filter(|id| !still.contains(id) && ids(&self.sets[l]).contains(id))
            .collect();
        if !gone.is_empty() {
            self.vanish(l, gone, "replaced in packages/");
        }
    }

    fn install(&mut self, l: usize, new: Vec<Candidate>, available: &[Candidate]) -> bool {
        let spec = &self.stack.layers[l];
        let files: Vec<String> = new
            .iter()
            .map(|c| {
                c.path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let names = self.stack.names();
        match plan(
            &names,
            &self.sets,
            l,
            available,
            Change::Install {
                packages: new,
                only_newer: true,
            },
        ) {
            Ok(p) => {
                for s in &p.skipped {
                    info!(layer = %spec.name, "not activated: {s}");
                }
                for f in &files {
                    self.waiting[l].remove(OsStr::new(f));
                }
                self.commit(l, p, &format!("dropped {}", files.join(", ")));
                true
            }
            Err(r) => {
                warn!(layer = %spec.name, "refused {}: {r}; the view is unchanged (retried when the set changes)", files.join(", "));
                for f in files {
                    self.waiting[l].insert(OsString::from(f));
                }
                false
            }
        }
    }

    fn remove_files(&mut self, l: usize, names: &[OsString]) {
        if names.is_empty() {
            return;
        }
        // Nothing in packages/ changed since the set last changed from outside: these
        // deletions came before it (pkgtool moving replaced files out, say) and the set
        // chosen then already accounts for them.
        let dir = self.stack.layers[l].paths.packages();
        let dir_changed = std::fs::metadata(&dir).and_then(|m| m.modified()).ok();
        if let (Some(d), Some(settled)) = (dir_changed, self.settled[l]) {
            if d <= settled {
                for name in names {
                    self.pending[l].remove(name);
                    self.waiting[l].remove(name);
                    if !dir.join(name).exists() {
                        self.files[l].remove(name);
                    }
                }
                debug!(layer = %self.stack.layers[l].name, "{} deletions from before the set last changed: not deactivations", names.len());
                return;
            }
        }
        let mut gone_ids = Vec::new();
        let mut gone_names = Vec::new();
        for name in names {
            self.pending[l].remove(name);
            self.waiting[l].remove(name);
            // Still there (removed and re-added within the batch)? Then it is an add.
            if self.stack.layers[l].paths.packages().join(name).exists() {
                continue;
            }
            if let Some(id) = self.files[l].remove(name) {
                gone_ids.push(id);
                gone_names.push(name.to_string_lossy().into_owned());
            }
        }
        let still: HashSet<PackageId> = self.files[l].values().copied().collect();
        let active = ids(&self.sets[l]);
        let gone: Vec<PackageId> = gone_ids
            .into_iter()
            .filter(|id| !still.contains(id) && active.contains(id))
            .collect();
        if !gone.is_empty() {
            self.vanish(l, gone, &format!("deleted {}", gone_names.join(", ")));
        }
    }

    fn vanish(&mut self, l: usize, gone: Vec<PackageId>, reason: &str) {
        let names = self.stack.names();
        match plan(&names, &self.sets, l, &[], Change::Vanished(gone)) {
            Ok(p) => {
                for b in &p.broken {
                    warn!(layer = %self.stack.layers[l].name, "also deactivated: {b}");
                }
                self.commit(l, p, reason);
            }
            Err(r) => error!(layer = %self.stack.layers[l].name, "cannot deactivate: {r}"),
        }
    }

    /// Records a plan as generations and makes it current; on a write error nothing
    /// changes.
    fn commit(&mut self, l: usize, p: Plan, reason: &str) {
        if p.is_empty() {
            return;
        }
        match self.stack.commit(&p, reason, &now_utc()) {
            Ok(gens) => {
                for (layer, g) in gens {
                    info!(layer = %self.stack.layers[layer].name, generation = g, "{reason}: {}", p.summary());
                    self.seen[layer] = list_mtime(&self.stack, layer);
                    self.lists[layer] =
                        generation::read_list(&self.stack.layers[layer].paths.active_list())
                            .ok()
                            .flatten();
                }
                self.sets = p.sets;
            }
            Err(e) => error!(
                layer = %self.stack.layers[l].name,
                "cannot record the new set ({reason}): {}; the view is unchanged",
                one_line(&e)
            ),
        }
    }

    /// Opens every package kept in the layers' pools (every generation's packages), so a
    /// rollback to any kept generation needs no signature checks when it comes. Run once
    /// the mount is live; in parallel.
    pub fn warm(&mut self) {
        for l in 0..self.stack.layers.len() {
            let files: Vec<PathBuf> = std::fs::read_dir(self.stack.layers[l].paths.pool())
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "hpkg"))
                .collect();
            self.opener.preload(&files);
        }
    }

    /// Is `name` a file the watcher should report for `packages/`?
    pub fn watches(name: &OsStr) -> bool {
        name.to_str().is_some_and(is_package_name)
    }
}
