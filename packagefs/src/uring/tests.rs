//! Decoding of requests captured from a real kernel (Linux 6.18, `fixtures/`: a mount of a
//! small tree, `hello.txt`, `dir/sub.txt`, `link -> hello.txt` with `user.test=1`, read with
//! stat, cat, ls -la, readlink, getfattr and df), over the ring (`ring-*.bin`: the entry's
//! 288-byte header buffer, then the payload the kernel wrote) and over `/dev/fuse`
//! (`dev-*.bin`: what read(2) returned); and the replies to them from a small view.

use fuser::Errno;

use super::abi::{self, op, InHeader, UringEntInOut};
use super::decode::{decode, split, Op};
use super::serve::{serve, Done, Out};
use crate::fuse::{Options, PackageFs};
use crate::view::tests::{make, Spec};
use crate::view::{Layer, View};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("fixtures/", $name, ".bin")).as_slice()
    };
}

/// A captured ring entry: its request header, per-op header and payload.
fn ring(b: &[u8]) -> (InHeader, Vec<u8>, Vec<u8>) {
    let h: InHeader = abi::read(&b[..abi::URING_IN_OUT_HEADER_SZ]).unwrap();
    let op_end = abi::URING_IN_OUT_HEADER_SZ + abi::URING_OP_IN_OUT_SZ;
    let e: UringEntInOut = abi::read(&b[op_end..]).unwrap();
    // The kernel sends the request's unique id as the commit id.
    assert_eq!(e.commit_id, h.unique);
    let payload = b[std::mem::size_of::<abi::UringReqHeader>()..].to_vec();
    assert_eq!(payload.len(), e.payload_sz as usize);
    (h, b[abi::URING_IN_OUT_HEADER_SZ..op_end].to_vec(), payload)
}

fn decode_ring(b: &[u8]) -> (InHeader, Op<'static>) {
    let (h, op_in, payload) = ring(b);
    let op_in: &'static [u8] = Box::leak(op_in.into_boxed_slice());
    let payload: &'static [u8] = Box::leak(payload.into_boxed_slice());
    (h, decode(&h, op_in, payload).unwrap())
}

fn decode_dev(b: &'static [u8]) -> (InHeader, Op<'static>) {
    let h: InHeader = abi::read(b).unwrap();
    assert_eq!(h.len as usize, b.len(), "read(2) returns one whole request");
    let (op_in, payload) = split(h.opcode, &b[40..]);
    (h, decode(&h, op_in, payload).unwrap())
}

#[test]
fn ring_requests_decode_as_the_kernel_sent_them() {
    let (h, o) = decode_ring(fixture!("ring-lookup-hello"));
    assert_eq!((h.opcode, h.nodeid), (op::LOOKUP, 1));
    assert_eq!(o, Op::Lookup { name: b"hello.txt" });
    let (_, o) = decode_ring(fixture!("ring-lookup-missing"));
    assert_eq!(o, Op::Lookup { name: b"missing" });
    let (h, o) = decode_ring(fixture!("ring-read"));
    assert_eq!(h.opcode, op::READ);
    assert_eq!(
        o,
        Op::Read {
            offset: 0,
            size: 4096
        }
    );
    let (h, o) = decode_ring(fixture!("ring-getattr"));
    assert_eq!((h.opcode, o), (op::GETATTR, Op::Getattr));
    let (_, o) = decode_ring(fixture!("ring-readdirplus"));
    assert!(
        matches!(o, Op::Readdirplus { offset: 0, size } if size >= 4096),
        "{o:?}"
    );
    let (_, o) = decode_ring(fixture!("ring-readlink"));
    assert_eq!(o, Op::Readlink);
    let (_, o) = decode_ring(fixture!("ring-getxattr-user-test"));
    assert_eq!(
        o,
        Op::Getxattr {
            name: b"user.test",
            size: 0
        }
    );
    let (_, o) = decode_ring(fixture!("ring-getxattr-user-test-256"));
    assert_eq!(
        o,
        Op::Getxattr {
            name: b"user.test",
            size: 256
        }
    );
    let (_, o) = decode_ring(fixture!("ring-listxattr"));
    assert_eq!(o, Op::Listxattr { size: 0 });
    let (_, o) = decode_ring(fixture!("ring-statfs"));
    assert_eq!(o, Op::Statfs);
    let (_, o) = decode_ring(fixture!("ring-open"));
    assert!(matches!(o, Op::Open { flags } if flags & libc::O_ACCMODE == libc::O_RDONLY));
    let (_, o) = decode_ring(fixture!("ring-flush"));
    assert_eq!(o, Op::NoSys);
}

#[test]
fn dev_fuse_requests_decode_like_the_same_requests_over_the_ring() {
    for (dev, ring_b) in [
        (fixture!("dev-lookup-hello"), fixture!("ring-lookup-hello")),
        (fixture!("dev-read"), fixture!("ring-read")),
        (fixture!("dev-readdirplus"), fixture!("ring-readdirplus")),
    ] {
        let (hd, od) = decode_dev(dev);
        let (hr, or) = decode_ring(ring_b);
        assert_eq!((hd.opcode, hd.nodeid), (hr.opcode, hr.nodeid));
        assert_eq!(od, or);
    }
}

#[test]
fn init_offers_the_ring_when_enable_uring_is_on() {
    let (_, o) = decode_dev(fixture!("dev-init"));
    let Op::Init(i) = o else { panic!("{o:?}") };
    assert_eq!(i.major, abi::KERNEL_VERSION);
    assert!(i.minor >= abi::KERNEL_MINOR_VERSION, "minor {}", i.minor);
    assert_ne!(i.flags as u64 & abi::FUSE_INIT_EXT, 0);
    let offered = i.flags as u64 | (i.flags2 as u64) << 32;
    assert_ne!(offered & abi::FUSE_OVER_IO_URING, 0);
}

#[test]
fn batch_forget_lists_each_inode() {
    let (_, o) = decode_dev(fixture!("dev-batch-forget"));
    let Op::BatchForget { items } = o else {
        panic!("{o:?}")
    };
    assert_eq!(items.len(), 4);
    assert!(items.iter().all(|&(ino, n)| ino > 1 && n >= 1), "{items:?}");
}

#[test]
fn a_truncated_request_is_an_error_never_a_panic() {
    let b = fixture!("dev-read");
    let h: InHeader = abi::read(b).unwrap();
    for cut in 40..b.len() {
        let (op_in, payload) = split(h.opcode, &b[40..cut]);
        let r = decode(&h, op_in, payload);
        assert!(r.is_err(), "cut at {cut}: {r:?}");
    }
    let b = fixture!("dev-init");
    let h: InHeader = abi::read(b).unwrap();
    for cut in 40..56 {
        let (op_in, payload) = split(h.opcode, &b[40..cut]);
        assert!(decode(&h, op_in, payload).is_err());
    }
    // Anything at all decodes to something or an error.
    for opcode in 0..64 {
        let h = InHeader { opcode, ..h };
        for cut in [0, 7, 8, 40, 64] {
            let z = [0u8; 64];
            let _ = decode(&h, &z[..cut], &z[..cut]);
        }
    }
}

/// A file system serving the fixtures' tree.
fn fs() -> (tempfile::TempDir, PackageFs) {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        name: "fix",
        version: "1.0.0",
        layer: 0,
        entries: &[
            ("hello.txt", "f:hello\n"),
            ("dir/sub.txt", "f:sub\n"),
            ("link", "l:hello.txt"),
        ],
    };
    let p = make(dir.path(), 0, &spec);
    let view = View::build(vec![Layer::new("system")], vec![p]);
    let opts = Options {
        prefetch_threads: 0,
        xattrs: Some(true),
        ..Options::default()
    };
    (dir, PackageFs::new(view, 1 << 20, opts))
}

/// Serves `op` with header `h`: the reply body, or the errno.
fn answer(fs: &PackageFs, h: &InHeader, op: Op) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Out::new(&mut buf);
    match serve(fs, h, op, &mut out) {
        Done::Reply(Ok(())) => Ok(out.bytes().to_vec()),
        Done::Reply(Err(e)) => Err(e),
        Done::Nothing => panic!("no reply"),
    }
}

/// The names of a READDIRPLUS reply, with each entry's attributes.
fn plus_names(b: &[u8]) -> Vec<(Vec<u8>, abi::EntryOut)> {
    let mut names = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let e: abi::EntryOut = abi::read(&b[at..]).unwrap();
        let d: abi::Dirent = abi::read(&b[at + 128..]).unwrap();
        let n = &b[at + 152..at + 152 + d.namelen as usize];
        assert_eq!(d.ino, e.attr.ino);
        names.push((n.to_vec(), e));
        at += (152 + d.namelen as usize).div_ceil(8) * 8;
    }
    names
}

#[test]
fn replies_to_captured_requests_carry_the_tree() {
    let (_dir, fs) = fs();
    // LOOKUP hello.txt in the root: its attributes.
    let (h, o) = decode_ring(fixture!("ring-lookup-hello"));
    let b = answer(&fs, &h, o).unwrap();
    assert_eq!(b.len(), std::mem::size_of::<abi::EntryOut>());
    let e: abi::EntryOut = abi::read(&b).unwrap();
    assert_ne!(e.nodeid, 0);
    assert_eq!(e.attr.size, 6);
    assert_eq!(e.attr.mode, libc::S_IFREG | 0o644);
    assert_eq!(e.attr.mtime, 1_700_000_000);
    let hello = e.nodeid;
    // A missing name: a negative entry (node id 0) with the entry timeout.
    let (h, o) = decode_ring(fixture!("ring-lookup-missing"));
    let e: abi::EntryOut = abi::read(&answer(&fs, &h, o).unwrap()).unwrap();
    assert_eq!(e.nodeid, 0);
    assert!(e.entry_valid > 0);
    // READ of the file found (the capture's node id was the kernel's of that mount).
    let (h, o) = decode_ring(fixture!("ring-read"));
    let h = InHeader { nodeid: hello, ..h };
    assert_eq!(answer(&fs, &h, o).unwrap(), b"hello\n");
    // GETATTR.
    let (h, o) = decode_ring(fixture!("ring-getattr"));
    let h = InHeader { nodeid: hello, ..h };
    let a: abi::AttrOut = abi::read(&answer(&fs, &h, o).unwrap()).unwrap();
    assert_eq!((a.attr.ino, a.attr.size), (hello, 6));
    // READDIRPLUS of the root: ".", "..", then the entries in order, with attributes.
    let (h, o) = decode_ring(fixture!("ring-readdirplus"));
    let names = plus_names(&answer(&fs, &h, o).unwrap());
    let just: Vec<&[u8]> = names.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(just, [&b"."[..], b"..", b"dir", b"hello.txt", b"link"]);
    assert_eq!(names[3].1.attr.ino, hello);
    assert_eq!(names[2].1.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    // READLINK of link.
    let link = names[4].1.attr.ino;
    let (h, o) = decode_ring(fixture!("ring-readlink"));
    let h = InHeader { nodeid: link, ..h };
    assert_eq!(answer(&fs, &h, o).unwrap(), b"hello.txt");
    // The tree has no xattrs: GETXATTR finds none, LISTXATTR's size is 0.
    let (h, o) = decode_ring(fixture!("ring-getxattr-user-test"));
    let h = InHeader { nodeid: hello, ..h };
    assert_eq!(answer(&fs, &h, o), Err(Errno::NO_XATTR));
    let (h, o) = decode_ring(fixture!("ring-listxattr"));
    let h = InHeader { nodeid: hello, ..h };
    let x: abi::GetxattrOut = abi::read(&answer(&fs, &h, o).unwrap()).unwrap();
    assert_eq!(x.size, 0);
    // STATFS: 4 KiB blocks, the number of entries.
    let (h, o) = decode_ring(fixture!("ring-statfs"));
    let s: abi::Kstatfs = abi::read(&answer(&fs, &h, o).unwrap()).unwrap();
    assert_eq!((s.bsize, s.namelen), (4096, 255));
    assert!(s.files >= 3, "{s:?}");
    // FLUSH: ENOSYS, which the kernel remembers.
    let (h, o) = decode_ring(fixture!("ring-flush"));
    assert_eq!(answer(&fs, &h, o), Err(Errno::ENOSYS));
    // Anything that would write: EROFS.
    let h = InHeader {
        opcode: 9, // MKDIR
        nodeid: 1,
        ..h
    };
    assert_eq!(answer(&fs, &h, Op::Write(9)), Err(Errno::EROFS));
}

#[test]
fn a_listing_stops_at_the_size_the_kernel_allows() {
    let (_dir, fs) = fs();
    let (h, _) = decode_ring(fixture!("ring-readdirplus"));
    // Room for two entries (".", ".." are 160 bytes each with their names).
    let b = answer(
        &fs,
        &h,
        Op::Readdirplus {
            offset: 0,
            size: 330,
        },
    )
    .unwrap();
    let names = plus_names(&b);
    assert_eq!(names.len(), 2);
    // Going on from the last offset lists the rest, nothing twice.
    let d: abi::Dirent = abi::read(&b[160 + 128..]).unwrap();
    let rest = answer(
        &fs,
        &h,
        Op::Readdirplus {
            offset: d.off,
            size: 4096,
        },
    )
    .unwrap();
    let rest: Vec<Vec<u8>> = plus_names(&rest).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        rest,
        [b"dir".to_vec(), b"hello.txt".to_vec(), b"link".to_vec()]
    );
    // READDIR (without attributes), the same way.
    let b = answer(
        &fs,
        &h,
        Op::Readdir {
            offset: 0,
            size: 4096,
        },
    )
    .unwrap();
    let mut names = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let d: abi::Dirent = abi::read(&b[at..]).unwrap();
        names.push(b[at + 24..at + 24 + d.namelen as usize].to_vec());
        at += (24 + d.namelen as usize).div_ceil(8) * 8;
    }
    assert_eq!(names.len(), 5);
    assert_eq!(names[3], b"hello.txt");
}
