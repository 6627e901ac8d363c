//! `pkgtool graft`: signed packages from other ecosystems' packages (docs/grafting.md). The
//! `graft` library builds each tree and manifest; this command signs and writes them.
//!
//! ```text
//! graft deb A.deb B.deb -o OUT/   graft::Debs::plan -> Debs::build(i) -> write_archive
//!                                 into a staging directory -> renamed into OUT/ at the end
//! graft tar X.tar.xz -o X.hpkg    graft::graft_tree(Tar) -> write_archive
//! graft dir DIR -o X.hpkg         graft::graft_tree(Dir) -> write_archive
//! ```
//!
//! All input is read and checked before anything is written, and a failure leaves no
//! output file: archives are written to temporary files and renamed into place last.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use format::archive::writer::write_archive;
use format::archive::{BuildOptions, Compression, Tree};
use format::keys::SecretKey;
use format::manifest::Manifest;
use graft::{Debs, Input, Stats, TreeSpec};

use crate::output::{human_size, Out};
use crate::output::{GraftJson, GraftedJson};
use crate::progress::bytes_bar;

/// `pkgtool graft`.
#[derive(Debug, Args)]
pub struct GraftArgs {
    /// What to graft.
    #[command(subcommand)]
    pub command: GraftCommand,
}

/// The kinds of input `pkgtool graft` reads.
#[derive(Debug, Subcommand)]
pub enum GraftCommand {
    /// One signed package per Debian binary package (.deb).
    #[command(after_help = DEB_HELP)]
    Deb(DebArgs),
    /// A signed package of the tree in a tarball (.tar, .tar.gz, .tar.xz, .tar.zst, ...).
    // (`--version` is the package's version here, not pkgtool's.)
    #[command(after_help = TAR_HELP, disable_version_flag = true)]
    Tar(TarArgs),
    /// A signed package of a directory tree.
    #[command(after_help = DIR_HELP, disable_version_flag = true)]
    Dir(DirArgs),
}

const DEB_HELP: &str = "Example:
  apt-get download hello libc6 libgcc-s1 gcc-12-base
  pkgtool graft deb *.deb -o packages/ --key alice.key --strip-docs

Each X.deb becomes OUTDIR/NAME_VERSION_ARCH.hpkg. The manifest comes from the control file:
Package (names a manifest cannot hold are mapped), Version (mapped to semver: 2.36-9+deb12u4
becomes 2.36.0+debian.9.deb.12.u.4), the first line of Description, Depends and Pre-Depends
as requires (the first alternative of `a | b`, or the one grafted in the same run),
Provides as provides. Dependency cycles among the packages of one run are broken (packagefs
needs an acyclic set): graft packages that depend on each other together. What cannot be
mapped (other alternatives, Breaks, Conflicts, Recommends, ...) is listed in the manifest's
origin.unmapped and printed as a warning. Maintainer scripts are never run: they are listed
in origin.scripts. Absolute symlinks are made relative. See docs/grafting.md.";

const TAR_HELP: &str = "Example:
  pkgtool graft tar node-v20.11.0-linux-x64.tar.xz --name nodejs --version 20.11.0 \\
      --prefix opt/node -o nodejs-20.11.0.hpkg --key alice.key

The compression (none, gzip, xz, lzma, zstd, bzip2) is taken from the file name
(.tar, .tar.gz/.tgz, .tar.xz/.txz, .tar.lzma, .tar.zst/.tzst, .tar.bz2/.tbz2), else from
the data. Entries with an absolute path or `..`, links out of the package and devices are
errors; absolute symlinks are made relative; directories the tarball does not list are
created.";

const DIR_HELP: &str = "Example:
  pkgtool graft dir ./rootfs --name my.tools --version 1.4 -o my.tools-1.4.0.hpkg --key alice.key

Like `pkgtool build`, but the manifest is made from the options, the graft's rules apply
(symlinks out of the package are errors, absolute symlinks are made relative) and
--prefix and --strip-docs are available. The tree is read through descriptors, each file
opened once without following a symlink and checked to be a regular file, so a file
swapped for a symlink while it is read is an error, never followed.";

/// The options every graft shares with `pkgtool build`.
#[derive(Debug, Args)]
pub struct BuildFlags {
    /// Secret key to sign with (NAME.key).
    #[arg(long, required_unless_present = "unsigned")]
    pub key: Option<PathBuf>,
    /// Build unsigned packages (packagefs refuses to mount them; for testing).
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    /// zstd[:LEVEL] (1-22), zlib[:LEVEL] (0-9), lz4 or none. lz4 costs less CPU to read
    /// than zstd and makes larger packages, which need format 1.1 readers.
    #[arg(long, default_value_t = Compression::default(), value_parser = crate::cli::parse_compression)]
    pub compression: Compression,
    /// Chunk size: a power of two from 64K to 1M (suffixes K, M, KiB, MiB).
    #[arg(long, default_value = "256K", value_parser = crate::cli::parse_size)]
    pub chunk_size: u32,
    /// Compression threads (default: one per core).
    #[arg(short = 'j', long = "jobs", default_value_t = 0)]
    pub jobs: usize,
    /// Leave out documentation: the directories usr/share/doc, usr/share/man,
    /// usr/share/info and usr/share/locale of the package (paths after --prefix) and
    /// everything under them.
    #[arg(long)]
    pub strip_docs: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `pkgtool graft deb`.
#[derive(Debug, Args)]
pub struct DebArgs {
    /// The Debian binary packages.
    #[arg(required = true)]
    pub debs: Vec<PathBuf>,
    /// Output directory (created if missing).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Drop dependencies on these Debian packages (like dpkg's --ignore-depends);
    /// repeatable or comma-separated. Each is listed in origin.unmapped.
    #[arg(long, value_name = "PACKAGE", value_delimiter = ',')]
    pub ignore_depends: Vec<String>,
    #[command(flatten)]
    pub build: BuildFlags,
}

/// The manifest options of `graft tar` and `graft dir`.
#[derive(Debug, Args)]
pub struct TreeArgs {
    /// Package name (lowercase letters, digits, '.', '-', '_', '+').
    #[arg(long)]
    pub name: String,
    /// Package version: semver (1.2.3), or any Debian-style version (1.2, 2024a-1),
    /// mapped as `graft deb` maps versions.
    #[arg(long)]
    pub version: String,
    /// One-line summary.
    #[arg(long, default_value = "")]
    pub summary: String,
    /// A requirement, `API` or `API RANGE` (`libc6 >=2.34`); repeatable.
    #[arg(long = "require", value_name = "API [RANGE]")]
    pub requires: Vec<String>,
    /// Put the tree under this directory of the package (opt/app).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// `pkgtool graft tar`.
#[derive(Debug, Args)]
pub struct TarArgs {
    /// The tarball.
    pub tarball: PathBuf,
    #[command(flatten)]
    pub tree: TreeArgs,
    #[command(flatten)]
    pub build: BuildFlags,
}

/// `pkgtool graft dir`.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// The directory.
    pub dir: PathBuf,
    #[command(flatten)]
    pub tree: TreeArgs,
    #[command(flatten)]
    pub build: BuildFlags,
}

/// Runs `pkgtool graft ...`.
pub fn run(a: GraftArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let (flags, packages) = match a.command {
        GraftCommand::Deb(d) => {
            let p = graft_debs(&d)?;
            (d.build, p)
        }
        GraftCommand::Tar(t) => {
            let p = graft_tree(&t.tree, &t.build, Input::Tar(&t.tarball))?;
            (t.build, vec![p])
        }
        GraftCommand::Dir(d) => {
            let p = graft_tree(&d.tree, &d.build, Input::Dir(&d.dir))?;
            (d.build, vec![p])
        }
    };
    if flags.json {
        out.json(&GraftJson { packages })?;
    } else {
        for p in &packages {
            print_human(out, p)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(out: &mut Out, p: &GraftedJson) -> anyhow::Result<()> {
    writeln!(out, "grafted {} -> {}", p.input, p.output)?;
    match &p.origin {
        Some(o) if o.from == "debian" => writeln!(
            out,
            "  {} {}   (Debian {} {} {})",
            p.name, p.version, o.name, o.version, o.arch
        )?,
        _ => writeln!(out, "  {} {}", p.name, p.version)?,
    }
    if !p.requires.is_empty() {
        writeln!(out, "  requires: {}", p.requires.join(", "))?;
    }
    if !p.provides.is_empty() {
        writeln!(out, "  provides: {}", p.provides.join(", "))?;
    }
    writeln!(
        out,
        "  {} files, {} directories, {} symlinks ({} made relative), {} hard links",
        p.files, p.directories, p.symlinks, p.stats.relative_links, p.hardlinks
    )?;
    if p.stats.stripped > 0 {
        writeln!(
            out,
            "  --strip-docs left out {} entries ({})",
            p.stats.stripped,
            human_size(p.stats.stripped_bytes)
        )?;
    }
    writeln!(
        out,
        "  size:  {} of content -> {} package, {} chunks of {} with {}",
        human_size(p.content_bytes),
        human_size(p.file_bytes),
        p.chunks,
        human_size(u64::from(p.chunk_size)),
        p.compression
    )?;
    writeln!(out, "  id:    {}", p.id)?;
    match &p.signer {
        Some(k) => writeln!(out, "  key:   {k}")?,
        None => writeln!(out, "  key:   (unsigned)")?,
    }
    if !p.warnings.is_empty() {
        writeln!(out, "  {} warnings (on stderr)", p.warnings.len())?;
    }
    Ok(())
}

/// Prints a warning on stderr, on one line, cut to a readable length.
fn warn(pkg: &str, w: &str) {
    let mut w = w.replace('\n', " ");
    if let Some((i, _)) = w.char_indices().nth(300) {
        w.truncate(i);
        w.push_str("...");
    }
    eprintln!("pkgtool: warning: {pkg}: {w}");
}

/// The signing key and build options of the flags.
fn setup(flags: &BuildFlags) -> anyhow::Result<(Option<SecretKey>, BuildOptions)> {
    let key = match &flags.key {
        Some(k) => Some(SecretKey::load(k).context("cannot load signing key")?),
        None => None,
    };
    let mut opts = BuildOptions::from_env()?;
    opts.compression = flags.compression;
    opts.chunk_size = flags.chunk_size;
    opts.threads = flags.jobs;
    Ok((key, opts))
}

/// Writes one package and describes it.
#[allow(clippy::too_many_arguments)]
fn write_one(
    tree: &Tree,
    manifest: &Manifest,
    key: Option<&SecretKey>,
    opts: &BuildOptions,
    flags: &BuildFlags,
    tmp_out: &Path,
    final_out: &Path,
    input: &Path,
    stats: Stats,
    warnings: Vec<String>,
) -> anyhow::Result<GraftedJson> {
    let bar = bytes_bar(!flags.quiet && !flags.json, "grafting");
    let report = write_archive(tree, manifest, key, opts, tmp_out, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("cannot write {}", final_out.display()))?;
    bar.finish_and_clear();
    Ok(GraftedJson {
        input: input.display().to_string(),
        output: final_out.display().to_string(),
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        id: report.id.to_string(),
        signer: report.signer.map(|k| k.to_string()),
        origin: manifest.origin.clone(),
        requires: manifest
            .requires
            .iter()
            .map(|r| format!("{} {}", r.api, r.version))
            .collect(),
        provides: manifest
            .provides
            .iter()
            .map(|p| format!("{} {}", p.api, p.version))
            .collect(),
        files: report.files,
        directories: report.dirs,
        symlinks: report.symlinks,
        hardlinks: report.hardlinks,
        content_bytes: report.content_bytes,
        file_bytes: report.file_size,
        chunks: report.chunks,
        compression: opts.compression.to_string(),
        chunk_size: opts.chunk_size,
        stats,
        warnings,
    })
}

/// The output directory, created if missing; removed again (if still empty) when the
/// graft fails.
struct OutDir {
    path: PathBuf,
    created: bool,
    done: bool,
}

impl OutDir {
    fn new(path: &Path) -> anyhow::Result<OutDir> {
        let created = !path.exists();
        if created {
            std::fs::create_dir_all(path).with_context(|| {
                format!("cannot create the output directory {}", path.display())
            })?;
        } else if !path.is_dir() {
            bail!("{} is not a directory", path.display());
        }
        Ok(OutDir {
            path: path.to_owned(),
            created,
            done: false,
        })
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if self.created && !self.done {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

fn graft_debs(a: &DebArgs) -> anyhow::Result<Vec<GraftedJson>> {
    let (key, opts) = setup(&a.build)?;
    let ignore: HashSet<String> = a
        .ignore_depends
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    // 1. Every control file and manifest, before anything is built.
    let mut debs = Debs::plan(&a.debs, &ignore)?;
    // 2. Build each into a staging directory inside OUTDIR.
    let mut outdir = OutDir::new(&a.output)?;
    let staging = tempfile::Builder::new()
        .prefix(".graft-")
        .tempdir_in(&a.output)
        .with_context(|| format!("cannot create a directory in {}", a.output.display()))?;
    let mut results = Vec::new();
    for i in 0..debs.infos.len() {
        let built = debs.build(i, a.build.strip_docs)?;
        let m = &mut debs.mapped[i];
        let tmp = staging.path().join(&m.file_name);
        let fin = a.output.join(&m.file_name);
        let g = write_one(
            &built.tree,
            &m.manifest,
            key.as_ref(),
            &opts,
            &a.build,
            &tmp,
            &fin,
            &debs.infos[i].path,
            built.stats.clone(),
            std::mem::take(&mut m.warnings),
        )?;
        results.push((tmp, fin, g));
    }
    // 3. Everything built: move into place, providers before the packages that need
    //    them, so a daemon watching OUTDIR (a layer's packages/) sees valid sets only.
    for i in debs.install_order() {
        let (tmp, fin, _) = &results[i];
        std::fs::rename(tmp, fin)
            .with_context(|| format!("cannot move the package to {}", fin.display()))?;
    }
    let out: Vec<GraftedJson> = results.into_iter().map(|(_, _, g)| g).collect();
    outdir.done = true;
    // Warnings once everything succeeded, so that a failure is one line.
    for g in &out {
        for w in &g.warnings {
            warn(&g.name, w);
        }
    }
    Ok(out)
}

fn graft_tree(t: &TreeArgs, flags: &BuildFlags, input: Input) -> anyhow::Result<GraftedJson> {
    let (key, opts) = setup(flags)?;
    let spec = TreeSpec {
        name: t.name.clone(),
        version: t.version.clone(),
        summary: t.summary.clone(),
        requires: t.requires.clone(),
        prefix: t.prefix.clone(),
    };
    let (manifest, built) = graft::graft_tree(&spec, input, flags.strip_docs)?;
    let path = match input {
        Input::Tar(p) | Input::Dir(p) => p,
    };
    write_one(
        &built.tree,
        &manifest,
        key.as_ref(),
        &opts,
        flags,
        &t.output,
        &t.output,
        path,
        built.stats.clone(),
        Vec::new(),
    )
}
