//! `pkgtool apply-delta OLD.hpkg D -o NEW.hpkg`: the new package, byte for byte, checked
//! against its signed id before it appears (`format::delta::apply`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use format::delta;
use format::keys::TrustedKeys;

use super::verify::keys_dir;
use crate::output::AppliedJson;
use crate::output::{human_size, Out};

/// `pkgtool apply-delta`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  pkgtool apply-delta libssl3-3.0.17.hpkg libssl3-3.0.17-3.0.22.delta -o libssl3-3.0.22.hpkg
  pkgtool apply-delta old.hpkg d.delta -o new.hpkg --key alice.pub

The new package is made in a temporary file next to OUTPUT; every chunk is checked
against its hash as it is made, then the whole package is opened as any package is (its
metadata must hash to the id its signature signs) and renamed to OUTPUT. On any error
nothing is written. A delta made from another package than OLD is refused, naming both
ids. With --key or --trusted-keys (default: /etc/packagefs/keys when it exists) the new
package's signer must also be trusted.")]
pub struct ApplyDeltaArgs {
    /// The package the delta was made from.
    pub old: PathBuf,
    /// The delta (`pkgtool delta`).
    pub delta: PathBuf,
    /// Where to write the new package.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Trust exactly this public key (NAME.pub).
    #[arg(long, conflicts_with = "trusted_keys")]
    pub key: Option<PathBuf>,
    /// Trust the *.pub keys in this directory.
    #[arg(long)]
    pub trusted_keys: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ApplyDeltaArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let keys: Option<TrustedKeys> = match (&a.key, keys_dir(a.trusted_keys.as_deref())) {
        (Some(k), _) => Some(TrustedKeys::load_file(k).context("cannot load key")?),
        (None, Some(dir)) => Some(TrustedKeys::load_dir(&dir).context("cannot load trusted keys")?),
        (None, None) => None,
    };
    let old = super::open(&a.old)?;
    let done = delta::apply(&old, &a.delta, &a.output, keys.as_ref())
        .with_context(|| format!("cannot apply {} to {}", a.delta.display(), a.old.display()))?;
    let new = super::open(&a.output)?;
    let m = new.manifest();
    let v = AppliedJson {
        output: a.output.display().to_string(),
        id: done.id.to_string(),
        old_id: done.old_id.to_string(),
        name: m.name.clone(),
        version: m.version.to_string(),
        size: done.file_size,
        signer: new.signer().map(|k| k.id().to_string()),
        trusted: keys.is_some(),
    };
    if a.json {
        out.json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let signer = match (&v.signer, v.trusted) {
        (Some(k), true) => format!("signed by trusted key {k}"),
        (Some(k), false) => format!("signed by key {k} (trust not checked)"),
        (None, _) => "unsigned".to_string(),
    };
    writeln!(
        out,
        "{}: {} {}, id {}, {}, {signer}",
        v.output,
        v.name,
        v.version,
        v.id,
        human_size(v.size)
    )?;
    Ok(ExitCode::SUCCESS)
}
