//! The reconcile step: what the files of a layer's `packages/` mean for its active set.
//! The daemon runs it after every batch of file events, at mount, and on a retry timer;
//! pkgtool runs it before every change it makes (and `status` shows what it would do), so
//! both decide drops, replacements and deletions by the same rules.
//!
//! ```text
//! observe(stack, layer, opener, hints, now)   packages/ + state/seen ─► Observed   (I/O)
//! decide(names, sets, layer, &Observed)       ─► Decision { plan, seen, waiting, ... } (pure)
//! ```
//!
//! The rules compare what `packages/` holds with [`Seen`], the record of what the set has
//! already accounted for (written in the same locked step as every generation), never
//! timestamps: a change made in the same clock tick as another, events that arrive late or
//! in any order, and a writer killed half-way all come out the same.
//!
//! - A file holding a package the record does not name under that file name is a drop:
//!   activated if the set stays valid and it is newer than the active package of its name
//!   (else left inactive, decided); refused by the set (a requirement not there yet), it
//!   waits and is decided again at every later reconcile.
//! - A file overwritten in place by another version of the package it held
//!   (`cp v2.hpkg packages/pk.hpkg`) is an update: the version it holds now replaces the
//!   old one, older or newer.
//! - A file named in the record that is gone is a deletion: its package is deactivated
//!   (with whatever is then left broken) unless another file still holds it.
//! - A file that does not open is refused if it is complete, or pending while a writer may
//!   still be at it (no close seen and changed less than [`SETTLE`] ago); either way it
//!   changes nothing: the package it held before stays active, from the pool.
//! - When `packages/` cannot be read (deleted, replaced by a file), nothing is decided.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use format::archive::PackageId;

use crate::generation::{Seen, StateError};
use crate::set::Candidate;
use crate::stack::{is_package_name, plan, Change, Opener, Plan, Stack};

/// How long a file that does not open must have been left alone before it is taken as
/// complete when no close of it was seen (a copy in progress writes more often than that).
pub const SETTLE: Duration = Duration::from_secs(2);

/// One file of `packages/`, as observed.
#[derive(Debug, Clone)]
pub enum FileState {
    /// It opens, and is signed by a trusted key.
    Package {
        /// The package.
        cand: Candidate,
        /// Its change time (ctime): only used for a layer with no [`Seen`] record yet.
        changed: SystemTime,
    },
    /// It does not open, or is not trusted.
    Unusable {
        /// Why.
        reason: crate::stack::OpenError,
        /// Taken as complete (closed after writing, or left alone for [`SETTLE`]).
        complete: bool,
    },
}

/// What a layer's `packages/` and `state/seen` hold now.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Each package-named file (`*.hpkg`, not hidden), by name; `Err` if `packages/` could
    /// not be read.
    pub files: Result<BTreeMap<String, FileState>, String>,
    /// Names in `packages/` that are not package files (for a notice).
    pub ignored: Vec<String>,
    /// The record (`None`: the layer has none yet).
    pub seen: Option<Seen>,
    /// The change time of `active.list`, for a layer with no record yet: files changed
    /// before it were there when its set was chosen.
    pub list_written: Option<SystemTime>,
}

/// Reads layer `l`'s `packages/` and record. `complete` says, for file names whose events
/// were seen, whether a writer closed them (true) or only created them (false); other
/// files count as complete once unchanged for [`SETTLE`] before `now`.
pub fn observe(
    stack: &Stack,
    l: usize,
    opener: &mut Opener,
    complete: &HashMap<String, bool>,
    now: SystemTime,
) -> Result<Observed, StateError> {
    let paths = &stack.layers[l].paths;
    let _as = crate::owner::AsOwner::enter(paths);
    let seen = Seen::read(paths)?;
    let list_written = fs::metadata(paths.active_list())
        .ok()
        .map(|m| time(m.ctime(), m.ctime_nsec()));
    let dir = paths.packages();
    let mut ignored = Vec::new();
    let own_dir = fs::symlink_metadata(&dir).map(|m| m.is_dir());
    let files = match own_dir.and_then(|own| {
        if own {
            dir_names(&dir)
        } else {
            Err(std::io::Error::other(
                "not a directory of the layer's own (a link or a file)",
            ))
        }
    }) {
        Err(e) => Err(format!("{}: {e}", dir.display())),
        Ok(names) => {
            let mut files = BTreeMap::new();
            let paths: Vec<PathBuf> = names
                .iter()
                .filter(|n| is_package_name(n))
                .map(|n| dir.join(n))
                .collect();
            opener.preload(&paths);
            for name in names {
                if !is_package_name(&name) {
                    if !name.starts_with('.') {
                        ignored.push(name);
                    }
                    continue;
                }
                let path = dir.join(&name);
                let md = fs::symlink_metadata(&path).ok();
                let state = match opener.open(&path) {
                    Ok(archive) => FileState::Package {
                        cand: Candidate {
                            layer: l,
                            path,
                            archive,
                        },
                        changed: md
                            .map(|m| time(m.ctime(), m.ctime_nsec()))
                            .unwrap_or(SystemTime::UNIX_EPOCH),
                    },
                    Err(reason) => {
                        let quiet = md
                            .map(|m| {
                                time(m.mtime(), m.mtime_nsec()).max(time(m.ctime(), m.ctime_nsec()))
                            })
                            .is_some_and(|t| now.duration_since(t).is_ok_and(|d| d >= SETTLE));
                        FileState::Unusable {
                            reason,
                            complete: complete.get(&name).copied().unwrap_or(quiet),
                        }
                    }
                };
                files.insert(name, state);
            }
            Ok(files)
        }
    };
    Ok(Observed {
        files,
        ignored,
        seen,
        list_written,
    })
}

fn dir_names(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    Ok(v)
}

fn time(s: i64, ns: i64) -> SystemTime {
    if s >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(s as u64, ns.clamp(0, 999_999_999) as u32)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// What the files of a layer mean for the set: the plan (empty if nothing changes), and
/// the record to write once the plan is committed.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// The change of every layer's set (empty: none).
    pub plan: Plan,
    /// For the generation's reason: `dropped a.hpkg; deleted b.hpkg`.
    pub reason: String,
    /// The record to write after the plan is committed.
    pub seen: Seen,
    /// True if `seen` differs from the record on disk (write it even if the plan is empty).
    pub seen_changed: bool,
    /// Drops the set refused (file name, why): decided again at the next reconcile.
    pub waiting: Vec<(String, String)>,
    /// Complete files that do not open (file name, why).
    pub refused: Vec<(String, String)>,
    /// Files that do not open yet and may still be being written.
    pub pending: Vec<String>,
    /// Why `packages/` was not looked at, if it was not.
    pub unreadable: Option<String>,
}

impl Decision {
    /// True if something must be looked at again later without a new event (a file that
    /// may still be being written).
    pub fn retry(&self) -> bool {
        !self.pending.is_empty()
    }
}

fn ids(set: &[Candidate]) -> HashSet<PackageId> {
    set.iter().map(|c| c.id()).collect()
}

/// Decides what layer `l`'s files mean for the stack's sets `sets` (one per layer, lowest
/// first). Pure: the same observation gives the same decision.
pub fn decide(names: &[String], sets: &[Vec<Candidate>], l: usize, obs: &Observed) -> Decision {
    let mut d = Decision::default();
    let files = match &obs.files {
        Ok(f) => f,
        Err(e) => {
            d.unreadable = Some(e.clone());
            d.seen = obs.seen.clone().unwrap_or_default();
            return d;
        }
    };
    let active = ids(&sets[l]);
    let record = match &obs.seen {
        Some(s) => s.clone(),
        None => legacy_record(files, &active, obs.list_written),
    };
    let held: HashSet<PackageId> = files
        .values()
        .filter_map(|f| match f {
            FileState::Package { cand, .. } => Some(cand.id()),
            FileState::Unusable { .. } => None,
        })
        .collect();
    let available: Vec<Candidate> = files
        .values()
        .filter_map(|f| match f {
            FileState::Package { cand, .. } => Some(cand.clone()),
            FileState::Unusable { .. } => None,
        })
        .collect();
    let name_of_active = |id: &PackageId| {
        sets[l]
            .iter()
            .find(|c| c.id() == *id)
            .map(|c| c.manifest().name.clone())
    };
    let mut updates: Vec<(String, Candidate)> = Vec::new();
    let mut drops: Vec<(String, Candidate)> = Vec::new();
    let mut gone: Vec<PackageId> = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    for (name, f) in files {
        match f {
            FileState::Package { cand, .. } => match record.files.get(name) {
                Some(id) if *id == cand.id() => {}
                Some(old) => {
                    // Overwritten in place by another package.
                    if name_of_active(old).as_deref() == Some(cand.manifest().name.as_str()) {
                        updates.push((name.clone(), cand.clone()));
                    } else {
                        drops.push((name.clone(), cand.clone()));
                        if active.contains(old) && !held.contains(old) {
                            gone.push(*old);
                        }
                    }
                }
                None => drops.push((name.clone(), cand.clone())),
            },
            FileState::Unusable { reason, complete } => {
                if *complete {
                    d.refused.push((name.clone(), reason.to_string()));
                } else {
                    d.pending.push(name.clone());
                }
            }
        }
    }
    for (name, id) in &record.files {
        if !files.contains_key(name) {
            deleted.push(name.clone());
            if active.contains(id) && !held.contains(id) && !gone.contains(id) {
                gone.push(*id);
            }
        }
    }
    let mut cur: Vec<Vec<Candidate>> = sets.to_vec();
    let mut broken = Vec::new();
    let mut skipped = Vec::new();
    let mut decided: HashSet<String> = HashSet::new();
    let mut dropped_names: Vec<String> = Vec::new();
    for (batch, only_newer) in [(updates, false), (drops, true)] {
        if batch.is_empty() {
            continue;
        }
        let attempt = |cur: &[Vec<Candidate>], b: &[(String, Candidate)]| {
            plan(
                names,
                cur,
                l,
                &available,
                Change::Install {
                    packages: b.iter().map(|(_, c)| c.clone()).collect(),
                    only_newer,
                },
            )
        };
        // The whole batch at once (an app with its libraries); refused, one by one, so one
        // bad file does not keep the good ones out.
        let mut accept = |cur: &mut Vec<Vec<Candidate>>, p: Plan, b: &[(String, Candidate)]| {
            for (n, c) in b {
                decided.insert(n.clone());
                if p.added.contains(&c.label()) {
                    dropped_names.push(n.clone());
                }
            }
            skipped.extend(p.skipped);
            broken.extend(p.broken);
            *cur = p.sets;
        };
        match attempt(&cur, &batch) {
            Ok(p) => accept(&mut cur, p, &batch),
            Err(r) if batch.len() == 1 => d.waiting.push((batch[0].0.clone(), r.to_string())),
            Err(_) => {
                for one in batch.chunks(1) {
                    match attempt(&cur, one) {
                        Ok(p) => accept(&mut cur, p, one),
                        Err(r) => d.waiting.push((one[0].0.clone(), r.to_string())),
                    }
                }
            }
        }
    }
    // A package replaced by a drop of the same name is gone already.
    gone.retain(|id| cur[l].iter().any(|c| c.id() == *id));
    if !gone.is_empty() {
        match plan(names, &cur, l, &[], Change::Vanished(gone)) {
            Ok(p) => {
                broken.extend(p.broken);
                cur = p.sets;
            }
            // Cannot happen (a cascade always ends in a valid set); keep the set.
            Err(r) => d.waiting.push(("(deletions)".into(), r.to_string())),
        }
    }
    d.plan = Plan::between(sets, cur, broken, skipped);
    let mut reasons = Vec::new();
    if !dropped_names.is_empty() {
        dropped_names.sort();
        dropped_names.dedup();
        reasons.push(format!("dropped {}", list_names(&dropped_names)));
    }
    if !deleted.is_empty() {
        reasons.push(format!("deleted {}", list_names(&deleted)));
    }
    d.reason = if reasons.is_empty() {
        "packages/ changed".into()
    } else {
        reasons.join("; ")
    };
    // The record: every file whose package is decided; a file waiting, refused or pending
    // keeps what it held before (so deleting it later still deactivates that).
    let mut seen = Seen::default();
    for (name, f) in files {
        let now_id = match f {
            FileState::Package { cand, .. }
                if decided.contains(name) || record.files.get(name) == Some(&cand.id()) =>
            {
                Some(cand.id())
            }
            _ => record.files.get(name).copied(),
        };
        if let Some(id) = now_id {
            seen.files.insert(name.clone(), id);
        }
    }
    d.seen_changed = obs.seen.as_ref() != Some(&seen);
    d.seen = seen;
    d
}

/// A record for a layer from before records: files holding an active package, and files
/// not changed since `active.list` was written (there when its set was chosen, like the
/// newer versions a rollback left inactive), are accounted for; newer ones are drops.
fn legacy_record(
    files: &BTreeMap<String, FileState>,
    active: &HashSet<PackageId>,
    list_written: Option<SystemTime>,
) -> Seen {
    let mut seen = Seen::default();
    for (name, f) in files {
        if let FileState::Package { cand, changed } = f {
            if active.contains(&cand.id()) || list_written.is_some_and(|t| *changed <= t) {
                seen.files.insert(name.clone(), cand.id());
            }
        }
    }
    seen
}

/// `a.hpkg, b.hpkg` (past 8 names: the first 8 and how many more).
fn list_names(names: &[String]) -> String {
    if names.len() > 8 {
        format!("{} and {} more", names[..8].join(", "), names.len() - 8)
    } else {
        names.join(", ")
    }
}

/// One whole reconcile of layer `l` for a tool with no events to go by (pkgtool):
/// observe, decide, commit. Returns the decision and the generations written.
pub fn once(
    stack: &Stack,
    l: usize,
    sets: &[Vec<Candidate>],
    opener: &mut Opener,
) -> Result<(Decision, Vec<(usize, u64)>), StateError> {
    let obs = observe(stack, l, opener, &HashMap::new(), SystemTime::now())?;
    let mut d = decide(&stack.names(), sets, l, &obs);
    let gens = commit(stack, l, &mut d, &crate::stack::now_utc(), opener)?;
    Ok((d, gens))
}

/// A generation chosen by [`newest_whole`].
#[derive(Debug)]
pub struct Chosen {
    /// Its number.
    pub n: u64,
    /// The change that switches to it.
    pub plan: Plan,
    /// The newer ones passed over, each with why.
    pub skipped: Vec<(u64, String)>,
}

/// The newest of `numbers` (tried newest first) whose generation of layer `l` opens whole
/// and keeps the stack valid, with the plan that switches to it; else why each failed.
/// The daemon's fallback at mount and `pkgtool rollback` choose alike.
pub fn newest_whole(
    stack: &Stack,
    l: usize,
    sets: &[Vec<Candidate>],
    numbers: &[u64],
    opener: &mut Opener,
) -> Result<Chosen, Vec<(u64, String)>> {
    let names = stack.names();
    let mut why = Vec::new();
    let mut ns = numbers.to_vec();
    ns.sort_unstable_by(|a, b| b.cmp(a));
    for n in ns {
        let paths = &stack.layers[l].paths;
        let reason = match crate::generation::read_list(&paths.generation_list(n)) {
            Ok(Some(list)) => match stack.open_list(l, &list, opener) {
                Ok(set) => match plan(&names, sets, l, &[], Change::Replace(set)) {
                    Ok(plan) => {
                        return Ok(Chosen {
                            n,
                            plan,
                            skipped: why,
                        })
                    }
                    Err(r) => format!("is refused: {r}"),
                },
                Err(e) => format!("does not open whole: {}", crate::stack::one_line(&e)),
            },
            Ok(None) => "is not there".to_string(),
            Err(e) => format!("cannot be read: {}", crate::stack::one_line(&e)),
        };
        why.push((n, reason));
    }
    Err(why)
}

/// What to do with an `active.list` someone else wrote (a rollback, pkgtool, an admin).
#[derive(Debug)]
pub enum Adopt {
    /// It names the packages already active: nothing changes.
    Same,
    /// Switch to it. `record`: it is not a generation yet (written by hand, or its
    /// packages differ from the generation it claims), so record it as a new one.
    Switch {
        /// The change.
        plan: Plan,
        /// Record it as a new generation.
        record: bool,
    },
    /// Refuse it whole: the current list goes back (the refused one is kept aside).
    Refuse {
        /// Why, one line.
        reason: String,
    },
}

/// Decides what an outside write of layer `l`'s `active.list` means: `disk` is the list,
/// `opened` its packages (or why they do not open; ignored when they are the active ones)
/// and `recorded` the list of the generation it claims, if there is one. Pure.
pub fn adopt(
    names: &[String],
    sets: &[Vec<Candidate>],
    l: usize,
    disk: &format::active_list::ActiveList,
    opened: Result<Vec<Candidate>, String>,
    recorded: Option<&format::active_list::ActiveList>,
) -> Adopt {
    if crate::stack::list_of(&sets[l]).same_packages(disk) {
        return Adopt::Same;
    }
    let set = match opened {
        Ok(s) => s,
        Err(reason) => return Adopt::Refuse { reason },
    };
    match plan(names, sets, l, &[], Change::Replace(set)) {
        Ok(plan) => Adopt::Switch {
            plan,
            record: !recorded.is_some_and(|r| r.same_packages(disk)),
        },
        Err(r) => Adopt::Refuse {
            reason: r.to_string(),
        },
    }
}

/// Commits a decision for layer `l`: its plan as generations (packages pointed at their
/// pool copies, see [`Stack::commit_pooled`]), then its record. Returns the generations
/// written (none if the plan is empty). The caller holds the layers' locks.
///
/// A crash between the two leaves the generation with the old record: the next reconcile
/// decides the same files again, finds their packages active, and changes nothing.
pub fn commit(
    stack: &Stack,
    l: usize,
    d: &mut Decision,
    time: &str,
    opener: &mut Opener,
) -> Result<Vec<(usize, u64)>, StateError> {
    let _as = crate::owner::AsOwner::enter(&stack.layers[l].paths);
    let gens = if d.plan.is_empty() {
        Vec::new()
    } else {
        stack.commit_pooled(&mut d.plan, &d.reason, time, opener)?
    };
    if d.seen_changed || !gens.is_empty() {
        d.seen.write(&stack.layers[l].paths)?;
        d.seen_changed = false;
    }
    Ok(gens)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::generation::{self, Lock};
    use crate::stack::LayerSpec;
    use crate::tests::{lab_keys, m, Lab};

    /// A one-layer stack in a temp dir with real signed packages, driven the way both
    /// binaries drive it: observe, decide, commit.
    pub(crate) struct Rig {
        pub(crate) lab: Lab,
        _dir: tempfile::TempDir,
        pub(crate) stack: Stack,
        pub(crate) opener: Opener,
        pub(crate) sets: Vec<Vec<Candidate>>,
    }

    impl Rig {
        pub(crate) fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            let stack = Stack::new(vec![LayerSpec::new("system", dir.path())]);
            fs::create_dir_all(stack.layers[0].paths.packages()).unwrap();
            Seen::default().write(&stack.layers[0].paths).unwrap();
            Rig {
                lab: Lab::new(),
                _dir: dir,
                stack,
                opener: Opener::new(lab_keys()),
                sets: vec![Vec::new()],
            }
        }

        pub(crate) fn pkgs(&self) -> PathBuf {
            self.stack.layers[0].paths.packages()
        }

        /// Builds a package and copies it into packages/ as `file`.
        pub(crate) fn drop_pkg(
            &mut self,
            file: &str,
            name: &str,
            version: &str,
            extra: &str,
        ) -> Candidate {
            let c = self
                .lab
                .pkg(0, &m(name, version, extra), &[(name, version)]);
            let tmp = self.pkgs().join(format!(".{file}.part"));
            fs::copy(&c.path, &tmp).unwrap();
            fs::rename(&tmp, self.pkgs().join(file)).unwrap();
            c
        }

        /// Overwrites `file` in place (same inode), as `cp` does.
        pub(crate) fn overwrite(&mut self, file: &str, bytes: &[u8]) {
            use std::io::Write;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(self.pkgs().join(file))
                .unwrap();
            f.write_all(bytes).unwrap();
        }

        fn observe_with(&mut self, hints: &[(&str, bool)], now: SystemTime) -> Observed {
            let hints = hints.iter().map(|(n, c)| (n.to_string(), *c)).collect();
            observe(&self.stack, 0, &mut self.opener, &hints, now).unwrap()
        }

        /// One reconcile, committed. Returns the decision.
        pub(crate) fn step(&mut self) -> Decision {
            self.step_with(&[], SystemTime::now())
        }

        fn step_with(&mut self, hints: &[(&str, bool)], now: SystemTime) -> Decision {
            let _lock = Lock::acquire(&self.stack.layers[0].paths).unwrap();
            let obs = self.observe_with(hints, now);
            let mut d = decide(&self.stack.names(), &self.sets, 0, &obs);
            commit(&self.stack, 0, &mut d, "t", &mut self.opener).unwrap();
            if !d.plan.is_empty() {
                self.sets = d.plan.sets.clone();
            }
            d
        }

        pub(crate) fn active(&self) -> Vec<String> {
            let mut v: Vec<String> = self.sets[0].iter().map(|c| c.label()).collect();
            v.sort();
            v
        }

        pub(crate) fn generation(&self) -> Option<u64> {
            generation::read_list(&self.stack.layers[0].paths.active_list())
                .unwrap()
                .and_then(|l| l.generation())
        }
    }

    #[test]
    fn a_drop_is_activated_once_and_served_from_the_pool() {
        let mut r = Rig::new();
        let a = r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        let d = r.step();
        assert_eq!(d.plan.added, ["a-1.0.0"]);
        assert_eq!(d.reason, "dropped a.hpkg");
        assert_eq!(r.generation(), Some(1));
        let pool = r.stack.layers[0].paths.pool_file(&a.id());
        assert_eq!(r.sets[0][0].path, pool);
        assert_eq!(
            r.sets[0][0].archive.path(),
            pool,
            "reads go to the pool's copy"
        );
        // The same disk again: nothing to do (no timestamps involved).
        let d = r.step();
        assert!(d.plan.is_empty() && !d.seen_changed, "{d:?}");
        assert_eq!(r.generation(), Some(1));
    }

    #[test]
    fn r11_overwriting_a_file_in_place_is_an_update_either_way() {
        let mut r = Rig::new();
        r.drop_pkg("pk.hpkg", "pk", "1.0.0", "");
        r.step();
        let v2 = r.lab.pkg(0, &m("pk", "2.0.0", ""), &[("pk", "2")]);
        r.overwrite("pk.hpkg", &fs::read(&v2.path).unwrap());
        let d = r.step();
        assert_eq!(r.active(), ["pk-2.0.0"], "{d:?}");
        // An older version over the active name: a downgrade, not an empty set.
        let v1 = fs::read(
            r.stack.layers[0]
                .paths
                .pool()
                .read_dir()
                .unwrap()
                .find_map(|e| {
                    let p = e.unwrap().path();
                    let a = format::archive::Archive::open(&p).ok()?;
                    (a.manifest().version.to_string() == "1.0.0").then_some(p)
                })
                .unwrap(),
        )
        .unwrap();
        r.overwrite("pk.hpkg", &v1);
        r.step();
        assert_eq!(r.active(), ["pk-1.0.0"]);
        assert_eq!(r.generation(), Some(3));
        // Every generation still opens whole.
        for n in 1..=3 {
            assert!(r.stack.opens_whole(0, n, &mut r.opener), "generation {n}");
        }
    }

    #[test]
    fn r11_garbage_over_an_active_file_is_refused_and_keeps_the_package() {
        let mut r = Rig::new();
        r.drop_pkg("pk.hpkg", "pk", "1.0.0", "");
        r.step();
        r.overwrite("pk.hpkg", b"garbage");
        let d = r.step_with(&[("pk.hpkg", true)], SystemTime::now());
        assert_eq!(d.refused.len(), 1, "{d:?}");
        assert!(d.plan.is_empty());
        assert_eq!(r.active(), ["pk-1.0.0"]);
        // Deleting the file later still removes what it held.
        fs::remove_file(r.pkgs().join("pk.hpkg")).unwrap();
        let d = r.step();
        assert_eq!(d.plan.removed, ["pk-1.0.0"]);
        assert_eq!(d.reason, "deleted pk.hpkg");
    }

    #[test]
    fn a_file_still_being_written_is_pending_until_it_settles() {
        let mut r = Rig::new();
        r.drop_pkg("pk.hpkg", "pk", "1.0.0", "");
        r.step();
        let v2 = r.lab.pkg(0, &m("pk", "2.0.0", ""), &[("pk", "2")]);
        let bytes = fs::read(&v2.path).unwrap();
        // Half-way through a copy over the active name: nothing changes, retry asked.
        r.overwrite("pk.hpkg", &bytes[..bytes.len() / 2]);
        let d = r.step_with(&[("pk.hpkg", false)], SystemTime::now());
        assert!(d.plan.is_empty() && d.retry(), "{d:?}");
        assert_eq!(d.pending, ["pk.hpkg"]);
        assert_eq!(r.active(), ["pk-1.0.0"]);
        // Without any event, a file left alone for SETTLE counts as complete (refused).
        let later = SystemTime::now() + SETTLE + Duration::from_secs(1);
        let d = r.step_with(&[], later);
        assert_eq!(d.refused.len(), 1);
        // The copy finishes: the update happens.
        r.overwrite("pk.hpkg", &bytes);
        r.step_with(&[("pk.hpkg", true)], SystemTime::now());
        assert_eq!(r.active(), ["pk-2.0.0"]);
    }

    #[test]
    fn an_app_and_its_library_may_arrive_in_either_order() {
        let req = r#""requires":[{"api":"lib","version":">=1"}]"#;
        for lib_first in [false, true] {
            let mut r = Rig::new();
            if lib_first {
                r.drop_pkg("lib.hpkg", "lib", "1.0.0", "");
                r.step();
                r.drop_pkg("app.hpkg", "app", "1.0.0", req);
            } else {
                r.drop_pkg("app.hpkg", "app", "1.0.0", req);
                let d = r.step();
                assert_eq!(d.waiting.len(), 1, "{d:?}");
                assert!(r.active().is_empty());
                // Still waiting, not forgotten: it is not in the record.
                r.drop_pkg("lib.hpkg", "lib", "1.0.0", "");
            }
            r.step();
            assert_eq!(
                r.active(),
                ["app-1.0.0", "lib-1.0.0"],
                "lib first: {lib_first}"
            );
        }
    }

    #[test]
    fn deleting_a_library_deactivates_what_needs_it() {
        let mut r = Rig::new();
        r.drop_pkg("lib.hpkg", "lib", "1.0.0", "");
        r.drop_pkg(
            "app.hpkg",
            "app",
            "1.0.0",
            r#""requires":[{"api":"lib","version":">=1"}]"#,
        );
        r.step();
        fs::remove_file(r.pkgs().join("lib.hpkg")).unwrap();
        let d = r.step();
        assert!(r.active().is_empty());
        assert_eq!(d.plan.broken.len(), 1, "{d:?}");
    }

    #[test]
    fn r11_packages_dir_gone_decides_nothing_and_recreated_it_works_again() {
        let mut r = Rig::new();
        r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        r.step();
        let pk = r.pkgs();
        fs::rename(&pk, pk.with_extension("away")).unwrap();
        let d = r.step();
        assert!(d.unreadable.is_some() && d.plan.is_empty());
        assert_eq!(r.active(), ["a-1.0.0"]);
        fs::create_dir(&pk).unwrap();
        r.drop_pkg("b.hpkg", "b", "1.0.0", "");
        let d = r.step();
        assert_eq!(r.active(), ["b-1.0.0"], "{d:?}");
        assert_eq!(d.reason, "dropped b.hpkg; deleted a.hpkg");
    }

    /// The old rule judged drops by timestamps; a drop in the same clock tick as a write of
    /// `active.list` was taken as old. The record decides it whatever the clocks say.
    #[test]
    fn r11_same_tick_drop_is_a_drop() {
        let mut r = Rig::new();
        r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        r.step();
        r.drop_pkg("b.hpkg", "b", "1.0.0", "");
        let mut obs = r.observe_with(&[], SystemTime::now());
        // Make b's change time exactly the list's, as in one coarse clock tick.
        let t = obs.list_written.unwrap();
        if let Ok(files) = &mut obs.files {
            if let Some(FileState::Package { changed, .. }) = files.get_mut("b.hpkg") {
                *changed = t;
            }
        }
        let d = decide(&r.stack.names(), &r.sets, 0, &obs);
        assert_eq!(d.plan.added, ["b-1.0.0"]);
        // Without a record (a layer from before records), files as old as the list are
        // taken as there when it was written: the migration rule.
        obs.seen = None;
        let d = decide(&r.stack.names(), &r.sets, 0, &obs);
        assert!(d.plan.is_empty(), "{d:?}");
    }

    /// pkgtool killed between its steps: the next reconcile finishes the job, never twice.
    #[test]
    fn interrupted_writers_are_finished_by_the_next_reconcile() {
        let mut r = Rig::new();
        r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        r.step();
        // Killed after copying b into packages/, before its generation: a drop.
        r.drop_pkg("b.hpkg", "b", "1.0.0", "");
        assert_eq!(r.step().plan.added, ["b-1.0.0"]);
        // Killed after the generation, before the record: nothing to do but the record.
        let c = r.drop_pkg("c.hpkg", "c", "1.0.0", "");
        let mut set = r.sets.clone();
        set[0].push(c);
        let mut p = Plan::between(&r.sets, set, vec![], vec![]);
        r.stack
            .commit_pooled(&mut p, "install +c-1.0.0", "t", &mut r.opener)
            .unwrap();
        r.sets = p.sets;
        let g = r.generation();
        let d = r.step();
        assert!(d.plan.is_empty(), "{d:?}");
        assert!(d.seen.files.contains_key("c.hpkg"));
        assert_eq!(r.generation(), g);
    }

    #[test]
    fn an_older_drop_is_decided_and_left_inactive() {
        let mut r = Rig::new();
        r.drop_pkg("v2.hpkg", "pk", "2.0.0", "");
        r.step();
        r.drop_pkg("v1.hpkg", "pk", "1.0.0", "");
        let d = r.step();
        assert!(d.plan.is_empty(), "{d:?}");
        assert!(d.seen.files.contains_key("v1.hpkg"));
        assert!(generation::Seen::read(&r.stack.layers[0].paths)
            .unwrap()
            .unwrap()
            .files
            .contains_key("v1.hpkg"));
        assert_eq!(r.active(), ["pk-2.0.0"]);
    }

    #[test]
    fn an_outside_list_is_adopted_recorded_or_refused_whole() {
        let mut r = Rig::new();
        r.drop_pkg("lib.hpkg", "lib", "1.0.0", "");
        r.step();
        r.drop_pkg(
            "app.hpkg",
            "app",
            "1.0.0",
            r#""requires":[{"api":"lib","version":">=1"}]"#,
        );
        r.step();
        let names = r.stack.names();
        let paths = r.stack.layers[0].paths.clone();
        let g1 = generation::read_list(&paths.generation_list(1))
            .unwrap()
            .unwrap();
        let g2 = generation::read_list(&paths.generation_list(2))
            .unwrap()
            .unwrap();
        let open = |r: &mut Rig, l: &format::active_list::ActiveList| {
            r.stack
                .open_list(0, l, &mut r.opener)
                .map_err(|e| e.to_string())
        };
        // The active packages: nothing to do.
        let o = open(&mut r, &g2);
        assert!(matches!(
            adopt(&names, &r.sets, 0, &g2, o, Some(&g2)),
            Adopt::Same
        ));
        // A rollback to generation 1: switch, not recorded again.
        let o = open(&mut r, &g1);
        match adopt(&names, &r.sets, 0, &g1, o, Some(&g1)) {
            Adopt::Switch { plan, record } => {
                assert!(!record);
                assert_eq!(plan.removed, ["app-1.0.0"]);
            }
            other => panic!("{other:?}"),
        }
        // The same list claiming generation 2 (whose packages differ): recorded anew.
        let o = open(&mut r, &g1);
        assert!(matches!(
            adopt(&names, &r.sets, 0, &g1, o, Some(&g2)),
            Adopt::Switch { record: true, .. }
        ));
        // A list that breaks the invariant (app without lib) is refused whole.
        let mut only_app = g2.clone();
        only_app.entries.retain(|e| e.label.starts_with("app"));
        let o = open(&mut r, &only_app);
        match adopt(&names, &r.sets, 0, &only_app, o, None) {
            Adopt::Refuse { reason } => assert!(reason.contains("requires lib"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A list naming a package nobody holds is refused with why.
        let missing = Err("neither the pool nor packages/ holds this package".to_string());
        assert!(matches!(
            adopt(&names, &r.sets, 0, &only_app, missing, None),
            Adopt::Refuse { .. }
        ));
    }

    #[test]
    fn newest_whole_skips_a_generation_whose_pool_copy_is_damaged() {
        let mut r = Rig::new();
        r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        r.step();
        let b = r.drop_pkg("b.hpkg", "b", "1.0.0", "");
        r.step();
        // Damage b's pool copy and its file: generation 2 no longer opens whole.
        let pool = r.stack.layers[0].paths.pool_file(&b.id());
        fs::set_permissions(&pool, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        fs::write(&pool, b"damaged").unwrap();
        fs::write(r.pkgs().join("b.hpkg"), b"damaged").unwrap();
        let mut op = Opener::new(lab_keys());
        let c = newest_whole(&r.stack, 0, &[Vec::new()], &[1, 2], &mut op).unwrap();
        assert_eq!(c.n, 1);
        assert_eq!(c.plan.added, ["a-1.0.0"]);
        assert_eq!(c.skipped.len(), 1);
        assert_eq!(c.skipped[0].0, 2);
        let why = newest_whole(&r.stack, 0, &[Vec::new()], &[2, 7], &mut op).unwrap_err();
        assert_eq!(why.len(), 2);
        assert_eq!(why[0].0, 7);
        assert_eq!(why[0].1, "is not there");
        assert!(why[1].1.starts_with("does not open whole"), "{why:?}");
    }

    #[test]
    fn reasons_name_each_file_once() {
        let mut r = Rig::new();
        for i in 0..12 {
            r.drop_pkg(&format!("p{i:02}.hpkg"), &format!("p{i:02}"), "1.0.0", "");
        }
        let d = r.step();
        assert_eq!(
            d.reason,
            "dropped p00.hpkg, p01.hpkg, p02.hpkg, p03.hpkg, p04.hpkg, p05.hpkg, p06.hpkg, \
             p07.hpkg and 4 more"
        );
    }
}
