//! `pkgtool list PKG [-l] [--json]`.

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use format::archive::Kind;

use crate::output::ListLineJson;
use crate::output::{escape, mode_string, utc_time, Out};

/// `pkgtool list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The package.
    pub package: PathBuf,
    /// Long listing: mode, size, mtime, path, link target.
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    /// JSON Lines, one object per entry.
    #[arg(long, conflicts_with = "long")]
    pub json: bool,
}

pub fn run(a: ListArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let ar = super::open(&a.package)?;
    for w in ar.walk() {
        let path = escape(&w.path);
        let target = match w.attr.kind {
            Kind::Symlink => Some(escape(ar.read_link(w.entry)?)),
            _ => None,
        };
        if a.json {
            out.json_line(&ListLineJson {
                path,
                kind: w.attr.kind.name(),
                mode: format!("{:04o}", w.attr.perm),
                size: w.attr.size,
                mtime: w.attr.mtime,
                nlink: w.attr.nlink,
                target,
            })?;
        } else if a.long {
            let suffix = if w.attr.kind == Kind::Dir { "/" } else { "" };
            write!(
                out,
                "{} {:>12} {} {path}{suffix}",
                mode_string(w.attr.kind, w.attr.perm),
                w.attr.size,
                utc_time(w.attr.mtime)
            )?;
            match target {
                Some(t) => writeln!(out, " -> {t}")?,
                None => writeln!(out)?,
            }
        } else {
            writeln!(out, "{path}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
