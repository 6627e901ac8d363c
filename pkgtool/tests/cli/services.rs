//! Updates over services from the command line (issue 13), on a host without a view of
//! the layer: the plan (`--dry-run`), an update that changes the set and says why it
//! leaves services alone, the capability policy refusing a package and naming why, and an
//! update whose process died being undone by the next run. The transaction itself, with
//! systemd, is tested in a VM (`scripts/boot-test services`) and in pkgset's unit tests.

use std::fs;
use std::path::PathBuf;

use crate::util::{keygen, pkgtool, KeyPair, Scratch};

struct Layer {
    s: Scratch,
    key: KeyPair,
    other: KeyPair,
}

const UNIT: &str = "[Service]\nExecStart=/usr/bin/web\nDynamicUser=yes\n";

impl Layer {
    fn new() -> Layer {
        let s = Scratch::new();
        let key = keygen(s.path(), "vendor");
        let other = keygen(s.path(), "thirdparty");
        fs::create_dir(s.join("keys")).unwrap();
        fs::copy(&key.public, s.join("keys/vendor.pub")).unwrap();
        fs::copy(&other.public, s.join("keys/thirdparty.pub")).unwrap();
        fs::create_dir_all(s.join("system/packages")).unwrap();
        Layer { s, key, other }
    }

    fn dir(&self) -> PathBuf {
        self.s.join("system")
    }

    /// A package `name-v` with a service `name` (its unit shipped), asking for `caps`.
    fn build(&self, name: &str, v: &str, caps: &[&str], third: bool) -> PathBuf {
        let tree = self.s.join(format!("tree-{name}-{v}"));
        fs::create_dir_all(tree.join("lib/systemd/system")).unwrap();
        fs::write(
            tree.join(format!("lib/systemd/system/{name}.service")),
            UNIT,
        )
        .unwrap();
        let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
        let man = self.s.join(format!("{name}-{v}.json"));
        fs::write(
            &man,
            format!(
                r#"{{"name":"{name}","version":"{v}","capabilities":[{}],"services":[{{"name":"{name}","health":{{"command":["usr/bin/check"],"stable":"2s"}}}}]}}"#,
                caps.join(",")
            ),
        )
        .unwrap();
        let out = self.s.join(format!("{name}-{v}.hpkg"));
        let key = if third { &self.other } else { &self.key };
        pkgtool(["build"])
            .arg(&tree)
            .arg("-o")
            .arg(&out)
            .arg("--key")
            .arg(&key.secret)
            .arg("--manifest")
            .arg(&man)
            .arg("--quiet")
            .ok();
        out
    }

    fn update(&self, pkg: &PathBuf, extra: &[&str]) -> crate::util::TestCommand {
        let mut c = pkgtool(["update"]);
        c.arg(pkg)
            .arg("--layer")
            .arg(self.dir())
            .arg("--trusted-keys")
            .arg(self.s.join("keys"))
            .arg("--policy")
            .arg(self.s.join("policy"))
            .args(extra);
        c
    }
}

#[test]
fn dry_run_prints_the_services_a_change_stops_and_starts_and_changes_nothing() {
    let l = Layer::new();
    let web1 = l.build("web", "1.0.0", &["net.listen"], false);
    let db = l.build("db", "1.0.0", &[], false);
    l.update(&web1, &["--no-restart"]).ok();
    l.update(&db, &["--no-restart"]).ok();
    let web2 = l.build("web", "2.0.0", &["net.listen"], false);
    let r = l.update(&web2, &["--dry-run"]).ok();
    let out = r.stdout_str();
    assert!(out.contains("would install +web-2.0.0 -web-1.0.0"), "{out}");
    assert!(
        out.contains("services: stop web.service (web-1.0.0)"),
        "{out}"
    );
    assert!(
        out.contains("services: start web.service (web-2.0.0)"),
        "{out}"
    );
    assert!(
        out.contains("services: keep db.service (db-1.0.0)"),
        "{out}"
    );
    let list = fs::read_to_string(l.dir().join("state/active.list")).unwrap();
    assert!(
        list.contains("web-1.0.0") && !list.contains("web-2.0.0"),
        "{list}"
    );
    assert!(!l.dir().join("state/transaction").exists());
}

#[test]
fn without_a_view_of_the_layer_an_update_changes_the_set_and_says_services_are_left_alone() {
    let l = Layer::new();
    let web1 = l.build("web", "1.0.0", &[], false);
    let r = l.update(&web1, &[]).ok();
    let err = r.stderr_str();
    assert!(
        err.contains("systemd is not running: services are left as they are")
            || err.contains("no packagefs view serves"),
        "{err}"
    );
    assert!(fs::read_to_string(l.dir().join("state/active.list"))
        .unwrap()
        .contains("web-1.0.0"));
}

#[test]
fn the_policy_refuses_a_package_asking_for_more_than_its_signer_may_and_names_it() {
    let l = Layer::new();
    fs::write(
        l.s.join("policy"),
        "vendor *\nthirdparty net.listen net.bind\n",
    )
    .unwrap();
    let ok = l.build("web", "1.0.0", &["net.bind"], true);
    l.update(&ok, &["--no-restart"]).ok();
    let admin = l.build("admin", "1.0.0", &["sys.admin"], true);
    l.update(&admin, &["--no-restart"])
        .fails(1)
        .one_line_error()
        .stderr_contains("it asks for capabilities sys.admin that the policy")
        .stderr_contains("signed by key thirdparty (allowed: net.bind, net.listen)");
    // The vendor's key may ask for anything.
    let vendor = l.build("admin", "1.0.0", &["sys.admin"], false);
    l.update(&vendor, &["--no-restart"]).ok();
    // A bad policy is one line naming its line, and nothing is installed.
    fs::write(l.s.join("policy"), "vendor *\nthirdparty cap_sys_admin\n").unwrap();
    let web2 = l.build("web", "2.0.0", &["net.bind"], true);
    l.update(&web2, &["--no-restart"])
        .fails(1)
        .one_line_error()
        .stderr_contains("line 2: unknown capability \"cap_sys_admin\"");
}

#[test]
fn an_update_whose_process_died_is_undone_by_the_next_run() {
    let l = Layer::new();
    let web1 = l.build("web", "1.0.0", &[], false);
    l.update(&web1, &["--no-restart"]).ok();
    let web2 = l.build("web", "2.0.0", &[], false);
    l.update(&web2, &["--no-restart"]).ok();
    // What a process killed after its switch leaves: the record, its lock free.
    fs::write(
        l.dir().join("state/transaction"),
        r#"{"pid":4242,"began":"2026-12-06T00:00:00Z","command":"install +web-2.0.0 -web-1.0.0","from":1,"to":2,"phase":"switched","stop":[{"unit":"web.service","package":"web-1.0.0"}],"start":[{"unit":"web.service","package":"web-2.0.0"}]}"#,
    )
    .unwrap();
    let db = l.build("db", "1.0.0", &[], false);
    let r = l.update(&db, &["--no-restart"]).ok();
    assert!(
        r.stderr_str()
            .contains("update by pid 4242 (install +web-2.0.0 -web-1.0.0) interrupted after switching to generation 2; undone by pkgtool"),
        "{}",
        r.stderr_str()
    );
    assert!(!l.dir().join("state/transaction").exists());
    let list = fs::read_to_string(l.dir().join("state/active.list")).unwrap();
    assert!(
        list.contains("web-1.0.0") && list.contains("db-1.0.0"),
        "{list}"
    );
    let h = pkgtool(["history", "--layer"]).arg(l.dir()).ok();
    assert!(
        h.stdout_str().contains("interrupted-update"),
        "{}",
        h.stdout_str()
    );
}
