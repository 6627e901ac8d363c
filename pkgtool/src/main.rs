//! `pkgtool`: build, sign, inspect, verify and extract packagefs packages.
//!
//! A thin binary: `cli.rs` holds the command list and the argument groups several commands
//! share; each `cmd/<name>.rs` holds its command's arguments (`<Name>Args`) and its `run`,
//! which calls the libraries and hands the result to `output.rs`. Errors are printed as one line; exit codes are 0 (ok),
//! 1 (failure) and 2 (usage).

mod cli;
mod cmd;
mod output;
mod progress;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Run as a systemd generator (a link named packagefs-generator to pkgtool).
    // (args_os: other arguments may be file names that are not UTF-8.)
    if std::env::args_os().next().is_some_and(|a| {
        std::path::Path::new(&a).file_name() == Some(std::ffi::OsStr::new("packagefs-generator"))
    }) {
        let args: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return cmd::services::generator(&args);
    }
    // Build time only (scripts/package): the man pages and completions. Not a clap
    // argument, so that the pages and completions do not show it.
    if let Some(dir) = clidoc::requested() {
        use clap::CommandFactory;
        return clidoc::run("pkgtool", cli::Cli::command(), &dir);
    }
    let cli = cli::Cli::parse();
    let stdout = io::stdout();
    let mut out = output::Out::new(stdout.lock());
    let result = cmd::run(cli.command, &mut out);
    let flushed = out.flush();
    match result.and_then(|code| flushed.map(|_| code).map_err(Into::into)) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "pkgtool: {}", output::one_line(&e));
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
