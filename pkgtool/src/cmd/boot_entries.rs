//! `pkgtool boot-entries`: a Boot Loader Specification entry per generation of a layer
//! (`pkgset::boot::boot_entries`), each pinning it with `packagefs.generation=N`.

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use pkgset::boot::EntrySpec;
use pkgset::generation::LayerPaths;
use pkgset::owner::AsOwner;

use crate::output::Out;
use crate::output::{EntriesJson, EntryJson};

/// `pkgtool boot-entries`.
#[derive(Debug, Args)]
pub struct BootEntriesArgs {
    /// The layer booted from (its directory).
    #[arg(long = "layer", value_name = "DIR")]
    pub layer: PathBuf,
    /// The boot loader's entries directory (loader/entries on the boot partition).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The kernel, as the boot loader names it (relative to its partition).
    #[arg(long, value_name = "PATH")]
    pub linux: String,
    /// The initramfs, as the boot loader names it.
    #[arg(long, value_name = "PATH")]
    pub initrd: String,
    /// Kernel command line every entry gets (the pin is added).
    #[arg(long, value_name = "OPTIONS", default_value = "")]
    pub options: String,
    /// Print what was written and removed as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BootEntriesArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let layer = LayerPaths::new(&a.layer);
    if !layer.state().is_dir() {
        bail!(
            "layer {}: no state/ directory: it has no generations",
            a.layer.display()
        );
    }
    let spec = EntrySpec {
        linux: a.linux,
        initrd: a.initrd,
        options: a.options,
    };
    // Read the layer with its owner's rights and under its lock; write the entries (the
    // boot partition is not the layer's) with ours.
    let entries = {
        let _as = AsOwner::enter(&layer);
        let _lock = super::lock_layer(&layer)?;
        pkgset::boot::boot_entries(&layer, &spec)
            .map_err(|e| anyhow!("{}", pkgset::stack::one_line(&e)))?
    };
    if entries.len() < 2 {
        bail!("layer {}: no generations", a.layer.display());
    }
    let removed = pkgset::boot::write_entries(&a.dir, &entries)
        .map_err(|e| anyhow!("cannot write boot entries: {}", pkgset::stack::one_line(&e)))?;
    if a.json {
        out.json(&EntriesJson {
            dir: a.dir.display().to_string(),
            entries: entries
                .iter()
                .map(|e| EntryJson {
                    file: e.file.clone(),
                    generation: e.generation,
                })
                .collect(),
            removed,
        })?;
    } else {
        let gens = entries.len() - 1;
        writeln!(
            out,
            "{}: {} and {gens} generation entr{} written{}",
            a.dir.display(),
            pkgset::boot::DEFAULT_ENTRY,
            if gens == 1 { "y" } else { "ies" },
            if removed.is_empty() {
                String::new()
            } else {
                format!("; removed {}", removed.join(" "))
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
