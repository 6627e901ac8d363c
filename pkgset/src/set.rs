//! The invariant of a package set, checked for a fixed set of candidates:
//! every requirement met (by API contract, from the same or a lower layer), every `uses`
//! met by the `system` layer, the dependency graph acyclic, one version per package name
//! per layer, and no two packages of one layer with different contents at one path.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use format::archive::reader::same_entry;
use format::archive::{Archive, EntryId, Kind, PackageId};
use format::manifest::Manifest;

/// A package that may be part of a set: a verified archive in a layer.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index of its layer (0 = lowest).
    pub layer: usize,
    /// The file.
    pub path: PathBuf,
    /// The open, verified archive.
    pub archive: Arc<Archive>,
}

impl Candidate {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.archive.manifest()
    }

    /// The package id.
    pub fn id(&self) -> PackageId {
        self.archive.id()
    }

    /// `name-version`.
    pub fn label(&self) -> String {
        let m = self.manifest();
        format!("{}-{}", m.name, m.version)
    }

    /// `name version`, for messages.
    pub fn display(&self) -> String {
        let m = self.manifest();
        format!("{} {}", m.name, m.version)
    }
}

/// One reason a set breaks the invariant. Each prints as one line; in JSON it is an
/// object with its `kind` (`missing-requirement`, `cycle`, ...) and its fields.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Problem {
    /// A requirement no package of the same or a lower layer meets.
    MissingRequirement {
        /// `name version` of the package.
        package: String,
        /// `api range`.
        requirement: String,
        /// What there is instead, e.g. `core.io 3.0.0 in common`; empty if nothing.
        available: Vec<String>,
        /// The layers that were searched.
        layers: Vec<String>,
    },
    /// A `uses` entry no package of the system layer provides.
    MissingSystemComponent {
        /// `name version` of the package.
        package: String,
        /// The api.
        api: String,
        /// The system layer's name.
        layer: String,
    },
    /// A dependency cycle, package by package (the first is repeated at the end).
    Cycle {
        /// `name version` of each package on the cycle.
        packages: Vec<String>,
    },
    /// Two versions of one package in one layer.
    Duplicate {
        /// The layer.
        layer: String,
        /// `name version` of both.
        first: String,
        /// `name version` of both.
        second: String,
    },
    /// Two packages of one layer claim one path with different contents.
    PathConflict {
        /// The layer.
        layer: String,
        /// The path.
        path: String,
        /// `name version` of both.
        first: String,
        /// `name version` of both.
        second: String,
        /// How many more paths the two clash on.
        more: usize,
    },
    /// The solver found no set; its explanation.
    NoSolution {
        /// The explanation, one line.
        explanation: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingRequirement {
                package,
                requirement,
                available,
                layers,
            } => {
                let where_ = match layers.len() {
                    1 => format!("layer {}", layers[0]),
                    _ => format!("layers {}", layers.join(", ")),
                };
                if available.is_empty() {
                    write!(
                        f,
                        "{package} requires {requirement}, but nothing provides it in {where_}"
                    )
                } else {
                    write!(
                        f,
                        "{package} requires {requirement}, but only {} is available in {where_}",
                        available.join(", ")
                    )
                }
            }
            Problem::MissingSystemComponent {
                package,
                api,
                layer,
            } => {
                write!(
                    f,
                    "{package} uses {api}, but no package of layer {layer} provides it"
                )
            }
            Problem::Cycle { packages } => write!(f, "dependency cycle: {}", packages.join(" -> ")),
            Problem::Duplicate {
                layer,
                first,
                second,
            } => {
                write!(f, "{first} and {second} are both in layer {layer}: only one version of a package can be active")
            }
            Problem::PathConflict {
                layer,
                path,
                first,
                second,
                more,
            } => {
                let more = match more {
                    0 => String::new(),
                    1 => " (and 1 more path)".to_string(),
                    n => format!(" (and {n} more paths)"),
                };
                write!(f, "{first} and {second} in layer {layer} both provide /{path}{more} with different contents")
            }
            Problem::NoSolution { explanation } => write!(f, "{explanation}"),
        }
    }
}

/// A set that breaks the invariant, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    /// The problems (at least one).
    pub problems: Vec<Problem>,
}

/// Past this many problems, a refusal prints the first ones and a count: a log line stays
/// a line (twenty thousand unmet requirements were once one 1.5 MB line).
pub const SHOWN_PROBLEMS: usize = 10;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .problems
            .iter()
            .take(SHOWN_PROBLEMS)
            .map(|p| p.to_string())
            .collect();
        write!(f, "{}", lines.join("; "))?;
        if self.problems.len() > SHOWN_PROBLEMS {
            write!(
                f,
                "; and {} more problems",
                self.problems.len() - SHOWN_PROBLEMS
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod refused_tests {
    use super::*;

    #[test]
    fn r11_a_refusal_of_many_problems_stays_one_short_line() {
        let r = Refused {
            problems: (0..20_000)
                .map(|i| Problem::NoSolution {
                    explanation: format!("p{i} needs q{i}"),
                })
                .collect(),
        };
        let s = r.to_string();
        assert!(s.len() < 400, "{} bytes", s.len());
        assert!(s.starts_with("p0 needs q0; p1 needs q1"));
        assert!(s.ends_with("; and 19990 more problems"), "{s}");
        assert!(!s.contains('\n'));
    }
}

/// How each requirement of an accepted set is met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Index (into the set) of the requiring package.
    pub from: usize,
    /// The requirement, `api range` (or `uses api`).
    pub requirement: String,
    /// Index of the providing package.
    pub to: usize,
}

/// The dependency graph of an accepted set.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// One edge per requirement and `uses` entry (none for a requirement a package meets
    /// itself).
    pub edges: Vec<Edge>,
}

/// Checks the invariant for exactly `set` in `layers` (names, lowest first). The
/// `system` layer (or, if there is none, the lowest) provides `uses` components.
pub fn check(layers: &[String], set: &[Candidate]) -> Result<Graph, Refused> {
    let mut problems = Vec::new();
    let layer_name = |i: usize| layers.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
    let system = layers.iter().position(|l| l == "system").unwrap_or(0);

    // One version per name per layer.
    let mut by_name: HashMap<(usize, &str), usize> = HashMap::new();
    for (i, c) in set.iter().enumerate() {
        if let Some(&j) = by_name.get(&(c.layer, c.manifest().name.as_str())) {
            problems.push(Problem::Duplicate {
                layer: layer_name(c.layer),
                first: set[j].display(),
                second: c.display(),
            });
        } else {
            by_name.insert((c.layer, c.manifest().name.as_str()), i);
        }
    }

    // Requirements by API contract.
    let mut graph = Graph::default();
    for (i, c) in set.iter().enumerate() {
        let m = c.manifest();
        for r in &m.requires {
            let providers: Vec<(usize, &semver::Version)> = set
                .iter()
                .enumerate()
                .filter(|(_, p)| p.layer <= c.layer)
                .flat_map(|(j, p)| {
                    p.manifest()
                        .provided()
                        .filter(|(a, _)| *a == r.api)
                        .map(move |(_, v)| (j, v))
                })
                .collect();
            let best = providers
                .iter()
                .filter(|(_, v)| r.version.matches(v))
                // newest api version; among equals the closest layer; never itself if avoidable
                .max_by(|(a, va), (b, vb)| {
                    va.cmp(vb)
                        .then(set[*a].layer.cmp(&set[*b].layer))
                        .then((*b == i).cmp(&(*a == i)))
                });
            match best {
                Some(&(j, _)) => {
                    if j != i {
                        graph.edges.push(Edge {
                            from: i,
                            requirement: format!("{} {}", r.api, r.version),
                            to: j,
                        });
                    }
                }
                None => {
                    let mut available: Vec<String> = providers
                        .iter()
                        .map(|(j, v)| format!("{} {v} in {}", r.api, layer_name(set[*j].layer)))
                        .collect();
                    // Providers in higher layers cannot be used by this package: say so.
                    for p in set.iter().filter(|p| p.layer > c.layer) {
                        for (a, v) in p.manifest().provided().filter(|(a, _)| *a == r.api) {
                            available.push(format!(
                                "{a} {v} in {} (a higher layer, which {} cannot use)",
                                layer_name(p.layer),
                                m.name
                            ));
                        }
                    }
                    available.sort();
                    available.dedup();
                    problems.push(Problem::MissingRequirement {
                        package: c.display(),
                        requirement: format!("{} {}", r.api, r.version),
                        available,
                        layers: (0..=c.layer).map(layer_name).collect(),
                    });
                }
            }
        }
        for api in &m.uses {
            let provider = set
                .iter()
                .enumerate()
                .filter(|(_, p)| p.layer == system)
                .find(|(_, p)| p.manifest().provided().any(|(a, _)| a == api));
            match provider {
                Some((j, _)) if j != i => graph.edges.push(Edge {
                    from: i,
                    requirement: format!("uses {api}"),
                    to: j,
                }),
                Some(_) => {}
                None => problems.push(Problem::MissingSystemComponent {
                    package: c.display(),
                    api: api.clone(),
                    layer: layer_name(system),
                }),
            }
        }
    }

    let pairs: Vec<(usize, usize)> = graph.edges.iter().map(|e| (e.from, e.to)).collect();
    if let Some(cycle) = crate::graph::find_cycle(set.len(), &pairs) {
        // Package by package, the first repeated at the end.
        let mut packages: Vec<String> = cycle.iter().map(|&e| set[pairs[e].0].display()).collect();
        packages.push(set[pairs[cycle[0]].0].display());
        problems.push(Problem::Cycle { packages });
    }

    problems.extend(path_conflicts(layers, set));

    if problems.is_empty() {
        Ok(graph)
    } else {
        Err(Refused { problems })
    }
}

/// Paths that two packages of one layer both claim with different contents: one problem
/// per pair of packages, naming the first such path.
fn path_conflicts(layers: &[String], set: &[Candidate]) -> Vec<Problem> {
    let mut pairs: Vec<((usize, usize), String, usize)> = Vec::new();
    let nlayers = set.iter().map(|c| c.layer + 1).max().unwrap_or(0);
    for layer in 0..nlayers {
        let members: Vec<usize> = (0..set.len()).filter(|&i| set[i].layer == layer).collect();
        if members.len() < 2 {
            continue;
        }
        let mut seen: HashMap<Vec<u8>, (usize, EntryId, Kind)> = HashMap::new();
        for &i in &members {
            let ar = &set[i].archive;
            for w in ar.walk() {
                match seen.get(&w.path) {
                    None => {
                        seen.insert(w.path.clone(), (i, w.entry, w.attr.kind));
                    }
                    Some(&(j, ej, kind)) => {
                        if kind == Kind::Dir && w.attr.kind == Kind::Dir {
                            continue;
                        }
                        if !same_entry(&set[j].archive, ej, ar, w.entry) {
                            match pairs.iter_mut().find(|(p, ..)| *p == (j, i)) {
                                Some((_, _, more)) => *more += 1,
                                None => pairs.push((
                                    (j, i),
                                    String::from_utf8_lossy(&w.path).into_owned(),
                                    0,
                                )),
                            }
                        }
                    }
                }
            }
        }
    }
    pairs
        .into_iter()
        .map(|((j, i), path, more)| Problem::PathConflict {
            layer: layers.get(set[i].layer).cloned().unwrap_or_default(),
            path,
            first: set[j].display(),
            second: set[i].display(),
            more,
        })
        .collect()
}
