//! `pkgtool remove`: packages out of a layer, refusing to leave others broken unless --force.

use crate::cli::LayerArgs;
use crate::cli::ServiceArgs;
use clap::Args;
use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use pkgset::owner::AsOwner;
use pkgset::stack::{now_utc, Damaged};
use pkgset::{plan, Change};

use crate::cmd::services;
use crate::cmd::set::*;
use crate::output::Out;

/// `pkgtool remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Package names.
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Also remove the packages that would be left with an unmet requirement (named).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub svc: ServiceArgs,
}

pub fn remove(a: RemoveArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let paths = &stack.layers[top].paths;
    let (ctx, lock) = begin_change(paths, &a.svc)?;
    let mut loaded = load_for_change(&stack, top, &mut op)?;
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
    let from = loaded.lists[top].as_ref().and_then(|l| l.generation());
    let Some(mut run) = services::Run::start(out, &ctx, paths, &splan, from, &reason, &reason)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
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
