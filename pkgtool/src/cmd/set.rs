//! What the package-set commands share (`resolve`, `install`/`update`, `remove`, `status`,
//! `generations`, `rollback`, `gc`, each in its own file): the stack of layers, the opener
//! with its trusted keys and policy, the first commit and reconcile of a layer, and the
//! report of a change. Each command is a thin layer over `pkgset` (the same library the
//! daemon uses): load the stack, plan the change, commit it under the layer's lock, report.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use format::keys::TrustedKeys;
use pkgset::generation::{self, StackRecord};
use pkgset::reconcile;
use pkgset::stack::{Damaged, Loaded, Refusal};
use pkgset::{Candidate, LayerSpec, Opener, Plan, Stack};

use crate::cli::TrustArgs;
use crate::cmd::verify::DEFAULT_KEYS_DIR;
use crate::output::{ChangeJson, PkgJson};
use crate::output::{Out, ProblemJson, RefusalJson, SkippedJson};

// ---------------------------------------------------------------------------------------
// Shared set-up

pub(super) fn stack_of(specs: &[String]) -> anyhow::Result<Stack> {
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
pub(super) fn with_recorded_stack(specs: &[String]) -> anyhow::Result<Vec<String>> {
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
pub(super) fn opener(trust: &TrustArgs) -> anyhow::Result<Opener> {
    let keys = trusted_keys(trust.trusted_keys.as_deref())?;
    let policy =
        pkgset::capabilities::load_policy(trust.policy.as_deref()).map_err(|e| anyhow!(e))?;
    let mut op = Opener::with_policy(keys, policy);
    let list = trust
        .repositories
        .as_deref()
        .unwrap_or(std::path::Path::new(repo::allow::DEFAULT_PATH));
    op.set_repositories(repo::allow::AllowList::load(list).map_err(|e| anyhow!(e))?);
    Ok(op)
}

pub(super) fn trusted_keys(given: Option<&Path>) -> anyhow::Result<TrustedKeys> {
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

pub(super) fn warn_refused(refused: &[Refusal]) {
    for r in refused {
        eprintln!("pkgtool: warning: {}: {}", r.path.display(), r.reason);
    }
}

pub(super) fn short(c: &Candidate) -> String {
    c.id().to_string()[..16].to_owned()
}

pub(super) fn pkg_json(c: &Candidate) -> PkgJson {
    PkgJson {
        name: c.manifest().name.clone(),
        version: c.manifest().version.to_string(),
        id: c.id().to_string(),
        file: c.path.display().to_string(),
    }
}

/// The opening of a change to the top layer: an update a crash interrupted is settled
/// (undone), and the layer's lock is taken. The caller has entered the layer's owner.
pub(super) fn begin_change(
    paths: &generation::LayerPaths,
    svc: &crate::cli::ServiceArgs,
) -> anyhow::Result<(crate::cmd::services::Ctx, generation::Lock)> {
    let ctx = crate::cmd::services::Ctx::new(svc, &paths.dir);
    crate::cmd::services::settle(paths, &ctx)?;
    let lock = generation::Lock::acquire(paths)?;
    Ok((ctx, lock))
}

/// The sets a change to the top layer builds on: loaded, with a first generation
/// committed if the layer has none, and what `packages/` holds accounted for.
pub(super) fn load_for_change(
    stack: &Stack,
    top: usize,
    op: &mut Opener,
) -> anyhow::Result<Loaded> {
    let mut loaded = stack.load_all(top, op)?;
    commit_initial(stack, &mut loaded, top, op)?;
    reconcile_top(stack, &mut loaded, top, op)?;
    Ok(loaded)
}

/// Commits the first generation of the top layer if it has none (and the plan of it found
/// packages), so the change that follows has a generation to roll back to.
pub(super) fn commit_initial(
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
pub(super) fn reconcile_top(
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
pub(super) fn damaged_list(damaged: &[Damaged]) -> String {
    damaged
        .iter()
        .map(|d| format!("{} ({})", d.label, d.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(super) fn report_change(
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
            broken: plan.broken.iter().map(ProblemJson::from).collect(),
            skipped: plan.skipped.iter().map(SkippedJson::from).collect(),
        })?;
    } else {
        match generation {
            Some(n) => writeln!(out, "layer {layer}: generation {n}: {}", plan.summary())?,
            None => writeln!(out, "layer {layer}: no change")?,
        }
    }
    Ok(())
}

/// After a change: records the files of `packages/` as accounted for by the new set (the
/// copies just made hold active packages, the files just removed are gone), by the same
/// reconcile the daemon runs; anything else it finds is committed too.
pub(super) fn record_files(
    stack: &Stack,
    top: usize,
    p: &Plan,
    op: &mut Opener,
) -> anyhow::Result<()> {
    reconcile::once(stack, top, &p.sets, op)?;
    Ok(())
}

pub(super) fn remove_files(files: &[Candidate], ids: &HashSet<format::archive::PackageId>) {
    for c in files.iter().filter(|c| ids.contains(&c.id())) {
        if let Err(e) = fs::remove_file(&c.path) {
            eprintln!("pkgtool: warning: cannot remove {}: {e}", c.path.display());
        }
    }
}

pub(super) fn refusals_json(r: &[Refusal]) -> Vec<RefusalJson> {
    r.iter().map(RefusalJson::from).collect()
}
