//! The live package set of a mount: at mount, each layer's `state/active.list` (the first
//! generation is created from `packages/` if there is none); afterwards, after every batch
//! of watcher events (and on a retry timer while something is left to retry), each layer
//! is reconciled with the disk by the package-set library (`pkgset`, the same code as
//! `pkgtool`): an `active.list` replaced from outside is checked and adopted or refused,
//! and [`pkgset::reconcile`] decides what the files of `packages/` mean (drops, updates in
//! place, deletions). Each change becomes a new generation and a new [`View`], or is
//! refused with a log line and the view stays as it was.
//!
//! Events only say *when* to look and whether a file was closed by its writer; what changed
//! is read from the disk, so events lost, late or in any order cost nothing but a look.
//!
//! Packages keep their slot (and so their inode numbers) for as long as the mount lives,
//! merged directories keep their numbers by path ([`DirInos`]): a switch changes only the
//! inodes of what really changed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use format::active_list::ActiveList;
use format::archive::PackageId;
use pkgset::generation::{self, Lock};
use pkgset::owner::AsOwner;
use pkgset::reconcile;
use pkgset::stack::{is_package_name, list_of, now_utc, one_line};
use pkgset::{plan, Candidate, Change, Opener, Stack};
use tracing::{debug, error, info, warn};

use crate::fuse::package_has_xattrs;
use crate::view::ViewSlot;
use crate::view::{diff, DirInos, Inval, Layer, Package, Shine, View};
use crate::watch::Watcher;

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
    /// Events were lost, a watched directory came back, or a retry is due: compare
    /// everything with the disk.
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
    /// The list each layer's set was adopted from (put back when a list is refused).
    lists: Vec<Option<ActiveList>>,
    /// The exact text of each layer's `active.list` when the daemon last read or wrote it:
    /// any other text was written by someone else (pkgtool, a rollback, an admin).
    known: Vec<Option<String>>,
    /// Per layer: serves a pinned generation for this boot, changes nothing.
    frozen: Vec<bool>,
    /// Per layer: the list last written to `state/served`.
    published: Vec<Option<String>>,
    /// Per layer: file names events reported, and whether their writer closed them.
    hints: Vec<HashMap<String, bool>>,
    /// Messages logged already: a retry does not log them again.
    said: HashSet<String>,
    /// When the opener last forgot deleted files.
    pruned: std::time::Instant,
    /// Something is left to retry without a new event (a file that may still be written,
    /// a commit that failed, `packages/` or `state/` unreadable).
    retry: bool,
    /// How long the last `apply` waited for the layers' locks (a writer finishing: its
    /// fsyncs of the state directory).
    pub lock_wait: std::time::Duration,
}

/// The live loop (the daemon's thread `live`): publishes what the view serves, then, for
/// every batch of the watcher's events, applies it ([`Live::apply`]); a new view is swapped
/// into `slot`, the kernel is told which names and inodes changed ([`diff`]), and
/// `state/served` follows. Returns only if watching fails.
pub fn run(
    mut live: Live,
    mut watcher: Watcher,
    slot: &ViewSlot,
    xattrs: bool,
    invalidate: &dyn Fn(&Inval) -> std::io::Result<()>,
) {
    let t = Instant::now();
    live.publish_served();
    live.warm();
    debug!("kept generations' packages opened in {:?}", t.elapsed());
    loop {
        let batch = match watcher.next_batch(
            Duration::from_millis(20),
            Duration::from_millis(500),
            live.needs_retry().then_some(Duration::from_secs(1)),
        ) {
            Ok(b) => b,
            Err(e) => {
                error!("watching the layers failed: {e}; live updates stop");
                return;
            }
        };
        let t = Instant::now();
        match live.apply(batch) {
            Ok(Some(view)) => {
                let old = slot.swap(view);
                let new = slot.load();
                if !xattrs {
                    warn_unserved_xattrs(&old, &new);
                }
                log_conflicts(&new);
                let inval = diff(&old, &new);
                debug!("diff in {:?}", t.elapsed());
                for i in &inval {
                    // ENOENT: the kernel had nothing cached for it.
                    let _ = invalidate(i);
                }
                info!(
                    packages = new.packages().len(),
                    invalidated = inval.len(),
                    "view switched in {} ms ({} ms of it waiting for the writer to release the layer lock)",
                    t.elapsed().as_millis(),
                    live.lock_wait.as_millis()
                );
            }
            Ok(None) => {}
            Err(e) => error!("cannot apply the layers' changes: {}", one_line(e.as_ref())),
        }
        live.publish_served();
    }
}

/// Names the packages activated by a switch whose extended attributes the mount does not
/// serve (it was mounted without any; the kernel remembers that for the whole mount).
fn warn_unserved_xattrs(old: &View, new: &View) {
    let before: std::collections::HashSet<u32> = old.packages().iter().map(|p| p.slot).collect();
    for p in new.packages() {
        if !before.contains(&p.slot) && package_has_xattrs(p) {
            warn!(
                package = %p.label(),
                "has extended attributes, which this mount does not serve (it was mounted \
                 when no package had any); remount, or mount with -o xattrs, to see them"
            );
        }
    }
}

/// Warns of each path two packages of one layer both provide.
pub fn log_conflicts(view: &View) {
    for c in view.conflicts() {
        warn!(
            layer = %c.layer,
            path = %c.path,
            "conflict: {} and {} both provide it; showing {}",
            c.winner, c.loser, c.winner
        );
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
    /// Then each layer is reconciled: files dropped or deleted while no daemon watched
    /// count like any other (as Haiku's package daemon activates at boot what was copied
    /// in while the system was off).
    ///
    /// `pin`: a layer and the generation it serves for this boot whatever its
    /// `active.list` says (`-o boot`: pinned on the kernel command line, or a fallback);
    /// that layer is left alone until the daemon ends.
    ///
    /// `opener` holds the packages opened (and checked) so far, so that a boot's choice of
    /// generation, which opened them, does not pay for it twice.
    pub fn start(
        stack: Stack,
        opener: Opener,
        shine: Shine,
        pin: Option<(usize, u64)>,
    ) -> anyhow::Result<(Live, View)> {
        let layers = stack.layers.iter().map(|l| Layer::new(&l.name)).collect();
        let n = stack.layers.len();
        let mut live = Live {
            layers,
            opener,
            shine,
            inos: DirInos::default(),
            slots: HashMap::new(),
            packages: HashMap::new(),
            sets: Vec::new(),
            lists: Vec::new(),
            known: vec![None; n],
            frozen: vec![false; n],
            published: vec![None; n],
            hints: vec![HashMap::new(); n],
            said: HashSet::new(),
            retry: false,
            pruned: std::time::Instant::now(),
            lock_wait: std::time::Duration::ZERO,
            stack,
        };
        let locks = live.lock_all();
        let names = live.stack.names();
        for l in 0..n {
            let spec = live.stack.layers[l].clone();
            if locks.get(l).is_some_and(Option::is_none) {
                // Its state cannot be written: serve its list as it is, change nothing.
                let _as = AsOwner::enter(&spec.paths);
                let (set, list) = match live.stack.load_active(l, &mut live.opener) {
                    Ok(ls) => (ls.packages, ls.list),
                    Err(_) => (Vec::new(), None),
                };
                live.sets.push(set);
                live.lists.push(list);
                continue;
            }
            // A user's layer is read and written with the user's rights (pkgset::owner).
            let _as = AsOwner::enter(&spec.paths);
            if let Some((_, g)) = pin.filter(|p| p.0 == l) {
                let list = generation::read_list(&spec.paths.generation_list(g))?
                    .ok_or_else(|| anyhow::anyhow!("layer {}: no generation {g}", spec.name))?;
                let set = live
                    .stack
                    .open_list(l, &list, &mut live.opener)
                    .map_err(|e| {
                        anyhow::anyhow!("layer {}: generation {g}: {}", spec.name, one_line(&e))
                    })?;
                info!(layer = %spec.name, "serving generation {g} for this boot: changes to the layer take effect at the next boot");
                live.known[l] = read_text(&spec.paths.active_list());
                live.frozen[l] = true;
                live.sets.push(set);
                live.lists.push(Some(list));
                continue;
            }
            let pk = spec.paths.packages();
            if let Err(e) = std::fs::create_dir_all(&pk) {
                warn!(layer = %spec.name, "cannot create {}: {e}", pk.display());
            }
            match generation::unshare_pool(&spec.paths) {
                Ok(0) => {}
                Ok(k) => {
                    info!(layer = %spec.name, "pool: {k} package files shared an inode with packages/; each is a copy of its own now")
                }
                Err(e) => warn!(layer = %spec.name, "pool: {}", one_line(&e)),
            }
            live.known[l] = read_text(&spec.paths.active_list());
            let (set, list) = match live.stack.load_active(l, &mut live.opener) {
                Ok(ls) if ls.list.is_some() => (ls.packages, ls.list),
                Ok(_) => {
                    // (The files that are refused are said by the reconcile that follows.)
                    let (cands, _refused) = live.stack.scan(l, &mut live.opener)?;
                    let mut cur = live.sets.clone();
                    cur.push(Vec::new());
                    let mut p = plan(&names, &cur, l, &[], Change::Initial(cands))
                        .map_err(|r| anyhow::anyhow!("layer {}: {r}", spec.name))?;
                    for s in &p.skipped {
                        warn!(layer = %spec.name, "not activated: {s}");
                    }
                    if p.is_empty() {
                        (Vec::new(), None)
                    } else {
                        let gens = live.stack.commit_first(&mut p, &mut live.opener)?;
                        info!(layer = %spec.name, generation = ?gens.first().map(|g| g.1),
                              "first generation: {}", p.summary());
                        live.known[l] = read_text(&spec.paths.active_list());
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
        // At mount no writer is known to be at work: every file counts as complete (one
        // still being copied is refused now and decided again when its writer closes it).
        for l in 0..n {
            let dir = live.stack.layers[l].paths.packages();
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Ok(name) = e.file_name().into_string() {
                    live.hints[l].insert(name, true);
                }
            }
        }
        let locked: Vec<bool> = locks.iter().map(|l| l.is_some()).collect();
        live.reconcile_all(&locked);
        drop(locks);
        let view = live.build_view();
        Ok((live, view))
    }

    /// The newest generation of layer `l` whose packages all open.
    fn fallback(&mut self, l: usize) -> (Vec<Candidate>, Option<ActiveList>) {
        let spec = self.stack.layers[l].clone();
        let numbers = generation::generation_numbers(&spec.paths).unwrap_or_default();
        let mut cur = self.sets.clone();
        cur.truncate(l);
        cur.push(Vec::new());
        match reconcile::newest_whole(&self.stack, l, &cur, &numbers, &mut self.opener) {
            Ok(c) => {
                warn!(layer = %spec.name, "serving generation {} instead", c.n);
                let list = generation::read_list(&spec.paths.generation_list(c.n))
                    .ok()
                    .flatten();
                (c.plan.sets[l].clone(), list)
            }
            Err(_) => self.degraded(l),
        }
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

    /// Takes every layer's lock, in layer order (so two lockers never wait on each other).
    /// A layer whose lock cannot be taken (its `state/` is not a directory of its own,
    /// say) gets `None`, said once: it is left as it is and looked at again later, and the
    /// other layers go on.
    fn lock_all(&mut self) -> Vec<Option<Lock>> {
        let mut v = Vec::new();
        for l in 0..self.stack.layers.len() {
            match Lock::acquire(&self.stack.layers[l].paths) {
                Ok(lock) => v.push(Some(lock)),
                Err(e) => {
                    self.retry = true;
                    self.warn_once(
                        l,
                        format!(
                            "cannot lock the layer's state ({}): its set is left as it is",
                            one_line(&e)
                        ),
                    );
                    v.push(None);
                }
            }
        }
        v
    }

    /// True if something is left to retry without a new event: the watcher should send a
    /// [`Event::Rescan`] after a while.
    pub fn needs_retry(&self) -> bool {
        self.retry
    }

    /// Logs `msg` at warning level, once (until a different thing is said about it).
    fn warn_once(&mut self, layer: usize, msg: String) {
        if self.said.len() > 10_000 {
            self.said.clear();
        }
        if self.said.insert(format!("{layer}\0{msg}")) {
            warn!(layer = %self.stack.layers[layer].name, "{msg}");
        }
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
        let n = self.stack.layers.len();
        let removals = events
            .iter()
            .any(|e| matches!(e, Event::Removed { .. } | Event::Rescan));
        for e in events {
            match e {
                Event::Added {
                    layer,
                    name,
                    complete,
                } if layer < n => {
                    if let Ok(name) = name.into_string() {
                        *self.hints[layer].entry(name).or_insert(false) |= complete;
                    }
                }
                Event::Removed { layer, name } if layer < n => {
                    if let Some(name) = name.to_str() {
                        self.hints[layer].remove(name);
                    }
                }
                _ => {}
            }
        }
        self.retry = false;
        let locks = self.lock_all();
        self.lock_wait = t0.elapsed();
        debug!("locked in {:?}", t0.elapsed());
        let before: Vec<HashSet<PackageId>> = self.sets.iter().map(|s| ids(s)).collect();
        let locked: Vec<bool> = locks.iter().map(|l| l.is_some()).collect();
        self.reconcile_all(&locked);
        // Forget files that are gone or changed: an archive held open for a deleted file
        // keeps its disk space allocated (on a full disk, the space a deletion frees).
        // A stat per known file: after deletions, else now and then.
        if removals || self.pruned.elapsed() > std::time::Duration::from_secs(5) {
            self.opener.prune();
            self.pruned = std::time::Instant::now();
        }
        let whole = self.adopt_whole_copies();
        let after: Vec<HashSet<PackageId>> = self.sets.iter().map(|s| ids(s)).collect();
        if before == after && !whole {
            return Ok(None);
        }
        debug!("changes applied in {:?}", t0.elapsed());
        let v = self.build_view();
        debug!("view built in {:?}", t0.elapsed());
        Ok(Some(v))
    }

    /// Serves a thin active package from its whole copy once `pkgtool fetch` has put one
    /// in its place (same id, a new file): its reads then need no repository. The view
    /// keeps the package's slot, so inode numbers and the kernel's caches stay valid.
    /// True if any was adopted.
    fn adopt_whole_copies(&mut self) -> bool {
        let mut any = false;
        for l in 0..self.sets.len() {
            if !self.sets[l].iter().any(|c| c.archive.is_thin()) {
                continue;
            }
            let spec = self.stack.layers[l].clone();
            let _as = AsOwner::enter(&spec.paths);
            for c in self.sets[l].iter_mut().filter(|c| c.archive.is_thin()) {
                match self.opener.open(&c.path) {
                    Ok(a) if !a.is_thin() && a.id() == c.id() => {
                        info!(layer = %spec.name, package = %c.label(), "now whole on disk: served from {}, no repository needed", c.path.display());
                        c.archive = a;
                        self.packages.remove(&(l, c.id()));
                        any = true;
                    }
                    _ => {}
                }
            }
        }
        any
    }

    /// Reconciles every layer, lowest first, until nothing more moves (a change in one
    /// layer can let a waiting drop of another in). The caller holds the locks.
    fn reconcile_all(&mut self, locked: &[bool]) {
        let n = self.stack.layers.len();
        for round in 0..=n {
            let before: Vec<HashSet<PackageId>> = self.sets.iter().map(|s| ids(s)).collect();
            let frozen = self.frozen.clone();
            for l in (0..n).filter(|&l| locked[l] && !frozen[l]) {
                if round == 0 {
                    self.adopt_list(l);
                }
                self.reconcile_files(l);
            }
            if self.sets.iter().map(|s| ids(s)).collect::<Vec<_>>() == before {
                break;
            }
        }
    }

    /// Writes each layer's served list to `state/served` when it changed since the last
    /// time (`pkgtool update` waits for the view to serve the generation it switched to
    /// before it starts services). A layer pinned for this boot publishes nothing: a
    /// switch takes effect at the next boot, and a waiting pkgtool says so.
    pub fn publish_served(&mut self) {
        for l in 0..self.stack.layers.len() {
            if self.frozen[l] {
                continue;
            }
            let text = self.lists[l].as_ref().map(|list| list.to_text());
            if text.is_none() || text == self.published[l] {
                continue;
            }
            let spec = self.stack.layers[l].clone();
            let _as = AsOwner::enter(&spec.paths);
            let body = text.clone().unwrap_or_default();
            match write_served(&spec.paths.served(), body.as_bytes()) {
                Ok(()) => self.published[l] = text,
                Err(e) => self.warn_once(l, format!("cannot write state/served: {}", one_line(&e))),
            }
        }
    }

    /// Decides what layer `l`'s `packages/` means for the set ([`reconcile`]) and commits it.
    fn reconcile_files(&mut self, l: usize) {
        let spec = self.stack.layers[l].clone();
        let _as = AsOwner::enter(&spec.paths);
        let obs = match reconcile::observe(
            &self.stack,
            l,
            &mut self.opener,
            &self.hints[l],
            SystemTime::now(),
        ) {
            Ok(o) => o,
            Err(e) => {
                self.retry = true;
                self.warn_once(
                    l,
                    format!("cannot read the layer's state: {}", one_line(&e)),
                );
                return;
            }
        };
        for name in &obs.ignored {
            self.warn_once(
                l,
                format!("packages/{name}: not a package file (*.hpkg): ignored"),
            );
        }
        let names = self.stack.names();
        let d = reconcile::decide(&names, &self.sets, l, &obs);
        if let Some(why) = &d.unreadable {
            self.retry = true;
            self.warn_once(l, format!("packages/ cannot be read ({why}): nothing is activated or deactivated until it can"));
            return;
        }
        for (f, why) in &d.refused {
            self.warn_once(l, format!("refused {f}: {why}; the view is unchanged"));
        }
        for (f, why) in &d.waiting {
            self.warn_once(l, format!("refused {f}: {why}; the view is unchanged (decided again when the set changes)"));
        }
        for f in &d.pending {
            debug!(layer = %spec.name, "{f}: not readable yet; waiting for its writer");
        }
        self.retry |= d.retry();
        let pending: HashSet<&String> = d.pending.iter().collect();
        self.hints[l].retain(|name, _| pending.contains(name));
        for b in &d.plan.broken {
            warn!(layer = %spec.name, "also deactivated: {b}");
        }
        for s in &d.plan.skipped {
            info!(layer = %spec.name, "not activated: {s}");
        }
        let mut d = d;
        match reconcile::commit(&self.stack, l, &mut d, &now_utc(), &mut self.opener) {
            Ok(gens) => {
                for (layer, g) in gens {
                    info!(layer = %self.stack.layers[layer].name, generation = g, "{}: {}", d.reason, d.plan.summary());
                    let path = self.stack.layers[layer].paths.active_list();
                    self.known[layer] = read_text(&path);
                    self.lists[layer] = generation::read_list(&path).ok().flatten();
                }
                if !d.plan.is_empty() {
                    self.sets = d.plan.sets;
                }
            }
            Err(e) => {
                // Nothing recorded, or the generation without the record: either way the
                // next look decides the same files again.
                self.retry = true;
                if d.plan.is_empty() {
                    self.warn_once(l, format!("cannot record packages/: {}", one_line(&e)));
                } else {
                    error!(
                        layer = %spec.name,
                        "cannot record the new set ({}): {}; the view is unchanged (retried)",
                        d.reason,
                        one_line(&e)
                    );
                }
            }
        }
    }

    /// If layer `l`'s `active.list` on disk is not the text the daemon last read or wrote,
    /// someone else wrote it: switch to the set it names (checked), recording it as a
    /// generation if it is not one; refuse otherwise and put the current list back.
    fn adopt_list(&mut self, l: usize) {
        let spec = self.stack.layers[l].clone();
        let _as = AsOwner::enter(&spec.paths);
        let path = spec.paths.active_list();
        let text = match generation::read_state_file(&path, format::active_list::MAX_LEN as u64) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.lists[l].is_some() {
                    warn!(layer = %spec.name, "state/active.list was deleted; keeping the active set and writing it back");
                    self.restore_list(l, None);
                }
                return;
            }
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotADirectory {
                    // state/ is not a directory: nothing to adopt; retried once it is.
                    self.retry = true;
                    return;
                }
                warn!(layer = %spec.name, "refused state/active.list: {e}");
                self.restore_list(l, Some(&path));
                return;
            }
        };
        if self.known[l].as_deref() == Some(text.as_str()) {
            return;
        }
        self.known[l] = Some(text.clone());
        let disk = match ActiveList::parse(&text) {
            Ok(d) => d,
            Err(e) => {
                warn!(layer = %spec.name, "refused state/active.list: {e}");
                self.restore_list(l, Some(&path));
                return;
            }
        };
        let t0 = std::time::Instant::now();
        let opened = if list_of(&self.sets[l]).same_packages(&disk) {
            Ok(Vec::new())
        } else {
            self.stack
                .open_list(l, &disk, &mut self.opener)
                .map_err(|e| one_line(&e))
        };
        let recorded = disk.generation().and_then(|g| {
            generation::read_list(&spec.paths.generation_list(g))
                .ok()
                .flatten()
        });
        debug!(layer = %spec.name, "list opened in {:?}", t0.elapsed());
        let names = self.stack.names();
        match reconcile::adopt(&names, &self.sets, l, &disk, opened, recorded.as_ref()) {
            reconcile::Adopt::Same => self.lists[l] = Some(disk),
            reconcile::Adopt::Switch { mut plan, record } => {
                let gen = if record {
                    match self.stack.commit_pooled(
                        &mut plan,
                        "active.list replaced",
                        &now_utc(),
                        &mut self.opener,
                    ) {
                        Ok(g) => g.first().map(|g| g.1),
                        Err(e) => {
                            self.retry = true;
                            self.known[l] = None;
                            error!(layer = %spec.name, "cannot record the new set: {}", one_line(&e));
                            return;
                        }
                    }
                } else {
                    disk.generation()
                };
                info!(layer = %spec.name, generation = ?gen, "switched: {}", plan.summary());
                self.known[l] = read_text(&path);
                self.lists[l] = generation::read_list(&path).ok().flatten();
                self.sets[l] = plan.sets[l].clone();
            }
            reconcile::Adopt::Refuse { reason } => {
                warn!(layer = %spec.name, "refused state/active.list: {reason}; the view is unchanged");
                self.restore_list(l, Some(&path));
            }
        }
    }

    /// Puts the current set's list back as `active.list`, keeping a refused one as
    /// `active.list.refused`.
    fn restore_list(&mut self, l: usize, refused: Option<&std::path::Path>) {
        let spec = &self.stack.layers[l];
        let _as = AsOwner::enter(&spec.paths);
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
        let text = list.to_text();
        match generation::write_atomic(&spec.paths.active_list(), text.as_bytes()) {
            Ok(()) => self.known[l] = Some(text),
            Err(e) => {
                self.retry = true;
                error!(layer = %spec.name, "cannot restore state/active.list: {}", one_line(&e));
            }
        }
    }

    /// Opens every package kept in the layers' pools (every generation's packages), so a
    /// rollback to any kept generation needs no signature checks when it comes. Run once
    /// the mount is live; in parallel.
    pub fn warm(&mut self) {
        for l in 0..self.stack.layers.len() {
            let _as = AsOwner::enter(&self.stack.layers[l].paths);
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

    /// Is `name` a file the watcher should report for `packages/`? (Every name that is
    /// not hidden: one that is not a package file is worth a notice.)
    pub fn watches(name: &OsStr) -> bool {
        name.to_str()
            .is_some_and(|n| is_package_name(n) || !n.starts_with('.'))
    }
}

/// A state file's text, if it is a readable regular file.
/// Replaces `state/served` (through `served.new`, never following a link). No fsync: it
/// says what a running daemon serves, which a crash makes moot; and no `.tmp-*` name, which
/// would belong to the writers that hold the layer's lock.
fn write_served(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_file_name("served.new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&tmp)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "state/served.new is not a regular file",
        ));
    }
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn read_text(path: &std::path::Path) -> Option<String> {
    generation::read_state_file(path, format::active_list::MAX_LEN as u64).ok()
}
