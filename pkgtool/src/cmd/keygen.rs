//! `pkgtool keygen NAME`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use format::keys::SecretKey;

use crate::cli::KeygenArgs;
use crate::output::Out;

pub fn run(a: KeygenArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate(&a.name).context("cannot generate key")?;
    let (secret, public) = key.save(&a.dir).context("cannot write key")?;
    writeln!(out, "key id:     {}", key.public().id())?;
    writeln!(out, "secret key: {} (keep it private)", secret.display())?;
    writeln!(out, "public key: {}", public.display())?;
    Ok(ExitCode::SUCCESS)
}
