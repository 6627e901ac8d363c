//! The package-set commands on real layer directories: resolve, install, remove, status,
//! generations, rollback, gc — and their refusals, which must leave the layer untouched.

use std::fs;
use std::path::PathBuf;

use crate::util::{keygen, pkgtool, KeyPair, Scratch, TestCommand};

/// Packages built by the real `pkgtool build`, signed by one key trusted in `keys/`.
struct Repo {
    s: Scratch,
    key: KeyPair,
    n: usize,
}

impl Repo {
    fn new() -> Repo {
        let s = Scratch::new();
        // the signer's secret key stays outside the trusted directory
        let key = keygen(s.path(), "signer");
        fs::create_dir(s.join("keys")).unwrap();
        fs::copy(&key.public, s.join("keys/signer.pub")).unwrap();
        fs::create_dir_all(s.join("system/packages")).unwrap();
        fs::create_dir_all(s.join("user/packages")).unwrap();
        Repo { s, key, n: 0 }
    }

    fn keys(&self) -> PathBuf {
        self.s.join("keys")
    }

    fn layer(&self, name: &str) -> PathBuf {
        self.s.join(name)
    }

    /// Builds `name-version` with manifest extras (JSON fields) and files.
    fn pkg(&mut self, name: &str, version: &str, extra: &str, files: &[(&str, &str)]) -> PathBuf {
        self.n += 1;
        let root = self.s.join(format!("src{}", self.n));
        for (p, c) in files {
            let f = root.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, c).unwrap();
        }
        fs::create_dir_all(&root).unwrap();
        let sep = if extra.is_empty() { "" } else { "," };
        let m = self.s.join(format!("m{}.json", self.n));
        fs::write(
            &m,
            format!(r#"{{"name":"{name}","version":"{version}"{sep}{extra}}}"#),
        )
        .unwrap();
        let out = self.s.join(format!("{name}-{version}-{}.hpkg", self.n));
        pkgtool(["build"])
            .arg(&root)
            .arg("-o")
            .arg(&out)
            .arg("--key")
            .arg(&self.key.secret)
            .arg("--manifest")
            .arg(&m)
            .arg("--quiet")
            .ok();
        out
    }

    /// `pkgtool CMD ... --layer system=DIR [--layer user=DIR] --trusted-keys KEYS`.
    fn cmd(&self, args: &[&str], layers: &[&str]) -> TestCommand {
        let mut c = pkgtool(args);
        for l in layers {
            c.arg("--layer")
                .arg(format!("{l}={}", self.layer(l).display()));
        }
        c.arg("--trusted-keys").arg(self.keys());
        c
    }

    fn active(&self, layer: &str) -> String {
        fs::read_to_string(self.layer(layer).join("state/active.list")).unwrap_or_default()
    }

    fn packages(&self, layer: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.layer(layer).join("packages"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn req(api: &str, range: &str) -> String {
    format!(r#""requires":[{{"api":"{api}","version":"{range}"}}]"#)
}

#[test]
fn install_upgrade_status_generations_rollback_gc() {
    let mut r = Repo::new();
    let lib = r.pkg("core.io", "2.1.0", "", &[("lib/io", "io 2.1.0")]);
    let app1 = r.pkg(
        "app",
        "1.0.0",
        &req("core.io", "~2.1"),
        &[("bin/app", "app 1")],
    );
    let app2 = r.pkg(
        "app",
        "2.0.0",
        &req("core.io", "~2.1"),
        &[("bin/app", "app 2")],
    );

    let out = r.cmd(&["install"], &["system"]).arg(&lib).arg(&app1).ok();
    assert_eq!(
        out.stdout_str().trim(),
        "layer system: generation 1: +app-1.0.0 +core.io-2.1.0"
    );
    assert_eq!(
        r.packages("system"),
        ["app-1.0.0.hpkg", "core.io-2.1.0.hpkg"]
    );
    assert!(r.active("system").contains("# generation: 1"));

    // installing what is active changes nothing
    r.cmd(&["install"], &["system"])
        .arg(&lib)
        .ok()
        .stdout_contains("no change");

    // an upgrade replaces the file in packages/; the pool keeps the old one
    r.cmd(&["install"], &["system"])
        .arg(&app2)
        .ok()
        .stdout_contains("generation 2: +app-2.0.0 -app-1.0.0");
    assert_eq!(
        r.packages("system"),
        ["app-2.0.0.hpkg", "core.io-2.1.0.hpkg"]
    );
    assert_eq!(
        fs::read_dir(r.layer("system/state/pool")).unwrap().count(),
        3
    );

    let st = r.cmd(&["status", "--json"], &["system"]).ok().json();
    assert_eq!(st["generation"], 2);
    assert_eq!(st["ok"], true);
    let names: Vec<String> = st["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}-{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["app-2.0.0", "core.io-2.1.0"]);

    let gens = r.cmd(&["generations", "--json"], &["system"]).ok().json();
    let gens = gens.as_array().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[1]["active"], true);
    assert_eq!(gens[0]["reason"], "install +app-1.0.0 +core.io-2.1.0");

    // roll back: the old app comes back from the pool, though packages/ no longer has it
    r.cmd(&["rollback"], &["system"])
        .ok()
        .stdout_contains("generation 2 -> 1: +app-1.0.0 -app-2.0.0");
    let active = r.active("system");
    assert!(active.contains("app-1.0.0 ("), "{active}");
    assert!(active.contains("# generation: 1"));
    r.cmd(&["rollback"], &["system"])
        .fails(1)
        .one_line_error()
        .stderr_contains("no generation before 1");
    r.cmd(&["rollback", "--to", "2"], &["system"])
        .ok()
        .stdout_contains("generation 1 -> 2");
    r.cmd(&["rollback", "--to", "9"], &["system"])
        .fails(1)
        .one_line_error()
        .stderr_contains("no generation 9");

    // the next change is numbered past the highest; gc keeps the newest and the active
    r.cmd(&["remove", "app"], &["system"])
        .ok()
        .stdout_contains("generation 3: -app-2.0.0");
    assert_eq!(r.packages("system"), ["core.io-2.1.0.hpkg"]);
    r.cmd(&["gc", "--keep", "1"], &["system"])
        .ok()
        .stdout_contains("removed 2 generation(s) (1, 2) and 2 pooled package file(s)");
    let gens = r.cmd(&["generations", "--json"], &["system"]).ok().json();
    assert_eq!(gens.as_array().unwrap().len(), 1);
}

#[test]
fn refusals_name_the_reason_and_change_nothing() {
    let mut r = Repo::new();
    let io3 = r.pkg("core.io", "3.0.0", "", &[("lib/io", "3")]);
    let gfx = r.pkg(
        "core.graphics",
        "2.4.1",
        &req("core.io", "~2.1"),
        &[("lib/gfx", "g")],
    );
    r.cmd(&["install"], &["system"]).arg(&io3).ok();
    let before = (r.active("system"), r.packages("system"));

    r.cmd(&["install"], &["system"])
        .arg(&gfx)
        .fails(1)
        .one_line_error()
        .stderr_contains(
            "refused: core.graphics 2.4.1 requires core.io ~2.1, but only core.io 3.0.0 in system is available in layer system",
        );
    assert_eq!((r.active("system"), r.packages("system")), before);

    // a path conflict inside one layer
    let a = r.pkg("a", "1.0.0", "", &[("share/x", "from a")]);
    let b = r.pkg("b", "1.0.0", "", &[("share/x", "from b")]);
    r.cmd(&["install"], &["system"])
        .arg(&a)
        .arg(&b)
        .fails(1)
        .one_line_error()
        .stderr_contains(
            "a 1.0.0 and b 1.0.0 in layer system both provide /share/x with different contents",
        );
    assert_eq!((r.active("system"), r.packages("system")), before);

    // a dependency cycle, named package by package
    let c1 = r.pkg("c1", "1.0.0", &req("c2", "^1"), &[("c1", "1")]);
    let c2 = r.pkg("c2", "1.0.0", &req("c1", "^1"), &[("c2", "2")]);
    r.cmd(&["install"], &["system"])
        .arg(&c1)
        .arg(&c2)
        .fails(1)
        .one_line_error()
        .stderr_contains("dependency cycle: c1 1.0.0 -> c2 1.0.0 -> c1 1.0.0");
    assert_eq!((r.active("system"), r.packages("system")), before);

    // an unsigned package, and one signed by an unknown key
    let root = r.s.join("unsigned-src");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("f"), "x").unwrap();
    let m = r.s.join("u.json");
    fs::write(&m, r#"{"name":"u","version":"1.0.0"}"#).unwrap();
    let unsigned = r.s.join("u.hpkg");
    pkgtool(["build", "--unsigned", "--quiet", "--manifest"])
        .arg(&m)
        .arg(&root)
        .arg("-o")
        .arg(&unsigned)
        .ok();
    r.cmd(&["install"], &["system"])
        .arg(&unsigned)
        .fails(1)
        .one_line_error()
        .stderr_contains("refused")
        .stderr_contains("u.hpkg");
    let stranger = keygen(r.s.path(), "stranger");
    let foreign = r.s.join("foreign.hpkg");
    pkgtool(["build", "--quiet", "--manifest"])
        .arg(&m)
        .arg(&root)
        .arg("-o")
        .arg(&foreign)
        .arg("--key")
        .arg(&stranger.secret)
        .ok();
    r.cmd(&["install"], &["system"])
        .arg(&foreign)
        .fails(1)
        .one_line_error()
        .stderr_contains(&stranger.id);
    assert_eq!((r.active("system"), r.packages("system")), before);
    assert!(!r.packages("system").iter().any(|n| n.starts_with('.')));

    // a corrupt active.list is named with its line
    fs::write(r.layer("system/state/active.list"), "garbage line\n").unwrap();
    r.cmd(&["status"], &["system"])
        .fails(1)
        .one_line_error()
        .stderr_contains("active.list line 1");
}

#[test]
fn remove_refuses_to_break_others_unless_forced() {
    let mut r = Repo::new();
    let lib = r.pkg("lib", "1.0.0", "", &[("lib/x", "x")]);
    let app = r.pkg("app", "1.0.0", &req("lib", "^1"), &[("bin/app", "a")]);
    r.cmd(&["install"], &["system"]).arg(&lib).arg(&app).ok();
    let before = r.active("system");
    r.cmd(&["remove", "lib"], &["system"])
        .fails(1)
        .one_line_error()
        .stderr_contains("refused: app 1.0.0 requires lib ^1, but nothing provides it")
        .stderr_contains("--force");
    assert_eq!(r.active("system"), before);
    r.cmd(&["remove", "nope"], &["system"])
        .fails(1)
        .stderr_contains("nope is not active in layer system");
    let out = r.cmd(&["remove", "lib", "--force"], &["system"]).ok();
    assert!(
        out.stdout_str().contains("-app-1.0.0 -lib-1.0.0"),
        "{}",
        out.stdout_str()
    );
    assert!(out
        .stderr_str()
        .contains("also deactivated: app 1.0.0 requires lib ^1"));
    assert!(r.packages("system").is_empty());
    // and back
    r.cmd(&["rollback"], &["system"]).ok();
    assert!(r.active("system").contains("app-1.0.0 ("));
}

#[test]
fn layers_stack_requirements_come_from_below() {
    let mut r = Repo::new();
    let lib = r.pkg("lib", "1.4.0", "", &[("lib/x", "x")]);
    let tool = r.pkg(
        "tool",
        "0.1.0",
        &req("lib", ">=1.2, <2"),
        &[("bin/tool", "t")],
    );
    // the tool alone in the user layer: its requirement is unmet
    r.cmd(&["install"], &["system", "user"])
        .arg(&tool)
        .fails(1)
        .stderr_contains(
            "tool 0.1.0 requires lib >=1.2, <2, but nothing provides it in layers system, user",
        );
    r.cmd(&["install"], &["system"]).arg(&lib).ok();
    r.cmd(&["install"], &["system", "user"])
        .arg(&tool)
        .ok()
        .stdout_contains("layer user: generation 1: +tool-0.1.0");
    // a lower layer's removal is checked against the layer given above it
    r.cmd(&["remove", "lib"], &["system"]).ok();
    r.cmd(&["status"], &["system", "user"])
        .fails(1)
        .stdout_contains("set: BROKEN: tool 0.1.0 requires lib >=1.2, <2");
    r.cmd(&["rollback"], &["system"]).ok();
    r.cmd(&["status"], &["system", "user"])
        .ok()
        .stdout_contains("set: ok");
}

#[test]
fn first_generation_comes_from_the_drop_zone_and_resolve_explains() {
    let mut r = Repo::new();
    let lib1 = r.pkg("lib", "1.0.0", "", &[("lib/x", "1")]);
    let lib2 = r.pkg("lib", "1.1.0", "", &[("lib/x", "2")]);
    let app = r.pkg("app", "1.0.0", &req("lib", "^1.1"), &[("bin/app", "a")]);
    let orphan = r.pkg("orphan", "1.0.0", &req("zlib", "^1"), &[("bin/o", "o")]);
    for p in [&lib1, &lib2, &app] {
        fs::copy(p, r.layer("system/packages").join(p.file_name().unwrap())).unwrap();
    }
    let res = r
        .cmd(&["resolve", "--json"], &[])
        .arg(format!("system={}", r.layer("system").display()))
        .ok()
        .json();
    assert_eq!(res["ok"], true);
    let got: Vec<&str> = res["layers"][0]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["version"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["1.0.0", "1.1.0"], "app 1.0.0 and the newest lib");
    // status before any generation: what the first one would be
    r.cmd(&["status"], &["system"])
        .ok()
        .stdout_contains("no generation yet")
        .stdout_contains("lib-1.1.0");

    fs::copy(&orphan, r.layer("system/packages/orphan.hpkg")).unwrap();
    r.cmd(&["resolve"], &[])
        .arg(r.layer("system"))
        .fails(1)
        .one_line_error()
        .stderr_contains("orphan 1.0.0 requires zlib ^1, but nothing provides it");
    // In JSON, each problem and each file not opened comes with its kind and its data.
    fs::write(r.layer("system/packages/junk.hpkg"), b"not a package").unwrap();
    let res = r
        .cmd(&["resolve", "--json"], &[])
        .arg(r.layer("system"))
        .fails(1)
        .json();
    assert_eq!(res["ok"], false);
    let p = &res["problems"][0];
    assert_eq!(p["kind"], "missing-requirement", "{res}");
    assert_eq!(p["package"], "orphan 1.0.0");
    assert_eq!(p["requirement"], "zlib ^1");
    assert!(p["message"]
        .as_str()
        .unwrap()
        .starts_with("orphan 1.0.0 requires zlib ^1"));
    let refused = &res["refused"][0];
    assert!(refused["file"].as_str().unwrap().ends_with("junk.hpkg"));
    assert_eq!(refused["kind"], "invalid", "{res}");
    fs::remove_file(r.layer("system/packages/junk.hpkg")).unwrap();

    // the first install records the drop zone's set as generation 1, leaving out orphan
    let extra = r.pkg("extra", "1.0.0", "", &[("share/e", "e")]);
    let out = r.cmd(&["install"], &["system"]).arg(&extra).ok();
    assert!(out.stdout_str().contains("generation 2: +extra-1.0.0"));
    assert!(out
        .stderr_str()
        .contains("not in the first generation: orphan-1.0.0"));
    let gens = r.cmd(&["generations", "--json"], &["system"]).ok().json();
    assert_eq!(gens[0]["reason"], "first generation from packages/");
    assert_eq!(
        gens[0]["packages"],
        serde_json::json!(["app-1.0.0", "lib-1.1.0"])
    );
    let st = r.cmd(&["status", "--json"], &["system"]).ok().json();
    let inactive: Vec<String> = st["inactive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {}",
                i["package"].as_str().unwrap_or("-"),
                i["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        inactive,
        [
            "lib-1.0.0 older than the active lib-1.1.0".to_string(),
            "orphan-1.0.0 not active".to_string()
        ]
    );
}

#[test]
fn bad_layers_and_keys_are_one_line_errors() {
    let r = Repo::new();
    let missing = r.s.join("nope");
    pkgtool(["status", "--layer"])
        .arg(&missing)
        .arg("--trusted-keys")
        .arg(r.keys())
        .fails(1)
        .one_line_error()
        .stderr_contains("layer nope");
    pkgtool(["status", "--layer", "bad name=/tmp", "--trusted-keys"])
        .arg(r.keys())
        .fails(1)
        .one_line_error()
        .stderr_contains("layer name");
    pkgtool(["status", "--layer"])
        .arg(r.layer("system"))
        .arg("--trusted-keys")
        .arg(r.s.join("no-keys"))
        .fails(1)
        .one_line_error()
        .stderr_contains("cannot load trusted keys");
    pkgtool(["gc", "--keep", "0", "--layer"])
        .arg(r.layer("system"))
        .fails(2);
}

/// Without --trusted-keys the set commands trust /etc/packagefs/keys, as the daemon does;
/// when it has no key they say where they looked. /etc is an overlay in a private mount
/// namespace here, so the host's /etc/packagefs is neither read nor changed.
#[test]
fn r14_without_trusted_keys_the_default_directory_is_named() {
    let mut r = Repo::new();
    let pkg = r.pkg("hello", "1.0.0", "", &[("hello", "hi\n")]);
    let scratch = r.s.join("etc-overlay");
    fs::create_dir(&scratch).unwrap();
    let script = r#"
        set -u
        pkgtool=$1 scratch=$2 layer=$3 pub=$4 pkg=$5
        # upper and work on a tmpfs: an overlay cannot have its upper on an overlay (/ in
        # a container)
        mount -t tmpfs tmpfs "$scratch" || exit 90
        mkdir "$scratch/upper" "$scratch/work"
        mount -t overlay overlay -o "lowerdir=/etc,upperdir=$scratch/upper,workdir=$scratch/work" /etc ||
            exit 91
        rm -rf /etc/packagefs
        echo "== missing"
        "$pkgtool" install "$pkg" --layer "$layer" 2>&1; echo "exit $?"
        mkdir -p /etc/packagefs/keys
        echo "== empty"
        "$pkgtool" install "$pkg" --layer "$layer" 2>&1; echo "exit $?"
        cp "$pub" /etc/packagefs/keys/
        echo "== with the signer's key"
        "$pkgtool" install "$pkg" --layer "$layer" 2>&1; echo "exit $?"
        "$pkgtool" status --layer "$layer" 2>&1; echo "exit $?"
    "#;
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_pkgtool"))
        .arg(&scratch)
        .arg(r.layer("system"))
        .arg(&r.key.public)
        .arg(&pkg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let section = |name: &str| {
        text.split("== ")
            .find(|s| s.starts_with(name))
            .unwrap_or_else(|| panic!("no section {name} in:\n{text}"))
            .to_owned()
    };
    let missing = section("missing");
    assert!(
        missing.contains(
            "pkgtool: no trusted keys: /etc/packagefs/keys does not exist (the default, as for packagefs, since no --trusted-keys was given)"
        ) && missing.ends_with("exit 1\n"),
        "{missing}"
    );
    let empty = section("empty");
    assert!(
        empty.contains(
            "pkgtool: no trusted keys: no *.pub file in /etc/packagefs/keys (the default"
        ) && empty.ends_with("exit 1\n"),
        "{empty}"
    );
    let with_key = section("with the signer's key");
    assert_eq!(
        with_key.matches("exit 0\n").count(),
        2,
        "install and status with the default keys:\n{with_key}"
    );
    assert!(
        r.active("system").contains("hello"),
        "{}",
        r.active("system")
    );
}

#[test]
fn r14_an_empty_trusted_keys_directory_is_named() {
    let r = Repo::new();
    let empty = r.s.join("empty-keys");
    fs::create_dir(&empty).unwrap();
    pkgtool(["status", "--layer"])
        .arg(r.layer("system"))
        .arg("--trusted-keys")
        .arg(&empty)
        .fails(1)
        .one_line_error()
        .stderr_contains(&format!(
            "no trusted keys: no *.pub file in {} (--trusted-keys)",
            empty.display()
        ));
}
