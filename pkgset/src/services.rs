//! Which services a change of a set touches, and in which order (issue 13: updates that
//! keep services healthy).
//!
//! A service belongs to a package (the manifest's `services`, each naming the unit the
//! package ships). A change from one set to another *affects* a service when its package is
//! added, removed or replaced (another package id), or when a package it requires, however
//! indirectly, is: a library update restarts the services that link it. Everything else
//! keeps running, untouched.
//!
//! The order follows the requirement graph of each set ([`crate::set::check`]): services
//! start after the services of the packages they require (providers first) and stop in
//! the reverse order (dependents first), ties broken by name so a plan is the same every
//! time.

use std::collections::{BTreeSet, HashMap};

use format::archive::PackageId;
use format::manifest::Health;

use crate::set::{Candidate, Graph};

/// One service of one package of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The package, `name-version`.
    pub package: String,
    /// The service's name in the manifest.
    pub service: String,
    /// The unit systemd knows it by (`web.service`).
    pub unit: String,
    /// The unit file's path inside the package.
    pub unit_path: String,
    /// How its health is judged.
    pub health: Health,
}

/// The services a change touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePlan {
    /// Services of the old set to stop, dependents first.
    pub stop: Vec<Unit>,
    /// Services of the new set to start, providers first.
    pub start: Vec<Unit>,
    /// Services of the new set left running.
    pub kept: Vec<Unit>,
}

impl ServicePlan {
    /// True if no service is stopped or started.
    pub fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }

    /// The plan in a few lines: `stop a.service (pkg-1.0.0)`, `start ...`, `keep ...`.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (verb, units) in [
            ("stop", &self.stop),
            ("start", &self.start),
            ("keep", &self.kept),
        ] {
            for u in units {
                out.push(format!("{verb} {} ({})", u.unit, u.package));
            }
        }
        out
    }
}

/// The services of `old` and `new` (each with its requirement graph) that a change from
/// one to the other affects, in order.
pub fn plan(
    old: &[Candidate],
    old_graph: &Graph,
    new: &[Candidate],
    new_graph: &Graph,
) -> ServicePlan {
    let old_ids: Vec<PackageId> = old.iter().map(Candidate::id).collect();
    let new_ids: Vec<PackageId> = new.iter().map(Candidate::id).collect();
    let mut hit_old: Vec<bool> = old_ids.iter().map(|id| !new_ids.contains(id)).collect();
    let mut hit_new: Vec<bool> = new_ids.iter().map(|id| !old_ids.contains(id)).collect();
    let in_new: HashMap<PackageId, usize> =
        new_ids.iter().enumerate().map(|(j, id)| (*id, j)).collect();
    // To a fixpoint: a package requiring a hit package is hit; a package kept in both sets
    // is hit in both or in neither.
    loop {
        let mut changed = spread(&mut hit_old, old_graph) | spread(&mut hit_new, new_graph);
        for (i, id) in old_ids.iter().enumerate() {
            if let Some(&j) = in_new.get(id) {
                if hit_old[i] != hit_new[j] {
                    hit_old[i] = true;
                    hit_new[j] = true;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let old_order = start_order(old, old_graph);
    let new_order = start_order(new, new_graph);
    let units = |set: &[Candidate], order: &[usize], pick: &dyn Fn(usize) -> bool| -> Vec<Unit> {
        order
            .iter()
            .filter(|&&i| pick(i))
            .flat_map(|&i| units_of(&set[i]))
            .collect()
    };
    let mut stop = units(old, &old_order, &|i| hit_old[i]);
    stop.reverse();
    ServicePlan {
        stop,
        start: units(new, &new_order, &|j| hit_new[j]),
        kept: units(new, &new_order, &|j| !hit_new[j]),
    }
}

/// Marks every package that requires a marked one; true if any mark was added.
fn spread(hit: &mut [bool], g: &Graph) -> bool {
    let mut any = false;
    loop {
        let mut more = false;
        for e in &g.edges {
            if hit.get(e.to) == Some(&true) && hit.get(e.from) == Some(&false) {
                hit[e.from] = true;
                more = true;
            }
        }
        if !more {
            return any;
        }
        any = true;
    }
}

/// The indexes of `set` with every package after the packages it requires (Kahn's
/// algorithm, the smallest label first among the ready ones). The set is acyclic (its
/// check refuses cycles); anything left over by a cycle comes last, by label.
fn start_order(set: &[Candidate], g: &Graph) -> Vec<usize> {
    let n = set.len();
    let labels: Vec<String> = set.iter().map(Candidate::label).collect();
    let mut needs = vec![0usize; n];
    let mut needed_by: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut seen = BTreeSet::new();
    for e in &g.edges {
        if e.from < n && e.to < n && e.from != e.to && seen.insert((e.from, e.to)) {
            needs[e.from] += 1;
            needed_by[e.to].push(e.from);
        }
    }
    let mut ready: BTreeSet<(&str, usize)> = (0..n)
        .filter(|&i| needs[i] == 0)
        .map(|i| (labels[i].as_str(), i))
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(&first) = ready.iter().next() {
        ready.remove(&first);
        let i = first.1;
        order.push(i);
        for &d in &needed_by[i] {
            needs[d] -= 1;
            if needs[d] == 0 {
                ready.insert((labels[d].as_str(), d));
            }
        }
    }
    if order.len() < n {
        let mut rest: Vec<usize> = (0..n).filter(|i| !order.contains(i)).collect();
        rest.sort_by(|a, b| labels[*a].cmp(&labels[*b]));
        order.extend(rest);
    }
    order
}

fn units_of(c: &Candidate) -> Vec<Unit> {
    let label = c.label();
    c.manifest()
        .services
        .iter()
        .map(|s| Unit {
            package: label.clone(),
            service: s.name.clone(),
            unit: s.unit_name(),
            unit_path: s.unit_path(),
            health: s.health.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{m, Lab};

    fn svc(names: &[&str]) -> String {
        let list: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name":"{n}"}}"#))
            .collect();
        format!(r#""services":[{}]"#, list.join(","))
    }

    fn needs(api: &str, range: &str) -> String {
        format!(r#""requires":[{{"api":"{api}","version":"{range}"}}]"#)
    }

    fn graph(set: &[Candidate]) -> Graph {
        crate::set::check(&["system".into()], set).unwrap()
    }

    fn units(us: &[Unit]) -> Vec<&str> {
        us.iter().map(|u| u.unit.as_str()).collect()
    }

    /// libssl <- web (a service) <- proxy (a service requiring web); db unrelated.
    struct Sets {
        lab: Lab,
        ssl1: Candidate,
        web1: Candidate,
        proxy1: Candidate,
        db1: Candidate,
    }

    fn sets() -> Sets {
        let mut lab = Lab::new();
        let ssl1 = lab.pkg(0, &m("libssl", "3.0.0", ""), &[("lib/libssl", "3.0.0")]);
        let web1 = lab.pkg(
            0,
            &m(
                "web",
                "1.0.0",
                &format!("{},{}", needs("libssl", "^3"), svc(&["web"])),
            ),
            &[("bin/web", "1")],
        );
        let proxy1 = lab.pkg(
            0,
            &m(
                "proxy",
                "1.0.0",
                &format!(
                    "{},{}",
                    needs("web", "^1"),
                    svc(&["proxy", "proxy-metrics"])
                ),
            ),
            &[("bin/proxy", "1")],
        );
        let db1 = lab.pkg(0, &m("db", "1.0.0", &svc(&["db"])), &[("bin/db", "1")]);
        Sets {
            lab,
            ssl1,
            web1,
            proxy1,
            db1,
        }
    }

    #[test]
    fn a_replaced_package_restarts_its_services_and_those_that_require_it() {
        let mut s = sets();
        let web11 = s.lab.pkg(
            0,
            &m(
                "web",
                "1.1.0",
                &format!("{},{}", needs("libssl", "^3"), svc(&["web"])),
            ),
            &[("bin/web", "1.1")],
        );
        let old = vec![
            s.ssl1.clone(),
            s.web1.clone(),
            s.proxy1.clone(),
            s.db1.clone(),
        ];
        let new = vec![s.ssl1.clone(), web11, s.proxy1.clone(), s.db1.clone()];
        let p = plan(&old, &graph(&old), &new, &graph(&new));
        // Dependents stop first (the exact reverse of the start), providers start first;
        // db is not touched.
        assert_eq!(
            units(&p.stop),
            ["proxy-metrics.service", "proxy.service", "web.service"]
        );
        assert_eq!(
            units(&p.start),
            ["web.service", "proxy.service", "proxy-metrics.service"]
        );
        assert_eq!(units(&p.kept), ["db.service"]);
        assert_eq!(p.start[0].package, "web-1.1.0");
        assert_eq!(p.stop[2].package, "web-1.0.0");
        assert!(p
            .lines()
            .contains(&"keep db.service (db-1.0.0)".to_string()));
    }

    #[test]
    fn a_library_update_restarts_every_service_above_it_and_nothing_else() {
        let mut s = sets();
        let ssl2 = s
            .lab
            .pkg(0, &m("libssl", "3.0.1", ""), &[("lib/libssl", "3.0.1")]);
        let old = vec![
            s.ssl1.clone(),
            s.web1.clone(),
            s.proxy1.clone(),
            s.db1.clone(),
        ];
        let new = vec![ssl2, s.web1.clone(), s.proxy1.clone(), s.db1.clone()];
        let p = plan(&old, &graph(&old), &new, &graph(&new));
        assert_eq!(
            units(&p.stop),
            ["proxy-metrics.service", "proxy.service", "web.service"]
        );
        assert_eq!(
            units(&p.start),
            ["web.service", "proxy.service", "proxy-metrics.service"]
        );
        assert_eq!(units(&p.kept), ["db.service"]);
    }

    #[test]
    fn added_and_removed_packages_start_and_stop_only_their_own() {
        let mut s = sets();
        let cache = s.lab.pkg(
            0,
            &m("cache", "1.0.0", &svc(&["cache"])),
            &[("bin/cache", "1")],
        );
        let old = vec![s.ssl1.clone(), s.web1.clone(), s.db1.clone()];
        let new = vec![s.ssl1.clone(), s.web1.clone(), cache];
        let p = plan(&old, &graph(&old), &new, &graph(&new));
        assert_eq!(units(&p.stop), ["db.service"]);
        assert_eq!(units(&p.start), ["cache.service"]);
        assert_eq!(units(&p.kept), ["web.service"]);
    }

    #[test]
    fn the_same_set_touches_nothing() {
        let s = sets();
        let set = vec![
            s.ssl1.clone(),
            s.web1.clone(),
            s.proxy1.clone(),
            s.db1.clone(),
        ];
        let p = plan(&set, &graph(&set), &set, &graph(&set));
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.kept.len(), 4);
    }

    #[test]
    fn units_and_health_come_from_the_manifest() {
        let mut lab = Lab::new();
        let c = lab.pkg(
            0,
            &m(
                "web",
                "1.0.0",
                r#""services":[{"name":"web","unit":"lib/systemd/system/pkgfs-web.service","health":{"ready":"notify","command":["bin/check"],"deadline":"20s"}}]"#,
            ),
            &[("lib/systemd/system/pkgfs-web.service", "[Service]\n")],
        );
        let p = plan(
            &[],
            &Graph::default(),
            std::slice::from_ref(&c),
            &graph(std::slice::from_ref(&c)),
        );
        let u = &p.start[0];
        assert_eq!(
            (u.unit.as_str(), u.unit_path.as_str()),
            ("pkgfs-web.service", "lib/systemd/system/pkgfs-web.service")
        );
        assert_eq!(u.health.command, ["bin/check"]);
        assert_eq!(u.health.deadline.ms, 20_000);
    }
}
