//! `pkgtool gc`: old generations and the pool files only they held.

use crate::cli::LayerArgs;
use clap::Args;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use pkgset::generation::{self, Lock};
use pkgset::owner::AsOwner;
use pkgset::{LayerSpec, Stack};

use crate::cmd::set::*;
use crate::output::GcJson;
use crate::output::Out;

/// `pkgtool gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// How many of the newest generations to keep (the active one is always kept).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: u64,
    #[command(flatten)]
    pub layer: LayerArgs,
}

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
