//! `pkgtool build DIR -o OUT --key K --manifest M`.

use crate::cli::parse_compression;
use crate::cli::parse_size;
use clap::Args;
use format::archive::Compression;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use format::archive::writer::write_archive;
use format::archive::{BuildOptions, Tree};
use format::keys::SecretKey;
use format::manifest::{Manifest, MAX_MANIFEST_BYTES};

use crate::output::BuiltJson;
use crate::output::{human_size, Out};
use crate::progress::bytes_bar;

/// `pkgtool build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The directory tree to package (its contents become the package root).
    pub dir: PathBuf,
    /// Output file.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Secret key to sign with (NAME.key).
    #[arg(long, required_unless_present = "unsigned")]
    pub key: Option<PathBuf>,
    /// Build an unsigned package (packagefs refuses to mount it; for testing).
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    /// The package manifest (JSON; see manifests/schema.json).
    #[arg(long)]
    pub manifest: PathBuf,
    /// zstd[:LEVEL] (1-22), zlib[:LEVEL] (0-9), lz4 or none. lz4 costs less CPU to read
    /// than zstd and makes larger packages, which need format 1.1 readers.
    #[arg(long, default_value_t = Compression::default(), value_parser = parse_compression)]
    pub compression: Compression,
    /// Chunk size: a power of two from 64K to 1M (suffixes K, M, KiB, MiB).
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    pub chunk_size: u32,
    /// Compression threads (default: one per core).
    #[arg(short = 'j', long = "jobs", default_value_t = 0)]
    pub jobs: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: BuildArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let key = match &a.key {
        Some(k) => Some(SecretKey::load(k).context("cannot load signing key")?),
        None => None,
    };
    let manifest = read_manifest(&a.manifest)?;
    let mut opts = BuildOptions::from_env()?;
    opts.compression = a.compression;
    opts.chunk_size = a.chunk_size;
    opts.threads = a.jobs;
    let ctx = || format!("cannot build {}", a.output.display());
    let tree = Tree::from_dir(&a.dir).with_context(ctx)?;
    let bar = bytes_bar(!a.quiet && !a.json, "building");
    let report = write_archive(
        &tree,
        &manifest,
        key.as_ref(),
        &opts,
        &a.output,
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .with_context(ctx)?;
    bar.finish_and_clear();
    let ratio = if report.file_size > 0 {
        report.content_bytes as f64 / report.file_size as f64
    } else {
        0.0
    };
    let built = BuiltJson {
        output: a.output.display().to_string(),
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        id: report.id.to_string(),
        signer: report.signer.map(|k| k.to_string()),
        files: report.files,
        directories: report.dirs,
        symlinks: report.symlinks,
        hardlinks: report.hardlinks,
        deduplicated_files: report.deduplicated_files,
        content_bytes: report.content_bytes,
        unique_bytes: report.unique_bytes,
        heap_bytes: report.heap_bytes,
        file_bytes: report.file_size,
        chunks: report.chunks,
        deduplicated_chunks: report.deduplicated_chunks,
        ratio,
        compression: opts.compression.to_string(),
        chunk_size: opts.chunk_size,
    };
    if a.json {
        out.json(&built)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "built {} ({} {})",
        built.output, built.name, built.version
    )?;
    writeln!(
        out,
        "  {} files, {} directories, {} symlinks, {} hard links; {} duplicate files stored once",
        built.files, built.directories, built.symlinks, built.hardlinks, built.deduplicated_files
    )?;
    writeln!(
        out,
        "  size:  {} of content -> {} package (ratio {:.2}), {} chunks of {} with {}",
        human_size(built.content_bytes),
        human_size(built.file_bytes),
        ratio,
        built.chunks,
        human_size(built.chunk_size as u64),
        built.compression
    )?;
    writeln!(out, "  id:    {}", built.id)?;
    match &built.signer {
        Some(k) => writeln!(out, "  key:   {k}")?,
        None => writeln!(out, "  key:   (unsigned)")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and validates a manifest file.
pub fn read_manifest(path: &std::path::Path) -> anyhow::Result<Manifest> {
    let ctx = || format!("cannot read manifest {}", path.display());
    let len = std::fs::metadata(path).with_context(ctx)?.len();
    if len > MAX_MANIFEST_BYTES as u64 {
        anyhow::bail!("manifest {} is larger than 1 MiB", path.display());
    }
    let bytes = std::fs::read(path).with_context(ctx)?;
    Manifest::from_json(&bytes).with_context(|| format!("invalid manifest {}", path.display()))
}
