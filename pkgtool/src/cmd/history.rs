//! `pkgtool history --layer DIR`: the layer's audit trail (`pkgset::journal`).

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use pkgset::generation::LayerPaths;
use pkgset::owner::AsOwner;

use crate::output::HistoryJson;
use crate::output::Out;

/// `pkgtool history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The layer (its directory).
    #[arg(long = "layer", value_name = "DIR")]
    pub layer: PathBuf,
    /// Only the newest N records.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Print the records as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: HistoryArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    if !a.layer.is_dir() {
        bail!("layer {}: not a directory", a.layer.display());
    }
    let layer = LayerPaths::new(&a.layer);
    let _as = AsOwner::enter(&layer);
    let h =
        pkgset::journal::read(&layer).map_err(|e| anyhow!("{}", pkgset::stack::one_line(&e)))?;
    let from = a.last.map_or(0, |n| h.records.len().saturating_sub(n));
    let records = &h.records[from..];
    if a.json {
        out.json(&HistoryJson {
            layer: a.layer.display().to_string(),
            records,
            skipped: h.skipped,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if h.records.is_empty() && h.skipped == 0 {
        writeln!(out, "layer {}: no changes recorded", a.layer.display())?;
    }
    for r in records {
        writeln!(out, "{}", r.summary())?;
    }
    if h.skipped > 0 {
        writeln!(
            out,
            "({} torn or damaged record{} skipped)",
            h.skipped,
            if h.skipped == 1 { "" } else { "s" }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
