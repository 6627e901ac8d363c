//! Round trips: a tree written to an archive reads back exactly, entry by entry.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use format::archive::tree::Meta;
use format::archive::{Compression, Content, Kind, Tree};

use crate::common::*;

const K64: u32 = 64 * 1024;
const M1: u32 = 1024 * 1024;

fn each_compression() -> [Compression; 4] {
    [
        Compression::default(),
        Compression::Zlib(6),
        Compression::Lz4,
        Compression::None,
    ]
}

fn round_trip_real_tree(src: &str, compression: Compression, chunk_size: u32, slices: u32) {
    let Some(src) = real_tree(src) else { return };
    let dir = scratch();
    let out = dir.path().join("real.hpkg");
    let rep = build_dir(src, &opts(compression, chunk_size), &out);
    let a = open(&out);
    assert_eq!(a.id(), rep.id);
    let seen = assert_matches_source(
        &a,
        src,
        Check {
            slices,
            ..Check::default()
        },
    );
    assert_eq!(seen.files, rep.files, "files counted by the writer");
    eprintln!(
        "{}: {} names, {} files, {} bytes -> {} bytes ({} chunks, {} deduplicated files)",
        src.display(),
        seen.names,
        seen.files,
        rep.content_bytes,
        rep.file_size,
        rep.chunks,
        rep.deduplicated_files
    );
}

#[test]
fn usr_share_doc_round_trips_with_zstd_64k() {
    round_trip_real_tree("/usr/share/doc", Compression::Zstd(3), K64, 2);
}

// Each file read decompresses whole chunks, and small files share them, so reading every
// file of a real tree costs (files x chunk size) of decompression: real trees use 64 KiB
// chunks and fast codecs; the other compressions and chunk sizes run on the synthetic trees.
#[test]
fn usr_include_round_trips_stored_raw_64k() {
    round_trip_real_tree("/usr/include", Compression::None, K64, 1);
}

#[test]
fn odd_tree_round_trips_with_each_compression_and_chunk_size() {
    let t = odd_tree();
    let dir = scratch();
    for c in each_compression() {
        for cs in [K64, M1] {
            let out = dir.path().join(format!("odd-{c}-{cs}.hpkg"));
            let rep = build_dir(t.path(), &opts(c, cs), &out);
            let a = open(&out);
            let seen = assert_matches_source(&a, t.path(), Check::default());
            assert_eq!(seen.files, rep.files);
            assert_eq!(rep.symlinks, 6);
            assert_eq!(rep.hardlinks, 3, "extra names of hard-linked files");
        }
    }
}

#[test]
fn hard_links_share_an_entry_and_count_their_names() {
    let t = odd_tree();
    let dir = scratch();
    let out = dir.path().join("hard.hpkg");
    build_dir(t.path(), &Default::default(), &out);
    let a = open(&out);
    let id = |p: &str| a.lookup_path(p.as_bytes()).unwrap().expect(p);
    let one = id("hard/one");
    assert_eq!(id("hard/two"), one);
    assert_eq!(id("sub/three"), one);
    assert_eq!(a.attr(one).unwrap().nlink, 3);
    assert_eq!(id("hard/pair-a"), id("hard/pair-b"));
    assert_eq!(a.attr(id("hard/pair-a")).unwrap().nlink, 2);
    assert_ne!(id("hard/pair-a"), one);
    assert_eq!(a.attr(id("plain.txt")).unwrap().nlink, 1);
    // The walk reports a hard-linked file once per name.
    let names = a.walk().filter(|w| w.entry == one).count();
    assert_eq!(names, 3);
    assert_eq!(
        a.xattr(one, b"user.shared").unwrap(),
        Some(&b"on a hard-linked inode"[..])
    );
}

#[test]
fn identical_files_are_stored_once() {
    let t = TestTree::new();
    let body = text_bytes(300_000, 1);
    t.file("a", &body)
        .file("dir/b", &body)
        .file("dir/c", &body)
        .file("small-1", "same small\n")
        .file("small-2", "same small\n")
        .file("different", text_bytes(300_000, 2));
    let dir = scratch();
    let out = dir.path().join("dedup.hpkg");
    let rep = build_dir(t.path(), &opts(Compression::Zstd(3), K64), &out);
    assert_eq!(rep.files, 6);
    assert_eq!(rep.deduplicated_files, 3, "b, c and small-2 are copies");
    assert_eq!(rep.unique_bytes, 600_000 + 11);
    assert_eq!(rep.content_bytes, 900_000 + 22 + 300_000);
    let a = open(&out);
    // Copies are separate entries that share their chunks.
    let id = |p: &str| a.lookup_path(p.as_bytes()).unwrap().expect(p);
    assert_ne!(id("a"), id("dir/b"));
    assert_eq!(
        a.file_chunks(id("a")).unwrap(),
        a.file_chunks(id("dir/b")).unwrap()
    );
    assert_eq!(a.attr(id("dir/b")).unwrap().nlink, 1);
    assert_matches_source(&a, t.path(), Check::default());
}

/// Files whose sizes sit on and around chunk boundaries, for both extreme chunk sizes.
#[test]
fn files_on_chunk_boundaries_round_trip() {
    for cs in [K64, M1] {
        let c = cs as usize;
        let t = TestTree::new();
        let mut rng = Rng::new(cs as u64);
        for (name, size) in [
            ("exact-1", c),
            ("exact-3", 3 * c),
            ("minus-1", c - 1),
            ("plus-1", c + 1),
            ("two-minus-1", 2 * c - 1),
            ("one", 1),
        ] {
            // Half incompressible (stored raw), half text (compressed).
            let mut body = rng.bytes(size / 2);
            body.extend_from_slice(&text_bytes(size - size / 2, size as u64));
            t.file(name, body);
        }
        let dir = scratch();
        let out = dir.path().join("bounds.hpkg");
        build_dir(t.path(), &opts(Compression::Zstd(3), cs), &out);
        let a = open(&out);
        let id = |p: &str| a.lookup_path(p.as_bytes()).unwrap().expect(p);
        // Large files start their own chunk and fill whole chunks.
        assert_eq!(a.file_chunks(id("exact-1")).unwrap().len(), 1);
        assert_eq!(a.file_chunks(id("exact-3")).unwrap().len(), 3);
        assert_eq!(a.file_chunks(id("plus-1")).unwrap().len(), 2);
        assert_eq!(a.file_chunks(id("two-minus-1")).unwrap().len(), 2);
        for name in ["exact-1", "exact-3", "plus-1"] {
            let spans = a.file_spans(id(name), 0, u64::MAX).unwrap();
            assert_eq!(spans[0].start, 0, "{name} starts a chunk");
        }
        let check = Check {
            slices: 20,
            ..Check::default()
        };
        assert_matches_source(&a, t.path(), check);
    }
}

#[test]
fn many_tiny_files_share_chunks() {
    // In memory: creating thousands of files on disk costs more than the test itself.
    let mut t = Tree::new();
    let dirs: Vec<_> = (0..7)
        .map(|d| {
            let name = format!("d{d}");
            t.add_dir(t.root(), name.as_bytes(), Meta::new(0o755, 0))
                .unwrap()
        })
        .collect();
    let body = |i: usize| format!("tiny file number {i}\n").into_bytes();
    for i in 0..5000 {
        let b: Arc<[u8]> = body(i).into();
        let name = format!("f{i}");
        let meta = Meta::new(0o644, 0);
        t.add_file(
            dirs[i % 7],
            name.as_bytes(),
            Content::Bytes(b.clone()),
            b.len() as u64,
            meta,
        )
        .unwrap();
    }
    let dir = scratch();
    let out = dir.path().join("tiny.hpkg");
    let rep = write_archive(&t, &opts(Compression::default(), K64), &out);
    assert_eq!(rep.files, 5000);
    let total: u64 = (0..5000).map(|i| body(i).len() as u64).sum();
    assert_eq!(rep.content_bytes, total);
    assert_eq!(
        rep.chunks as u64,
        total.div_ceil(K64 as u64),
        "chunks are filled"
    );
    assert!(
        rep.heap_bytes < rep.content_bytes / 4,
        "tiny files compress together: {} -> {}",
        rep.content_bytes,
        rep.heap_bytes
    );
    let a = open(&out);
    let mut per_chunk = std::collections::HashMap::new();
    let mut rng = Rng::new(5);
    for i in 0..5000 {
        let path = format!("d{}/f{i}", i % 7);
        let e = a.lookup_path(path.as_bytes()).unwrap().unwrap();
        let chunks = a.file_chunks(e).unwrap();
        assert_eq!(chunks.len(), 1, "{path}: a tiny file lies in one chunk");
        *per_chunk.entry(chunks.start).or_insert(0) += 1;
        assert_contents(&a, e, &body(i), 1, &mut rng, &path);
    }
    assert!(per_chunk.values().all(|&n| n > 1000), "{per_chunk:?}");
}

#[test]
fn empty_directory_round_trips() {
    let t = TestTree::new();
    t.dir("empty").mode(b"empty", 0o700).fix_mtimes(1_000);
    let dir = scratch();
    let out = dir.path().join("emptydir.hpkg");
    let rep = build_dir(t.path(), &Default::default(), &out);
    assert_eq!((rep.files, rep.dirs, rep.chunks), (0, 2, 0));
    let a = open(&out);
    let e = a.lookup_path(b"empty").unwrap().unwrap();
    assert_eq!(a.read_dir(e).unwrap().len(), 0);
    assert_eq!(a.attr(e).unwrap().nlink, 2);
    assert_eq!(a.attr(a.root()).unwrap().nlink, 3);
    assert_matches_source(&a, t.path(), Check::default());
}

#[test]
fn empty_package_holds_only_the_root() {
    let dir = scratch();
    let out = dir.path().join("empty.hpkg");
    let rep = write_archive(&Tree::new(), &Default::default(), &out);
    assert_eq!(
        (rep.files, rep.dirs, rep.chunks, rep.heap_bytes),
        (0, 1, 0, 0)
    );
    let a = open(&out);
    assert_eq!(a.entry_count(), 1);
    assert_eq!(a.chunk_count(), 0);
    assert_eq!(a.read_dir(a.root()).unwrap().len(), 0);
    assert_eq!(a.walk().count(), 0);
    assert_eq!(a.walk_entries().count(), 0);
    let root = a.attr(a.root()).unwrap();
    assert_eq!((root.kind, root.perm, root.nlink), (Kind::Dir, 0o755, 2));
    assert_eq!(a.lookup_path(b"").unwrap(), Some(a.root()));
    assert_eq!(a.lookup_path(b"x").unwrap(), None);
    assert_eq!(a.manifest().name, "test.pkg");
}

#[test]
fn trees_built_in_memory_round_trip() {
    let mut t = Tree::new();
    let m = Meta::new(0o644, 1_000);
    let d = t
        .add_dir(t.root(), b"dir", Meta::new(0o750, 2_000))
        .unwrap();
    let body: Arc<[u8]> = text_bytes(200_000, 9).into();
    let f = t
        .add_file(
            d,
            b"file",
            Content::Bytes(body.clone()),
            body.len() as u64,
            m,
        )
        .unwrap();
    t.add_hardlink(t.root(), b"link-to-file", f).unwrap();
    t.add_symlink(d, b"sym", b"file", Meta::new(0o777, 3))
        .unwrap();
    t.set_xattr(f, b"user.k", b"v").unwrap();
    for (name, perm) in [(&b"mode-0"[..], 0), (b"mode-7777", 0o7777)] {
        let b: Arc<[u8]> = name.into();
        t.add_file(
            t.root(),
            name,
            Content::Bytes(b),
            name.len() as u64,
            Meta::new(perm, 6),
        )
        .unwrap();
    }
    // What the Tree API refuses never reaches an archive.
    assert!(t
        .add_file(d, b"a/b", Content::Bytes(body.clone()), 200_000, m)
        .is_err());
    assert!(t.add_dir(d, b"..", m).is_err());
    assert!(t.add_dir(d, b"", m).is_err());
    assert!(t.add_dir(d, b"nul\0", m).is_err());
    assert!(t.add_dir(d, &[b'x'; 256], m).is_err());
    assert!(t.add_dir(d, b"file", m).is_err(), "duplicate name");
    assert!(t
        .add_file(d, b"short", Content::Bytes(body.clone()), 1, m)
        .is_err());
    assert!(t.add_hardlink(d, b"dirlink", d).is_err());
    assert!(t.add_symlink(d, b"nosym", b"", m).is_err());
    assert!(t.set_xattr(f, b"nodot", b"v").is_err());

    let dir = scratch();
    let out = dir.path().join("mem.hpkg");
    let rep = write_archive(&t, &opts(Compression::Zstd(1), K64), &out);
    assert_eq!(
        (rep.files, rep.hardlinks, rep.symlinks, rep.dirs),
        (3, 1, 1, 2)
    );
    let a = open(&out);
    let fe = a.lookup_path(b"dir/file").unwrap().unwrap();
    assert_eq!(a.lookup_path(b"link-to-file").unwrap(), Some(fe));
    assert_eq!(a.attr(fe).unwrap().nlink, 2);
    let mut rng = Rng::new(3);
    assert_contents(&a, fe, &body, 50, &mut rng, "dir/file");
    for (name, perm) in [(&b"mode-0"[..], 0), (b"mode-7777", 0o7777)] {
        let e = a.lookup_path(name).unwrap().unwrap();
        let at = a.attr(e).unwrap();
        assert_eq!((at.perm, at.mode()), (perm, 0o100000 | perm));
    }
    let de = a.lookup_path(b"dir").unwrap().unwrap();
    assert_eq!(a.attr(de).unwrap().perm, 0o750);
    assert_eq!(a.parent(de).unwrap(), a.root());
    let se = a.lookup_path(b"dir/sym").unwrap().unwrap();
    assert_eq!(a.read_link(se).unwrap(), b"file");
    assert_eq!(a.xattr(fe, b"user.k").unwrap(), Some(&b"v"[..]));
    assert_eq!(a.xattr(fe, b"user.none").unwrap(), None);
    // Asking an entry to be what it is not is an error naming both kinds.
    let e = a.read_link(fe).unwrap_err().to_string();
    assert!(e.contains("file") && e.contains("symlink"), "{e}");
    assert!(a.read_dir(fe).is_err());
    assert!(a.open_file(de).is_err());
    assert!(a.attr(1_000).is_err());
}

#[test]
fn special_files_and_missing_sources_are_errors_naming_the_path() {
    let t = TestTree::new();
    t.file("ok", "fine");
    let fifo = t.p(b"fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = Tree::from_dir(t.path()).unwrap_err().to_string();
    assert!(
        e.contains("fifo") && e.contains(&*fifo.to_string_lossy()),
        "{e}"
    );
    assert!(Tree::from_dir(Path::new("/nonexistent/dir")).is_err());
}

/// A tree changed between its walk and the build (as by another user while root builds
/// it): a file replaced by a link to a file outside the tree, or by another file, fails the
/// build, naming it, and nothing of the outside file is packaged.
#[test]
fn a_file_replaced_after_the_walk_fails_the_build_instead_of_packaging_another() {
    let outside = scratch();
    let secret = outside.path().join("secret");
    // As long as the walked file: a build that followed the link would not notice.
    fs::write(&secret, "root-only bytes!").unwrap();
    for replace_with_link in [true, false] {
        let t = TestTree::new();
        t.file("a", "the walked bytes");
        let tree = Tree::from_dir(t.path()).unwrap();
        let a = t.p(b"a");
        // (Kept aside, not deleted: a new file could get a deleted one's inode number.)
        fs::rename(&a, t.p(b"a.old")).unwrap();
        if replace_with_link {
            std::os::unix::fs::symlink(&secret, &a).unwrap();
        } else {
            fs::write(&a, "other bytes, 16b").unwrap();
        }
        let out = scratch();
        let e = format::archive::writer::ArchiveWriter::new(&tree, &manifest())
            .finish(&out.path().join("p.hpkg"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("replaced by another file") && e.contains(&*a.to_string_lossy()),
            "{e}"
        );
    }
}

#[test]
fn walk_entries_is_walk_without_paths() {
    let dir = scratch();
    let out = dir.path().join("fixture.hpkg");
    let mut t = fixture_tree(true);
    let root = t.root();
    let hello = t.lookup(b"hello.txt").unwrap();
    t.add_hardlink(root, b"hello-again.txt", hello).unwrap();
    write_archive(&t, &Default::default(), &out);
    let a = open(&out);
    let with_paths: Vec<_> = a.walk().map(|w| (w.entry, w.attr)).collect();
    let without: Vec<_> = a.walk_entries().collect();
    assert_eq!(without, with_paths);
    assert_eq!(without.len() as u32, a.name_count());
}
