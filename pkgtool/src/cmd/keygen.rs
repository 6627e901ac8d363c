//! `pkgtool keygen NAME`, where NAME may be a path (`keys/alice`), as `ssh-keygen -f` takes.

use clap::Args;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use format::keys::SecretKey;

use crate::output::Out;

/// `pkgtool keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key name or path: NAME.key and NAME.pub are written (keys/alice: keys/alice.key and
    /// keys/alice.pub, a key named alice).
    #[arg(value_name = "NAME")]
    pub name: PathBuf,
    /// Directory NAME is relative to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

pub fn run(a: KeygenArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let (dir, name) = split(&a.dir, &a.name)?;
    let key = SecretKey::generate(name).context("cannot generate key")?;
    let (secret, public) = key.save(&dir).context("cannot write key")?;
    writeln!(out, "key id:     {}", key.public().id())?;
    writeln!(out, "secret key: {} (keep it private)", secret.display())?;
    writeln!(out, "public key: {}", public.display())?;
    Ok(ExitCode::SUCCESS)
}

/// `keys/alice` under `--dir D`: the files go to `D/keys`, the key is named `alice`.
fn split<'a>(dir: &Path, name: &'a Path) -> anyhow::Result<(PathBuf, &'a str)> {
    let Some(Component::Normal(last)) = name.components().next_back() else {
        bail!(
            "cannot generate key: {}: not a key name or a path ending in one",
            name.display()
        );
    };
    let Some(last) = last.to_str() else {
        bail!(
            "cannot generate key: {}: the key name is not UTF-8",
            name.display()
        );
    };
    match name.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => Ok((dir.join(parent), last)),
        _ => Ok((dir.to_owned(), last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_the_directory_and_the_key() {
        let (d, n) = split(Path::new("."), Path::new("keys/alice")).unwrap();
        assert_eq!((d, n), (PathBuf::from("./keys"), "alice"));
        let (d, n) = split(Path::new("out"), Path::new("bob")).unwrap();
        assert_eq!((d, n), (PathBuf::from("out"), "bob"));
        let (d, n) = split(Path::new("."), Path::new("/etc/packagefs/keys/c")).unwrap();
        assert_eq!((d, n), (PathBuf::from("/etc/packagefs/keys"), "c"));
        assert!(split(Path::new("."), Path::new("keys/..")).is_err());
        assert!(split(Path::new("."), Path::new("/")).is_err());
    }
}
