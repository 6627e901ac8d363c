//! `pkgtool install` and `pkgtool update`: new packages into a layer, as one transaction over the services they touch (cmd/services.rs).

use crate::cli::LayerArgs;
use crate::cli::ServiceArgs;
use clap::Args;
use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use pkgset::generation;
use pkgset::owner::AsOwner;
use pkgset::stack::{now_utc, Damaged};
use pkgset::{plan, Candidate, Change};

use crate::cmd::services;
use crate::cmd::set::*;
use crate::output::Out;

/// `pkgtool install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Package files.
    #[arg(required = true)]
    pub packages: Vec<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub svc: ServiceArgs,
}

/// Copies `src` into `dir` as `NAME-VERSION.hpkg` (crash-safely, never over another file);
/// returns the new path, or the path of a file there that already holds the package.
fn copy_into(
    dir: &Path,
    c: &Candidate,
    source: Option<&mut fs::File>,
) -> anyhow::Result<(PathBuf, bool)> {
    let mut source = source;
    let base = format!("{}-{}", c.manifest().name, c.manifest().version);
    for name in [format!("{base}.hpkg"), format!("{base}-{}.hpkg", short(c))] {
        let dst = dir.join(&name);
        let existing = pkgset::owner::open_in_layer(&dst)
            .ok()
            .and_then(|f| format::archive::Archive::from_file(f, &dst).ok());
        if let Some(existing) = existing {
            if existing.id() == c.id() {
                return Ok((dst, false));
            }
            continue;
        }
        if dst.symlink_metadata().is_ok() {
            continue;
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".install-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let mut opened;
        let src: &mut fs::File = match source.take() {
            Some(f) => {
                use std::io::Seek;
                f.rewind()?;
                f
            }
            None => {
                opened = fs::File::open(&c.path)
                    .with_context(|| format!("cannot read {}", c.path.display()))?;
                &mut opened
            }
        };
        std::io::copy(src, tmp.as_file_mut())
            .with_context(|| format!("cannot copy {} to {}", c.path.display(), dir.display()))?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
        tmp.as_file().sync_all()?;
        tmp.persist_noclobber(&dst)
            .map_err(|e| anyhow!("cannot create {}: {}", dst.display(), e.error))?;
        generation::sync_dir(dir)?;
        return Ok((dst, true));
    }
    bail!(
        "{}: files named {base}*.hpkg there hold other packages",
        dir.display()
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

pub fn install(a: InstallArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let stack = stack_of(&a.layer.layers)?;
    let top = stack.layers.len() - 1;
    let mut op = opener(&a.layer.trust)?;
    let mut new = Vec::new();
    // The packages to install are read with the caller's rights, then everything in the
    // layer with its owner's (pkgset::owner): root installing into a user's layer makes
    // files the user owns, and reaches nothing the user could not.
    let mut sources = std::collections::HashMap::new();
    for p in &a.packages {
        let archive = op
            .open_given(p)
            .map_err(|r| anyhow!("refused {}: {r}", p.display()))?;
        let file = format::archive::open_regular(p)
            .with_context(|| format!("cannot read {}", p.display()))?;
        sources.insert(archive.id(), file);
        new.push(Candidate {
            layer: top,
            path: p.clone(),
            archive,
        });
    }
    let _as = AsOwner::enter(&stack.layers[top].paths);
    let paths = &stack.layers[top].paths;
    let pkgdir = paths.packages();
    fs::create_dir_all(&pkgdir).with_context(|| format!("cannot create {}", pkgdir.display()))?;
    let (ctx, lock) = begin_change(paths, &a.svc)?;
    let mut loaded = load_for_change(&stack, top, &mut op)?;
    // A damaged active package is only built on by an install that replaces it.
    let damaged = std::mem::take(&mut loaded.damaged[top]);
    let unreplaced: Vec<Damaged> = damaged
        .iter()
        .filter(|d| !new.iter().any(|c| c.manifest().name == d.name()))
        .cloned()
        .collect();
    if !unreplaced.is_empty() {
        bail!(
            "layer {}: the active set has damaged packages: {}; install a good copy of them, \
             remove them (pkgtool remove NAME) or roll back (pkgtool rollback)",
            stack.layers[top].name,
            damaged_list(&unreplaced)
        );
    }
    let (available, _) = stack.scan(top, &mut op)?;
    let mut p = plan(
        &stack.names(),
        &loaded.sets,
        top,
        &available,
        Change::Install {
            packages: new,
            only_newer: false,
        },
    )
    .map_err(|r| anyhow!("refused: {r}"))?;
    if !damaged.is_empty() {
        if !p.changed.contains(&top) {
            p.changed.push(top);
            p.changed.sort_unstable();
        }
        p.removed.extend(damaged.iter().map(|d| d.label.clone()));
    }
    if p.is_empty() {
        report_change(out, a.layer.json, &stack, top, &p, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let reason = format!("install {}", p.summary());
    let splan = services::plan_of(&stack.names(), &loaded.sets, &p.sets);
    let from = loaded.lists[top].as_ref().and_then(|l| l.generation());
    let Some(mut run) = services::Run::start(out, &ctx, paths, &splan, from, &reason, &reason)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    // Copy the new packages into packages/ (unless they are there already).
    let before: HashSet<_> = loaded.sets[top].iter().map(|c| c.id()).collect();
    let mut copied: Vec<PathBuf> = Vec::new();
    let mut result = Ok(());
    for c in p.sets[top].iter_mut() {
        if before.contains(&c.id()) || same_file(c.path.parent().unwrap_or(Path::new("")), &pkgdir)
        {
            continue;
        }
        match copy_into(&pkgdir, c, sources.get_mut(&c.id())) {
            Ok((dst, fresh)) => {
                if fresh {
                    copied.push(dst.clone());
                }
                c.path = dst;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let committed =
        result.and_then(|_| Ok(stack.commit_pooled(&mut p, &reason, &now_utc(), &mut op)?));
    let n = match committed {
        Ok(ns) => ns.iter().find(|(l, _)| *l == top).map(|(_, n)| *n),
        Err(e) => {
            for f in &copied {
                let _ = fs::remove_file(f);
            }
            run.abort();
            return Err(e);
        }
    };
    run.switched(n)?;
    // Files of replaced packages leave the drop zone (the pool keeps them for rollbacks).
    let gone: HashSet<_> = loaded.sets[top]
        .iter()
        .map(|c| c.id())
        .filter(|id| !p.sets[top].iter().any(|c| c.id() == *id))
        .collect();
    remove_files(&available, &gone);
    record_files(&stack, top, &p, &mut op)?;
    // Let a waiting packagefs in before tearing down a thousand open archives.
    drop(lock);
    report_change(out, a.layer.json, &stack, top, &p, n)?;
    run.finish(out)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
