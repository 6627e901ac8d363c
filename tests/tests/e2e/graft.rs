//! Debian packages grafted by `pkgtool graft deb` (fetched with apt-get), checked as a
//! package set with `pkgset`, mounted, and run from the mount: `hello`, and `jq` with
//! `libjq1` and `libonig5`, on Debian's own `libc6` (with `libgcc-s1` and `gcc-12-base`,
//! which close its dependencies). Nothing of the host is used: the programs run in a
//! chroot into the mount, and through the mount's own loader.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use e2e::{pkgtool, run_ok, Stack};
use format::archive::Archive;
use pkgset::{Candidate, Problem, Want};

const DEBS: [&str; 7] = [
    "hello",
    "jq",
    "libjq1",
    "libonig5",
    "libc6",
    "libgcc-s1",
    "gcc-12-base",
];

/// A `system` layer holding the grafted packages (`--strip-docs`).
fn grafted_stack() -> Stack {
    let s = Stack::new(&["system"]);
    let debs = e2e::debian::debs(&DEBS);
    run_ok(
        Command::new(pkgtool())
            .args(["graft", "deb"])
            .args(&debs)
            .arg("-o")
            .arg(s.layer("system").path().join("packages"))
            .arg("--key")
            .arg(s.keys().secret())
            .args(["--strip-docs", "--quiet", "-j", "2"]),
    );
    s
}

fn candidates(layer: &Path) -> Vec<Candidate> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(layer.join("packages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| Candidate {
            layer: 0,
            archive: Arc::new(Archive::open(&path).unwrap()),
            path,
        })
        .collect()
}

fn names(cands: &[Candidate], idx: impl IntoIterator<Item = usize>) -> BTreeSet<String> {
    idx.into_iter()
        .map(|i| cands[i].manifest().name.clone())
        .collect()
}

#[test]
fn grafted_set_meets_every_requirement_and_resolves_to_the_closure() {
    let s = grafted_stack();
    let layers = vec!["system".to_owned()];
    let cands = candidates(s.layer("system").path());
    assert_eq!(cands.len(), DEBS.len());
    let graph = pkgset::check(&layers, &cands)
        .unwrap_or_else(|e| panic!("the grafted set is refused: {e}"));
    let edge = |from: &str, to: &str| {
        graph
            .edges
            .iter()
            .any(|e| cands[e.from].manifest().name == from && cands[e.to].manifest().name == to)
    };
    for (from, to) in [
        ("hello", "libc6"),
        ("jq", "libjq1"),
        ("jq", "libc6"),
        ("libjq1", "libonig5"),
        ("libonig5", "libc6"),
        ("libgcc-s1", "gcc-12-base"),
        ("libgcc-s1", "libc6"),
    ] {
        assert!(edge(from, to), "no requirement edge {from} -> {to}");
    }
    // Resolution from the programs pulls in exactly their libraries.
    let wants: Vec<Want> = ["hello", "jq"]
        .iter()
        .map(|n| Want {
            layer: 0,
            name: (*n).into(),
            pin: None,
        })
        .collect();
    let chosen = pkgset::resolve(&layers, &cands, &wants).unwrap();
    assert_eq!(
        names(&cands, chosen),
        ["hello", "jq", "libc6", "libjq1", "libonig5"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    // Without libonig5, libjq1's requirement is not met, and the set says so.
    let without: Vec<Candidate> = cands
        .iter()
        .filter(|c| c.manifest().name != "libonig5")
        .cloned()
        .collect();
    let refused = pkgset::check(&layers, &without).unwrap_err();
    assert!(
        refused.problems.iter().any(|p| matches!(p,
            Problem::MissingRequirement { package, requirement, .. }
                if package.starts_with("libjq1 ") && requirement.starts_with("libonig5 >=6."))),
        "{refused}"
    );
}

#[test]
fn grafted_programs_run_from_the_mount() {
    let s = grafted_stack();
    let m = s.mount();
    let log = m.log();
    assert!(
        log.contains(&format!("packages={}", DEBS.len()))
            && !log.contains("refused")
            && !log.contains("not activated"),
        "not every grafted package was mounted:\n{log}"
    );
    let mnt = m.path();
    // In a chroot into the mount: the loader, libc and the program all come from it.
    let out = run_ok(Command::new("chroot").arg(mnt).arg("/usr/bin/hello"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Hello, world!\n");
    let mut jq = Command::new("chroot")
        .arg(mnt)
        .args(["/usr/bin/jq", ".a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    jq.stdin
        .take()
        .unwrap()
        .write_all(br#"{"a": 1, "b": [2, 3]}"#)
        .unwrap();
    let out = jq.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jq failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    // Without a chroot, through the mount's own loader and library directories.
    let ld = m.join("lib64/ld-linux-x86-64.so.2");
    assert_eq!(
        std::fs::read_link(&ld).unwrap(),
        Path::new("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        "the absolute symlink of libc6 is made relative"
    );
    let libpath = format!(
        "{}:{}",
        m.join("lib/x86_64-linux-gnu").display(),
        m.join("usr/lib/x86_64-linux-gnu").display()
    );
    let loader = || {
        let mut c = Command::new(&ld);
        c.args(["--inhibit-cache", "--library-path", &libpath]);
        c
    };
    let out = run_ok(
        loader()
            .arg(m.join("usr/bin/jq"))
            .args(["-n", "[1, 2, 3] | add"]),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "6\n");
    let out = run_ok(loader().arg("--list").arg(m.join("usr/bin/jq")));
    let list = String::from_utf8_lossy(&out.stdout);
    let resolved: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_once("=> ").map(|(_, r)| r))
        .filter_map(|r| r.split_whitespace().next())
        .collect();
    assert!(resolved.len() >= 4, "{list}");
    for lib in ["libjq.so.1", "libonig.so.5", "libc.so.6"] {
        assert!(list.contains(lib), "jq does not load {lib}:\n{list}");
    }
    for r in resolved {
        assert!(
            Path::new(r).starts_with(mnt),
            "{r} is not loaded from the mount:\n{list}"
        );
    }
    // --strip-docs left the documentation out.
    assert!(!m.join("usr/share/doc").exists());
    assert!(m.join("usr/bin/hello").is_file());
}
