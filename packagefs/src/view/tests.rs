//! The view, tested without a mount.

use super::*;
use format::archive::tree::Meta;
use format::archive::writer::write_archive;
use format::archive::{BuildOptions, Content, Tree};
use format::manifest::Manifest;
use std::collections::HashSet;

/// A package description: (path, what) where what is `f:CONTENT`, `d`, `l:TARGET`,
/// `s:CONTENT` (a setuid file) or `h:OTHER` (hard link to OTHER).
pub(crate) struct Spec<'a> {
    pub(crate) name: &'a str,
    pub(crate) version: &'a str,
    pub(crate) layer: usize,
    pub(crate) entries: &'a [(&'a str, &'a str)],
}

pub(crate) fn make(dir: &std::path::Path, slot: u32, s: &Spec<'_>) -> Arc<Package> {
    let mut t = Tree::new();
    let meta = Meta::new(0o644, 1_700_000_000);
    for (path, what) in s.entries {
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (t.ensure_dir(p.as_bytes(), Meta::new(0o755, 1)).unwrap(), n),
            None => (t.root(), *path),
        };
        let (kind, arg) = what.split_at(1);
        let arg = arg.strip_prefix(':').unwrap_or(arg);
        match kind {
            "f" | "s" => {
                let b: Arc<[u8]> = Arc::from(arg.as_bytes());
                let perm = if kind == "s" { 0o4755 } else { 0o644 };
                t.add_file(
                    parent,
                    name.as_bytes(),
                    Content::Bytes(b),
                    arg.len() as u64,
                    Meta::new(perm, 1_700_000_000),
                )
                .unwrap();
            }
            "d" => {
                t.ensure_dir(path.as_bytes(), Meta::new(0o755, 2)).unwrap();
            }
            "l" => {
                t.add_symlink(parent, name.as_bytes(), arg.as_bytes(), meta)
                    .unwrap();
            }
            "h" => {
                let other = t.lookup(arg.as_bytes()).unwrap();
                t.add_hardlink(parent, name.as_bytes(), other).unwrap();
            }
            _ => panic!("bad spec {what}"),
        }
    }
    let m = Manifest::from_json(
        format!(r#"{{"name":"{}","version":"{}"}}"#, s.name, s.version).as_bytes(),
    )
    .unwrap();
    let out = dir.join(format!("{}-{}-{}.hpkg", s.name, s.version, s.layer));
    write_archive(&t, &m, None, &BuildOptions::default(), &out, &|_, _| {}).unwrap();
    Arc::new(Package {
        slot,
        layer: s.layer,
        path: out.clone(),
        archive: Arc::new(Archive::open(&out).unwrap()),
    })
}

fn view(specs: &[Spec<'_>]) -> (tempfile::TempDir, View) {
    let dir = tempfile::tempdir().unwrap();
    let pkgs = specs
        .iter()
        .enumerate()
        .map(|(i, s)| make(dir.path(), i as u32, s))
        .collect();
    let layers = vec![
        Layer::new("system"),
        Layer::new("common"),
        Layer::new("user"),
    ];
    (dir, View::build(layers, pkgs))
}

fn read(v: &View, path: &str) -> String {
    let n = v.lookup_path(path.as_bytes()).unwrap();
    let f = v.file(n).unwrap();
    let (p, e) = (f.pkg, f.entry);
    let size = p.archive.attr(e).unwrap().size as usize;
    let mut buf = vec![0; size];
    p.archive.read_at(e, 0, &mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

fn names(v: &View, path: &str) -> Vec<String> {
    let n = v.lookup_path(path.as_bytes()).unwrap();
    v.read_dir(n, 0)
        .unwrap()
        .into_iter()
        .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
        .collect()
}

/// Every (path, ino) of the view, depth first.
fn walk(v: &View) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), Node::Union(0))];
    while let Some((path, n)) = stack.pop() {
        for (name, child) in v.read_dir(n, 0).unwrap() {
            let p = format!("{path}/{}", String::from_utf8_lossy(name));
            out.push((p.clone(), v.ino(child)));
            if v.attr(child).unwrap().kind == Kind::Dir {
                stack.push((p, child));
            }
        }
    }
    out
}

#[test]
fn higher_layer_hides_lower_and_directories_merge() {
    let (_d, v) = view(&[
        Spec {
            name: "base",
            version: "1.0.0",
            layer: 0,
            entries: &[
                ("etc/conf", "f:system"),
                ("share/a", "f:A"),
                ("opt", "d"),
                ("bin/tool", "f:dir-in-system"),
            ],
        },
        Spec {
            name: "mine",
            version: "1.0.0",
            layer: 2,
            entries: &[
                ("etc/conf", "f:user"),
                ("share/b", "f:B"),
                ("opt", "f:file-over-dir"),
                ("bin", "d"),
            ],
        },
    ]);
    assert_eq!(read(&v, "etc/conf"), "user");
    assert_eq!(names(&v, "share"), ["a", "b"]);
    assert_eq!(read(&v, "opt"), "file-over-dir");
    assert_eq!(names(&v, ""), ["bin", "etc", "opt", "share"]);
    // a directory merges with a lower directory, so bin/tool stays visible
    assert_eq!(read(&v, "bin/tool"), "dir-in-system");
    assert!(v.conflicts().is_empty());
}

#[test]
fn upper_file_hides_lower_directory_and_everything_below() {
    let (_d, v) = view(&[
        Spec {
            name: "base",
            version: "1.0.0",
            layer: 0,
            entries: &[("lib/x/y", "f:deep")],
        },
        Spec {
            name: "top",
            version: "1.0.0",
            layer: 1,
            entries: &[("lib/x", "l:elsewhere")],
        },
    ]);
    let n = v.lookup_path(b"lib/x").unwrap();
    assert_eq!(v.read_link(n).unwrap(), b"elsewhere");
    assert!(matches!(v.lookup_path(b"lib/x/y"), Err(Error::NotDir)));
}

#[test]
fn same_layer_clash_first_package_wins_and_is_reported() {
    let (_d, v) = view(&[
        Spec {
            name: "zeta",
            version: "1.0.0",
            layer: 0,
            entries: &[("bin/x", "f:from-zeta"), ("doc/same", "f:identical")],
        },
        Spec {
            name: "alpha",
            version: "1.0.0",
            layer: 0,
            entries: &[("bin/x", "f:from-alpha"), ("doc/same", "f:identical")],
        },
    ]);
    assert_eq!(read(&v, "bin/x"), "from-alpha");
    assert_eq!(v.conflicts().len(), 1, "{:?}", v.conflicts());
    let c = &v.conflicts()[0];
    assert_eq!(
        (c.path.as_str(), c.winner.as_str(), c.loser.as_str()),
        ("bin/x", "alpha-1.0.0", "zeta-1.0.0")
    );
    assert_eq!(c.layer, "system");
}

#[test]
fn inode_numbers_are_unique_except_hard_links() {
    let (_d, v) = view(&[
        Spec {
            name: "a",
            version: "1.0.0",
            layer: 0,
            entries: &[
                ("usr/bin/a", "f:1"),
                ("usr/bin/a2", "h:usr/bin/a"),
                ("usr/share/a/doc", "f:2"),
            ],
        },
        Spec {
            name: "b",
            version: "1.0.0",
            layer: 0,
            entries: &[("usr/bin/b", "f:3"), ("usr/share/b/doc", "f:4")],
        },
        Spec {
            name: "c",
            version: "2.0.0",
            layer: 2,
            entries: &[("usr/bin/c", "f:5"), ("usr/lib/c.so", "f:6")],
        },
    ]);
    let all = walk(&v);
    let mut seen = HashSet::new();
    let mut dups: Vec<&String> = Vec::new();
    for (p, ino) in &all {
        if !seen.insert(*ino) {
            dups.push(p);
        }
    }
    assert_eq!(
        dups,
        [&"/usr/bin/a2".to_string()],
        "only the hard link repeats an inode"
    );
    let a = v.attr(v.lookup_path(b"usr/bin/a").unwrap()).unwrap();
    assert_eq!(a.nlink, 2);
    // every inode number resolves back to its node
    for (p, ino) in &all {
        let n = v.node(*ino).unwrap();
        assert_eq!(v.ino(n), *ino, "{p}");
    }
    assert!(v.node(999_999).is_err());
    assert!(v.node(0).is_err());
    // usr and usr/bin and usr/share are merged; usr/lib, usr/share/a are not
    assert_eq!(v.merged_dirs(), 4);
}

#[test]
fn setuid_survives_only_in_the_system_layer() {
    let (_d, v) = view(&[
        Spec {
            name: "sys",
            version: "1.0.0",
            layer: 0,
            entries: &[("bin/su", "s:x")],
        },
        Spec {
            name: "usr",
            version: "1.0.0",
            layer: 2,
            entries: &[("bin/evil", "s:x")],
        },
    ]);
    let su = v.attr(v.lookup_path(b"bin/su").unwrap()).unwrap();
    let evil = v.attr(v.lookup_path(b"bin/evil").unwrap()).unwrap();
    assert_eq!(su.perm, 0o4755);
    assert_eq!(evil.perm, 0o755);
}

#[test]
fn directories_know_their_parents_across_the_merge_boundary() {
    let (_d, v) = view(&[
        Spec {
            name: "a",
            version: "1.0.0",
            layer: 0,
            entries: &[("usr/share/a/x", "f:1")],
        },
        Spec {
            name: "b",
            version: "1.0.0",
            layer: 0,
            entries: &[("usr/share/b/y", "f:2")],
        },
    ]);
    let share = v.lookup_path(b"usr/share").unwrap();
    let a = v.lookup_path(b"usr/share/a").unwrap();
    assert!(matches!(share, Node::Union(_)));
    assert!(matches!(a, Node::Pkg { .. }));
    assert_eq!(v.parent(a).unwrap(), share);
    assert_eq!(v.parent(Node::Union(0)).unwrap(), Node::Union(0));
    let usr = v.lookup_path(b"usr").unwrap();
    assert_eq!(v.parent(share).unwrap(), usr);
    assert_eq!(v.attr(share).unwrap().nlink, 4);
}

#[test]
fn read_dir_resumes_at_any_offset_and_agrees_with_lookup() {
    let entries: Vec<(String, String)> = (0..50)
        .map(|i| (format!("d/f{i:02}"), format!("f:{i}")))
        .collect();
    let e2: Vec<(&str, &str)> = entries
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_d, v) = view(&[
        Spec {
            name: "one",
            version: "1.0.0",
            layer: 0,
            entries: &e2[..25],
        },
        Spec {
            name: "two",
            version: "1.0.0",
            layer: 1,
            entries: &e2[25..],
        },
    ]);
    let d = v.lookup_path(b"d").unwrap();
    let all = v.read_dir(d, 0).unwrap();
    assert_eq!(all.len(), 50);
    assert_eq!(v.dir_len(d).unwrap(), 50);
    for start in [0, 1, 24, 25, 49, 50, 51] {
        let part = v.read_dir(d, start).unwrap();
        assert_eq!(part.len(), 50usize.saturating_sub(start));
        if let Some((name, node)) = part.first() {
            assert_eq!(v.lookup(d, name).unwrap(), *node);
        }
    }
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    // a package directory resumes the same way
    let (_d2, v2) = view(&[Spec {
        name: "one",
        version: "1.0.0",
        layer: 0,
        entries: &e2,
    }]);
    let d2 = v2.lookup_path(b"d").unwrap();
    assert!(matches!(d2, Node::Pkg { .. }));
    assert_eq!(v2.read_dir(d2, 10).unwrap().len(), 40);
    assert_eq!(v2.read_dir(d2, 60).unwrap().len(), 0);
    assert_eq!(
        v2.merged_dirs(),
        1,
        "a single package needs only the root merged"
    );
}

#[test]
fn an_empty_view_is_an_empty_root() {
    let (_d, v) = view(&[]);
    assert_eq!(v.read_dir(Node::Union(0), 0).unwrap().len(), 0);
    let a = v.attr(Node::Union(0)).unwrap();
    assert_eq!((a.ino, a.kind, a.nlink), (ROOT_INO, Kind::Dir, 2));
    assert!(matches!(v.lookup_path(b"x"), Err(Error::NotFound)));
}

fn layers3() -> Vec<Layer> {
    vec![
        Layer::new("system"),
        Layer::new("common"),
        Layer::new("user"),
    ]
}

fn ino_of(v: &View, path: &str) -> u64 {
    v.ino(v.lookup_path(path.as_bytes()).unwrap())
}

#[test]
fn generations_keep_inode_numbers_and_diff_names_exactly_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let a = make(
        dir.path(),
        0,
        &Spec {
            name: "a",
            version: "1.0.0",
            layer: 0,
            entries: &[("usr/bin/x", "f:x"), ("usr/share/a", "f:a")],
        },
    );
    let b = make(
        dir.path(),
        1,
        &Spec {
            name: "b",
            version: "1.0.0",
            layer: 0,
            entries: &[("usr/bin/y", "f:y")],
        },
    );
    let c = make(
        dir.path(),
        2,
        &Spec {
            name: "c",
            version: "1.0.0",
            layer: 0,
            entries: &[("usr/lib/z", "f:z")],
        },
    );
    let mut inos = DirInos::default();
    let sh = Shine::default();
    let v1 = View::build_with(layers3(), vec![a.clone()], &mut inos, &sh);
    let v2 = View::build_with(layers3(), vec![a.clone(), b.clone()], &mut inos, &sh);
    let v3 = View::build_with(layers3(), vec![a.clone(), b.clone(), c], &mut inos, &sh);
    let v4 = View::build_with(layers3(), vec![a.clone(), b.clone()], &mut inos, &sh);

    // a's files keep their numbers in every generation
    for v in [&v2, &v3, &v4] {
        assert_eq!(ino_of(v, "usr/bin/x"), ino_of(&v1, "usr/bin/x"));
        assert_eq!(ino_of(v, "usr/share/a"), ino_of(&v1, "usr/share/a"));
    }
    // a merged directory keeps its number by path, across generations
    assert_eq!(ino_of(&v2, "usr"), ino_of(&v3, "usr"));
    assert_eq!(ino_of(&v2, "usr/bin"), ino_of(&v4, "usr/bin"));
    assert_ne!(
        ino_of(&v1, "usr"),
        ino_of(&v2, "usr"),
        "package dir -> merged"
    );

    // 1 -> 2: /usr became a merged directory: its entry in / is dropped; nothing inside
    // a's tree is touched (the kernel reaches it anew through the new /usr)
    let d12 = diff(&v1, &v2);
    assert_eq!(
        d12,
        [
            Inval::Entry {
                parent: ROOT_INO,
                name: b"usr".to_vec()
            },
            Inval::Inode(ROOT_INO)
        ]
    );
    // 2 -> 3: only usr/lib is new
    let usr = ino_of(&v2, "usr");
    assert_eq!(
        diff(&v2, &v3),
        [
            Inval::Entry {
                parent: usr,
                name: b"lib".to_vec()
            },
            Inval::Inode(usr)
        ]
    );
    // 3 -> 4: and gone again; the same generation twice differs in nothing
    assert_eq!(diff(&v3, &v4), diff(&v2, &v3));
    assert!(diff(&v2, &v4).is_empty());
    // the old view still serves what it had (a reader of the old generation)
    assert_eq!(read(&v3, "usr/lib/z"), "z");
    assert!(matches!(v4.lookup_path(b"usr/lib"), Err(Error::NotFound)));
}

#[test]
fn shine_through_links_take_their_names_from_packages() {
    let dir = tempfile::tempdir().unwrap();
    let p = make(
        dir.path(),
        0,
        &Spec {
            name: "p",
            version: "1.0.0",
            layer: 0,
            entries: &[("packages/evil", "f:x"), ("usr/x", "f:x")],
        },
    );
    let shine = Shine {
        layers: vec![
            ("user".into(), b"/home/u/pkg".to_vec()),
            ("system".into(), b"/proc/1/fd/3".to_vec()),
        ],
        root: vec![
            (b"packages".to_vec(), b"/proc/1/fd/3/packages".to_vec()),
            (b"state".to_vec(), b"/proc/1/fd/3/state".to_vec()),
        ],
    };
    let v = View::build_with(layers3(), vec![p], &mut DirInos::default(), &shine);
    assert_eq!(
        names(&v, ""),
        ["packages", "state", "usr"],
        ".layers is not listed"
    );
    assert_eq!(names(&v, ".layers"), ["system", "user"]);
    let link = v.lookup_path(b".layers/system").unwrap();
    assert_eq!(v.read_link(link).unwrap(), b"/proc/1/fd/3");
    let a = v.attr(link).unwrap();
    assert_eq!((a.kind, a.size), (Kind::Symlink, 12));
    assert!(a.ino >= SPECIAL_INO_BASE);
    assert_eq!(v.node(a.ino).unwrap(), link);
    assert_eq!(
        v.read_link(v.lookup_path(b"packages").unwrap()).unwrap(),
        b"/proc/1/fd/3/packages"
    );
    assert!(matches!(
        v.lookup_path(b"packages/evil"),
        Err(Error::NotDir)
    ));
    let layers_dir = v.lookup_path(b".layers").unwrap();
    assert_eq!(v.parent(layers_dir).unwrap(), Node::Union(0));
    assert_eq!(v.attr(Node::Union(0)).unwrap().nlink, 3, "usr");
    assert_eq!(v.conflicts().len(), 1);
    assert_eq!(v.conflicts()[0].path, "packages");
    // every node is reached once; inode numbers are unique
    let all = walk(&v);
    let mut inos: Vec<u64> = all.iter().map(|x| x.1).collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), all.len());
}
