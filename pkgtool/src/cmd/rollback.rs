//! `pkgtool rollback`: a layer back to an earlier generation, with its services.

use crate::cli::LayerArgs;
use crate::cli::ServiceArgs;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use pkgset::generation;
use pkgset::owner::AsOwner;
use pkgset::reconcile;

use crate::cmd::services;
use crate::cmd::set::*;
use crate::output::Out;

/// `pkgtool rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The generation to switch to (default: the newest one before the active one).
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub svc: ServiceArgs,
}

pub fn rollback(a: RollbackArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let paths = &stack.layers[top].paths;
    let name = &stack.layers[top].name;
    let (ctx, lock) = begin_change(paths, &a.svc)?;
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
    let would = format!("{reason}: {}", p.summary());
    let Some(mut run) = services::Run::start(out, &ctx, paths, &splan, current, &reason, &would)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
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
