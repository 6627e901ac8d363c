//! `pkgtool generations`: a layer's generations.

use crate::cli::LayerArgs;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use pkgset::generation::{self};
use pkgset::LayerSpec;

use crate::output::GenerationJson;
use crate::output::Out;

/// `pkgtool generations`.
#[derive(Debug, Args)]
pub struct GenerationsArgs {
    #[command(flatten)]
    pub layer: LayerArgs,
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
        gens.push(GenerationJson {
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
