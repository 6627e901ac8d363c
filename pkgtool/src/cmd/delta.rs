//! `pkgtool delta OLD.hpkg NEW.hpkg -o D`: what moves from one version of a package to
//! the next (`format::delta`; FORMAT.md §14, docs/delta.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use format::delta::{self, DeltaOptions};

use crate::output::{human_size, Out};

/// `pkgtool delta`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  pkgtool delta libssl3-3.0.17.hpkg libssl3-3.0.22.hpkg -o libssl3-3.0.17-3.0.22.delta
  pkgtool apply-delta libssl3-3.0.17.hpkg libssl3-3.0.17-3.0.22.delta -o libssl3-3.0.22.hpkg

A chunk the old package has is copied from it; a changed file is shipped as a zstd patch
against the file at the same path in the old package (its chunks are compressed again on
apply, with the new package's method and level, and checked against their hashes); what
does not shrink that way is shipped whole. The delta is written atomically. See
docs/delta.md.")]
pub struct DeltaArgs {
    /// The package the delta applies to.
    pub old: PathBuf,
    /// The package it makes.
    pub new: PathBuf,
    /// Output file (the delta).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// zstd level of the patches (1-22; higher is smaller and slower to build, not to apply).
    #[arg(long, default_value_t = delta::DEFAULT_LEVEL,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    pub level: i32,
    /// Print what the delta holds as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: DeltaArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let old = super::open(&a.old)?;
    let new = super::open(&a.new)?;
    let opts = DeltaOptions { level: a.level };
    let st = delta::write(&old, &new, &opts, &a.output).with_context(|| {
        format!(
            "cannot make a delta from {} to {}",
            a.old.display(),
            a.new.display()
        )
    })?;
    if a.json {
        out.json(&st)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (om, nm) = (old.manifest(), new.manifest());
    writeln!(
        out,
        "{}: {} for {} {} -> {} {} (the new package: {}; chunk dedup alone: {})",
        a.output.display(),
        human_size(st.delta_size),
        om.name,
        om.version,
        nm.name,
        nm.version,
        human_size(st.new_size),
        human_size(st.dedup_bytes),
    )?;
    writeln!(
        out,
        "  {} chunks: {} copied from the old package, {} made from {} patches ({}), {} shipped whole ({}); metadata {} as {}",
        st.pieces,
        st.copied,
        st.patched,
        st.patches,
        human_size(st.patch_bytes),
        st.literal,
        human_size(st.literal_bytes),
        human_size(st.new_metadata),
        human_size(st.metadata_encoded),
    )?;
    Ok(ExitCode::SUCCESS)
}
