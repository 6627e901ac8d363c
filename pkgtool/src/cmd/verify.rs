//! `pkgtool verify PKG [--key FILE.pub | --trusted-keys DIR | --integrity-only]`.

use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use format::archive::{Archive, ChunkId};
use format::keys::TrustedKeys;
use rayon::prelude::*;

use crate::output::{escape, Out};
use crate::output::{BadChunkJson, VerifiedJson};

/// `pkgtool verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The package.
    pub package: PathBuf,
    /// Trust exactly this public key (NAME.pub).
    #[arg(long, conflicts_with = "trusted_keys")]
    pub key: Option<PathBuf>,
    /// Trust the *.pub keys in this directory.
    #[arg(long)]
    pub trusted_keys: Option<PathBuf>,
    /// Check only integrity (metadata, chunks, signature self-consistency), not trust.
    #[arg(long, conflicts_with_all = ["key", "trusted_keys"])]
    pub integrity_only: bool,
    /// For a thin package: the chunk store its chunks are read through (default
    /// /var/cache/packagefs/chunks for root, else ~/.cache/packagefs/chunks); chunks not
    /// there are fetched from its repository.
    #[arg(long, value_name = "DIR")]
    pub chunk_store: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Verification threads (default: one per core).
    #[arg(short = 'j', long = "jobs", default_value_t = 0)]
    pub jobs: usize,
}

/// Where keys are trusted from when no option names them.
pub const DEFAULT_KEYS_DIR: &str = "/etc/packagefs/keys";

/// The trusted-keys directory to load: the one given, else the default if it exists;
/// `None` if neither (each command says what to do in its own words).
pub fn keys_dir(given: Option<&std::path::Path>) -> Option<PathBuf> {
    match given {
        Some(d) => Some(d.to_owned()),
        None => Some(PathBuf::from(DEFAULT_KEYS_DIR)).filter(|d| d.exists()),
    }
}

pub fn run(a: VerifyArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let keys: Option<(TrustedKeys, PathBuf)> = if a.integrity_only {
        None
    } else if let Some(k) = &a.key {
        Some((
            TrustedKeys::load_file(k).context("cannot load key")?,
            k.clone(),
        ))
    } else {
        let Some(dir) = keys_dir(a.trusted_keys.as_deref()) else {
            bail!(
                "no trusted keys: pass --key FILE.pub or --trusted-keys DIR (or install keys in {DEFAULT_KEYS_DIR}), or --integrity-only"
            );
        };
        Some((
            TrustedKeys::load_dir(&dir).context("cannot load trusted keys")?,
            dir,
        ))
    };
    let ar = super::open_with(&a.package, a.chunk_store.as_deref())
        .with_context(|| format!("cannot verify {}", a.package.display()))?;
    let (trusted, trust_error) = match &keys {
        None => (None, None),
        Some((k, _)) => match ar.check_trust(k) {
            Ok(_) => (Some(true), None),
            Err(e) => (Some(false), Some(e.to_string())),
        },
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.jobs)
        .build()?;
    let mut bad: Vec<(ChunkId, String)> = pool.install(|| {
        (0..ar.chunk_count())
            .into_par_iter()
            .filter_map(|c| ar.verify_chunk(c).err().map(|e| (c, e.to_string())))
            .collect()
    });
    bad.sort_by_key(|(c, _)| *c);
    let users: BTreeMap<ChunkId, Vec<String>> = ar
        .files_using(&bad.iter().map(|(c, _)| *c).collect())
        .into_iter()
        .map(|(c, paths)| (c, paths.iter().map(|p| escape(p)).collect()))
        .collect();
    let bad_chunks: Vec<BadChunkJson> = bad
        .into_iter()
        .map(|(chunk, error)| BadChunkJson {
            chunk,
            error,
            files: users.get(&chunk).cloned().unwrap_or_default(),
        })
        .collect();
    let heap_error = heap_coverage(&ar).err().map(|e| e.to_string());
    let m = ar.manifest();
    let v = VerifiedJson {
        package: a.package.display().to_string(),
        ok: bad_chunks.is_empty() && heap_error.is_none() && trusted != Some(false),
        id: ar.id().to_string(),
        name: m.name.clone(),
        version: m.version.to_string(),
        signer: ar.signer().map(|k| k.id().to_string()),
        trusted,
        trust_error,
        chunks: ar.chunk_count(),
        bad_chunks,
        heap_error,
    };
    if a.json {
        out.json(&v)?;
    }
    let name = a.package.display();
    for b in &v.bad_chunks {
        let files = file_list(&b.files, 10);
        eprintln!("pkgtool: {name}: {} (used by {files})", b.error);
    }
    if let Some(e) = &v.heap_error {
        eprintln!("pkgtool: {name}: {e}");
    }
    if !v.bad_chunks.is_empty() {
        let first = &v.bad_chunks[0];
        let files = file_list(&first.files, 3);
        bail!(
            "cannot verify {name}: {} of {} chunks are corrupt, first chunk {} ({files})",
            v.bad_chunks.len(),
            v.chunks,
            first.chunk
        );
    }
    if let Some(e) = &v.heap_error {
        bail!("cannot verify {name}: {e}");
    }
    if let Some(e) = &v.trust_error {
        bail!("cannot verify {name}: {e}");
    }
    if !a.json {
        let signer = match (&v.signer, &keys) {
            (Some(k), Some((tk, src))) => format!(
                "signed by trusted key {k}{} from {}",
                key_name(tk, &ar)
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                src.display()
            ),
            (Some(k), None) => format!("signed by key {k} (trust not checked)"),
            (None, _) => "unsigned".to_string(),
        };
        writeln!(
            out,
            "{name}: OK: {} {}, id {}, {signer}, {} chunks intact",
            v.name, v.version, v.id, v.chunks
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// At most `max` names, then "and N more".
fn file_list(files: &[String], max: usize) -> String {
    match files.len() {
        0 => "no file".to_string(),
        n if n <= max => files.join(", "),
        n => format!("{} and {} more", files[..max].join(", "), n - max),
    }
}

fn key_name(keys: &TrustedKeys, ar: &Archive) -> Option<String> {
    let id = ar.signer()?.id();
    keys.name(&id).filter(|n| !n.is_empty()).map(str::to_owned)
}

/// Checks that the chunks' stored bytes cover the heap exactly (no hidden bytes).
fn heap_coverage(ar: &Archive) -> anyhow::Result<()> {
    let mut ranges: Vec<(u64, u64)> = (0..ar.chunk_count())
        .map(|c| ar.chunk_info(c).map(|i| (i.offset, i.stored_len as u64)))
        .collect::<Result<_, _>>()?;
    ranges.sort_unstable();
    ranges.dedup();
    let mut pos = 0u64;
    for (off, len) in ranges {
        if off != pos {
            bail!("heap bytes {pos}..{off} are not covered by exactly one chunk");
        }
        pos = off + len;
    }
    let heap = ar.header().heap.len;
    if pos != heap {
        bail!("heap bytes {pos}..{heap} belong to no chunk");
    }
    Ok(())
}
