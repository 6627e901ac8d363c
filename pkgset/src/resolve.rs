//! Choosing an active set from the available packages with a real solver (PubGrub), by API
//! contract: a `requires` entry is met by any package of the same or a lower layer that
//! provides the api at a matching version (a package provides its own name at its own
//! version); the newest version is preferred. A failure comes with an explanation.
//!
//! Encoding: each (layer, package name) is a PubGrub package whose versions are the
//! candidates of that name in that layer. Each requirement of each candidate is a PubGrub
//! package of its own whose "versions" are the candidates that could meet it, each of which
//! depends on exactly that candidate; so two packages may meet the same api through
//! different providers. Versions are ranks in a table sorted by (layer, name, version).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

use format::archive::PackageId;
use pubgrub::{
    DefaultStringReporter, Dependencies, DependencyConstraints, DependencyProvider,
    PackageResolutionStatistics, PubGrubError, Ranges, Reporter,
};

use crate::set::{check, Candidate, Problem, Refused};

/// A package that must be in the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Its layer.
    pub layer: usize,
    /// Its name.
    pub name: String,
    /// Exactly this package (otherwise: any version available in the layer, newest first).
    pub pin: Option<PackageId>,
}

thread_local! {
    /// Labels of ranks while a report is being written (Display has no context argument).
    static LABELS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// A candidate's rank: its index in the sorted table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Rank(u32);

impl fmt::Display for Rank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == ROOT.0 {
            return Ok(());
        }
        LABELS.with(|l| match l.borrow().get(self.0 as usize) {
            Some(s) => f.write_str(s),
            None => write!(f, "#{}", self.0),
        })
    }
}

/// The version of the root node.
const ROOT: Rank = Rank(u32::MAX);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Root,
    /// (layer, name, `name (layer L)` for messages)
    Pkg(usize, Arc<str>, Arc<str>),
    /// Requirement `idx` of the candidate at rank `r`.
    Req(u32, u16, Arc<str>),
    /// `uses` entry `idx` of the candidate at rank `r`.
    Use(u32, u16, Arc<str>),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Root => f.write_str("the requested packages"),
            // the version (a candidate's label) names the package
            Node::Pkg(..) => Ok(()),
            Node::Req(_, _, what) | Node::Use(_, _, what) => f.write_str(what),
        }
    }
}

struct Provider<'a> {
    layers: &'a [String],
    cands: &'a [Candidate],
    /// rank -> index into cands
    order: Vec<usize>,
    /// (layer, name) -> ranks, ascending version
    by_name: HashMap<(usize, String), Vec<u32>>,
    wants: &'a [Want],
    system: usize,
}

impl Provider<'_> {
    fn cand(&self, r: u32) -> &Candidate {
        &self.cands[self.order[r as usize]]
    }

    fn pkg_node(&self, r: u32) -> Node {
        let c = self.cand(r);
        let name = &c.manifest().name;
        Node::Pkg(
            c.layer,
            Arc::from(name.as_str()),
            Arc::from(format!("{name} (layer {})", self.layer(c.layer))),
        )
    }

    fn layer(&self, l: usize) -> &str {
        self.layers.get(l).map(String::as_str).unwrap_or("?")
    }

    /// Ranks that meet requirement `idx` of rank `r`, best first.
    fn req_providers(&self, r: u32, idx: u16) -> Vec<u32> {
        let c = self.cand(r);
        let req = &c.manifest().requires[idx as usize];
        let mut v: Vec<(semver::Version, usize, u32)> = (0..self.order.len() as u32)
            .filter_map(|p| {
                let pc = self.cand(p);
                if pc.layer > c.layer {
                    return None;
                }
                let ver = pc
                    .manifest()
                    .provided()
                    .filter(|(a, v)| *a == req.api && req.version.matches(v))
                    .map(|(_, v)| v.clone())
                    .max()?;
                Some((ver, pc.layer, p))
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
        v.into_iter().map(|(_, _, p)| p).collect()
    }

    fn use_providers(&self, r: u32, idx: u16) -> Vec<u32> {
        let api = &self.cand(r).manifest().uses[idx as usize];
        let mut v: Vec<u32> = (0..self.order.len() as u32)
            .filter(|&p| {
                let pc = self.cand(p);
                pc.layer == self.system && pc.manifest().provided().any(|(a, _)| a == api)
            })
            .collect();
        v.reverse();
        v
    }

    fn versions(&self, node: &Node) -> Vec<u32> {
        match node {
            Node::Root => vec![ROOT.0],
            Node::Pkg(layer, name, _) => self
                .by_name
                .get(&(*layer, name.to_string()))
                .map(|ranks| ranks.iter().rev().copied().collect())
                .unwrap_or_default(),
            Node::Req(r, i, _) => self.req_providers(*r, *i),
            Node::Use(r, i, _) => self.use_providers(*r, *i),
        }
    }
}

impl DependencyProvider for Provider<'_> {
    type P = Node;
    type V = Rank;
    type VS = Ranges<Rank>;
    type Priority = Reverse<usize>;
    type M = String;
    type Err = Infallible;

    fn prioritize(
        &self,
        package: &Node,
        range: &Ranges<Rank>,
        _: &PackageResolutionStatistics,
    ) -> Reverse<usize> {
        // Decide the most constrained first.
        Reverse(
            self.versions(package)
                .into_iter()
                .filter(|&v| range.contains(&Rank(v)))
                .count(),
        )
    }

    fn choose_version(
        &self,
        package: &Node,
        range: &Ranges<Rank>,
    ) -> Result<Option<Rank>, Infallible> {
        // `versions` is best first: newest version, newest api, closest layer.
        Ok(self
            .versions(package)
            .into_iter()
            .map(Rank)
            .find(|v| range.contains(v)))
    }

    fn get_dependencies(
        &self,
        package: &Node,
        version: &Rank,
    ) -> Result<Dependencies<Node, Ranges<Rank>, String>, Infallible> {
        let mut deps: Vec<(Node, Ranges<Rank>)> = Vec::new();
        match package {
            Node::Root => {
                for w in self.wants {
                    let Some(ranks) = self.by_name.get(&(w.layer, w.name.clone())) else {
                        return Ok(Dependencies::Unavailable(format!(
                            "{} is not available in layer {}",
                            w.name,
                            self.layer(w.layer)
                        )));
                    };
                    let mut set = Ranges::empty();
                    for &r in ranks {
                        if w.pin.is_none_or(|id| self.cand(r).id() == id) {
                            set = set.union(&Ranges::singleton(Rank(r)));
                        }
                    }
                    deps.push((self.pkg_node(ranks[0]), set));
                }
            }
            Node::Pkg(..) => {
                let r = version.0;
                let m = self.cand(r).manifest();
                for (i, req) in m.requires.iter().enumerate() {
                    let what = format!(
                        "{} {} (required by {} {})",
                        req.api, req.version, m.name, m.version
                    );
                    deps.push((Node::Req(r, i as u16, Arc::from(what)), Ranges::full()));
                }
                for (i, api) in m.uses.iter().enumerate() {
                    let what = format!("system component {api} (used by {} {})", m.name, m.version);
                    deps.push((Node::Use(r, i as u16, Arc::from(what)), Ranges::full()));
                }
            }
            Node::Req(..) | Node::Use(..) => {
                let p = version.0;
                deps.push((self.pkg_node(p), Ranges::singleton(Rank(p))));
            }
        }
        Ok(Dependencies::Available(
            deps.into_iter().collect::<DependencyConstraints<_, _>>(),
        ))
    }
}

/// Chooses, from `available`, a set that contains every wanted package and meets the
/// invariant ([`check`]); returns indices into `available`. The newest versions that work
/// are chosen.
pub fn resolve(
    layers: &[String],
    available: &[Candidate],
    wants: &[Want],
) -> Result<Vec<usize>, Refused> {
    let mut order: Vec<usize> = (0..available.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&available[a], &available[b]);
        (x.layer, &x.manifest().name, &x.manifest().version, x.id()).cmp(&(
            y.layer,
            &y.manifest().name,
            &y.manifest().version,
            y.id(),
        ))
    });
    let mut by_name: HashMap<(usize, String), Vec<u32>> = HashMap::new();
    for (rank, &i) in order.iter().enumerate() {
        let c = &available[i];
        by_name
            .entry((c.layer, c.manifest().name.clone()))
            .or_default()
            .push(rank as u32);
    }
    let system = layers.iter().position(|l| l == "system").unwrap_or(0);
    let provider = Provider {
        layers,
        cands: available,
        order,
        by_name,
        wants,
        system,
    };
    match pubgrub::resolve(&provider, Node::Root, ROOT) {
        Ok(selected) => {
            let mut chosen: Vec<usize> = selected
                .iter()
                .filter(|(p, _)| matches!(p, Node::Pkg(..)))
                .map(|(_, r)| provider.order[r.0 as usize])
                .collect();
            chosen.sort_unstable();
            let set: Vec<Candidate> = chosen.iter().map(|&i| available[i].clone()).collect();
            check(layers, &set)?;
            Ok(chosen)
        }
        Err(PubGrubError::NoSolution(mut tree)) => {
            // The common case has a plain explanation: a wanted package none of whose
            // versions can have its requirements met. Otherwise use PubGrub's derivation.
            let plain = explain_unmet(layers, available, wants);
            if !plain.is_empty() {
                return Err(Refused { problems: plain });
            }
            tree.collapse_no_versions();
            let labels: Vec<String> = (0..provider.order.len() as u32)
                .map(|r| {
                    let c = provider.cand(r);
                    format!("{} (layer {})", c.display(), provider.layer(c.layer))
                })
                .collect();
            let text = LABELS.with(|l| {
                *l.borrow_mut() = labels;
                let t = DefaultStringReporter::report(&tree);
                l.borrow_mut().clear();
                t
            });
            Err(Refused {
                problems: vec![Problem::NoSolution {
                    explanation: text.split_whitespace().collect::<Vec<_>>().join(" "),
                }],
            })
        }
        Err(e) => Err(Refused {
            problems: vec![Problem::NoSolution {
                explanation: e.to_string(),
            }],
        }),
    }
}

/// For each wanted package none of whose available versions has all its requirements
/// available, the missing requirements of its newest version.
fn explain_unmet(layers: &[String], available: &[Candidate], wants: &[Want]) -> Vec<Problem> {
    let mut out = Vec::new();
    for w in wants {
        let mut versions: Vec<&Candidate> = available
            .iter()
            .filter(|c| {
                c.layer == w.layer
                    && c.manifest().name == w.name
                    && w.pin.is_none_or(|id| c.id() == id)
            })
            .collect();
        versions.sort_by(|a, b| b.manifest().version.cmp(&a.manifest().version));
        let mut newest_problems = None;
        let mut any_ok = false;
        for c in &versions {
            // Check this version against everything available at or below its layer.
            let mut set: Vec<Candidate> = vec![(*c).clone()];
            set.extend(
                available
                    .iter()
                    .filter(|o| o.layer <= c.layer && o.id() != c.id())
                    .cloned(),
            );
            let problems: Vec<Problem> = match check(layers, &set) {
                Ok(_) => Vec::new(),
                Err(r) => r
                    .problems
                    .into_iter()
                    .filter(|p| match p {
                        Problem::MissingRequirement { package, .. }
                        | Problem::MissingSystemComponent { package, .. } => {
                            *package == c.display()
                        }
                        _ => false,
                    })
                    .collect(),
            };
            if problems.is_empty() {
                any_ok = true;
                break;
            }
            newest_problems.get_or_insert(problems);
        }
        if !any_ok {
            if let Some(p) = newest_problems {
                out.extend(p);
            }
        }
    }
    out
}
