//! One module per subcommand; each `run` calls the libraries and writes to `Out`.

pub mod apply_delta;
pub mod bless;
pub mod boot_entries;
pub mod build;
pub mod cat;
pub mod delta;
pub mod extract;
pub mod fetch;
pub mod gc;
pub mod generations;
pub mod graft;
pub mod history;
pub mod info;
pub(crate) mod install;
pub mod keygen;
pub mod list;
pub mod publish;
pub mod pull;
pub mod remove;
pub mod resolve;
pub mod rollback;
pub mod services;
mod set;
pub mod status;
pub mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use format::archive::Archive;

use crate::cli::Command;
use crate::output::Out;

/// Runs one command.
pub fn run(cmd: Command, out: &mut Out) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Keygen(a) => keygen::run(a, out),
        Command::Build(a) => build::run(a, out),
        Command::Info(a) => info::run(a, out),
        Command::List(a) => list::run(a, out),
        Command::Cat(a) => cat::run(a, out),
        Command::Extract(a) => extract::run(a, out),
        Command::Verify(a) => verify::run(a, out),
        Command::Resolve(a) => resolve::resolve(a, out),
        Command::Install(a) => install::install(a, out),
        Command::Update(a) => install::install(a, out),
        Command::Remove(a) => remove::remove(a, out),
        Command::Status(a) => status::status(a, out),
        Command::Generations(a) => generations::generations(a, out),
        Command::Rollback(a) => rollback::rollback(a, out),
        Command::Gc(a) => gc::gc(a, out),
        Command::Bless(a) => bless::run(a, out),
        Command::BootEntries(a) => boot_entries::run(a, out),
        Command::History(a) => history::run(a, out),
        Command::Graft(a) => graft::run(a, out),
        Command::Delta(a) => delta::run(a, out),
        Command::ApplyDelta(a) => apply_delta::run(a, out),
        Command::Publish(a) => publish::run(a, out),
        Command::Pull(a) => pull::run(a, out),
        Command::Fetch(a) => fetch::run(a, out),
    }
}

/// Opens a package with a message that names it. A thin package reads its chunks from
/// the chunk store, and those not there from its repositories (as the daemon does), so
/// `cat`, `extract` and `verify` work on it; `info` and `list` read only its metadata.
pub fn open(path: &Path) -> anyhow::Result<Archive> {
    open_with(path, None)
}

/// [`open`] with thin packages read through the chunk store `store` (default:
/// [`chunk_store`]).
pub fn open_with(path: &Path, store: Option<&Path>) -> anyhow::Result<Archive> {
    let f = format::archive::open_regular(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let store = store.map_or_else(chunk_store, Path::to_owned);
    let heaps = repo::RepoHeaps::at(&store, 4 << 30, repo::Policy::default());
    Archive::from_file_with(f, path, None, &heaps)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// The chunk store pkgtool reads thin packages through: packagefs's
/// (/var/cache/packagefs/chunks) for root, else `$XDG_CACHE_HOME/packagefs/chunks`
/// (`~/.cache/packagefs/chunks`), so a user never writes into root's.
pub fn chunk_store() -> std::path::PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return fetch::DEFAULT_CHUNK_STORE.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| Path::new(d).is_absolute())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("packagefs/chunks")
}

/// Takes a layer's lock, with a message that names the layer.
pub fn lock_layer(
    layer: &pkgset::generation::LayerPaths,
) -> anyhow::Result<pkgset::generation::Lock> {
    pkgset::generation::Lock::acquire(layer).map_err(|e| {
        anyhow::anyhow!(
            "cannot lock {}: {}",
            layer.dir.display(),
            pkgset::stack::one_line(&e)
        )
    })
}
