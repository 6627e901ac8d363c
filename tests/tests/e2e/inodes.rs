//! Inode numbers and stat fields: unique inodes across layers (only hard links share one),
//! so that `find`, `du` and `tar` see every file exactly once; exact sizes, modes,
//! nanosecond mtimes, link counts and plausible st_blocks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::fixtures;
use e2e::tree::union;
use e2e::{run_ok, Mount, Stack, TestTree};

/// doc in `system`, include in `user`: two real trees whose roots (and some directories)
/// merge.
fn real_union() -> (Mount, BTreeMap<PathBuf, PathBuf>) {
    let (doc, inc) = (fixtures::doc(), fixtures::include());
    let m = Mount::builder()
        .layer("system", &doc.layer)
        .layer("user", &inc.layer)
        .trusting(fixtures::keys())
        .start();
    let want = union(&[&doc.source, &inc.source]);
    (m, want)
}

/// `find MNT -mindepth 1 -printf '%i\t%P\0'`: (inode, relative path) of every entry.
fn find_inodes(mnt: &Path) -> Vec<(u64, PathBuf)> {
    let out =
        run_ok(
            Command::new("find")
                .arg(mnt)
                .args(["-mindepth", "1", "-printf", "%i\\t%P\\0"]),
        );
    out.stdout
        .split(|&b| b == 0)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let s = String::from_utf8_lossy(r);
            let (ino, path) = s.split_once('\t').unwrap();
            (ino.parse().unwrap(), PathBuf::from(path))
        })
        .collect()
}

/// Inodes named by more than one path.
fn shared_inodes(found: &[(u64, PathBuf)]) -> BTreeMap<u64, Vec<PathBuf>> {
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for (i, p) in found {
        by_ino.entry(*i).or_default().push(p.clone());
    }
    by_ino.retain(|_, v| v.len() > 1);
    by_ino
}

/// Every path of `want`, once.
fn assert_same_paths(what: &str, got: &[PathBuf], want: &BTreeMap<PathBuf, PathBuf>) {
    let mut seen = BTreeSet::new();
    let dups: Vec<_> = got.iter().filter(|p| !seen.insert(*p)).collect();
    assert!(
        dups.is_empty(),
        "{what} lists paths more than once: {dups:?}"
    );
    let missing: Vec<_> = want.keys().filter(|p| !seen.contains(p)).take(20).collect();
    let extra: Vec<_> = seen
        .iter()
        .filter(|p| !want.contains_key(**p))
        .take(20)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
}

#[test]
fn inode_numbers_are_unique_across_layers_of_real_trees() {
    let (m, want) = real_union();
    let found = find_inodes(m.path());
    assert_same_paths(
        "find",
        &found.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        &want,
    );
    // neither tree has hard links, so no two paths may share an inode
    let shared = shared_inodes(&found);
    assert!(
        shared.is_empty(),
        "{} inode numbers are shared, e.g. {:?}",
        shared.len(),
        shared.iter().take(5).collect::<Vec<_>>()
    );
    // and the root's is distinct from all of them
    let root = std::fs::metadata(m.path()).unwrap().ino();
    assert!(found.iter().all(|(i, _)| *i != root));
}

#[test]
fn du_and_tar_see_every_file_of_the_union_exactly_once() {
    let (m, want) = real_union();
    // du: apparent size = sizes of files and symlinks (directories are 0 on the mount)
    let expect_bytes: u64 = want
        .values()
        .map(|src| std::fs::symlink_metadata(src).unwrap())
        .filter(|md| !md.is_dir())
        .map(|md| md.len())
        .sum();
    let out = run_ok(Command::new("du").arg("-sb").arg(m.path()));
    let du: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        du, expect_bytes,
        "du -sb counts {du} bytes, the union has {expect_bytes}"
    );
    // du in blocks covers at least the bytes
    let out = run_ok(Command::new("du").args(["-s", "-B1"]).arg(m.path()));
    let blocks: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        blocks >= expect_bytes,
        "du -s {blocks} < {expect_bytes} bytes"
    );

    // tar: every path once, and no entry stored as a hard link to another
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "tar -C {} -cf - . | tar -tvf -",
        e2e::quote(m.path())
    )));
    let text = String::from_utf8_lossy(&out.stdout);
    let hard: Vec<&str> = text.lines().filter(|l| l.starts_with('h')).collect();
    assert!(
        hard.is_empty(),
        "tar stored {} files as hard links (duplicate inodes), e.g. {:?}",
        hard.len(),
        &hard[..hard.len().min(5)]
    );
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "tar -C {} -cf - . | tar -tf -",
        e2e::quote(m.path())
    )));
    let listed: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| *l != "./")
        .map(|l| PathBuf::from(l.trim_start_matches("./").trim_end_matches('/')))
        .collect();
    assert_same_paths("tar", &listed, &want);
}

#[test]
fn stat_fields_of_the_union_match_the_shown_sources() {
    let (m, want) = real_union();
    // link count of a directory: 2 + its subdirectories in the union
    let mut subdirs: HashMap<PathBuf, u64> = HashMap::new();
    for (rel, src) in &want {
        if std::fs::symlink_metadata(src).unwrap().is_dir() {
            *subdirs
                .entry(rel.parent().unwrap().to_path_buf())
                .or_default() += 1;
        }
    }
    let mut bad = Vec::new();
    for (rel, src) in &want {
        let w = std::fs::symlink_metadata(src).unwrap();
        let g = std::fs::symlink_metadata(m.join(rel)).unwrap();
        let mut why = Vec::new();
        if w.file_type() != g.file_type() {
            why.push("type".to_string());
        }
        if w.mode() & 0o7777 != g.mode() & 0o7777 {
            why.push(format!(
                "mode {:o} != {:o}",
                g.mode() & 0o7777,
                w.mode() & 0o7777
            ));
        }
        if !w.is_dir() && w.len() != g.len() {
            why.push(format!("size {} != {}", g.len(), w.len()));
        }
        if (w.mtime(), w.mtime_nsec()) != (g.mtime(), g.mtime_nsec()) {
            why.push("mtime".into());
        }
        let nlink = if w.is_dir() {
            2 + subdirs.get(rel).copied().unwrap_or(0)
        } else {
            w.nlink()
        };
        if g.nlink() != nlink {
            why.push(format!("nlink {} != {nlink}", g.nlink()));
        }
        if !why.is_empty() {
            bad.push(format!("{}: {}", rel.display(), why.join(", ")));
        }
    }
    assert!(
        bad.is_empty(),
        "{} entries differ, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
}

/// system: a hard-linked pair; user: another pair and a file with the same contents.
fn linked_stack() -> Stack {
    let sys = TestTree::new();
    sys.file("a/one", "linked system\n")
        .hard_link("a/one", "b/two")
        .file("a/plain", "plain\n");
    let user = TestTree::new();
    user.file("u/x", "linked user\n")
        .hard_link("u/x", "u/y")
        .file("u/same-as-x", "linked user\n");
    let s = Stack::new(&["system", "user"]);
    s.add("system", sys.path(), "sys");
    s.add("user", user.path(), "usr");
    s
}

#[test]
fn hard_links_inside_a_package_share_one_inode_and_nothing_else_does() {
    let s = linked_stack();
    let m = s.mount();
    let ino = |p: &str| std::fs::metadata(m.join(p)).unwrap();
    let (one, two) = (ino("a/one"), ino("b/two"));
    assert_eq!(one.ino(), two.ino(), "a hard-linked pair has one inode");
    assert_eq!((one.nlink(), two.nlink()), (2, 2));
    let (x, y) = (ino("u/x"), ino("u/y"));
    assert_eq!(x.ino(), y.ino());
    assert_eq!(x.nlink(), 2);
    assert_ne!(
        x.ino(),
        one.ino(),
        "pairs of different layers share an inode"
    );
    let same = ino("u/same-as-x");
    assert_ne!(same.ino(), x.ino(), "equal contents are not a hard link");
    assert_eq!(same.nlink(), 1);
    assert_eq!(ino("a/plain").nlink(), 1);

    let found = find_inodes(m.path());
    let shared: BTreeSet<Vec<PathBuf>> = shared_inodes(&found)
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    let want: BTreeSet<Vec<PathBuf>> = [
        vec![PathBuf::from("a/one"), PathBuf::from("b/two")],
        vec![PathBuf::from("u/x"), PathBuf::from("u/y")],
    ]
    .into_iter()
    .collect();
    assert_eq!(shared, want);

    // tar stores each pair once plus one hard link entry; du counts each pair once
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "tar -C {} -cf - . | tar -tvf -",
        e2e::quote(m.path())
    )));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().filter(|l| l.starts_with('h')).count(),
        2,
        "tar -tv:\n{text}"
    );
    let out = run_ok(Command::new("du").arg("-sb").arg(m.path()));
    let du: u64 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let expect = ("linked system\n".len() + "plain\n".len() + 2 * "linked user\n".len()) as u64;
    assert_eq!(du, expect);
}

#[test]
fn stat_reports_exact_size_mode_nanosecond_mtime_and_link_counts() {
    let t = TestTree::new();
    t.file("d/sub1/f", vec![b'x'; 100_000])
        .dir("d/sub2")
        .file("d/empty", "")
        .chmod("d/empty", 0o640)
        .mtime("d/empty", 1_234_567_890, 987_654_321)
        .file("d/exec", "#!/bin/sh\n")
        .chmod("d/exec", 0o751)
        .symlink("d/link", "sub1/f")
        .mtime("d/link", 1_000_000_000, 1)
        .mtime("d/sub1/f", -1, 500_000_000)
        .mtime("d", 1_700_000_000, 123_456_789);
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "stat");
    let m = s.mount();
    let st = |p: &str| std::fs::symlink_metadata(m.join(p)).unwrap();

    let f = st("d/sub1/f");
    assert_eq!(f.size(), 100_000);
    assert!(
        f.blocks() * 512 >= 100_000 && f.blocks() * 512 < 100_000 + 4096,
        "{}",
        f.blocks()
    );
    assert_eq!(
        (f.mtime(), f.mtime_nsec()),
        (-1, 500_000_000),
        "pre-1970 mtime"
    );
    assert_eq!(f.mode(), libc::S_IFREG | 0o644);

    let e = st("d/empty");
    assert_eq!((e.size(), e.blocks()), (0, 0));
    assert_eq!(e.mode(), libc::S_IFREG | 0o640);
    assert_eq!((e.mtime(), e.mtime_nsec()), (1_234_567_890, 987_654_321));

    assert_eq!(st("d/exec").mode(), libc::S_IFREG | 0o751);

    let l = st("d/link");
    assert_eq!(l.mode() & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(l.size(), "sub1/f".len() as u64);
    assert_eq!((l.mtime(), l.mtime_nsec()), (1_000_000_000, 1));

    let d = st("d");
    assert_eq!(d.mode(), libc::S_IFDIR | 0o755);
    assert_eq!(d.nlink(), 4, "2 + two subdirectories");
    assert_eq!((d.mtime(), d.mtime_nsec()), (1_700_000_000, 123_456_789));
    assert_eq!(st("d/sub2").nlink(), 2);
    assert_eq!((d.uid(), d.gid(), f.uid(), f.gid()), (0, 0, 0, 0));
    // the root: 2 + its one subdirectory
    assert_eq!(std::fs::metadata(m.path()).unwrap().nlink(), 3);
}

#[test]
fn readdir_inode_numbers_match_stat() {
    use std::os::unix::fs::DirEntryExt;
    let (m, want) = real_union();
    let mut bad = Vec::new();
    let mut dirs = vec![m.path().to_path_buf()];
    dirs.extend(
        want.iter()
            .filter(|(_, src)| std::fs::symlink_metadata(src).unwrap().is_dir())
            .map(|(rel, _)| m.join(rel)),
    );
    for d in &dirs {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let st = std::fs::symlink_metadata(e.path()).unwrap().ino();
            if e.ino() != st {
                bad.push(format!(
                    "{}: d_ino {} st_ino {st}",
                    e.path().display(),
                    e.ino()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(10)].join("\n")
    );
}
