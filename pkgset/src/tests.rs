//! Resolution and invariant tests on real (small) archives written to a temp dir.

use std::sync::Arc;

use format::archive::tree::Meta;
use format::archive::writer::write_archive;
use format::archive::{Archive, BuildOptions, Content, Tree};
use format::manifest::Manifest;

use crate::{check, resolve, Candidate, Problem, Want};

pub(crate) struct Lab {
    dir: tempfile::TempDir,
    n: usize,
}

fn layers() -> Vec<String> {
    vec!["system".into(), "common".into(), "user".into()]
}

impl Lab {
    pub(crate) fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            n: 0,
        }
    }

    /// A package from a manifest (JSON) and files `(path, content)`.
    pub(crate) fn pkg(
        &mut self,
        layer: usize,
        manifest: &str,
        files: &[(&str, &str)],
    ) -> Candidate {
        let mut t = Tree::new();
        for (path, content) in files {
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (t.ensure_dir(p.as_bytes(), Meta::new(0o755, 1)).unwrap(), n),
                None => (t.root(), *path),
            };
            let b: Arc<[u8]> = Arc::from(content.as_bytes());
            t.add_file(
                parent,
                name.as_bytes(),
                Content::Bytes(b),
                content.len() as u64,
                Meta::new(0o644, 1),
            )
            .unwrap();
        }
        let m = Manifest::from_json(manifest.as_bytes()).unwrap();
        self.n += 1;
        let out = self.dir.path().join(format!("{}.hpkg", self.n));
        let key = lab_key();
        write_archive(
            &t,
            &m,
            Some(&key),
            &BuildOptions::default(),
            &out,
            &|_, _| {},
        )
        .unwrap();
        Candidate {
            layer,
            path: out.clone(),
            archive: Arc::new(Archive::open(&out).unwrap()),
        }
    }
}

/// The key every lab package is signed with.
pub(crate) fn lab_key() -> format::keys::SecretKey {
    format::keys::SecretKey::from_seed(&[7; 32], "lab")
}

/// Trusts the lab's key.
pub(crate) fn lab_keys() -> format::keys::TrustedKeys {
    let mut k = format::keys::TrustedKeys::new();
    k.insert(lab_key().public(), "lab");
    k
}

pub(crate) fn m(name: &str, version: &str, extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { "," };
    format!(r#"{{"name":"{name}","version":"{version}"{sep}{extra}}}"#)
}

fn req(api: &str, range: &str) -> String {
    format!(r#"{{"api":"{api}","version":"{range}"}}"#)
}

fn want(layer: usize, name: &str) -> Want {
    Want {
        layer,
        name: name.into(),
        pin: None,
    }
}

fn texts(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(|p| p.to_string()).collect()
}

#[test]
fn requirement_met_by_api_contract_from_another_package() {
    let mut lab = Lab::new();
    let io = lab.pkg(
        0,
        &m(
            "core.io",
            "2.1.3",
            r#""provides":[{"api":"api.io","version":"2.1.3"}]"#,
        ),
        &[],
    );
    let gfx = lab.pkg(
        1,
        &m(
            "core.graphics",
            "2.4.1",
            &format!(
                r#""requires":[{},{}]"#,
                req("core.io", "~2.1"),
                req("api.io", ">=2")
            ),
        ),
        &[],
    );
    let g = check(&layers(), &[io.clone(), gfx.clone()]).unwrap();
    assert_eq!(g.edges.len(), 2);
    assert!(g.edges.iter().all(|e| e.from == 1 && e.to == 0));
}

#[test]
fn unmet_requirement_names_package_range_and_what_is_available() {
    let mut lab = Lab::new();
    let io = lab.pkg(0, &m("core.io", "3.0.0", ""), &[]);
    let io_user = lab.pkg(2, &m("core.io", "2.1.0", ""), &[]);
    let gfx = lab.pkg(
        1,
        &m(
            "core.graphics",
            "2.4.1",
            &format!(r#""requires":[{}]"#, req("core.io", "~2.1")),
        ),
        &[],
    );
    let err = check(&layers(), &[io, io_user, gfx]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["core.graphics 2.4.1 requires core.io ~2.1, but only core.io 2.1.0 in user (a higher layer, which core.graphics cannot use), core.io 3.0.0 in system is available in layers system, common"]
    );
}

#[test]
fn nothing_provides_it() {
    let mut lab = Lab::new();
    let a = lab.pkg(
        0,
        &m(
            "a",
            "1.0.0",
            &format!(r#""requires":[{}]"#, req("ghost", "*")),
        ),
        &[],
    );
    let err = check(&layers(), &[a]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["a 1.0.0 requires ghost *, but nothing provides it in layer system"]
    );
}

#[test]
fn cycle_is_named_package_by_package() {
    let mut lab = Lab::new();
    let a = lab.pkg(
        0,
        &m("a", "1.0.0", &format!(r#""requires":[{}]"#, req("b", "1"))),
        &[],
    );
    let b = lab.pkg(
        0,
        &m("b", "1.0.0", &format!(r#""requires":[{}]"#, req("c", "1"))),
        &[],
    );
    let c = lab.pkg(
        0,
        &m("c", "1.0.0", &format!(r#""requires":[{}]"#, req("a", "1"))),
        &[],
    );
    let d = lab.pkg(
        0,
        &m("d", "1.0.0", &format!(r#""requires":[{}]"#, req("a", "1"))),
        &[],
    );
    let err = check(&layers(), &[d, a, b, c]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["dependency cycle: a 1.0.0 -> b 1.0.0 -> c 1.0.0 -> a 1.0.0"]
    );
}

#[test]
fn path_conflict_names_both_packages_and_the_path() {
    let mut lab = Lab::new();
    let a = lab.pkg(
        0,
        &m("a", "1.0.0", ""),
        &[("bin/tool", "A"), ("bin/x", "1"), ("share/same", "S")],
    );
    let b = lab.pkg(
        0,
        &m("b", "1.0.0", ""),
        &[("bin/tool", "B"), ("bin/x", "2"), ("share/same", "S")],
    );
    let c = lab.pkg(1, &m("c", "1.0.0", ""), &[("bin/tool", "C")]);
    let err = check(&layers(), &[a, b, c]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["a 1.0.0 and b 1.0.0 in layer system both provide /bin/tool (and 1 more path) with different contents"]
    );
}

#[test]
fn uses_must_come_from_the_system_layer() {
    let mut lab = Lab::new();
    let gl_common = lab.pkg(1, &m("system.opengl", "4.6.0", ""), &[]);
    let app = lab.pkg(2, &m("app", "1.0.0", r#""uses":["system.opengl"]"#), &[]);
    let err = check(&layers(), &[gl_common.clone(), app.clone()]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["app 1.0.0 uses system.opengl, but no package of layer system provides it"]
    );
    let gl = lab.pkg(0, &m("system.opengl", "4.6.0", ""), &[]);
    check(&layers(), &[gl, app]).unwrap();
}

#[test]
fn two_versions_in_one_layer_are_refused() {
    let mut lab = Lab::new();
    let a1 = lab.pkg(0, &m("a", "1.0.0", ""), &[]);
    let a2 = lab.pkg(0, &m("a", "2.0.0", ""), &[]);
    let a_user = lab.pkg(2, &m("a", "3.0.0", ""), &[]);
    let err = check(&layers(), &[a1.clone(), a2, a_user.clone()]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["a 1.0.0 and a 2.0.0 are both in layer system: only one version of a package can be active"]
    );
    check(&layers(), &[a1, a_user]).unwrap();
}

#[test]
fn resolve_prefers_newest_and_falls_back_when_newest_is_unmet() {
    let mut lab = Lab::new();
    let avail = vec![
        lab.pkg(0, &m("lib", "1.0.0", ""), &[]),
        lab.pkg(0, &m("lib", "2.0.0", ""), &[]),
        lab.pkg(
            0,
            &m(
                "app",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("lib", "^1")),
            ),
            &[],
        ),
        lab.pkg(
            0,
            &m(
                "app",
                "2.0.0",
                &format!(r#""requires":[{}]"#, req("lib", "^3")),
            ),
            &[],
        ),
    ];
    // app 2 needs lib 3 which does not exist: app 1 with lib 1 is chosen.
    let chosen = resolve(&layers(), &avail, &[want(0, "app"), want(0, "lib")]).unwrap();
    let labels: Vec<String> = chosen.iter().map(|&i| avail[i].label()).collect();
    assert_eq!(labels, ["lib-1.0.0", "app-1.0.0"]);
    // lib alone: newest
    let chosen = resolve(&layers(), &avail, &[want(0, "lib")]).unwrap();
    assert_eq!(avail[chosen[0]].label(), "lib-2.0.0");
    // pinning app 2 fails with a plain explanation
    let pin = Want {
        pin: Some(avail[3].id()),
        ..want(0, "app")
    };
    let err = resolve(&layers(), &avail, &[pin]).unwrap_err();
    assert_eq!(
        texts(&err.problems),
        ["app 2.0.0 requires lib ^3, but only lib 1.0.0 in system, lib 2.0.0 in system is available in layer system"]
    );
}

#[test]
fn resolve_lets_two_packages_use_different_providers_of_one_api() {
    let mut lab = Lab::new();
    let avail = vec![
        lab.pkg(
            0,
            &m(
                "io2",
                "2.1.0",
                r#""provides":[{"api":"core.io","version":"2.1.0"}]"#,
            ),
            &[],
        ),
        lab.pkg(
            0,
            &m(
                "io3",
                "3.0.0",
                r#""provides":[{"api":"core.io","version":"3.0.0"}]"#,
            ),
            &[],
        ),
        lab.pkg(
            0,
            &m(
                "old",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("core.io", "~2.1")),
            ),
            &[],
        ),
        lab.pkg(
            0,
            &m(
                "new",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("core.io", "^3")),
            ),
            &[],
        ),
    ];
    let chosen = resolve(&layers(), &avail, &[want(0, "old"), want(0, "new")]).unwrap();
    assert_eq!(chosen, [0, 1, 2, 3]);
}

#[test]
fn resolve_explains_conflicting_constraints() {
    let mut lab = Lab::new();
    let avail = vec![
        lab.pkg(0, &m("lib", "1.0.0", ""), &[]),
        lab.pkg(0, &m("lib", "2.0.0", ""), &[]),
        lab.pkg(
            0,
            &m(
                "a",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("lib", "^1")),
            ),
            &[],
        ),
        lab.pkg(
            0,
            &m(
                "b",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("lib", "^2")),
            ),
            &[],
        ),
    ];
    let err = resolve(&layers(), &avail, &[want(0, "a"), want(0, "b")]).unwrap_err();
    let t = err.to_string();
    assert!(t.contains("lib ^1") && t.contains("lib ^2"), "{t}");
    assert!(!t.contains('\n'), "{t}");
}

#[test]
fn resolve_refuses_a_cycle_found_after_solving() {
    let mut lab = Lab::new();
    let avail = vec![
        lab.pkg(
            0,
            &m("a", "1.0.0", &format!(r#""requires":[{}]"#, req("b", "*"))),
            &[],
        ),
        lab.pkg(
            0,
            &m("b", "1.0.0", &format!(r#""requires":[{}]"#, req("a", "*"))),
            &[],
        ),
    ];
    let err = resolve(&layers(), &avail, &[want(0, "a")]).unwrap_err();
    assert!(err.to_string().starts_with("dependency cycle: "), "{err}");
}

// ---- plans: the changes pkgtool and the daemon make ----

mod plans {
    use super::*;
    use crate::stack::{plan, Change};

    fn labels(set: &[Candidate]) -> Vec<String> {
        set.iter().map(|c| c.label()).collect()
    }

    #[test]
    fn install_pulls_a_requirement_from_the_drop_zone_and_pins_the_rest() {
        let mut lab = Lab::new();
        let libc = lab.pkg(0, &m("libc", "2.0.0", ""), &[("lib/libc", "c")]);
        let io1 = lab.pkg(1, &m("core.io", "2.1.0", ""), &[("lib/io", "1")]);
        let io2 = lab.pkg(1, &m("core.io", "2.1.5", ""), &[("lib/io", "2")]);
        let app = lab.pkg(
            1,
            &m(
                "app",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("core.io", "~2.1")),
            ),
            &[("bin/app", "a")],
        );
        let current = vec![vec![libc.clone()], vec![]];
        let names = vec!["system".to_string(), "common".to_string()];
        let p = plan(
            &names,
            &current,
            1,
            &[io1.clone(), io2.clone()],
            Change::Install {
                packages: vec![app.clone()],
                only_newer: true,
            },
        )
        .unwrap();
        assert_eq!(p.changed, [1]);
        assert_eq!(labels(&p.sets[1]), ["app-1.0.0", "core.io-2.1.5"]);
        assert_eq!(labels(&p.sets[0]), ["libc-2.0.0"]);
        assert_eq!(p.summary(), "+app-1.0.0 +core.io-2.1.5");

        // an older drop is skipped, an explicit install downgrades
        let cur = p.sets.clone();
        let p2 = plan(
            &names,
            &cur,
            1,
            &[],
            Change::Install {
                packages: vec![io1.clone()],
                only_newer: true,
            },
        )
        .unwrap();
        assert!(p2.is_empty());
        assert_eq!(
            p2.skipped[0].why,
            crate::stack::Skip::NotNewer {
                active: "core.io-2.1.5".into()
            }
        );
        assert!(p2.skipped[0]
            .to_string()
            .ends_with(": not newer than the active core.io-2.1.5"));
        let p3 = plan(
            &names,
            &cur,
            1,
            &[],
            Change::Install {
                packages: vec![io1],
                only_newer: false,
            },
        )
        .unwrap();
        assert_eq!(p3.summary(), "+core.io-2.1.0 -core.io-2.1.5");
    }

    #[test]
    fn install_with_an_unmet_requirement_is_refused_whole() {
        let mut lab = Lab::new();
        let io3 = lab.pkg(0, &m("core.io", "3.0.0", ""), &[("lib/io", "3")]);
        let gfx = lab.pkg(
            1,
            &m(
                "core.graphics",
                "2.4.1",
                &format!(r#""requires":[{}]"#, req("core.io", "~2.1")),
            ),
            &[("lib/gfx", "g")],
        );
        let names = vec!["system".to_string(), "common".to_string()];
        let err = plan(
            &names,
            &[vec![io3], vec![]],
            1,
            &[],
            Change::Install {
                packages: vec![gfx],
                only_newer: true,
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "core.graphics 2.4.1 requires core.io ~2.1, but only core.io 3.0.0 in system is available in layers system, common"
        );
    }

    #[test]
    fn remove_refuses_to_break_unless_forced_and_then_names_what_broke() {
        let mut lab = Lab::new();
        let lib = lab.pkg(0, &m("lib", "1.0.0", ""), &[("lib/x", "x")]);
        let app = lab.pkg(
            0,
            &m(
                "app",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("lib", "^1")),
            ),
            &[("bin/app", "a")],
        );
        let top = lab.pkg(
            1,
            &m(
                "tool",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("app", "^1")),
            ),
            &[("bin/tool", "t")],
        );
        let names = vec!["system".to_string(), "user".to_string()];
        let cur = vec![vec![app.clone(), lib.clone()], vec![top.clone()]];
        let remove = |force| Change::Remove {
            names: vec!["lib".into()],
            force,
        };
        let err = plan(&names, &cur, 0, &[], remove(false)).unwrap_err();
        assert!(
            err.to_string().starts_with("app 1.0.0 requires lib ^1"),
            "{err}"
        );
        let p = plan(&names, &cur, 0, &[], remove(true)).unwrap();
        assert_eq!(p.changed, [0, 1]);
        assert!(p.sets[0].is_empty() && p.sets[1].is_empty());
        assert_eq!(p.broken.len(), 2, "{:?}", p.broken);
        assert!(
            matches!(&p.broken[0], Problem::MissingRequirement { package, .. } if package == "app 1.0.0")
        );
        assert!(p.broken[0]
            .to_string()
            .starts_with("app 1.0.0 requires lib ^1"));
        assert!(p.broken[1]
            .to_string()
            .starts_with("tool 1.0.0 requires app ^1"));
        // a vanished file is forced by nature
        let p = plan(&names, &cur, 0, &[], Change::Vanished(vec![lib.id()])).unwrap();
        assert_eq!(p.summary(), "-app-1.0.0 -lib-1.0.0 -tool-1.0.0");
        // removing what is not active is an error
        let err = plan(
            &names,
            &cur,
            1,
            &[],
            Change::Remove {
                names: vec!["nope".into()],
                force: false,
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "nope is not active in layer user");
    }

    #[test]
    fn initial_generation_leaves_out_what_cannot_be_met() {
        let mut lab = Lab::new();
        let a1 = lab.pkg(0, &m("a", "1.0.0", ""), &[("a", "1")]);
        let a2 = lab.pkg(0, &m("a", "1.1.0", ""), &[("a", "2")]);
        let b = lab.pkg(
            0,
            &m("b", "1.0.0", &format!(r#""requires":[{}]"#, req("a", "^1"))),
            &[("b", "b")],
        );
        let orphan = lab.pkg(
            0,
            &m(
                "c",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("zlib", "^1")),
            ),
            &[("c", "c")],
        );
        let names = vec!["system".to_string()];
        let p = plan(
            &names,
            &[vec![]],
            0,
            &[],
            Change::Initial(vec![orphan, b, a1, a2]),
        )
        .unwrap();
        assert_eq!(labels(&p.sets[0]), ["a-1.1.0", "b-1.0.0"]);
        assert_eq!(p.skipped.len(), 1);
        assert!(
            p.skipped[0].why.kind() == "refused"
                && p.skipped[0]
                    .to_string()
                    .starts_with("c-1.0.0: c 1.0.0 requires zlib ^1"),
            "{:?}",
            p.skipped
        );
    }

    #[test]
    fn replace_is_checked_against_the_layers_above() {
        let mut lab = Lab::new();
        let lib1 = lab.pkg(0, &m("lib", "1.0.0", ""), &[("lib/x", "1")]);
        let lib2 = lab.pkg(0, &m("lib", "2.0.0", ""), &[("lib/x", "2")]);
        let app = lab.pkg(
            1,
            &m(
                "app",
                "1.0.0",
                &format!(r#""requires":[{}]"#, req("lib", "^2")),
            ),
            &[("bin/app", "a")],
        );
        let names = vec!["system".to_string(), "user".to_string()];
        let cur = vec![vec![lib2.clone()], vec![app]];
        let err = plan(&names, &cur, 0, &[], Change::Replace(vec![lib1])).unwrap_err();
        assert!(
            err.to_string().contains("app 1.0.0 requires lib ^2"),
            "{err}"
        );
        let p = plan(&names, &cur, 0, &[], Change::Replace(vec![lib2])).unwrap();
        assert!(p.is_empty());
    }
}

#[test]
fn stack_record_round_trips_and_rejects_what_it_cannot_use() {
    use crate::generation::{LayerPaths, StackRecord};
    let r = StackRecord {
        name: "user".into(),
        below: vec![
            ("system".into(), "/pkg/system".into()),
            ("common".into(), "/pkg/common".into()),
        ],
    };
    assert_eq!(StackRecord::parse(&r.to_text()), Some(r.clone()));
    let lowest = StackRecord {
        name: "system".into(),
        below: Vec::new(),
    };
    assert_eq!(StackRecord::parse(&lowest.to_text()), Some(lowest));
    for bad in [
        "system=/pkg/system\n",                 // no name
        "# layer: user\nsystem\n",              // no directory
        "# layer: user\nsystem=relative/dir\n", // not absolute
        "# layer: user\n=/pkg/system\n",        // no layer name
        "# layer: \n",                          // empty name
    ] {
        assert_eq!(StackRecord::parse(bad), None, "{bad:?}");
    }
    let d = tempfile::tempdir().unwrap();
    let paths = LayerPaths::new(d.path());
    assert_eq!(StackRecord::read(&paths), None);
    r.write(&paths).unwrap();
    assert_eq!(StackRecord::read(&paths), Some(r));
}

fn mkfifo(p: &std::path::Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o666) },
        0,
        "mkfifo {p:?}"
    );
}

/// What a user can put in its own layer's state/ must not hang or mislead a root writer.
#[test]
fn hostile_lock_and_state_files_neither_block_nor_redirect() {
    use crate::generation::{read_list, LayerPaths, Lock};
    let d = tempfile::tempdir().unwrap();
    let paths = LayerPaths::new(d.path());
    std::fs::create_dir_all(paths.state()).unwrap();
    let lock = paths.state().join("lock");
    // a FIFO as the lock: replaced, not waited on
    mkfifo(&lock);
    drop(Lock::acquire(&paths).unwrap());
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
    // a symlink as the lock: replaced; its target is not created
    std::fs::remove_file(&lock).unwrap();
    let target = d.path().join("created-by-root");
    std::os::unix::fs::symlink(&target, &lock).unwrap();
    drop(Lock::acquire(&paths).unwrap());
    assert!(!target.exists(), "the lock followed a symlink");
    assert!(std::fs::symlink_metadata(&lock).unwrap().is_file());
    // a FIFO as active.list: an error at once
    mkfifo(&paths.active_list());
    let t = std::time::Instant::now();
    assert!(read_list(&paths.active_list()).is_err());
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    // a FIFO as a package file: refused at once
    let pkg = d.path().join("fifo.hpkg");
    mkfifo(&pkg);
    let mut opener = crate::Opener::new(format::keys::TrustedKeys::default());
    let err = opener.open(&pkg).unwrap_err();
    assert_eq!(err.kind(), "unreadable");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
