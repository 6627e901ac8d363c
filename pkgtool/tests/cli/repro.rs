//! Reproducible builds: same tree, options and key give the same bytes; SOURCE_DATE_EPOCH
//! clamps mtimes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::util::*;

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn builds_with_source_date_epoch_are_byte_identical() {
    let f = Fixture::shared();
    let src = &odd().src;
    let s = Scratch::new();
    std::fs::create_dir(s.join("other")).unwrap();
    let (a, b) = (s.join("a.hpkg"), s.join("other/b.hpkg"));
    f.build(src, &a).env("SOURCE_DATE_EPOCH", "1700000000").ok();
    f.build(src, &b).env("SOURCE_DATE_EPOCH", "1700000000").ok();
    assert!(read(&a) == read(&b), "two builds of the same tree differ");
    // A different clamp is a different package (the mtimes are part of the metadata).
    let c = s.join("c.hpkg");
    f.build(src, &c).env("SOURCE_DATE_EPOCH", "1600000000").ok();
    assert!(read(&a) != read(&c));
}

#[test]
fn builds_with_different_thread_counts_are_byte_identical() {
    let f = Fixture::shared();
    let src = Path::new("/usr/include/c++");
    let s = Scratch::new();
    let (a, b) = (s.join("j1.hpkg"), s.join("j3.hpkg"));
    f.build(src, &a)
        .args(["--chunk-size", "64K", "-j", "1"])
        .ok();
    f.build(src, &b)
        .args(["--chunk-size", "64K", "-j", "3"])
        .ok();
    let info = pkgtool(["info", "--json"]).arg(&a).ok().json();
    assert!(
        info["chunks"].as_u64().unwrap() > 50,
        "enough chunks to interleave"
    );
    assert!(read(&a) == read(&b), "-j 1 and -j 3 builds differ");
}

#[test]
fn source_date_epoch_clamps_later_mtimes() {
    const EPOCH: i64 = 1_000_000_000;
    let f = Fixture::shared();
    let src = &odd().src;
    let s = Scratch::new();
    let pkg = s.join("clamped.hpkg");
    f.build(src, &pkg)
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .ok();
    // What each entry's mtime must become: later ones (and EPOCH itself with nanoseconds)
    // are clamped to EPOCH.0; earlier ones are kept, nanoseconds included.
    let clamp = |md: &std::fs::Metadata| {
        if md.mtime() >= EPOCH {
            (EPOCH, 0)
        } else {
            (md.mtime(), md.mtime_nsec() as u32)
        }
    };
    let entries = walk(src);
    let kept: Vec<String> = entries
        .iter()
        .filter(|e| e.md.mtime() < EPOCH)
        .map(|e| escape(&e.rel))
        .collect();
    assert_eq!(
        kept,
        ["old", "time/before-1970"],
        "the tree has entries on both sides"
    );
    let list = pkgtool(["list", "--json"]).arg(&pkg).ok().json_lines();
    let by_path: std::collections::BTreeMap<String, &serde_json::Value> = list
        .iter()
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    assert_eq!(by_path.len(), entries.len());
    for e in &entries {
        let p = escape(&e.rel);
        assert_eq!(by_path[&p]["mtime"], clamp(&e.md).0, "mtime of {p}");
    }
    // Clamped entries lose their nanoseconds; the older ones keep them.
    let out = s.join("out");
    pkgtool(["extract"]).arg(&pkg).arg(&out).ok();
    for (o, e) in walk(&out).iter().zip(&entries) {
        assert_eq!(o.rel, e.rel);
        assert_eq!(
            (o.md.mtime(), o.md.mtime_nsec() as u32),
            clamp(&e.md),
            "extracted mtime of {}",
            escape(&e.rel)
        );
    }
    let root = std::fs::metadata(&out).unwrap();
    assert_eq!((root.mtime(), root.mtime_nsec()), (EPOCH, 0));
}
