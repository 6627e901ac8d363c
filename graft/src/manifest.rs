//! Manifests of grafted packages: from Debian control files (a batch at a time, so that
//! alternatives and dependency cycles can be settled among the packages grafted
//! together), and from the options of `graft tar` / `graft dir`.

use std::collections::{HashMap, HashSet};

use format::manifest::{Manifest, Origin, Provide, Require};
use semver::{Version, VersionReq};

use super::control::{manifest_name, parse_relations, relation_text, Atom, Relation};
use super::deb::DebInfo;
use super::version::{comparator, DebVersion, Op};
use crate::{GraftError, TreeSpec};

/// A package's manifest, what to call its file, and what to warn about.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// The manifest (validated).
    pub manifest: Manifest,
    /// `NAME_VERSION_ARCH.hpkg` (the version without its epoch, as Debian names files).
    pub file_name: String,
    /// Warnings for stderr, one line each.
    pub warnings: Vec<String>,
}

/// The relation fields that become requirements.
const DEPENDS: [&str; 2] = ["Pre-Depends", "Depends"];
/// Weak relations: recorded in `origin.unmapped`, no warning.
const WEAK: [&str; 3] = ["Recommends", "Suggests", "Enhances"];
/// Negative relations: recorded and warned about.
const NEGATIVE: [&str; 3] = ["Breaks", "Conflicts", "Replaces"];

/// The summary: the first line of `Description`, control characters removed, at most
/// 512 characters.
fn summary(info: &DebInfo) -> String {
    let first = info
        .control
        .get("Description")
        .and_then(|d| d.lines().next())
        .unwrap_or("");
    first
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{2028}' | '\u{2029}'))
        .take(format::manifest::MAX_SUMMARY_CHARS)
        .collect()
}

/// A field value on one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An `origin.unmapped` entry, cut to the limit.
fn entry(s: String) -> String {
    let max = format::manifest::MAX_UNMAPPED_CHARS;
    match s.char_indices().nth(max - 3) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// The provides of a package as (api, version), from its `Provides` field.
fn provides(info: &DebInfo, own: &str) -> Result<(Vec<Provide>, Vec<String>), String> {
    let mut out: Vec<Provide> = Vec::new();
    let mut unmapped = Vec::new();
    let Some(field) = info.control.get("Provides") else {
        return Ok((out, unmapped));
    };
    for rel in
        parse_relations("Provides", field).map_err(|e| format!("malformed control file: {e}"))?
    {
        if rel.len() > 1 {
            return Err(format!(
                "malformed control file: Provides: {}: alternatives are not allowed",
                relation_text(&rel)
            ));
        }
        let atom = &rel[0];
        let version = match &atom.version {
            None => Version::new(0, 0, 0),
            Some((Op::Eq, v)) => v.to_semver(),
            Some(_) => {
                return Err(format!(
                    "malformed control file: Provides: {}: only `=` versions are allowed",
                    atom.text
                ))
            }
        };
        let api = manifest_name(&atom.name);
        if api == own {
            unmapped.push(entry(format!(
                "Provides: {}: the package's own name, which it always provides at its own version",
                atom.text
            )));
            continue;
        }
        // One entry per api and semver compatibility line: keep the newest.
        let line = |v: &Version| {
            (
                v.major,
                if v.major == 0 { v.minor } else { 0 },
                if v.major == 0 && v.minor == 0 {
                    v.patch
                } else {
                    0
                },
            )
        };
        if let Some(p) = out
            .iter_mut()
            .find(|p| p.api == api && line(&p.version) == line(&version))
        {
            unmapped.push(entry(format!(
                "Provides: {}: {} is provided at the compatible version {} already (one version per semver line)",
                atom.text, api, (&p.version).min(&version)
            )));
            if version > p.version {
                p.version = version;
            }
            continue;
        }
        out.push(Provide { api, version });
    }
    Ok((out, unmapped))
}

/// What the packages of a batch provide: api -> versions.
type Index = HashMap<String, Vec<Version>>;

/// The comparator of one alternative, or `None` when unversioned.
fn atom_comparator(a: &Atom) -> Option<String> {
    a.version.as_ref().map(|(op, v)| comparator(*op, v))
}

/// Is this alternative met by a package of the batch?
fn met_in(index: &Index, a: &Atom) -> bool {
    let Some(versions) = index.get(&manifest_name(&a.name)) else {
        return false;
    };
    let req = match atom_comparator(a) {
        Some(c) => VersionReq::parse(&c).unwrap_or(VersionReq::STAR),
        None => VersionReq::STAR,
    };
    versions.iter().any(|v| req.matches(v))
}

/// The requirements of one package, what could not be mapped, and warnings.
struct Reqs {
    list: Vec<Require>,
    unmapped: Vec<String>,
    warnings: Vec<String>,
}

/// The requirements of one package, with what could not be mapped.
fn requires(
    info: &DebInfo,
    own: &str,
    index: &Index,
    ignore: &HashSet<String>,
) -> Result<Reqs, String> {
    // api -> comparators, in first-seen order
    let mut reqs: Vec<(String, Vec<String>, bool)> = Vec::new();
    let mut unmapped = Vec::new();
    let mut warnings = Vec::new();
    for field in DEPENDS {
        let Some(value) = info.control.get(field) else {
            continue;
        };
        let rels: Vec<Relation> =
            parse_relations(field, value).map_err(|e| format!("malformed control file: {e}"))?;
        for rel in rels {
            let text = relation_text(&rel);
            let kept: Vec<&Atom> = rel.iter().filter(|a| !ignore.contains(&a.name)).collect();
            if kept.is_empty() {
                unmapped.push(entry(format!(
                    "{field}: {text}: dropped (--ignore-depends)"
                )));
                continue;
            }
            let chosen = kept
                .iter()
                .copied()
                .find(|a| met_in(index, a))
                .unwrap_or(kept[0]);
            if rel.len() > 1 {
                let why = if met_in(index, chosen) && !std::ptr::eq(chosen, kept[0]) {
                    "the alternative grafted in the same run"
                } else if !std::ptr::eq(kept[0], &rel[0]) {
                    "the first alternative not in --ignore-depends"
                } else {
                    "the first alternative"
                };
                let msg = format!(
                    "{field}: {text}: a requirement cannot name alternatives; requires {} ({why})",
                    chosen.text
                );
                warnings.push(msg.clone());
                unmapped.push(entry(msg));
            }
            let api = manifest_name(&chosen.name);
            if api == own {
                unmapped.push(entry(format!(
                    "{field}: {}: the package itself, left out",
                    chosen.text
                )));
                continue;
            }
            let cmp = atom_comparator(chosen);
            match reqs.iter_mut().find(|(a, ..)| *a == api) {
                Some((_, cmps, _)) => cmps.extend(cmp),
                None => reqs.push((api, cmp.into_iter().collect(), true)),
            }
        }
    }
    let mut out = Vec::new();
    for (api, mut cmps, _) in reqs {
        cmps.dedup();
        let mut seen = HashSet::new();
        cmps.retain(|c| seen.insert(c.clone()));
        let text = if cmps.is_empty() {
            "*".to_owned()
        } else {
            cmps.join(", ")
        };
        let version =
            VersionReq::parse(&text).map_err(|e| format!("requirement {api} {text}: {e}"))?;
        out.push(Require { api, version });
    }
    Ok(Reqs {
        list: out,
        unmapped,
        warnings,
    })
}

/// Maps the control files of a batch of `.deb`s to manifests. An error names the index
/// of the package it is about.
pub fn map_batch(
    infos: &[DebInfo],
    ignore: &HashSet<String>,
) -> Result<Vec<Mapped>, (usize, String)> {
    // What the batch provides, for choosing among alternatives.
    let mut index: Index = HashMap::new();
    let mut provided = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let own = manifest_name(&info.package);
        let (prov, unmapped) = provides(info, &own).map_err(|e| (i, e))?;
        index
            .entry(own.clone())
            .or_default()
            .push(info.version.to_semver());
        for p in &prov {
            index
                .entry(p.api.clone())
                .or_default()
                .push(p.version.clone());
        }
        provided.push((prov, unmapped));
    }
    let mut out = Vec::new();
    for (i, (info, (prov, prov_unmapped))) in infos.iter().zip(provided).enumerate() {
        let own = manifest_name(&info.package);
        let Reqs {
            list: reqs,
            unmapped: req_unmapped,
            mut warnings,
        } = requires(info, &own, &index, ignore).map_err(|e| (i, e))?;
        let mut unmapped = prov_unmapped;
        unmapped.extend(req_unmapped);
        for field in NEGATIVE.iter().chain(WEAK.iter()) {
            if let Some(v) = info.control.get(field) {
                let negative = NEGATIVE.contains(field);
                let msg = if negative {
                    format!(
                        "{field}: {}: not enforced (packagefs has no negative dependencies)",
                        one_line(v)
                    )
                } else {
                    format!(
                        "{field}: {}: not mapped (packagefs has no optional dependencies)",
                        one_line(v)
                    )
                };
                if negative {
                    warnings.push(msg.clone());
                }
                unmapped.push(entry(msg));
            }
        }
        if !info.conffiles.is_empty() {
            let msg = format!(
                "conffiles: {}: shipped read-only, no configuration-file handling",
                info.conffiles.join(" ")
            );
            warnings.push(msg.clone());
            unmapped.push(entry(msg));
        }
        if !info.scripts.is_empty() {
            warnings.push(format!(
                "maintainer scripts not run: {} (listed in origin.scripts)",
                info.scripts.join(", ")
            ));
        }
        if info.package != own {
            warnings.push(format!(
                "the Debian name {} is not a manifest name: mapped to {own}",
                info.package
            ));
        }
        let manifest = Manifest {
            name: own.clone(),
            version: info.version.to_semver(),
            summary: summary(info),
            provides: prov,
            requires: reqs,
            uses: Vec::new(),
            capabilities: Vec::new(),
            services: Vec::new(),
            os: None,
            origin: Some(Origin {
                from: "debian".into(),
                name: info.package.clone(),
                version: info.version.to_string(),
                arch: info
                    .arch
                    .chars()
                    .take(format::manifest::MAX_ORIGIN_FIELD_CHARS)
                    .collect(),
                unmapped,
                scripts: info.scripts.clone(),
            }),
        };
        let no_epoch = DebVersion {
            epoch: 0,
            ..info.version.clone()
        };
        let arch = if info.arch.is_empty() {
            "all"
        } else {
            &info.arch
        };
        let file_name = format!("{own}_{no_epoch}_{}.hpkg", arch.replace('/', "_"));
        out.push(Mapped {
            manifest,
            file_name,
            warnings,
        });
    }
    break_cycles(&mut out);
    for (i, m) in out.iter_mut().enumerate() {
        if let Some(o) = &mut m.manifest.origin {
            if o.unmapped.len() > format::manifest::MAX_UNMAPPED_ENTRIES {
                o.unmapped
                    .truncate(format::manifest::MAX_UNMAPPED_ENTRIES - 1);
                o.unmapped.push("... more entries left out".into());
            }
        }
        m.manifest
            .validate()
            .map_err(|e| (i, format!("the mapped manifest is invalid: {e}")))?;
    }
    Ok(out)
}

/// An order of the packages of a batch in which each comes after the packages of the
/// batch it requires (the batch is acyclic once [`map_batch`] has broken its cycles):
/// moved into a live layer's `packages/` in this order, every intermediate set is valid.
pub fn install_order(ms: &[Mapped]) -> Vec<usize> {
    let es = edges(ms);
    let mut needs = vec![0usize; ms.len()];
    let mut seen = HashSet::new();
    for &(i, _, j) in &es {
        if seen.insert((i, j)) {
            needs[i] += 1;
        }
    }
    let mut order = Vec::with_capacity(ms.len());
    let mut done = vec![false; ms.len()];
    while order.len() < ms.len() {
        // The first package (in input order) whose requirements are all placed; on a
        // cycle (not expected), the first one left.
        let next = (0..ms.len())
            .find(|&i| !done[i] && needs[i] == 0)
            .or_else(|| (0..ms.len()).find(|&i| !done[i]))
            .expect("a package is left");
        done[next] = true;
        order.push(next);
        for &(i, j) in &seen {
            if j == next && !done[i] {
                needs[i] = needs[i].saturating_sub(1);
            }
        }
    }
    order
}

/// The edges of the batch's dependency graph: (from, requirement index, to).
fn edges(ms: &[Mapped]) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (i, m) in ms.iter().enumerate() {
        for (k, r) in m.manifest.requires.iter().enumerate() {
            for (j, p) in ms.iter().enumerate() {
                if i != j
                    && p.manifest
                        .provided()
                        .any(|(a, v)| a == r.api && r.version.matches(v))
                {
                    out.push((i, k, j));
                }
            }
        }
    }
    out
}

/// A cycle as a list of edges (package, requirement, provider), if the graph has one.
fn find_cycle(n: usize, edges: &[(usize, usize, usize)]) -> Option<Vec<(usize, usize, usize)>> {
    let pairs: Vec<(usize, usize)> = edges.iter().map(|e| (e.0, e.2)).collect();
    pkgset::graph::find_cycle(n, &pairs).map(|c| c.into_iter().map(|i| edges[i]).collect())
}

/// Breaks the dependency cycles among the packages of a batch (a package set must be
/// acyclic): on each cycle, the package most depended upon in the batch (the most
/// basic one, such as libc6) loses its requirement on the cycle. Each dropped
/// requirement is recorded in `origin.unmapped` and warned about.
fn break_cycles(ms: &mut [Mapped]) {
    let e0 = edges(ms);
    let mut dependents = vec![HashSet::new(); ms.len()];
    for &(i, _, j) in &e0 {
        dependents[j].insert(i);
    }
    for _ in 0..10_000 {
        let es = edges(ms);
        let Some(cycle) = find_cycle(ms.len(), &es) else {
            return;
        };
        let &(i, k, _) = cycle
            .iter()
            .max_by(|a, b| {
                dependents[a.0]
                    .len()
                    .cmp(&dependents[b.0].len())
                    .then_with(|| ms[b.0].manifest.name.cmp(&ms[a.0].manifest.name))
            })
            .expect("a cycle has edges");
        let names: Vec<&str> = cycle
            .iter()
            .map(|e| ms[e.0].manifest.name.as_str())
            .chain(std::iter::once(ms[cycle[0].0].manifest.name.as_str()))
            .collect();
        let names = names.join(" -> ");
        let m = &mut ms[i];
        let r = m.manifest.requires.remove(k);
        let msg = format!(
            "requirement {} {} dropped to break the dependency cycle {names} (a package set must be acyclic)",
            r.api, r.version
        );
        m.warnings.push(msg.clone());
        if let Some(o) = &mut m.manifest.origin {
            o.unmapped.push(msg);
        }
    }
}

/// The manifest of `graft tar` / `graft dir`.
pub fn tree_manifest(t: &TreeSpec, from: &str) -> Result<Manifest, GraftError> {
    let (version, original) = match Version::parse(&t.version) {
        Ok(v) => (v, String::new()),
        Err(_) => {
            let d = DebVersion::parse(&t.version).map_err(|reason| GraftError::Spec {
                option: "--version",
                reason,
            })?;
            (d.to_semver(), t.version.clone())
        }
    };
    let requires = t
        .requires
        .iter()
        .map(|r| crate::parse_require(r))
        .collect::<Result<Vec<_>, _>>()?;
    let m = Manifest {
        name: t.name.clone(),
        version,
        summary: t.summary.clone(),
        provides: Vec::new(),
        requires,
        uses: Vec::new(),
        capabilities: Vec::new(),
        services: Vec::new(),
        os: None,
        origin: Some(Origin {
            from: from.into(),
            version: original,
            ..Origin::default()
        }),
    };
    m.validate().map_err(|e| {
        let option = match e.field.as_str() {
            "name" => "--name",
            "summary" => "--summary",
            f if f.starts_with("requires") => "--require",
            _ => "manifest",
        };
        GraftError::Spec {
            option,
            reason: e.reason,
        }
    })?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::super::control::Paragraph;
    use super::*;

    fn info(control: &str) -> DebInfo {
        let control = Paragraph::parse(control.as_bytes()).unwrap();
        DebInfo {
            path: "x.deb".into(),
            package: control.get("Package").unwrap().to_owned(),
            version: DebVersion::parse(control.get("Version").unwrap()).unwrap(),
            arch: control.get("Architecture").unwrap_or("").to_owned(),
            control,
            scripts: Vec::new(),
            conffiles: Vec::new(),
            data_member: "data.tar.xz".into(),
        }
    }

    fn req_text(m: &Mapped) -> Vec<String> {
        m.manifest
            .requires
            .iter()
            .map(|r| format!("{} {}", r.api, r.version))
            .collect()
    }

    const LIBC6: &str = "Package: libc6\nVersion: 2.36-9+deb12u14\nArchitecture: amd64\nDepends: libgcc-s1\nBreaks: hurd (<< 1:0.9.git20220301-2), nscd (<< 2.36)\nDescription: GNU C Library: Shared libraries\n Contains the standard libraries.\n";
    const LIBGCC: &str = "Package: libgcc-s1\nVersion: 12.2.0-14+deb12u1\nArchitecture: amd64\nDepends: gcc-12-base (= 12.2.0-14+deb12u1), libc6 (>= 2.35)\nProvides: libgcc1 (= 1:12.2.0-14+deb12u1)\nDescription: GCC support library\n";
    const BASE: &str = "Package: gcc-12-base\nVersion: 12.2.0-14+deb12u1\nArchitecture: amd64\nBreaks: gnat (<< 7)\nDescription: GCC, the GNU Compiler Collection (base package)\n";
    const JQ: &str = "Package: jq\nVersion: 1.6-2.1+deb12u3\nArchitecture: amd64\nDepends: libjq1 (= 1.6-2.1+deb12u3), libc6 (>= 2.34)\nDescription: lightweight and flexible command-line JSON processor\n";

    #[test]
    fn maps_real_control_files() {
        let ms = map_batch(&[info(JQ)], &HashSet::new()).unwrap();
        let m = &ms[0];
        assert_eq!(m.manifest.name, "jq");
        assert_eq!(
            m.manifest.version.to_string(),
            "1.6.0+debian.2.1.deb.12.u.3"
        );
        assert_eq!(
            m.manifest.summary,
            "lightweight and flexible command-line JSON processor"
        );
        assert_eq!(req_text(m), ["libjq1 =1.6.0", "libc6 >=2.34.0"]);
        assert_eq!(m.file_name, "jq_1.6-2.1+deb12u3_amd64.hpkg");
        let o = m.manifest.origin.as_ref().unwrap();
        assert_eq!(
            (o.name.as_str(), o.version.as_str()),
            ("jq", "1.6-2.1+deb12u3")
        );
        assert!(o.unmapped.is_empty() && m.warnings.is_empty());

        let ms = map_batch(&[info(LIBGCC)], &HashSet::new()).unwrap();
        let m = &ms[0];
        assert_eq!(req_text(m), ["gcc-12-base =12.2.0", "libc6 >=2.35.0"]);
        assert_eq!(m.manifest.provides[0].api, "libgcc1");
        assert_eq!(
            m.manifest.provides[0].version.to_string(),
            "12.2.0+epoch.1.debian.14.deb.12.u.1"
        );

        let ms = map_batch(&[info(LIBC6)], &HashSet::new()).unwrap();
        let o = ms[0].manifest.origin.as_ref().unwrap();
        assert_eq!(o.unmapped.len(), 1);
        assert!(o.unmapped[0]
            .starts_with("Breaks: hurd (<< 1:0.9.git20220301-2), nscd (<< 2.36): not enforced"));
        assert_eq!(ms[0].warnings.len(), 1);
    }

    #[test]
    fn cycles_in_a_batch_are_broken_at_the_most_basic_package() {
        let hello = "Package: hello\nVersion: 2.10-3\nDepends: libc6 (>= 2.34)\n";
        let batch = [info(hello), info(JQ), info(LIBC6), info(LIBGCC), info(BASE)];
        let ms = map_batch(&batch, &HashSet::new()).unwrap();
        // libc6 -> libgcc-s1 -> libc6: libc6 (required by everyone) loses its requirement.
        assert!(ms[2].manifest.requires.is_empty(), "{:?}", req_text(&ms[2]));
        assert_eq!(req_text(&ms[3]), ["gcc-12-base =12.2.0", "libc6 >=2.35.0"]);
        let o = ms[2].manifest.origin.as_ref().unwrap();
        assert!(
            o.unmapped
                .iter()
                .any(|u| u.contains("cycle libc6 -> libgcc-s1 -> libc6")),
            "{o:?}"
        );
        assert!(ms[2]
            .warnings
            .iter()
            .any(|w| w.contains("dropped to break")));
        assert!(find_cycle(ms.len(), &edges(&ms)).is_none());
        // Providers come before the packages that need them.
        let order: Vec<&str> = install_order(&ms)
            .into_iter()
            .map(|i| ms[i].manifest.name.as_str())
            .collect();
        let pos = |n: &str| order.iter().position(|x| *x == n).unwrap();
        assert_eq!(order.len(), 5);
        assert!(
            pos("libc6") < pos("hello") && pos("libc6") < pos("jq"),
            "{order:?}"
        );
        assert!(
            pos("gcc-12-base") < pos("libgcc-s1") && pos("libc6") < pos("libgcc-s1"),
            "{order:?}"
        );
        // jq's requirement on libjq1 stays (not in the batch: nothing to break).
        assert_eq!(req_text(&ms[1]), ["libjq1 =1.6.0", "libc6 >=2.34.0"]);
        // Without libgcc-s1 in the batch, libc6 keeps its requirement.
        let ms = map_batch(&[info(LIBC6)], &HashSet::new()).unwrap();
        assert_eq!(req_text(&ms[0]), ["libgcc-s1 *"]);
    }

    #[test]
    fn alternatives_ignore_and_merging() {
        let c = "Package: mailer\nVersion: 1.0-1\nPre-Depends: debconf (>= 0.5) | debconf-2.0\nDepends: default-mta | mail-transport-agent, python3:any (>= 3.11~), python3 (<< 3.12), mailer, libfoo (>> 1.0) | libbar\nProvides: mail-reader, mailer (= 1.0), mta (= 2.0), mta (= 2.1)\nRecommends: x\n";
        let ms = map_batch(&[info(c)], &HashSet::new()).unwrap();
        let m = &ms[0];
        assert_eq!(
            req_text(m),
            [
                "debconf >=0.5.0",
                "default-mta *",
                "python3 >=3.11.0, <3.12.0",
                "libfoo >=1.0.0"
            ]
        );
        let o = m.manifest.origin.as_ref().unwrap();
        let joined = o.unmapped.join("\n");
        for want in [
            "Pre-Depends: debconf (>= 0.5) | debconf-2.0: a requirement cannot name alternatives; requires debconf (>= 0.5) (the first alternative)",
            "Depends: mailer: the package itself",
            "Provides: mailer (= 1.0): the package's own name",
            "Provides: mta (= 2.1): mta is provided at the compatible version 2.0.0 already",
            "Recommends: x: not mapped",
        ] {
            assert!(joined.contains(want), "missing {want:?} in\n{joined}");
        }
        let provides: Vec<String> = m
            .manifest
            .provides
            .iter()
            .map(|p| format!("{} {}", p.api, p.version))
            .collect();
        assert_eq!(provides, ["mail-reader 0.0.0", "mta 2.1.0"]);
        assert_eq!(m.warnings.len(), 3, "{:?}", m.warnings);

        // An alternative grafted in the same run is preferred.
        let bar = "Package: libbar\nVersion: 3.0-1\n";
        let ms = map_batch(&[info(c), info(bar)], &HashSet::new()).unwrap();
        assert!(req_text(&ms[0]).contains(&"libbar *".to_owned()));
        assert!(ms[0]
            .manifest
            .origin
            .as_ref()
            .unwrap()
            .unmapped
            .iter()
            .any(|u| u.contains("requires libbar (the alternative grafted in the same run)")));

        // --ignore-depends drops a dependency everywhere.
        let ignore: HashSet<String> = ["default-mta", "mail-transport-agent"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ms = map_batch(&[info(c)], &ignore).unwrap();
        assert!(!req_text(&ms[0])
            .iter()
            .any(|r| r.starts_with("default-mta")));
        assert!(ms[0]
            .manifest
            .origin
            .as_ref()
            .unwrap()
            .unmapped
            .iter()
            .any(|u| u.contains("dropped (--ignore-depends)")));
    }

    #[test]
    fn malformed_relations_name_the_package() {
        for (c, want) in [
            (
                "Package: a\nVersion: 1\nDepends: b (>= \n",
                "malformed control file: Depends",
            ),
            (
                "Package: a\nVersion: 1\nProvides: b | c\n",
                "alternatives are not allowed",
            ),
            (
                "Package: a\nVersion: 1\nProvides: b (>= 1)\n",
                "only `=` versions",
            ),
        ] {
            let (i, e) = map_batch(
                &[info("Package: ok\nVersion: 1\n"), info(c)],
                &HashSet::new(),
            )
            .unwrap_err();
            assert_eq!(i, 1);
            assert!(e.contains(want), "{e}");
        }
    }
}
