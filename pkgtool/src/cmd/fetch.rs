//! `pkgtool fetch`: thin packages of a layer made whole on disk.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use format::archive::Archive;
use pkgset::LayerSpec;

use crate::cli::TrustArgs;
use crate::cmd::set::trusted_keys;
use crate::output::{human_size, Out};

/// The default chunk store, shared with packagefs.
pub const DEFAULT_CHUNK_STORE: &str = "/var/cache/packagefs/chunks";

/// `pkgtool fetch`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  pkgtool fetch --layer /pkg/system\n  pkgtool fetch hello --layer /pkg/user --chunk-store /var/cache/packagefs/chunks\n\nEvery thin package of the layer (in packages/ and in the pool), or those named, is made\nwhole: the chunks not in the chunk store are fetched from the package's repositories\n(several requests in flight), each checked against the signed chunk index, the whole\npackage is written beside the thin one, checked (its id, every chunk) and renamed over\nit. A system layer should be whole before it boots."
)]
pub struct FetchArgs {
    /// Package names (default: every thin package of the layer).
    pub names: Vec<String>,
    /// The layer, as NAME=DIR or DIR.
    #[arg(long, value_name = "[NAME=]DIR")]
    pub layer: String,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// The chunk store (shared with packagefs: chunks it fetched are not fetched again).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHUNK_STORE)]
    pub chunk_store: PathBuf,
    /// Requests in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
}

pub fn run(a: FetchArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let keys = trusted_keys(a.trust.trusted_keys.as_deref())?;
    let layer = LayerSpec::parse(&a.layer).map_err(|e| anyhow!("bad layer {e}"))?;
    let store = repo::ChunkStore::open(&a.chunk_store, u64::MAX)
        .with_context(|| format!("cannot open the chunk store {}", a.chunk_store.display()))?;
    let heaps = repo::RepoHeaps::new(Arc::new(store), repo::Policy::default());
    let _lock = crate::cmd::lock_layer(&layer.paths)?;
    let mut made = 0;
    let mut failed = Vec::new();
    // The pool first: a daemon serves the pool's copy, and looks again when packages/
    // changes, so by then the copy it would adopt is whole.
    for dir in [layer.paths.pool(), layer.paths.packages()] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "hpkg"))
            .collect();
        paths.sort();
        for p in paths {
            let Ok(f) = pkgset::owner::open_in_layer(&p) else {
                continue;
            };
            let Ok(thin) = Archive::from_file_trusted(f, &p, &keys) else {
                continue;
            };
            let name = &thin.manifest().name;
            if !thin.is_thin() || (!a.names.is_empty() && !a.names.contains(name)) {
                continue;
            }
            let label = format!("{name}-{}", thin.manifest().version);
            match repo::make_whole(&heaps, &thin, &dir, a.parallel as usize) {
                Ok(tmp) => {
                    let mode = std::fs::metadata(&p)
                        .map(|m| m.permissions().mode())
                        .unwrap_or(0o644);
                    let _ = tmp
                        .as_file()
                        .set_permissions(std::fs::Permissions::from_mode(mode & 0o777));
                    tmp.persist(&p)
                        .map_err(|e| anyhow!("cannot replace {}: {}", p.display(), e.error))?;
                    pkgset::generation::sync_dir(&dir)?;
                    writeln!(
                        out,
                        "{label}: whole ({}), {}",
                        human_size(thin.header().file_size),
                        p.display()
                    )?;
                    made += 1;
                }
                Err(e) => failed.push(format!("{label}: {e}")),
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("cannot fetch {}", failed.join("; "));
    }
    if made == 0 {
        writeln!(out, "no thin package to fetch")?;
    }
    Ok(ExitCode::SUCCESS)
}
