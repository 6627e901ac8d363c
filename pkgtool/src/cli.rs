//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use format::archive::Compression;

/// Build, sign, inspect, verify and extract packagefs packages (.hpkg).
#[derive(Debug, Parser)]
#[command(name = "pkgtool", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a signing key pair: NAME.key (secret, mode 0600) and NAME.pub.
    #[command(
        after_help = "Example:\n  pkgtool keygen alice          # writes alice.key and alice.pub, prints the key id"
    )]
    Keygen(KeygenArgs),
    /// Build a signed package from a directory tree.
    #[command(
        after_help = "Example:\n  pkgtool build ./root -o hello-1.0.0.hpkg --key alice.key --manifest manifest.json\n  pkgtool build ./root -o big.hpkg --key alice.key --manifest m.json --compression zstd:19 --chunk-size 1M -j 2\n\nSOURCE_DATE_EPOCH, when set, clamps every mtime (reproducible builds)."
    )]
    Build(BuildArgs),
    /// Show a package's manifest, id, signer, counts, sizes and compression.
    #[command(
        after_help = "Example:\n  pkgtool info hello-1.0.0.hpkg\n  pkgtool info hello-1.0.0.hpkg --json | jq .manifest.version"
    )]
    Info(InfoArgs),
    /// List every path in a package (like `tar t`; with -l like `tar tv`).
    #[command(
        after_help = "Example:\n  pkgtool list hello-1.0.0.hpkg\n  pkgtool list -l hello-1.0.0.hpkg\n\nNames are printed with control characters and backslashes escaped (\\n, \\t, \\\\, \\ooo)."
    )]
    List(ListArgs),
    /// Write one file's bytes to standard output.
    #[command(after_help = "Example:\n  pkgtool cat hello-1.0.0.hpkg bin/hello > hello")]
    Cat(CatArgs),
    /// Extract a package into a new (or empty) directory, safely.
    #[command(
        after_help = "Example:\n  pkgtool extract hello-1.0.0.hpkg ./out\n\nThe package is extracted to a temporary sibling directory which is renamed to DIR\nonly when everything succeeded. Nothing is ever written outside DIR and no symlink is followed."
    )]
    Extract(ExtractArgs),
    /// Check a package's signature against trusted keys and every chunk against its hash.
    #[command(
        after_help = "Example:\n  pkgtool verify hello-1.0.0.hpkg --key alice.pub\n  pkgtool verify hello-1.0.0.hpkg --trusted-keys /etc/packagefs/keys\n\nWithout --key or --trusted-keys, the keys in /etc/packagefs/keys are trusted.\nExit status: 0 when the package is intact and signed by a trusted key, 1 otherwise."
    )]
    Verify(VerifyArgs),
    /// Turn other ecosystems' packages (Debian .deb files, tarballs, directories) into signed packages.
    #[command(
        after_help = "Example:\n  apt-get download hello libc6 libgcc-s1 gcc-12-base\n  pkgtool graft deb *.deb -o packages/ --key alice.key\n  pkgtool graft tar app-1.2.tar.xz --name app --version 1.2 --prefix opt/app -o app.hpkg --key alice.key\n  pkgtool graft dir ./tree --name my.tools --version 1.0.0 -o my.tools.hpkg --key alice.key\n\nSee docs/grafting.md for how names, versions and dependencies are mapped."
    )]
    Graft(crate::graft::GraftArgs),
}

/// `pkgtool keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key name: NAME.key and NAME.pub are written.
    pub name: String,
    /// Directory to write the key files to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

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
    /// zstd[:LEVEL] (1-22), zlib[:LEVEL] (0-9) or none.
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

/// `pkgtool info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The package.
    pub package: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pkgtool list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The package.
    pub package: PathBuf,
    /// Long listing: mode, size, mtime, path, link target.
    #[arg(short = 'l', long = "long")]
    pub long: bool,
    /// JSON Lines, one object per entry.
    #[arg(long, conflicts_with = "long")]
    pub json: bool,
}

/// `pkgtool cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// The package.
    pub package: PathBuf,
    /// Path inside the package (symlinks inside the package are followed).
    pub path: PathBuf,
}

/// `pkgtool extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The package.
    pub package: PathBuf,
    /// Target directory: must not exist, or be empty.
    pub dir: PathBuf,
}

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
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Verification threads (default: one per core).
    #[arg(short = 'j', long = "jobs", default_value_t = 0)]
    pub jobs: usize,
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// Parses `65536`, `64K`, `64KiB`, `1M`, `1MiB`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => {
            let m = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1024u64,
                "m" | "mb" | "mib" => 1024 * 1024,
                "b" => 1,
                other => return Err(format!("unknown size suffix `{other}` (use K or M)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if !v.is_power_of_two() || !(64 * 1024..=1024 * 1024).contains(&v) {
        return Err(format!(
            "chunk size {s} must be a power of two from 64K to 1M"
        ));
    }
    Ok(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("256K").unwrap(), 262144);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert!(parse_size("100K").is_err());
        assert!(parse_size("2M").is_err());
        assert!(parse_size("32K").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
