//! The package-set commands: `resolve`, `install`, `remove`, `status`, `generations`,
//! `rollback`, `gc`. Each is a thin layer over `pkgset` (the same library the daemon uses):
//! load the stack, plan the change, commit it under the layer's lock, report.

use crate::cmd::services;
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use format::keys::TrustedKeys;
use pkgset::generation::{self, Lock, StackRecord};
use pkgset::owner::AsOwner;
use pkgset::reconcile;
use pkgset::stack::{now_utc, Damaged, Loaded, Refusal};
use pkgset::{plan, Candidate, Change, LayerSpec, Opener, Plan, Stack, Want};
use serde::Serialize;

use crate::cli::{
    GcArgs, GenerationsArgs, InstallArgs, RemoveArgs, ResolveArgs, RollbackArgs, StatusArgs,
    TrustArgs,
};
use crate::cmd::verify::DEFAULT_KEYS_DIR;
use crate::output::Out;

// ---------------------------------------------------------------------------------------
// Shared set-up

fn stack_of(specs: &[String]) -> anyhow::Result<Stack> {
    let mut layers = Vec::new();
    let specs = with_recorded_stack(specs)?;
    for s in &specs {
        let l = LayerSpec::parse(s).map_err(|e| anyhow!("bad layer {e}"))?;
        if layers.iter().any(|o: &LayerSpec| o.name == l.name) {
            bail!("layer {} is given twice", l.name);
        }
        let md = fs::metadata(&l.paths.dir)
            .with_context(|| format!("layer {}: {}", l.name, l.paths.dir.display()))?;
        if !md.is_dir() {
            bail!(
                "layer {}: {} is not a directory",
                l.name,
                l.paths.dir.display()
            );
        }
        layers.push(l);
    }
    Ok(Stack::new(layers))
}

/// One layer given alone: the layers below it as packagefs last mounted it (its
/// `state/stack`), so a change is checked against the same stack the daemon checks it
/// against; said on stderr. Several layers, or a layer with no record: as given.
fn with_recorded_stack(specs: &[String]) -> anyhow::Result<Vec<String>> {
    let [only] = specs else {
        return Ok(specs.to_vec());
    };
    let l = LayerSpec::parse(only).map_err(|e| anyhow!("bad layer {e}"))?;
    let Some(rec) = StackRecord::read(&l.paths) else {
        return Ok(specs.to_vec());
    };
    let mut out = Vec::new();
    for (name, dir) in &rec.below {
        if !dir.is_dir() {
            bail!(
                "layer {} is mounted above {name}={}, which is gone; give the layers with \
                 --layer, lowest first",
                rec.name,
                dir.display()
            );
        }
        out.push(format!("{name}={}", dir.display()));
    }
    // The name the mount knows it by, unless the command gave one.
    let named = if only.contains('=') {
        only.clone()
    } else {
        format!("{}={only}", rec.name)
    };
    if !out.is_empty() {
        eprintln!(
            "pkgtool: layers below {} as packagefs mounts them (state/stack): {}",
            rec.name,
            out.join(" ")
        );
    }
    out.push(named);
    Ok(out)
}

/// The packages of a layer are trusted as the daemon trusts them: by the keys of
/// `--trusted-keys DIR`, else of /etc/packagefs/keys, the daemon's default too. No key at
/// all is an error that says where pkgtool looked, rather than every package refused.
fn opener(trust: &TrustArgs) -> anyhow::Result<Opener> {
    let keys = trusted_keys(trust.trusted_keys.as_deref())?;
    let policy =
        pkgset::capabilities::load_policy(trust.policy.as_deref()).map_err(|e| anyhow!(e))?;
    Ok(Opener::with_policy(keys, policy))
}

fn trusted_keys(given: Option<&Path>) -> anyhow::Result<TrustedKeys> {
    let dir = given.unwrap_or(Path::new(DEFAULT_KEYS_DIR));
    let looked = if given.is_some() {
        "--trusted-keys"
    } else {
        "the default, as for packagefs, since no --trusted-keys was given"
    };
    if given.is_none() && !dir.exists() {
        bail!(
            "no trusted keys: {} does not exist ({looked}): pass --trusted-keys DIR, the keys the layer is mounted with (packagefs -o trusted_keys=DIR)",
            dir.display()
        );
    }
    let keys = TrustedKeys::load_dir(dir)
        .with_context(|| format!("cannot load trusted keys from {}", dir.display()))?;
    if keys.is_empty() {
        bail!(
            "no trusted keys: no *.pub file in {} ({looked}): copy the signers' .pub files there or pass --trusted-keys DIR",
            dir.display()
        );
    }
    Ok(keys)
}

fn warn_refused(refused: &[Refusal]) {
    for r in refused {
        eprintln!("pkgtool: warning: {}: {}", r.path.display(), r.reason);
    }
}

fn short(c: &Candidate) -> String {
    c.id().to_string()[..16].to_owned()
}

#[derive(Serialize)]
struct PkgJson {
    name: String,
    version: String,
    id: String,
    file: String,
}

fn pkg_json(c: &Candidate) -> PkgJson {
    PkgJson {
        name: c.manifest().name.clone(),
        version: c.manifest().version.to_string(),
        id: c.id().to_string(),
        file: c.path.display().to_string(),
    }
}

#[derive(Serialize)]
struct ChangeJson {
    layer: String,
    generation: Option<u64>,
    added: Vec<String>,
    removed: Vec<String>,
    broken: Vec<String>,
    skipped: Vec<String>,
}

/// Commits the first generation of the top layer if it has none (and the plan of it found
/// packages), so the change that follows has a generation to roll back to.
fn commit_initial(
    stack: &Stack,
    loaded: &mut Loaded,
    top: usize,
    op: &mut Opener,
) -> anyhow::Result<()> {
    if let Some(mut p) = loaded.initial[top].take() {
        if !p.is_empty() {
            stack.commit_first(&mut p, op)?;
            for s in &p.skipped {
                eprintln!("pkgtool: warning: not in the first generation: {s}");
            }
            loaded.sets[top] = p.sets[top].clone();
        }
        loaded.lists[top] = generation::read_list(&stack.layers[top].paths.active_list())?;
    }
    Ok(())
}

/// Decides what the files of the top layer's `packages/` mean for its set, as the daemon
/// does ([`reconcile`]), and commits it: drops and deletions nobody has accounted for yet
/// (no daemon ran, or it has not looked yet) become a generation before the command's own
/// change, and the record of accounted-for files is brought up to date. Not while a
/// package of the active set is damaged: that set is not the one to build on.
fn reconcile_top(
    stack: &Stack,
    loaded: &mut Loaded,
    top: usize,
    op: &mut Opener,
) -> anyhow::Result<()> {
    if !loaded.damaged[top].is_empty() {
        return Ok(());
    }
    let (d, gens) = reconcile::once(stack, top, &loaded.sets, op)?;
    for (f, why) in d.waiting.iter().chain(&d.refused) {
        eprintln!("pkgtool: warning: packages/{f}: {why}");
    }
    if !gens.is_empty() {
        eprintln!(
            "pkgtool: layer {}: first, what packages/ holds: generation {}: {}: {}",
            stack.layers[top].name,
            gens.iter()
                .map(|g| g.1.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            d.reason,
            d.plan.summary()
        );
        loaded.sets = d.plan.sets;
        loaded.lists[top] = generation::read_list(&stack.layers[top].paths.active_list())?;
    }
    Ok(())
}

/// `name-version (reason)` of each damaged package, for messages.
fn damaged_list(damaged: &[Damaged]) -> String {
    damaged
        .iter()
        .map(|d| format!("{} ({})", d.label, d.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

fn report_change(
    out: &mut Out,
    json: bool,
    stack: &Stack,
    top: usize,
    plan: &Plan,
    generation: Option<u64>,
) -> anyhow::Result<()> {
    for b in &plan.broken {
        eprintln!("pkgtool: warning: also deactivated: {b}");
    }
    for s in &plan.skipped {
        eprintln!("pkgtool: warning: not activated: {s}");
    }
    let layer = &stack.layers[top].name;
    if json {
        out.json(&ChangeJson {
            layer: layer.clone(),
            generation,
            added: plan.added.clone(),
            removed: plan.removed.clone(),
            broken: plan.broken.clone(),
            skipped: plan.skipped.clone(),
        })?;
    } else {
        match generation {
            Some(n) => writeln!(out, "layer {layer}: generation {n}: {}", plan.summary())?,
            None => writeln!(out, "layer {layer}: no change")?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// resolve

#[derive(Serialize)]
struct LayerJson {
    name: String,
    dir: String,
    packages: Vec<PkgJson>,
}

#[derive(Serialize)]
struct ResolveJson {
    ok: bool,
    layers: Vec<LayerJson>,
    error: Option<String>,
    refused: Vec<RefusalJson>,
}

#[derive(Serialize)]
struct RefusalJson {
    file: String,
    reason: String,
}

fn refusals_json(r: &[Refusal]) -> Vec<RefusalJson> {
    r.iter()
        .map(|r| RefusalJson {
            file: r.path.display().to_string(),
            reason: r.reason.clone(),
        })
        .collect()
}

pub fn resolve(a: ResolveArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layers)?;
    let mut op = opener(&a.trust)?;
    let names = stack.names();
    let mut all: Vec<Candidate> = Vec::new();
    let mut refused = Vec::new();
    for l in 0..stack.layers.len() {
        let (c, r) = stack.scan(l, &mut op)?;
        all.extend(c);
        refused.extend(r);
    }
    let mut wants: Vec<Want> = all
        .iter()
        .map(|c| Want {
            layer: c.layer,
            name: c.manifest().name.clone(),
            pin: None,
        })
        .collect();
    wants.dedup();
    let result = pkgset::resolve(&names, &all, &wants);
    if !a.json {
        warn_refused(&refused);
    }
    match result {
        Ok(chosen) => {
            let chosen: Vec<&Candidate> = chosen.iter().map(|&i| &all[i]).collect();
            if a.json {
                out.json(&ResolveJson {
                    ok: true,
                    layers: stack
                        .layers
                        .iter()
                        .enumerate()
                        .map(|(l, spec)| LayerJson {
                            name: spec.name.clone(),
                            dir: spec.paths.dir.display().to_string(),
                            packages: chosen
                                .iter()
                                .filter(|c| c.layer == l)
                                .map(|c| pkg_json(c))
                                .collect(),
                        })
                        .collect(),
                    error: None,
                    refused: refusals_json(&refused),
                })?;
            } else {
                for (l, spec) in stack.layers.iter().enumerate() {
                    let mine: Vec<&&Candidate> = chosen.iter().filter(|c| c.layer == l).collect();
                    writeln!(out, "layer {} ({} packages)", spec.name, mine.len())?;
                    for c in mine {
                        writeln!(
                            out,
                            "  {:<40} {}  {}",
                            c.label(),
                            short(c),
                            c.path.display()
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            if a.json {
                out.json(&ResolveJson {
                    ok: false,
                    layers: Vec::new(),
                    error: Some(r.to_string()),
                    refused: refusals_json(&refused),
                })?;
                Ok(ExitCode::from(1))
            } else {
                Err(anyhow!("cannot resolve: {r}"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// install

/// Copies `src` into `dir` as `NAME-VERSION.hpkg` (crash-safely, never over another file);
/// returns the new path, or the path of a file there that already holds the package.
fn copy_into(
    dir: &Path,
    c: &Candidate,
    source: Option<&mut fs::File>,
) -> anyhow::Result<(PathBuf, bool)> {
    let mut source = source;
    let base = format!("{}-{}", c.manifest().name, c.manifest().version);
    for name in [format!("{base}.hpkg"), format!("{base}-{}.hpkg", short(c))] {
        let dst = dir.join(&name);
        let existing = pkgset::owner::open_in_layer(&dst)
            .ok()
            .and_then(|f| format::archive::Archive::from_file(f, &dst).ok());
        if let Some(existing) = existing {
            if existing.id() == c.id() {
                return Ok((dst, false));
            }
            continue;
        }
        if dst.symlink_metadata().is_ok() {
            continue;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".install-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let mut opened;
        let src: &mut fs::File = match source.take() {
            Some(f) => {
                use std::io::Seek;
                f.rewind()?;
                f
            }
            None => {
                opened = fs::File::open(&c.path)
                    .with_context(|| format!("cannot read {}", c.path.display()))?;
                &mut opened
            }
        };
        std::io::copy(src, tmp.as_file_mut())
            .with_context(|| format!("cannot copy {} to {}", c.path.display(), dir.display()))?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
        tmp.as_file().sync_all()?;
        tmp.persist_noclobber(&dst)
            .map_err(|e| anyhow!("cannot create {}: {}", dst.display(), e.error))?;
        generation::sync_dir(dir)?;
        return Ok((dst, true));
    }
    bail!(
        "{}: files named {base}*.hpkg there hold other packages",
        dir.display()
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

pub fn install(a: InstallArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let mut new = Vec::new();
    // The packages to install are read with the caller's rights, then everything in the
    // layer with its owner's (pkgset::owner): root installing into a user's layer makes
    // files the user owns, and reaches nothing the user could not.
    let mut sources = std::collections::HashMap::new();
    for p in &a.packages {
        let archive = op
            .open_given(p)
            .map_err(|r| anyhow!("refused {}: {r}", p.display()))?;
        let file = format::archive::open_regular(p)
            .with_context(|| format!("cannot read {}", p.display()))?;
        sources.insert(archive.id(), file);
        new.push(Candidate {
            layer: top,
            path: p.clone(),
            archive,
        });
    }
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let paths = &stack.layers[top].paths;
    let pkgdir = paths.packages();
    fs::create_dir_all(&pkgdir).with_context(|| format!("cannot create {}", pkgdir.display()))?;
    let ctx = services::Ctx::new(&a.svc, &paths.dir);
    services::settle(paths, &ctx)?;
    let lock = Lock::acquire(paths)?;
    let mut loaded = stack.load_all(top, &mut op)?;
    commit_initial(&stack, &mut loaded, top, &mut op)?;
    reconcile_top(&stack, &mut loaded, top, &mut op)?;
    // A damaged active package is only built on by an install that replaces it.
    let damaged = std::mem::take(&mut loaded.damaged[top]);
    let unreplaced: Vec<Damaged> = damaged
        .iter()
        .filter(|d| !new.iter().any(|c| c.manifest().name == d.name()))
        .cloned()
        .collect();
    if !unreplaced.is_empty() {
        bail!(
            "layer {}: the active set has damaged packages: {}; install a good copy of them, \
             remove them (pkgtool remove NAME) or roll back (pkgtool rollback)",
            stack.layers[top].name,
            damaged_list(&unreplaced)
        );
    }
    let (available, _) = stack.scan(top, &mut op)?;
    let mut p = plan(
        &stack.names(),
        &loaded.sets,
        top,
        &available,
        Change::Install {
            packages: new,
            only_newer: false,
        },
    )
    .map_err(|r| anyhow!("refused: {r}"))?;
    if !damaged.is_empty() {
        if !p.changed.contains(&top) {
            p.changed.push(top);
            p.changed.sort_unstable();
        }
        p.removed.extend(damaged.iter().map(|d| d.label.clone()));
    }
    if p.is_empty() {
        report_change(out, a.layer.json, &stack, top, &p, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let reason = format!("install {}", p.summary());
    let splan = services::plan_of(&stack.names(), &loaded.sets, &p.sets);
    if a.svc.dry_run {
        writeln!(out, "would {reason}")?;
        services::print_plan(out, &splan)?;
        return Ok(ExitCode::SUCCESS);
    }
    let from = loaded.lists[top].as_ref().and_then(|l| l.generation());
    let mut run = services::Run::begin(out, &ctx, paths, &splan, from, &reason)?;
    // Copy the new packages into packages/ (unless they are there already).
    let before: HashSet<_> = loaded.sets[top].iter().map(|c| c.id()).collect();
    let mut copied: Vec<PathBuf> = Vec::new();
    let mut result = Ok(());
    for c in p.sets[top].iter_mut() {
        if before.contains(&c.id()) || same_file(c.path.parent().unwrap_or(Path::new("")), &pkgdir)
        {
            continue;
        }
        match copy_into(&pkgdir, c, sources.get_mut(&c.id())) {
            Ok((dst, fresh)) => {
                if fresh {
                    copied.push(dst.clone());
                }
                c.path = dst;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let committed =
        result.and_then(|_| Ok(stack.commit_pooled(&mut p, &reason, &now_utc(), &mut op)?));
    let n = match committed {
        Ok(ns) => ns.iter().find(|(l, _)| *l == top).map(|(_, n)| *n),
        Err(e) => {
            for f in &copied {
                let _ = fs::remove_file(f);
            }
            run.abort();
            return Err(e);
        }
    };
    run.switched(n)?;
    // Files of replaced packages leave the drop zone (the pool keeps them for rollbacks).
    let gone: HashSet<_> = loaded.sets[top]
        .iter()
        .map(|c| c.id())
        .filter(|id| !p.sets[top].iter().any(|c| c.id() == *id))
        .collect();
    remove_files(&available, &gone);
    record_files(&stack, top, &p, &mut op)?;
    // Let a waiting packagefs in before tearing down a thousand open archives.
    drop(lock);
    report_change(out, a.layer.json, &stack, top, &p, n)?;
    run.finish(out)?;
    Ok(ExitCode::SUCCESS)
}

/// After a change: records the files of `packages/` as accounted for by the new set (the
/// copies just made hold active packages, the files just removed are gone), by the same
/// reconcile the daemon runs; anything else it finds is committed too.
fn record_files(stack: &Stack, top: usize, p: &Plan, op: &mut Opener) -> anyhow::Result<()> {
    reconcile::once(stack, top, &p.sets, op)?;
    Ok(())
}

fn remove_files(files: &[Candidate], ids: &HashSet<format::archive::PackageId>) {
    for c in files.iter().filter(|c| ids.contains(&c.id())) {
        if let Err(e) = fs::remove_file(&c.path) {
            eprintln!("pkgtool: warning: cannot remove {}: {e}", c.path.display());
        }
    }
}

// ---------------------------------------------------------------------------------------
// remove

pub fn remove(a: RemoveArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let paths = &stack.layers[top].paths;
    let ctx = services::Ctx::new(&a.svc, &paths.dir);
    services::settle(paths, &ctx)?;
    let lock = Lock::acquire(paths)?;
    let mut loaded = stack.load_all(top, &mut op)?;
    commit_initial(&stack, &mut loaded, top, &mut op)?;
    reconcile_top(&stack, &mut loaded, top, &mut op)?;
    // Damaged packages are not in the set: removing one is dropping it from the list.
    let damaged = std::mem::take(&mut loaded.damaged[top]);
    let (gone_damaged, rest): (Vec<String>, Vec<String>) = a
        .names
        .iter()
        .cloned()
        .partition(|n| damaged.iter().any(|d| d.name() == n));
    let mut p = plan(
        &stack.names(),
        &loaded.sets,
        top,
        &[],
        Change::Remove {
            names: rest,
            force: a.force,
        },
    )
    .map_err(|r| {
        if a.force {
            anyhow!("refused: {r}")
        } else {
            anyhow!("refused: {r} (--force removes what would be left broken, too)")
        }
    })?;
    let still_damaged: Vec<Damaged> = damaged
        .iter()
        .filter(|d| !gone_damaged.iter().any(|n| n == d.name()))
        .cloned()
        .collect();
    if !still_damaged.is_empty() && (!p.is_empty() || !gone_damaged.is_empty()) {
        bail!(
            "layer {}: the active set has other damaged packages: {}; remove them too, or roll \
             back (pkgtool rollback)",
            stack.layers[top].name,
            damaged_list(&still_damaged)
        );
    }
    if !gone_damaged.is_empty() {
        if !p.changed.contains(&top) {
            p.changed.push(top);
            p.changed.sort_unstable();
        }
        p.removed.extend(
            damaged
                .iter()
                .filter(|d| gone_damaged.iter().any(|n| n == d.name()))
                .map(|d| d.label.clone()),
        );
    }
    let reason = format!("remove {}", p.summary());
    let splan = services::plan_of(&stack.names(), &loaded.sets, &p.sets);
    if a.svc.dry_run {
        writeln!(out, "would {reason}")?;
        services::print_plan(out, &splan)?;
        return Ok(ExitCode::SUCCESS);
    }
    let from = loaded.lists[top].as_ref().and_then(|l| l.generation());
    let mut run = services::Run::begin(out, &ctx, paths, &splan, from, &reason)?;
    let ns = match stack.commit_pooled(&mut p, &reason, &now_utc(), &mut op) {
        Ok(ns) => ns,
        Err(e) => {
            run.abort();
            return Err(e.into());
        }
    };
    let n = ns.iter().find(|(l, _)| *l == top).map(|(_, n)| *n);
    run.switched(n)?;
    let gone: HashSet<_> = loaded.sets[top]
        .iter()
        .map(|c| c.id())
        .filter(|id| !p.sets[top].iter().any(|c| c.id() == *id))
        .collect();
    let (files, _) = stack.scan(top, &mut op)?;
    remove_files(&files, &gone);
    record_files(&stack, top, &p, &mut op)?;
    drop(lock);
    report_change(out, a.layer.json, &stack, top, &p, n)?;
    run.finish(out)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// status

/// The boot assessment record of a layer, if it has one.
fn boot_json(paths: &pkgset::generation::LayerPaths) -> Option<BootJson> {
    if !pkgset::boot::boot_file(paths).exists() {
        return None;
    }
    let (b, warning) = pkgset::boot::BootState::read(paths);
    Some(BootJson {
        booted: b.booted.map(|(n, _)| n),
        how: b.booted.map(|(_, h)| h.word().to_string()),
        good: b.good.into_iter().collect(),
        bad: b.bad.into_iter().collect(),
        trying: b.trying.map(|t| t.0),
        tries_left: b.trying.map(|t| t.1),
        note: b.note,
        warning,
    })
}

#[derive(Serialize)]
struct InactiveJson {
    file: String,
    package: Option<String>,
    reason: String,
}

#[derive(Serialize)]
struct StatusJson {
    layer: String,
    dir: String,
    generation: Option<u64>,
    time: Option<String>,
    reason: Option<String>,
    active: Vec<PkgJson>,
    inactive: Vec<InactiveJson>,
    ok: bool,
    problems: Vec<String>,
    damaged: Vec<DamagedJson>,
    pending: Option<PendingJson>,
    /// Boot assessment (`state/boot`), where the layer was booted from.
    boot: Option<BootJson>,
}

#[derive(Serialize)]
struct BootJson {
    booted: Option<u64>,
    how: Option<String>,
    good: Vec<u64>,
    bad: Vec<u64>,
    trying: Option<u64>,
    tries_left: Option<u32>,
    note: Option<String>,
    warning: Option<String>,
}

#[derive(Serialize)]
struct DamagedJson {
    package: String,
    id: String,
    reason: String,
}

/// What the next reconcile (the daemon's, or the next pkgtool change) would do with the
/// files of `packages/`.
#[derive(Serialize)]
struct PendingJson {
    reason: String,
    added: Vec<String>,
    removed: Vec<String>,
    waiting: Vec<RefusalJson>,
}

pub fn status(a: StatusArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let loaded = stack.load_all(top, &mut op)?;
    let set = &loaded.sets[top];
    let list = loaded.lists[top].as_ref();
    let damaged = &loaded.damaged[top];
    let mut problems: Vec<String> = damaged
        .iter()
        .map(|d| format!("{} ({}) is damaged: {}", d.label, d.id, d.reason))
        .collect();
    if let Err(r) = pkgset::check(
        &stack.names()[..=top],
        &loaded.sets.iter().flatten().cloned().collect::<Vec<_>>(),
    ) {
        problems.extend(r.problems.iter().map(|p| p.to_string()));
    }
    let pending = if list.is_some() && damaged.is_empty() {
        let obs = reconcile::observe(
            &stack,
            top,
            &mut op,
            &Default::default(),
            std::time::SystemTime::now(),
        )?;
        let d = reconcile::decide(&stack.names(), &loaded.sets, top, &obs);
        (!d.plan.is_empty() || !d.waiting.is_empty()).then(|| PendingJson {
            reason: d.reason.clone(),
            added: d.plan.added.clone(),
            removed: d.plan.removed.clone(),
            waiting: d
                .waiting
                .iter()
                .map(|(f, why)| RefusalJson {
                    file: f.clone(),
                    reason: why.clone(),
                })
                .collect(),
        })
    } else {
        None
    };
    let (files, refused) = stack.scan(top, &mut op)?;
    let active_ids: HashSet<_> = set.iter().map(|c| c.id()).collect();
    let mut inactive = Vec::new();
    for c in files.iter().filter(|c| !active_ids.contains(&c.id())) {
        let same = set.iter().find(|s| s.manifest().name == c.manifest().name);
        let reason = match same {
            Some(s) if s.manifest().version > c.manifest().version => {
                format!("older than the active {}", s.label())
            }
            Some(s) => format!("not active ({} is)", s.label()),
            None => "not active".to_string(),
        };
        inactive.push(InactiveJson {
            file: c.path.display().to_string(),
            package: Some(c.label()),
            reason,
        });
    }
    for r in &refused {
        inactive.push(InactiveJson {
            file: r.path.display().to_string(),
            package: None,
            reason: format!("refused: {}", r.reason),
        });
    }
    inactive.sort_by(|a, b| a.file.cmp(&b.file));
    let spec = &stack.layers[top];
    let meta = |k: &str| list.and_then(|l| l.meta.get(k).cloned());
    let st = StatusJson {
        layer: spec.name.clone(),
        dir: spec.paths.dir.display().to_string(),
        generation: list.and_then(|l| l.generation()),
        time: meta("time"),
        reason: meta("reason"),
        active: set.iter().map(pkg_json).collect(),
        inactive,
        ok: problems.is_empty(),
        problems,
        damaged: damaged
            .iter()
            .map(|d| DamagedJson {
                package: d.label.clone(),
                id: d.id.to_string(),
                reason: d.reason.clone(),
            })
            .collect(),
        pending,
        boot: boot_json(&spec.paths),
    };
    if a.layer.json {
        out.json(&st)?;
    } else {
        match (st.generation, list) {
            (Some(n), _) => writeln!(
                out,
                "layer {} ({}): generation {n}, {}, {}",
                st.layer,
                st.dir,
                st.time.as_deref().unwrap_or("?"),
                st.reason.as_deref().unwrap_or("?")
            )?,
            (None, Some(_)) => writeln!(
                out,
                "layer {} ({}): active.list written by hand (no generation)",
                st.layer, st.dir
            )?,
            (None, None) => writeln!(
                out,
                "layer {} ({}): no generation yet; the first one would be:",
                st.layer, st.dir
            )?,
        }
        if let Some(b) = &st.boot {
            let nums = |v: &[u64]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
                }
            };
            let booted = match (b.booted, &b.how) {
                (Some(n), Some(h)) => format!("generation {n} ({h})"),
                _ => "nothing yet".to_string(),
            };
            let trial = match (b.trying, b.tries_left) {
                (Some(n), Some(left)) => format!("; on trial: {n}, {left} tries left"),
                _ => String::new(),
            };
            writeln!(
                out,
                "boot: booted {booted}; good: {}; bad: {}{trial}",
                nums(&b.good),
                nums(&b.bad)
            )?;
            for n in b.note.iter().chain(&b.warning) {
                writeln!(out, "boot: {n}")?;
            }
        }
        writeln!(out, "active ({}):", set.len() + st.damaged.len())?;
        for c in set {
            writeln!(out, "  {:<40} {}", c.label(), short(c))?;
        }
        for d in &st.damaged {
            writeln!(
                out,
                "  {:<40} {}  DAMAGED: {}",
                d.package,
                &d.id[..16],
                d.reason
            )?;
        }
        if let Some(p) = &st.pending {
            let mut parts: Vec<String> = p.added.iter().map(|a| format!("+{a}")).collect();
            parts.extend(p.removed.iter().map(|r| format!("-{r}")));
            if !parts.is_empty() {
                writeln!(out, "pending ({}): {}", p.reason, parts.join(" "))?;
            }
            for w in &p.waiting {
                writeln!(out, "waiting: packages/{}: {}", w.file, w.reason)?;
            }
        }
        if !st.inactive.is_empty() {
            writeln!(out, "inactive in packages/ ({}):", st.inactive.len())?;
            for i in &st.inactive {
                let name = Path::new(&i.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                writeln!(out, "  {name:<40} {}", i.reason)?;
            }
        }
        if st.ok {
            writeln!(out, "set: ok")?;
        } else {
            for p in &st.problems {
                writeln!(out, "set: BROKEN: {p}")?;
            }
        }
    }
    Ok(if st.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

// ---------------------------------------------------------------------------------------
// generations

#[derive(Serialize)]
struct GenJson {
    generation: u64,
    time: Option<String>,
    reason: Option<String>,
    packages: Vec<String>,
    active: bool,
}

pub fn generations(a: GenerationsArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let specs = &a.layer.layers;
    let spec = LayerSpec::parse(specs.last().map(String::as_str).unwrap_or(""))
        .map_err(|e| anyhow!("bad layer {e}"))?;
    if !spec.paths.dir.is_dir() {
        bail!(
            "layer {}: {} is not a directory",
            spec.name,
            spec.paths.dir.display()
        );
    }
    let active = generation::read_list(&spec.paths.active_list())?;
    let mut gens = Vec::new();
    for n in generation::generation_numbers(&spec.paths)? {
        let Some(l) = generation::read_list(&spec.paths.generation_list(n))? else {
            continue;
        };
        let is_active = active
            .as_ref()
            .is_some_and(|a| a.generation() == Some(n) && a.same_packages(&l));
        gens.push(GenJson {
            generation: n,
            time: l.meta.get("time").cloned(),
            reason: l.meta.get("reason").cloned(),
            packages: l.entries.iter().map(|e| e.label.clone()).collect(),
            active: is_active,
        });
    }
    if a.layer.json {
        out.json(&gens)?;
    } else if gens.is_empty() {
        writeln!(out, "layer {}: no generations", spec.name)?;
    } else {
        for g in &gens {
            writeln!(
                out,
                "{} {:>4}  {}  {:>4} packages  {}",
                if g.active { "*" } else { " " },
                g.generation,
                g.time.as_deref().unwrap_or("?"),
                g.packages.len(),
                g.reason.as_deref().unwrap_or("")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// rollback

pub fn rollback(a: RollbackArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let paths = &stack.layers[top].paths;
    let name = &stack.layers[top].name;
    let ctx = services::Ctx::new(&a.svc, &paths.dir);
    services::settle(paths, &ctx)?;
    let lock = Lock::acquire(paths)?;
    // A rollback must work when the active set is damaged, even when its list is
    // unreadable: then it only needs the layers below.
    let (sets, current) = match stack.load_all(top, &mut op) {
        Ok(mut loaded) => {
            reconcile_top(&stack, &mut loaded, top, &mut op)?;
            let current = loaded.lists[top].as_ref().and_then(|l| l.generation());
            (loaded.sets, current)
        }
        Err(e) => {
            eprintln!(
                "pkgtool: warning: layer {name}: the active set cannot be read: {}",
                pkgset::stack::one_line(&e)
            );
            let mut sets = if top > 0 {
                stack.load_all(top - 1, &mut op)?.sets
            } else {
                Vec::new()
            };
            sets.push(Vec::new());
            (sets, None)
        }
    };
    let numbers = generation::generation_numbers(paths)?;
    let candidates: Vec<u64> = match a.to {
        Some(n) => vec![n],
        None => numbers
            .iter()
            .rev()
            .copied()
            .filter(|&n| current.is_none_or(|c| n < c))
            .collect(),
    };
    if candidates.is_empty() {
        match current {
            Some(c) => bail!("layer {name}: no generation before {c}"),
            None => bail!("layer {name}: no generation to roll back to"),
        }
    }
    if a.to.is_some() && a.to == current {
        writeln!(
            out,
            "layer {name}: already at generation {}",
            a.to.unwrap_or(0)
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let (target, p) = match reconcile::newest_whole(&stack, top, &sets, &candidates, &mut op) {
        Ok(c) => {
            for (n, why) in c.skipped {
                eprintln!("pkgtool: warning: layer {name}: skipping generation {n}: it {why}");
            }
            (c.n, c.plan)
        }
        Err(why) => match (a.to, why.first()) {
            (Some(t), Some((_, w))) if w == "is not there" => {
                bail!("layer {name}: no generation {t}")
            }
            (Some(t), Some((_, w))) => bail!("layer {name}: generation {t} {w}"),
            _ => bail!("layer {name}: no earlier generation opens whole"),
        },
    };
    let from = current.map_or("?".to_string(), |c| c.to_string());
    let reason = format!("rollback from generation {from} to {target}");
    let splan = services::plan_of(&stack.names(), &sets, &p.sets);
    if a.svc.dry_run {
        writeln!(out, "would {reason}: {}", p.summary())?;
        services::print_plan(out, &splan)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut run = services::Run::begin(out, &ctx, paths, &splan, current, &reason)?;
    if let Err(e) = generation::switch_to(paths, target, "rollback", &reason) {
        run.abort();
        return Err(e.into());
    }
    run.switched(Some(target))?;
    drop(lock);
    if a.layer.json {
        report_change(out, true, &stack, top, &p, Some(target))?;
    } else {
        writeln!(
            out,
            "layer {name}: generation {from} -> {target}: {}",
            p.summary()
        )?;
    }
    run.finish(out)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// gc

pub fn gc(a: GcArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let spec = LayerSpec::parse(a.layer.layers.last().map(String::as_str).unwrap_or(""))
        .map_err(|e| anyhow!("bad layer {e}"))?;
    if !spec.paths.dir.is_dir() {
        bail!(
            "layer {}: {} is not a directory",
            spec.name,
            spec.paths.dir.display()
        );
    }
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&spec.paths);
    let _lock = Lock::acquire(&spec.paths)?;
    // Never delete the newest generation that opens whole (every package there, intact and
    // trusted): after it, a damaged active set would have nothing to roll back to.
    let stack = Stack::new(vec![spec.clone()]);
    let whole = generation::generation_numbers(&spec.paths)?
        .into_iter()
        .rev()
        .find(|&n| stack.opens_whole(0, n, &mut op));
    if whole.is_none() {
        eprintln!(
            "pkgtool: warning: layer {}: no generation opens whole",
            spec.name
        );
    }
    let pool_before = count_dir(&spec.paths.pool());
    let removed = generation::gc(
        &spec.paths,
        a.keep as usize,
        &whole.into_iter().collect::<Vec<_>>(),
    )?;
    let pool_removed = pool_before.saturating_sub(count_dir(&spec.paths.pool()));
    if a.layer.json {
        #[derive(Serialize)]
        struct GcJson {
            removed_generations: Vec<u64>,
            removed_package_files: usize,
        }
        out.json(&GcJson {
            removed_generations: removed,
            removed_package_files: pool_removed,
        })?;
    } else {
        writeln!(
            out,
            "layer {}: removed {} generation(s){} and {pool_removed} pooled package file(s)",
            spec.name,
            removed.len(),
            if removed.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    removed
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn count_dir(dir: &Path) -> usize {
    fs::read_dir(dir).map(|rd| rd.count()).unwrap_or(0)
}
