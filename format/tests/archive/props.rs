//! Property test: random trees (nested directories, files of every size class, symlinks,
//! hard links, xattrs, odd names, any mode and mtime) built in memory round trip exactly.

use std::collections::BTreeMap;
use std::sync::Arc;

use format::archive::tree::Meta;
use format::archive::{Archive, Compression, Content, Kind, NodeId, Tree};
use proptest::prelude::*;

use crate::common::Rng;
use crate::common::*;

#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    /// Generated from a seed: larger than a chunk, compressible or not.
    Big {
        seed: u64,
        len: usize,
        text: bool,
    },
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Bytes(b) => b.clone(),
            Body::Big { seed, len, text } if *text => text_bytes(*len, *seed),
            Body::Big { seed, len, .. } => Rng::new(*seed).bytes(*len),
        }
    }
}

#[derive(Debug, Clone)]
enum GenKind {
    Dir,
    File(Body),
    Symlink(Vec<u8>),
    /// A hard link to one of the files made so far (chosen modulo their number).
    HardLink(usize),
}

#[derive(Debug, Clone)]
struct GenNode {
    /// The parent: one of the directories made so far (modulo their number).
    parent: usize,
    name: Vec<u8>,
    kind: GenKind,
    meta: (u32, i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // A safe alphabet, plus bytes that break naive code: space, newline, tab, backslash,
    // non-ASCII and invalid UTF-8.
    const ODD: &[u8] = b"aZ09._- \n\t\\~#\xc3\xa9\xff\xfe\x01";
    prop_oneof![
        4 => "[a-zA-Z0-9._-]{1,12}".prop_map(String::into_bytes),
        1 => prop::collection::vec(prop::sample::select(ODD), 1..10),
        1 => (1usize..=255).prop_map(|n| vec![b'L'; n]),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..100).prop_map(Body::Bytes),
        1 => Just(Body::Bytes(Vec::new())),
        2 => (any::<u64>(), 60_000usize..200_000, any::<bool>())
            .prop_map(|(seed, len, text)| Body::Big { seed, len, text }),
        1 => (any::<u64>(), 1usize..4)
            .prop_map(|(seed, k)| Body::Big { seed, len: k * 65536, text: seed % 2 == 0 }),
    ]
}

fn gen_node() -> impl Strategy<Value = GenNode> {
    let kind = prop_oneof![
        3 => Just(GenKind::Dir),
        6 => body().prop_map(GenKind::File),
        2 => prop::collection::vec(1u8..=255, 1..40).prop_map(GenKind::Symlink),
        2 => any::<usize>().prop_map(GenKind::HardLink),
    ];
    let xattr = (
        "user\\.[a-z0-9._-]{1,10}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    );
    (
        any::<usize>(),
        name(),
        kind,
        (
            0u32..0o10000,
            -(1i64 << 40)..(1i64 << 40),
            0u32..1_000_000_000,
        ),
        prop::collection::vec(xattr, 0..3),
    )
        .prop_map(|(parent, name, kind, meta, xattrs)| GenNode {
            parent,
            name,
            kind,
            meta,
            xattrs,
        })
}

#[derive(Debug)]
enum MKind {
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File(Arc<[u8]>),
    Symlink(Vec<u8>),
}

#[derive(Debug)]
struct MNode {
    kind: MKind,
    meta: (u32, i64, u32),
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    names: u32,
}

/// Builds the tree and, alongside, the model of what the archive must hold.
fn build(root_meta: (u32, i64, u32), nodes: &[GenNode]) -> (Tree, BTreeMap<NodeId, MNode>) {
    let meta = |(perm, mtime, mtime_nsec): (u32, i64, u32)| Meta {
        perm,
        mtime,
        mtime_nsec,
    };
    let mut tree = Tree::new();
    tree.set_meta(tree.root(), meta(root_meta));
    let mut model = BTreeMap::new();
    model.insert(
        tree.root(),
        MNode {
            kind: MKind::Dir(BTreeMap::new()),
            meta: root_meta,
            xattrs: BTreeMap::new(),
            names: 0,
        },
    );
    let (mut dirs, mut files) = (vec![tree.root()], Vec::new());
    for g in nodes {
        let parent = dirs[g.parent % dirs.len()];
        let MKind::Dir(children) = &model[&parent].kind else {
            unreachable!()
        };
        if children.contains_key(&g.name) {
            continue;
        }
        let (id, kind) = match &g.kind {
            GenKind::Dir => (
                tree.add_dir(parent, &g.name, meta(g.meta)).unwrap(),
                MKind::Dir(BTreeMap::new()),
            ),
            GenKind::File(b) => {
                let bytes: Arc<[u8]> = b.bytes().into();
                let id = tree
                    .add_file(
                        parent,
                        &g.name,
                        Content::Bytes(bytes.clone()),
                        bytes.len() as u64,
                        meta(g.meta),
                    )
                    .unwrap();
                (id, MKind::File(bytes))
            }
            GenKind::Symlink(t) => (
                tree.add_symlink(parent, &g.name, t, meta(g.meta)).unwrap(),
                MKind::Symlink(t.clone()),
            ),
            GenKind::HardLink(sel) => {
                if files.is_empty() {
                    continue;
                }
                let target = files[sel % files.len()];
                tree.add_hardlink(parent, &g.name, target).unwrap();
                model.get_mut(&target).unwrap().names += 1;
                let MKind::Dir(ch) = &mut model.get_mut(&parent).unwrap().kind else {
                    unreachable!()
                };
                ch.insert(g.name.clone(), target);
                continue;
            }
        };
        let mut xattrs = BTreeMap::new();
        for (k, v) in &g.xattrs {
            tree.set_xattr(id, k, v).unwrap();
            xattrs.insert(k.clone(), v.clone());
        }
        match kind {
            MKind::Dir(_) => dirs.push(id),
            MKind::File(_) => files.push(id),
            MKind::Symlink(_) => {}
        }
        let MKind::Dir(ch) = &mut model.get_mut(&parent).unwrap().kind else {
            unreachable!()
        };
        ch.insert(g.name.clone(), id);
        model.insert(
            id,
            MNode {
                kind,
                meta: g.meta,
                xattrs,
                names: 1,
            },
        );
    }
    (tree, model)
}

/// Checks directory `dir` of the archive (entry `e`) against the model, recursively.
fn check_dir(
    a: &Archive,
    model: &BTreeMap<NodeId, MNode>,
    node: NodeId,
    e: u32,
    entries: &mut BTreeMap<NodeId, u32>,
    rng: &mut Rng,
    path: &mut Vec<u8>,
) -> Result<(), TestCaseError> {
    let MKind::Dir(children) = &model[&node].kind else {
        unreachable!()
    };
    let listed: Vec<(Vec<u8>, u32)> = a
        .read_dir(e)
        .unwrap()
        .map(|d| (d.name.to_vec(), d.entry))
        .collect();
    let names: Vec<&Vec<u8>> = listed.iter().map(|(n, _)| n).collect();
    prop_assert_eq!(names, children.keys().collect::<Vec<_>>());
    let subdirs = children
        .values()
        .filter(|c| matches!(model[c].kind, MKind::Dir(_)))
        .count() as u32;
    prop_assert_eq!(a.attr(e).unwrap().nlink, 2 + subdirs);
    for ((name, ce), (_, &cn)) in listed.iter().zip(children) {
        let base = path.len();
        path.push(b'/');
        path.extend_from_slice(name);
        let what = String::from_utf8_lossy(path).into_owned();
        prop_assert_eq!(a.lookup(e, name).unwrap(), Some(*ce), "{}", what);
        // One entry per model node: hard links share it, nothing else does.
        let first = *entries.entry(cn).or_insert(*ce);
        prop_assert_eq!(first, *ce, "{}: hard links share an entry", &what);
        let m = &model[&cn];
        let attr = a.attr(*ce).unwrap();
        prop_assert_eq!(
            (attr.perm, attr.mtime, attr.mtime_nsec),
            m.meta,
            "{}",
            &what
        );
        prop_assert_eq!(
            a.xattrs(*ce)
                .unwrap()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect::<BTreeMap<_, _>>(),
            m.xattrs.clone(),
            "{}",
            &what
        );
        match &m.kind {
            MKind::Dir(_) => {
                prop_assert_eq!(attr.kind, Kind::Dir);
                prop_assert_eq!(a.parent(*ce).unwrap(), e);
                check_dir(a, model, cn, *ce, entries, rng, path)?;
            }
            MKind::Symlink(t) => {
                prop_assert_eq!(attr.kind, Kind::Symlink);
                prop_assert_eq!(a.read_link(*ce).unwrap(), &t[..]);
                prop_assert_eq!(attr.nlink, m.names);
            }
            MKind::File(bytes) => {
                prop_assert_eq!(attr.kind, Kind::File);
                prop_assert_eq!(attr.nlink, m.names);
                assert_contents(a, *ce, bytes, 4, rng, &what);
            }
        }
        path.truncate(base);
    }
    Ok(())
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::Zstd(1)),
        Just(Compression::Zlib(1)),
        Just(Compression::Lz4),
        Just(Compression::None),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_trees_round_trip(
        root_meta in (0u32..0o10000, any::<i64>(), 0u32..1_000_000_000),
        nodes in prop::collection::vec(gen_node(), 0..40),
        compression in compression(),
        seed in any::<u64>(),
    ) {
        let (tree, model) = build(root_meta, &nodes);
        let dir = scratch();
        let out = dir.path().join("prop.hpkg");
        let rep = write_archive(&tree, &opts(compression, 64 * 1024), &out);
        let a = open(&out);
        prop_assert_eq!(a.id(), rep.id);
        let root = a.attr(a.root()).unwrap();
        prop_assert_eq!((root.perm, root.mtime, root.mtime_nsec), root_meta);
        let mut entries = BTreeMap::new();
        entries.insert(tree.root(), a.root());
        let mut rng = Rng::new(seed);
        check_dir(&a, &model, tree.root(), a.root(), &mut entries, &mut rng, &mut Vec::new())?;
        // Every model node is one entry, and the walk sees every name once.
        prop_assert_eq!(a.entry_count() as usize, model.len());
        let names: u32 = model.values().map(|m| m.names).sum();
        prop_assert_eq!(a.walk().count() as u32, names);
        for c in 0..a.chunk_count() {
            a.verify_chunk(c).unwrap();
        }
    }
}
