//! Reproducible builds: the same tree, options and key give a byte-identical archive.

use std::fs;

use format::archive::{BuildOptions, Compression};

use crate::common::*;

/// The odd tree plus enough content for many batches of parallel compression.
fn busy_tree() -> TestTree {
    let t = odd_tree();
    let mut rng = Rng::new(11);
    for i in 0..12 {
        // Mixed: some chunks compress, some are stored raw, some files are copies.
        t.file(
            format!("bulk/text-{i}"),
            text_bytes(150_000 + i * 7_777, i as u64),
        );
        t.file(format!("bulk/random-{i}"), rng.bytes(90_000 + i * 1_000));
        t.file(format!("bulk/copy-{i}"), text_bytes(150_000, 0));
    }
    t
}

#[test]
fn same_tree_builds_byte_identical_archives_with_any_thread_count() {
    let t = busy_tree();
    let dir = scratch();
    let mut first: Option<(Vec<u8>, format::archive::PackageId)> = None;
    for (i, threads) in [1, 2, 3, 1].into_iter().enumerate() {
        let o = BuildOptions {
            threads,
            ..opts(Compression::Zstd(3), 64 * 1024)
        };
        // A fresh read of the tree each time: nothing may depend on directory order.
        let out = dir.path().join(format!("r{i}.hpkg"));
        let rep = build_dir(t.path(), &o, &out);
        assert!(rep.chunks > 40, "enough chunks for several batches");
        let bytes = fs::read(&out).unwrap();
        match &first {
            None => first = Some((bytes, rep.id)),
            Some((b, id)) => {
                assert_eq!(rep.id, *id, "package id with {threads} threads");
                assert!(*b == bytes, "bytes differ with {threads} threads");
            }
        }
    }
}

#[test]
fn lz4_builds_are_reproducible_and_only_they_say_format_1_1() {
    let t = busy_tree();
    let dir = scratch();
    let mut first: Option<Vec<u8>> = None;
    for (i, threads) in [1, 2, 3].into_iter().enumerate() {
        let o = BuildOptions {
            threads,
            ..opts(Compression::Lz4, 64 * 1024)
        };
        let out = dir.path().join(format!("lz4-{i}.hpkg"));
        build_dir(t.path(), &o, &out);
        let bytes = fs::read(&out).unwrap();
        match &first {
            None => first = Some(bytes),
            Some(b) => assert!(*b == bytes, "lz4 bytes differ with {threads} threads"),
        }
    }
    // Older readers must refuse lz4 (the version tells them why); every other archive keeps
    // version 1.0, as earlier writers made it.
    for (c, minor) in [
        (Compression::Lz4, 1),
        (Compression::Zstd(3), 0),
        (Compression::Zlib(6), 0),
        (Compression::None, 0),
    ] {
        let out = dir.path().join(format!("v-{c}.hpkg"));
        build_dir(t.path(), &opts(c, 64 * 1024), &out);
        let a = open(&out);
        let h = a.header();
        assert_eq!((h.version_major, h.version_minor), (1, minor), "{c}");
        assert_eq!(h.compression, c);
        let methods: std::collections::HashSet<_> = (0..a.chunk_count())
            .map(|k| a.chunk_info(k).unwrap().method)
            .collect();
        assert!(
            methods.contains(&c.method()),
            "{c}: some chunk uses the method"
        );
        assert!(
            methods
                .iter()
                .all(|m| *m == c.method() || *m == format::archive::Method::None),
            "{c}: {methods:?}"
        );
    }
}

#[test]
fn different_content_gives_a_different_id() {
    let t = TestTree::new();
    t.file("f", "one").fix_mtimes(5);
    let dir = scratch();
    let a = build_dir(t.path(), &Default::default(), &dir.path().join("a.hpkg"));
    t.file("f", "two").fix_mtimes(5);
    let b = build_dir(t.path(), &Default::default(), &dir.path().join("b.hpkg"));
    assert_ne!(a.id, b.id);
    t.file("f", "one").fix_mtimes(6);
    let c = build_dir(t.path(), &Default::default(), &dir.path().join("c.hpkg"));
    assert_ne!(a.id, c.id, "mtimes are part of the id");
}

#[test]
fn source_date_epoch_clamps_later_mtimes() {
    let t = odd_tree();
    // odd_tree's mtimes range from before 1970 to 2242; clamp in the middle of them.
    let epoch = 1_650_000_000;
    let dir = scratch();
    let o = BuildOptions {
        source_date_epoch: Some(epoch),
        ..BuildOptions::default()
    };
    let out = dir.path().join("sde.hpkg");
    build_dir(t.path(), &o, &out);
    let a = open(&out);
    assert_matches_source(
        &a,
        t.path(),
        Check {
            clamp: Some(epoch),
            ..Check::default()
        },
    );
    let mtime = |p: &str| {
        let e = a.lookup_path(p.as_bytes()).unwrap().expect(p);
        let at = a.attr(e).unwrap();
        (at.mtime, at.mtime_nsec)
    };
    assert_eq!(mtime("plain.txt"), (epoch, 0), "later mtime clamped");
    assert_eq!(mtime("setuid-bin"), (epoch, 0), "far future clamped");
    assert_eq!(
        mtime("sub"),
        (epoch, 0),
        "equal seconds with nanoseconds clamped"
    );
    assert_eq!(mtime("empty"), (-1_000_000, 5), "earlier mtime kept");
    assert_eq!(
        mtime("link-rel"),
        (1_234_567_890, 42),
        "symlink's own mtime kept"
    );
    assert_eq!(mtime(""), (epoch, 0), "root clamped");

    // Clamping makes a tree touched after the epoch build the same archive as before.
    let before = std::fs::read(&out).unwrap();
    t.mtime("plain.txt", 1_800_000_000, 1)
        .mtime("", 1_900_000_000, 0);
    let out2 = dir.path().join("sde2.hpkg");
    build_dir(t.path(), &o, &out2);
    assert!(
        before == std::fs::read(&out2).unwrap(),
        "touching after the epoch changes nothing"
    );
}
