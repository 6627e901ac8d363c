//! `pkgtool publish`: packages into a repository, and a new signed index.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use format::keys::SecretKey;

use crate::output::PublishJson;
use crate::output::{human_size, Out};

/// `pkgtool publish`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  pkgtool publish hello-1.0.0.hpkg --repo /srv/packagefs/main --key alice.key\n  pkgtool publish hello-1.0.0.hpkg --repo http://repo.lan:8080/main --key alice.key\n  pkgtool publish hello-1.0.0.hpkg --repo oci://registry.lan:5000/packagefs/main --key alice.key\n\nA directory is what a static HTTP server (nginx) then serves; http:// uploads with PUT\n(nginx's dav module, `dav_methods PUT`); oci:// pushes blobs to a registry. Each package\nis stored whole under its sha256 (blobs/sha256/HEX); the index (which packages and\nversions exist, their ids) is written last, with a version one higher, signed by --key.\nAn existing index must be signed by the same key. The index expires (--expires, default\n7d): clients refuse an expired index, so a mirror that stops updating cannot hold them\nat old versions; publishing with no package re-signs it with a new expiry. Each new\npackage gets deltas from up to --deltas earlier versions (pull uses one when the layer\nholds that version whole). See docs/fleet.md."
)]
pub struct PublishArgs {
    /// Package files (whole, signed); none: re-sign the index with a new expiry.
    pub packages: Vec<PathBuf>,
    /// The repository: a directory, http://HOST:PORT/PATH or oci://HOST:PORT/NAME.
    #[arg(long, value_name = "DIR|URL")]
    pub repo: String,
    /// The key that signs the index.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The repository's name, for a new repository (default: main); clients record the
    /// last index version they accepted under it.
    #[arg(long)]
    pub name: Option<String>,
    /// Ship prefetch lists: DIR/<package id>.prefetch, as recorded by packagefs
    /// `-o prefetch_record=DIR` during a first start; the daemon fetches those chunks in the
    /// background after mount.
    #[arg(long, value_name = "DIR")]
    pub prefetch: Option<PathBuf>,
    /// How long the new index is accepted: NUMBER with s, m, h or d (e.g. 12h, 7d, 30d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    pub expires: u64,
    /// Deltas to each new package from up to N earlier versions (0: none).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub deltas: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PublishArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let key =
        SecretKey::load(&a.key).with_context(|| format!("cannot load {}", a.key.display()))?;
    let target = repo::Target::parse(&a.repo).map_err(|e| anyhow!(e))?;
    let p = repo::publish(
        &a.packages,
        &target,
        &key,
        &repo::PublishOptions {
            name: a.name.as_deref(),
            prefetch: a.prefetch.as_deref(),
            expires_in: a.expires,
            deltas: a.deltas,
            ..repo::PublishOptions::default()
        },
        &repo::Policy::default(),
    )
    .map_err(|e| anyhow!("cannot publish to {}: {e}", a.repo))?;
    let expires = p
        .index
        .expires
        .map(|t| format::text::utc(t as i64))
        .unwrap_or_default();
    if a.json {
        out.json(&PublishJson {
            repository: &p.index.repository,
            version: p.index.version,
            added: &p.added,
            uploaded: p.uploaded,
            expires,
            notes: &p.notes,
        })?;
    } else {
        for n in &p.notes {
            writeln!(out, "note: {n}")?;
        }
        for e in &p.added {
            writeln!(
                out,
                "published {} ({}, {}{})",
                e.label(),
                &e.id[..16],
                human_size(e.size),
                e.deltas
                    .iter()
                    .map(|d| format!(", a delta of {} from {}", human_size(d.size), &d.from[..16]))
                    .collect::<String>()
            )?;
        }
        writeln!(
            out,
            "repository {}: index version {}, {} packages, expires {expires}",
            p.index.repository,
            p.index.version,
            p.index.packages.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `NUMBER` followed by `s`, `m`, `h` or `d`, in seconds (at least one second, at most
/// ten years).
fn parse_duration(s: &str) -> Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("{s:?}: a number followed by s, m, h or d")),
    };
    if secs == 0 || secs > 3650 * 86_400 {
        return Err(format!("{s:?}: between 1s and 3650d"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(super::parse_duration("90s"), Ok(90));
        assert_eq!(super::parse_duration("12h"), Ok(12 * 3600));
        assert!(super::parse_duration("0d").is_err());
        assert!(super::parse_duration("7").is_err());
        assert!(super::parse_duration("d").is_err());
        assert!(super::parse_duration("7w").is_err());
        assert!(super::parse_duration("99999d").is_err());
    }
}
