//! `pkgtool bless --layer DIR`: this boot is good (boot assessment, `pkgset::boot`).

use clap::Args;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use pkgset::generation::LayerPaths;
use pkgset::owner::AsOwner;

use crate::output::Out;

/// `pkgtool bless`.
#[derive(Debug, Args)]
pub struct BlessArgs {
    /// The layer (its directory).
    #[arg(long = "layer", value_name = "DIR")]
    pub layer: std::path::PathBuf,
    /// Refuse while systemd lists failed units (`systemctl list-units --state=failed`).
    #[arg(long)]
    pub check_failed_units: bool,
}

pub fn run(a: BlessArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    if a.check_failed_units {
        let failed = failed_units()?;
        if !failed.is_empty() {
            bail!(
                "not blessed: {} failed unit{}: {}",
                failed.len(),
                if failed.len() == 1 { "" } else { "s" },
                failed.join(", ")
            );
        }
    }
    if !a.layer.is_dir() {
        bail!("layer {}: not a directory", a.layer.display());
    }
    let layer = LayerPaths::new(&a.layer);
    let _as = AsOwner::enter(&layer);
    let _lock = super::lock_layer(&layer)?;
    let said =
        pkgset::boot::bless(&layer).map_err(|e| anyhow!("{}", pkgset::stack::one_line(&e)))?;
    writeln!(out, "{said}")?;
    Ok(ExitCode::SUCCESS)
}

/// The units systemd lists as failed.
fn failed_units() -> anyhow::Result<Vec<String>> {
    let o = std::process::Command::new("systemctl")
        .args([
            "list-units",
            "--state=failed",
            "--plain",
            "--no-legend",
            "--no-pager",
        ])
        .output()
        .map_err(|e| anyhow!("cannot ask systemd for failed units: systemctl: {e}"))?;
    if !o.status.success() {
        bail!(
            "cannot ask systemd for failed units: systemctl exited {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}
