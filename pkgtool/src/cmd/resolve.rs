//! `pkgtool resolve`: the active set a stack of layers would have, or why not; nothing changes.

use crate::cli::TrustArgs;
use clap::Args;
use std::io::Write;
use std::process::ExitCode;

use anyhow::anyhow;
use pkgset::{Candidate, Want};

use crate::cmd::set::*;
use crate::output::{LayerJson, ResolveJson};
use crate::output::{Out, ProblemJson};

/// `pkgtool resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Layers, lowest first: NAME=DIR or DIR.
    #[arg(required = true, value_name = "[NAME=]DIR")]
    pub layers: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
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
                    problems: Vec::new(),
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
                    problems: r.problems.iter().map(ProblemJson::from).collect(),
                    refused: refusals_json(&refused),
                })?;
                Ok(ExitCode::from(1))
            } else {
                Err(anyhow!("cannot resolve: {r}"))
            }
        }
    }
}
