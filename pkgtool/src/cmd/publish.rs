//! `pkgtool publish`: packages into a repository, and a new signed index.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use format::keys::SecretKey;

use crate::output::PublishJson;
use crate::output::{human_size, Out};

/// `pkgtool publish`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  pkgtool publish hello-1.0.0.hpkg --repo /srv/packagefs/main --key alice.key\n  pkgtool publish hello-1.0.0.hpkg --repo http://repo.lan:8080/main --key alice.key\n  pkgtool publish hello-1.0.0.hpkg --repo oci://registry.lan:5000/packagefs/main --key alice.key\n\nA directory is what a static HTTP server (nginx) then serves; http:// uploads with PUT\n(nginx's dav module, `dav_methods PUT`); oci:// pushes blobs to a registry. Each package\nis stored whole under its sha256 (blobs/sha256/HEX); the index (which packages and\nversions exist, their ids) is written last, with a version one higher, signed by --key.\nAn existing index must be signed by the same key. See docs/fleet.md."
)]
pub struct PublishArgs {
    /// Package files (whole, signed).
    #[arg(required = true)]
    pub packages: Vec<PathBuf>,
    /// The repository: a directory, http://HOST:PORT/PATH or oci://HOST:PORT/NAME.
    #[arg(long, value_name = "DIR|URL")]
    pub repo: String,
    /// The key that signs the index.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The repository's name, for a new repository (default: main); clients record the
    /// last index version they accepted under it.
    #[arg(long)]
    pub name: Option<String>,
    /// Ship prefetch lists: DIR/<package id>.prefetch, as recorded by packagefs
    /// `-o prefetch_record=DIR` during a first start; the daemon fetches those chunks in the
    /// background after mount.
    #[arg(long, value_name = "DIR")]
    pub prefetch: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PublishArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let key =
        SecretKey::load(&a.key).with_context(|| format!("cannot load {}", a.key.display()))?;
    let target = repo::Target::parse(&a.repo).map_err(|e| anyhow!(e))?;
    let p = repo::publish(
        &a.packages,
        &target,
        &key,
        a.name.as_deref(),
        a.prefetch.as_deref(),
        &repo::Policy::default(),
    )
    .map_err(|e| anyhow!("cannot publish to {}: {e}", a.repo))?;
    if a.json {
        out.json(&PublishJson {
            repository: &p.index.repository,
            version: p.index.version,
            added: &p.added,
            uploaded: p.uploaded,
        })?;
    } else {
        for e in &p.added {
            writeln!(
                out,
                "published {} ({}, {})",
                e.label(),
                &e.id[..16],
                human_size(e.size)
            )?;
        }
        writeln!(
            out,
            "repository {}: index version {}, {} packages",
            p.index.repository,
            p.index.version,
            p.index.packages.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
