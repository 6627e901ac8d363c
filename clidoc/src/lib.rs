//! Man pages and shell completions of a clap command line, written at packaging time.
//!
//! `scripts/package` runs `pkgtool --generate-docs DIR` and `packagefs --generate-docs DIR`,
//! which call [`write`] with their own `clap::Command`, so the pages and completions always
//! describe the binaries they ship with. The flag is seen by [`requested`] before clap
//! parses anything: as a clap argument, even a hidden one, it would appear in the
//! completions.
//!
//! ```text
//! DIR/man/NAME.1  DIR/man/NAME-SUB.1 ...      one page per binary and per subcommand
//! DIR/bash/NAME   DIR/zsh/_NAME   DIR/fish/NAME.fish
//! ```
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let cmd = clap::Command::new("demo")
//!     .version("1.0")
//!     .subcommand(clap::Command::new("run").about("Run it"));
//! let files = clidoc::write(cmd, dir.path()).unwrap();
//! assert!(files.contains(&dir.path().join("man/demo-run.1")));
//! assert!(files.contains(&dir.path().join("fish/demo.fish")));
//! ```
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The flag that asks a binary for its docs: `BINARY --generate-docs DIR`.
pub const FLAG: &str = "--generate-docs";

/// `Some(DIR)` if the process was run as `BINARY --generate-docs DIR`, exactly.
pub fn requested() -> Option<PathBuf> {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == OsStr::new(FLAG) => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// [`write`], listing the files written on stdout; an error is one line on stderr
/// (`BINARY: cannot write ...`) and exit status 1.
pub fn run(binary: &str, cmd: clap::Command, out: &Path) -> ExitCode {
    match write(cmd, out) {
        Ok(files) => {
            let mut stdout = io::stdout().lock();
            for f in files {
                if writeln!(stdout, "{}", f.display()).is_err() {
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "{binary}: cannot write the docs into {}: {e}",
                out.display()
            );
            ExitCode::from(1)
        }
    }
}

/// Writes the man pages and the bash, zsh and fish completions of `cmd` under `out`
/// (created if needed) and returns the files written. Hidden subcommands, and clap's
/// `help`, get no page.
pub fn write(cmd: clap::Command, out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cmd = cmd;
    // Propagates versions and bin names ("pkgtool install") down to the subcommands.
    cmd.build();
    let mut files = Vec::new();
    let man = out.join("man");
    fs::create_dir_all(&man).map_err(|e| with_path(&man, e))?;
    man_pages(&cmd, cmd.get_name().to_owned(), &man, &mut files)?;

    let name = cmd.get_name().to_owned();
    for (shell, file) in [
        (Shell::Bash, format!("bash/{name}")),
        (Shell::Zsh, format!("zsh/_{name}")),
        (Shell::Fish, format!("fish/{name}.fish")),
    ] {
        let path = out.join(file);
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut buf);
        write_file(&path, &buf)?;
        files.push(path);
    }
    Ok(files)
}

/// `page` is the page's name: `pkgtool`, `pkgtool-install`, `pkgtool-graft-deb`.
fn man_pages(
    cmd: &clap::Command,
    page: String,
    dir: &Path,
    files: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, format!("{page}-{}", sub.get_name()), dir, files)?;
    }
    let path = dir.join(format!("{page}.1"));
    let mut buf = Vec::new();
    // The page is named after the page (its title); the synopsis keeps the bin name.
    clap_mangen::Man::new(cmd.clone().name(page))
        .render(&mut buf)
        .map_err(|e| with_path(&path, e))?;
    write_file(&path, &buf)?;
    files.push(path);
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| with_path(parent, e))?;
    }
    let mut w = BufWriter::new(File::create(path).map_err(|e| with_path(path, e))?);
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(|e| with_path(path, e))
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .version("2.5.0")
            .propagate_version(true)
            .about("A demo")
            .subcommand(
                clap::Command::new("graft")
                    .about("Graft things")
                    .subcommand(clap::Command::new("deb").about("From a .deb")),
            )
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_subcommand_and_three_completions() {
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<String> = write(demo(), dir.path())
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        files.sort();
        assert_eq!(
            files,
            [
                "bash/demo",
                "fish/demo.fish",
                "man/demo-graft-deb.1",
                "man/demo-graft.1",
                "man/demo.1",
                "zsh/_demo"
            ]
        );
        let page = fs::read_to_string(dir.path().join("man/demo-graft-deb.1")).unwrap();
        assert!(page.contains(".TH demo-graft-deb 1"), "{page}");
        assert!(page.contains("demo graft deb"), "the synopsis: {page}");
        assert!(page.contains("2.5.0"), "the version: {page}");
    }
}
