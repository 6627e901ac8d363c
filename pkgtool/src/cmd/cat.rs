//! `pkgtool cat PKG PATH`.

use clap::Args;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use format::archive::{Archive, EntryId, Kind};

use crate::output::{escape, Out};

/// `pkgtool cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// The package.
    pub package: PathBuf,
    /// Path inside the package (symlinks inside the package are followed).
    pub path: PathBuf,
    /// For a thin package: the chunk store its chunks are read through (default
    /// /var/cache/packagefs/chunks for root, else ~/.cache/packagefs/chunks); chunks not
    /// there are fetched from its repository.
    #[arg(long, value_name = "DIR")]
    pub chunk_store: Option<PathBuf>,
}

pub fn run(a: CatArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let ar = super::open_with(&a.package, a.chunk_store.as_deref())?;
    let path = a.path.as_os_str().as_bytes();
    let e = resolve(&ar, path).with_context(|| format!("cannot cat {}", escape(path)))?;
    let mut r = ar.open_file(e)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read_next(&mut buf).with_context(|| {
            format!("cannot read {} from {}", escape(path), a.package.display())
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves a path inside the package, following symlinks that stay inside it (at most 40).
pub fn resolve(ar: &Archive, path: &[u8]) -> anyhow::Result<EntryId> {
    let mut pending: Vec<Vec<u8>> = components(path);
    pending.reverse();
    let mut stack: Vec<EntryId> = vec![ar.root()];
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        let cur = *stack.last().expect("root stays");
        if comp == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        if ar.attr(cur)?.kind != Kind::Dir {
            bail!("not a directory");
        }
        let Some(next) = ar.lookup(cur, &comp)? else {
            bail!("no such file in the package");
        };
        if ar.attr(next)?.kind == Kind::Symlink {
            hops += 1;
            if hops > 40 {
                bail!("too many levels of symbolic links");
            }
            let target = ar.read_link(next)?;
            if target.starts_with(b"/") {
                bail!("symlink to {} points outside the package", escape(target));
            }
            let mut t = components(target);
            t.reverse();
            pending.extend(t);
            continue;
        }
        stack.push(next);
    }
    let e = *stack.last().expect("root stays");
    match ar.attr(e)?.kind {
        // `file/`, `file/.` and `file/..` name a directory, as they do for the kernel.
        Kind::File if names_a_dir(path) => bail!("not a directory"),
        Kind::File => Ok(e),
        Kind::Dir => bail!("is a directory"),
        Kind::Symlink => unreachable!("symlinks are followed"),
    }
}

/// True if `p` ends in `/`, `/.` or `/..` (or is `.` or `..`).
fn names_a_dir(p: &[u8]) -> bool {
    p.ends_with(b"/") || matches!(p.rsplit(|&b| b == b'/').next(), Some(b".") | Some(b".."))
}

fn components(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}
