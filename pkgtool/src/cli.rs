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
        after_help = "Example:\n  pkgtool keygen alice          # writes alice.key and alice.pub, prints the key id\n  pkgtool keygen keys/alice     # writes keys/alice.key and keys/alice.pub (like ssh-keygen -f)\n\nThe key is named after the last component of NAME (alice); its directory must exist.\nExisting files are never overwritten."
    )]
    Keygen(crate::cmd::keygen::KeygenArgs),
    /// Build a signed package from a directory tree.
    #[command(
        after_help = "Example:\n  pkgtool build ./root -o hello-1.0.0.hpkg --key alice.key --manifest manifest.json\n  pkgtool build ./root -o big.hpkg --key alice.key --manifest m.json --compression zstd:19 --chunk-size 1M -j 2\n\nSOURCE_DATE_EPOCH, when set, clamps every mtime (reproducible builds)."
    )]
    Build(crate::cmd::build::BuildArgs),
    /// Show a package's manifest, id, signer, counts, sizes and compression.
    #[command(
        after_help = "Example:\n  pkgtool info hello-1.0.0.hpkg\n  pkgtool info hello-1.0.0.hpkg --json | jq .manifest.version"
    )]
    Info(crate::cmd::info::InfoArgs),
    /// List every path in a package (like `tar t`; with -l like `tar tv`).
    #[command(
        after_help = "Example:\n  pkgtool list hello-1.0.0.hpkg\n  pkgtool list -l hello-1.0.0.hpkg\n\nNames are printed with control characters and backslashes escaped (\\n, \\t, \\\\, \\ooo)."
    )]
    List(crate::cmd::list::ListArgs),
    /// Write one file's bytes to standard output.
    #[command(after_help = "Example:\n  pkgtool cat hello-1.0.0.hpkg bin/hello > hello")]
    Cat(crate::cmd::cat::CatArgs),
    /// Extract a package into a new (or empty) directory, safely.
    #[command(
        after_help = "Example:\n  pkgtool extract hello-1.0.0.hpkg ./out\n  pkgtool extract hello-1.0.0.hpkg ./out --preserve-privileges --trusted-keys /etc/packagefs/keys\n\nThe package is extracted to a temporary sibling directory which is renamed to DIR\nonly when everything succeeded. Nothing is ever written outside DIR and no symlink is\nfollowed: every file is made relative to directory descriptors, never through a path\nresolved again, so it is safe as root in a directory other users can write to.\n\nSetuid and setgid bits of files and file capabilities (the security.capability xattr)\nare not extracted: such files get the bits cleared and one warning counts them. With\n--preserve-privileges they are kept, but only from a package signed by a key trusted\nin --trusted-keys DIR (default /etc/packagefs/keys); otherwise extract refuses."
    )]
    Extract(crate::cmd::extract::ExtractArgs),
    /// Check a package's signature against trusted keys and every chunk against its hash.
    #[command(
        after_help = "Example:\n  pkgtool verify hello-1.0.0.hpkg --key alice.pub\n  pkgtool verify hello-1.0.0.hpkg --trusted-keys /etc/packagefs/keys\n\nWithout --key or --trusted-keys, the keys in /etc/packagefs/keys are trusted.\nExit status: 0 when the package is intact and signed by a trusted key, 1 otherwise."
    )]
    Verify(crate::cmd::verify::VerifyArgs),
    /// Resolve the packages of a stack of layers into an active set, or explain why not.
    #[command(
        after_help = "Example:\n  pkgtool resolve system=/pkg/system user=/home/u/pkg\n  pkgtool resolve /pkg/system --json\n\nLayers are given lowest first, as NAME=DIR or DIR (named after its last component).\nEvery package of each layer's packages/ is wanted, newest version first; requirements are\nmet from the same or a lower layer. Nothing is changed."
    )]
    Resolve(crate::cmd::resolve::ResolveArgs),
    /// Install packages into a layer: check the new set, copy them into packages/, write a generation.
    #[command(
        after_help = "Example:\n  pkgtool install hello-1.0.0.hpkg --layer /pkg/system\n  pkgtool install app.hpkg --layer system=/pkg/system --layer user=/home/u/pkg\n\nThe last --layer is the one changed; the ones before it are the layers below it, whose\nactive packages may meet requirements. Packages in the layer's packages/ that are not\nactive may be activated to meet requirements. A package replaces the active package of\nits name (also an older version: an explicit downgrade). Refused whole, with the reason,\nif the new set would break the invariant."
    )]
    Install(crate::cmd::install::InstallArgs),
    /// Install new versions of packages as one transaction over their services: stop,
    /// switch, start, check health, roll back by itself on failure.
    #[command(
        after_help = "Example:\n  pkgtool update web-2.0.0.hpkg --layer /data/system\n  pkgtool update web-2.0.0.hpkg --layer /data/system --dry-run\n\nThe services affected are those of the packages added, removed or replaced, and of the\npackages that require them. The plan is written to state/transaction before anything\nstops; they are stopped (dependents first), the generation is switched, systemd reloads,\nthey start (providers first) and must pass their health checks (the manifest's `health`:\nready, health command, watchdog, stable) within their deadline (default 30 s). On any\nfailure the previous generation comes back with its services, and pkgtool exits 1 with\nthe service and the check that failed. An update interrupted (killed, power cut) is\nundone by the next pkgtool run or at the next boot. `install`, `remove` and `rollback`\ndo the same when they affect services. Every step is in `pkgtool history`."
    )]
    Update(crate::cmd::install::InstallArgs),
    /// Remove packages from a layer, refusing to leave others broken unless --force.
    #[command(
        after_help = "Example:\n  pkgtool remove hello --layer /pkg/system\n  pkgtool remove core.io --layer /pkg/system --force   # also removes what needs it, named\n\nThe package files leave packages/; earlier generations keep them in state/pool/."
    )]
    Remove(crate::cmd::remove::RemoveArgs),
    /// Show a layer's active generation, its packages, and the files of packages/ that are not active.
    #[command(
        after_help = "Example:\n  pkgtool status --layer /pkg/system\n  pkgtool status --layer /pkg/system --json"
    )]
    Status(crate::cmd::status::StatusArgs),
    /// List a layer's generations: number, time, reason, packages.
    #[command(after_help = "Example:\n  pkgtool generations --layer /pkg/system")]
    Generations(crate::cmd::generations::GenerationsArgs),
    /// Switch a layer back to an earlier generation (default: the one before the active one).
    #[command(
        after_help = "Example:\n  pkgtool rollback --layer /pkg/system\n  pkgtool rollback --layer /pkg/system --to 3\n\nThe switch replaces state/active.list atomically; a running packagefs switches its view\nto exactly that set. Every package a kept generation names is in state/pool/."
    )]
    Rollback(crate::cmd::rollback::RollbackArgs),
    /// Mark this boot's generation of a layer good (boot assessment; run by packagefs-bless.service).
    #[command(
        after_help = "Example:\n  pkgtool bless --layer /data/system --check-failed-units\n\nA machine booted from packages (packagefs -o boot) counts each boot of a generation not\nyet good; when its tries are used up, the last good generation boots instead, for good.\nBlessing ends the trial of the generation booted. --check-failed-units first asks\nsystemd for failed units and refuses to bless while there are any. See docs/boot.md."
    )]
    Bless(crate::cmd::bless::BlessArgs),
    /// Show a layer's audit trail: every change of its set, who made it, why, and how it ended.
    #[command(
        after_help = "Example:\n  pkgtool history --layer /data/system\n  pkgtool history --layer /pkg/system --last 5 --json\n\nEvery change of the set appends one record to state/journal, whoever made it: pkgtool\n(install, remove, rollback, gc), the daemon taking up files dropped into packages/, a\nboot that fell back to an earlier generation, boot assessment giving up on one. A line:\ntime, generations (before -> after), kind, user (and sudo's user), verdict, packages\nadded (+) and removed (-). A torn or damaged record is skipped and counted, never fatal.\nThe records also go to the systemd journal: journalctl MESSAGE_ID=5f0c2c8e7a0b4d3c9a6e2b1f4d8c7a10"
    )]
    History(crate::cmd::history::HistoryArgs),
    /// Write a Boot Loader Specification entry per generation of a layer (each pins it for one boot).
    #[command(
        name = "boot-entries",
        after_help = "Example:\n  pkgtool boot-entries --layer /data/system --dir /boot/efi/loader/entries \\\n      --linux /vmlinuz --initrd /initrd.img --options \"console=ttyS0 quiet\"\n\nWrites packagefs-gen-N.conf for every generation N (title with N, its time and reason;\noptions with packagefs.generation=N: that generation boots once, uncounted) and\npackagefs.conf, the default entry without the pin (the active generation, under boot\nassessment). Entries packagefs-gen-*.conf of generations that are gone are removed.\nEach file is written atomically; run it again after every change of the layer."
    )]
    BootEntries(crate::cmd::boot_entries::BootEntriesArgs),
    /// Delete all but the newest N generations and the pooled package files no kept generation names.
    #[command(after_help = "Example:\n  pkgtool gc --layer /pkg/system --keep 5")]
    Gc(crate::cmd::gc::GcArgs),
    /// Turn other ecosystems' packages (Debian .deb files, tarballs, directories) into signed packages.
    #[command(
        after_help = "Example:\n  apt-get download hello libc6 libgcc-s1 gcc-12-base\n  pkgtool graft deb *.deb -o packages/ --key alice.key\n  pkgtool graft tar app-1.2.tar.xz --name app --version 1.2 --prefix opt/app -o app.hpkg --key alice.key\n  pkgtool graft dir ./tree --name my.tools --version 1.0.0 -o my.tools.hpkg --key alice.key\n\nSee docs/grafting.md for how names, versions and dependencies are mapped."
    )]
    Graft(crate::cmd::graft::GraftArgs),
    /// Make a delta between two versions of a package: only what changed, per file.
    Delta(crate::cmd::delta::DeltaArgs),
    /// Make the new package from the old one and a delta, checked against its signed id.
    #[command(name = "apply-delta")]
    ApplyDelta(crate::cmd::apply_delta::ApplyDeltaArgs),
    /// Publish packages to a repository (a directory nginx serves, http:// with PUT, or
    /// oci://) and write its new signed index.
    Publish(crate::cmd::publish::PublishArgs),
    /// Install thin packages from a repository into a layer, as install does; packagefs
    /// reads their data on first use.
    Pull(crate::cmd::pull::PullArgs),
    /// Make a layer's thin packages whole on disk.
    Fetch(crate::cmd::fetch::FetchArgs),
}

/// Where packages are trusted from (shared by the package-set commands).
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Trust the *.pub keys in this directory [default: /etc/packagefs/keys].
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// The policy of which capabilities each key's packages may ask for
    /// [default: /etc/packagefs/policy; none: every trusted key is unrestricted].
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The repositories thin packages in a layer not owned by root may name
    /// [default: /etc/packagefs/repositories; none listed: such packages are refused].
    #[arg(long, value_name = "FILE")]
    pub repositories: Option<PathBuf>,
}

/// How a set-changing command treats the services of the packages it changes.
#[derive(Debug, Args, Default)]
pub struct ServiceArgs {
    /// Change the set but leave services alone (no stop, start or health check).
    #[arg(long)]
    pub no_restart: bool,
    /// Print the change and the services it would stop and start; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where the layer is served (default: found in /proc/self/mountinfo).
    #[arg(long, value_name = "DIR")]
    pub view: Option<PathBuf>,
}

/// The layers a package-set command works on, lowest first; the last is the one changed.
#[derive(Debug, Args)]
pub struct LayerArgs {
    /// A layer, as NAME=DIR or DIR (named after its last component). Repeat for the layers
    /// below it, lowest first: the last one is the layer acted on.
    #[arg(long = "layer", value_name = "[NAME=]DIR", required = true)]
    pub layers: Vec<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--compression`: see [`Compression`]'s `FromStr`.
pub fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse()
}

/// A chunk size: `65536`, `64K`, `64KiB`, `1M`, `1MiB` ([`format::text::parse_size`]), a
/// power of two from 64K to 1M.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let v = format::text::parse_size(s)?;
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
