//! `pkgtool pull`: thin packages from a repository into a layer, as `install` installs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use pkgset::owner::AsOwner;

use crate::cli::{LayerArgs, ServiceArgs};
use crate::cmd::install::InstallArgs;
use crate::cmd::set::{stack_of, trusted_keys};
use crate::output::Out;

/// `pkgtool pull`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  pkgtool pull hello --repo http://repo.lan:8080/main --layer /pkg/system\n  pkgtool pull 'hello@^1.2' tools@=2.0.0 --repo oci://registry.lan:5000/packagefs/main --repo http://mirror.lan/main --layer /pkg/user\n\nThe index must be signed by a trusted key and no older than the one this layer accepted\nlast (state/repos/NAME). Each NAME takes the newest version in the index that matches\nRANGE (a semver range). The packages are installed thin (their signed metadata and\nwhere their data lives) exactly as `pkgtool install` installs, with its checks and its\nrefusals; packagefs reads their chunks from the repositories (--repo, in order) on first\nuse. `pkgtool fetch` makes them whole. When the layer holds an earlier version whole and\nthe repository serves a delta from it, the delta is fetched and applied instead, and the\nnew version is installed whole (--no-delta: never)."
)]
pub struct PullArgs {
    /// Packages: NAME or NAME@RANGE.
    #[arg(required = true, value_name = "NAME[@RANGE]")]
    pub packages: Vec<String>,
    /// The repository (http://HOST:PORT/PATH or oci://HOST:PORT/NAME); repeat for mirrors,
    /// tried in order.
    #[arg(long = "repo", required = true, value_name = "URL")]
    pub repos: Vec<String>,
    /// Never use a delta: install thin packages only.
    #[arg(long)]
    pub no_delta: bool,
    /// Then make every pulled package whole, as `pkgtool fetch` does (for a layer that
    /// boots: a boot uses whole packages only).
    #[arg(long, conflicts_with = "json")]
    pub fetch: bool,
    /// With --fetch: the chunk store (shared with packagefs).
    #[arg(long, value_name = "DIR", requires = "fetch")]
    pub chunk_store: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub svc: ServiceArgs,
}

pub fn run(a: PullArgs, out: &mut Out) -> anyhow::Result<ExitCode> {
    let keys = trusted_keys(a.layer.trust.trusted_keys.as_deref())?;
    let r = repo::Repository::new(&a.repos, repo::Policy::default()).map_err(|e| anyhow!(e))?;
    let v = r.index(&keys).map_err(|e| anyhow!("cannot pull: {e}"))?;
    let mut chosen: Vec<repo::IndexEntry> = Vec::new();
    for want in &a.packages {
        let (name, range) = match want.split_once('@') {
            Some((n, r)) => (
                n,
                Some(semver::VersionReq::parse(r).map_err(|e| anyhow!("{want}: bad range: {e}"))?),
            ),
            None => (want.as_str(), None),
        };
        let versions: Vec<_> = v.index.packages.iter().filter(|e| e.name == name).collect();
        if versions.is_empty() {
            bail!(
                "refused: repository {} has no package {name}",
                v.index.repository
            );
        }
        let best = versions
            .iter()
            .filter_map(|e| semver::Version::parse(&e.version).ok().map(|ver| (ver, *e)))
            .filter(|(ver, _)| range.as_ref().is_none_or(|r| r.matches(ver)))
            .max_by(|x, y| x.0.cmp(&y.0))
            .map(|(_, e)| e.clone())
            .ok_or_else(|| {
                anyhow!(
                    "refused: no version of {name} in repository {} matches {} (it has {})",
                    v.index.repository,
                    range.as_ref().map(|r| r.to_string()).unwrap_or_default(),
                    versions
                        .iter()
                        .map(|e| e.version.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        chosen.push(best);
    }
    let stack = stack_of(&a.layer.layers)?;
    let top = &stack.layers[stack.layers.len() - 1];
    {
        let _as = AsOwner::enter(&top.paths);
        repo::index::check_fresh(&top.paths.state(), &v)
            .map_err(|e| anyhow!("refused the index: {e}"))?;
    }
    let tmp = tempfile::Builder::new()
        .prefix("pkgtool-pull-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    // The layer as it is, read once: the bases for deltas, and what the pulled packages
    // are planned against (install reads it again, under the layer's lock).
    let mut op = crate::cmd::set::opener(&a.layer.trust)?;
    let here = {
        let _as = AsOwner::enter(&top.paths);
        Here::read(&stack, &mut op)
    };
    let bases = if a.no_delta {
        Vec::new()
    } else {
        here.whole_packages()
    };
    let mut files = Vec::new();
    let mut how = Vec::new();
    let mut done = 0;
    // Requirements met neither by the local layers nor by the packages pulled so far are
    // met from the repository, as the solver names them: a few rounds, each adding the
    // newest package of the index that meets each unmet requirement.
    for _round in 0..16 {
        for e in &chosen[done..] {
            let (file, via) = match by_delta(&r, e, &bases, tmp.path(), &keys) {
                Some(Ok(got)) => got,
                Some(Err(why)) => {
                    eprintln!("pkgtool: {}: the delta was not used: {why:#}", e.label());
                    (fetch_thin(&r, e, tmp.path(), &keys)?, None)
                }
                None => (fetch_thin(&r, e, tmp.path(), &keys)?, None),
            };
            files.push(file);
            how.push(via);
        }
        done = chosen.len();
        let more = here.unmet_from_repo(&stack, &mut op, &files, &v.index, &chosen);
        if more.is_empty() {
            break;
        }
        chosen.extend(more);
    }
    if !a.layer.json {
        for (e, via) in chosen.iter().zip(&how) {
            writeln!(
                out,
                "pulling {} ({}) from repository {} (index version {}){}",
                e.label(),
                &e.id[..16],
                v.index.repository,
                v.index.version,
                via.as_deref().unwrap_or("")
            )?;
        }
    }
    let thin: Vec<String> = chosen
        .iter()
        .zip(&how)
        .filter(|(_, via)| via.is_none())
        .map(|(e, _)| e.name.clone())
        .collect();
    let top_spec = a.layer.layers[a.layer.layers.len() - 1].clone();
    let trust = crate::cli::TrustArgs {
        trusted_keys: a.layer.trust.trusted_keys.clone(),
        policy: a.layer.trust.policy.clone(),
        repositories: a.layer.trust.repositories.clone(),
    };
    let boots = pkgset::boot::boot_file(&top.paths).exists();
    let code = crate::cmd::install::install(
        InstallArgs {
            packages: files,
            layer: a.layer,
            svc: a.svc,
        },
        out,
    )?;
    if code != ExitCode::SUCCESS || thin.is_empty() {
        return Ok(code);
    }
    if a.fetch {
        return crate::cmd::fetch::run(
            crate::cmd::fetch::FetchArgs {
                names: thin,
                layer: top_spec,
                trust,
                chunk_store: a
                    .chunk_store
                    .unwrap_or_else(|| crate::cmd::fetch::DEFAULT_CHUNK_STORE.into()),
                parallel: 4,
            },
            out,
        );
    }
    if boots {
        eprintln!(
            "pkgtool: note: this layer boots (-o boot), and a boot uses whole packages only: \
             `pkgtool fetch --layer {top_spec}` before the next boot, or pull with --fetch"
        );
    }
    Ok(code)
}

/// The layer being pulled into and those below, read once (None where they cannot be:
/// then `install` says why).
struct Here {
    top: usize,
    loaded: Option<pkgset::stack::Loaded>,
    available: Vec<pkgset::Candidate>,
}

impl Here {
    fn read(stack: &pkgset::Stack, op: &mut pkgset::Opener) -> Here {
        let top = stack.layers.len() - 1;
        Here {
            top,
            loaded: stack.load_all(top, op).ok(),
            available: stack.scan(top, op).map(|(a, _)| a).unwrap_or_default(),
        }
    }

    /// The whole (not thin) packages of the layer being pulled into, as bases for deltas.
    fn whole_packages(&self) -> Vec<std::sync::Arc<format::archive::Archive>> {
        self.loaded.as_ref().map_or_else(Vec::new, |l| {
            l.sets[self.top]
                .iter()
                .filter(|c| !c.archive.is_thin())
                .map(|c| c.archive.clone())
                .collect()
        })
    }

    /// The index entries that would meet requirements the plan of installing `files` leaves
    /// unmet (the same plan `install` makes; nothing is written). Empty when the plan passes,
    /// or fails for other reasons (then `install` explains).
    fn unmet_from_repo(
        &self,
        stack: &pkgset::Stack,
        op: &mut pkgset::Opener,
        files: &[std::path::PathBuf],
        index: &repo::Index,
        chosen: &[repo::IndexEntry],
    ) -> Vec<repo::IndexEntry> {
        let top = self.top;
        let Some(loaded) = &self.loaded else {
            return Vec::new();
        };
        let mut new = Vec::new();
        for p in files {
            match op.open_given(p) {
                Ok(archive) => new.push(pkgset::Candidate {
                    layer: top,
                    path: p.clone(),
                    archive,
                }),
                Err(_) => return Vec::new(),
            }
        }
        let refused = match pkgset::plan(
            &stack.names(),
            &loaded.sets,
            top,
            &self.available,
            pkgset::Change::Install {
                packages: new,
                only_newer: false,
            },
        ) {
            Ok(_) => return Vec::new(),
            Err(r) => r,
        };
        let mut more: Vec<repo::IndexEntry> = Vec::new();
        for p in &refused.problems {
            let pkgset::Problem::MissingRequirement { requirement, .. } = p else {
                continue;
            };
            let Some((api, range)) = requirement.split_once(' ') else {
                continue;
            };
            let Ok(range) = semver::VersionReq::parse(range) else {
                continue;
            };
            let best = index
                .packages
                .iter()
                .filter(|e| e.meets(api, &range))
                .filter(|e| !chosen.iter().chain(&more).any(|c| c.name == e.name))
                .max_by(|x, y| {
                    semver::Version::parse(&x.version)
                        .ok()
                        .cmp(&semver::Version::parse(&y.version).ok())
                });
            if let Some(b) = best {
                more.push(b.clone());
            }
        }
        more
    }
}
/// The whole package of `e`, made by applying a delta the repository serves to a package
/// of `bases` (None: no delta fits). Checked as `apply` checks (every chunk, the id, a
/// trusted signature), then as a pulled package is.
fn by_delta(
    r: &repo::Repository,
    e: &repo::IndexEntry,
    bases: &[std::sync::Arc<format::archive::Archive>],
    dir: &std::path::Path,
    keys: &format::keys::TrustedKeys,
) -> Option<anyhow::Result<(std::path::PathBuf, Option<String>)>> {
    let (d, base) = e.deltas.iter().find_map(|d| {
        bases
            .iter()
            .find(|b| b.id().to_string() == d.from && b.manifest().name == e.name)
            .map(|b| (d, b))
    })?;
    Some((|| {
        let delta = r
            .object_to(&d.object, d.size, dir)
            .map_err(|err| anyhow!("cannot fetch it: {err}"))?;
        let path = dir.join(format!("{}.hpkg", e.label()));
        format::delta::apply(base, delta.path(), &path, Some(keys))?;
        check_pulled(&path, e, keys)?;
        let m = base.manifest();
        Ok((
            path,
            Some(format!(
                ", whole, by a delta of {} from {}-{}",
                crate::output::human_size(d.size),
                m.name,
                m.version
            )),
        ))
    })())
}

/// Fetches the thin package of `e` into `dir` and checks it: signed by a trusted key, with
/// the id, name and version the index names.
fn fetch_thin(
    r: &repo::Repository,
    e: &repo::IndexEntry,
    dir: &std::path::Path,
    keys: &format::keys::TrustedKeys,
) -> anyhow::Result<std::path::PathBuf> {
    let bytes = r
        .thin(e)
        .map_err(|err| anyhow!("cannot pull {}: {err}", e.label()))?;
    let path = dir.join(format!("{}.hpkg", e.label()));
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    check_pulled(&path, e, keys)?;
    Ok(path)
}

/// A pulled package must be signed by a trusted key and be the package the index names.
fn check_pulled(
    path: &std::path::Path,
    e: &repo::IndexEntry,
    keys: &format::keys::TrustedKeys,
) -> anyhow::Result<()> {
    let archive = format::archive::Archive::open_trusted(path, keys)
        .map_err(|err| anyhow!("refused {}: {err}", e.label()))?;
    if Some(archive.id()) != e.package_id() {
        bail!(
            "refused {}: the repository serves package {}, its index names {}",
            e.label(),
            archive.id(),
            e.id
        );
    }
    if archive.manifest().name != e.name || archive.manifest().version.to_string() != e.version {
        bail!(
            "refused {}: the package is {}-{}",
            e.label(),
            archive.manifest().name,
            archive.manifest().version
        );
    }
    Ok(())
}
