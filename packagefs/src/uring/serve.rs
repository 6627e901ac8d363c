//! Answers a decoded request with the file system's domain methods (the same ones fuser's
//! adapter in `fuse.rs` calls) and encodes the reply body into a buffer: a ring entry's
//! payload buffer, or the buffer written to `/dev/fuse` after the `fuse_out_header`.

use std::time::Duration;

use format::archive::Kind;
use fuser::Errno;

use super::abi::{self, Pod};
use super::decode::Op;
use crate::fuse::{xattr_answer, DirPlusSink, DirSink, PackageFs, Xattr};
use crate::view::NodeAttr;

/// A reply body being written into `buf`.
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    /// An empty body written into `buf`.
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body written.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn extend(&mut self, b: &[u8]) -> Result<(), Errno> {
        let end = self.len + b.len();
        if end > self.buf.len() {
            return Err(Errno::EIO);
        }
        self.buf[self.len..end].copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    fn push<T: Pod>(&mut self, v: &T) -> Result<(), Errno> {
        self.extend(abi::bytes(v))
    }
}

/// What to do after a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// Send the reply (the body in `Out`, or the error).
    Reply(Result<(), Errno>),
    /// Send nothing (FORGET).
    Nothing,
}

fn split(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

fn mode(kind: Kind, perm: u32) -> u32 {
    (match kind {
        Kind::File => libc::S_IFREG,
        Kind::Dir => libc::S_IFDIR,
        Kind::Symlink => libc::S_IFLNK,
    }) | perm
}

/// `fuse_attr` of `a`: everything is owned by root, atime and ctime are the mtime.
pub fn attr(a: &NodeAttr) -> abi::Attr {
    let t = a.mtime as u64;
    abi::Attr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        atimensec: a.mtime_nsec,
        mtimensec: a.mtime_nsec,
        ctimensec: a.mtime_nsec,
        mode: mode(a.kind, a.perm),
        nlink: a.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn entry_out(a: Option<&NodeAttr>, ttl: Duration) -> abi::EntryOut {
    let (s, ns) = split(ttl);
    abi::EntryOut {
        nodeid: a.map_or(0, |a| a.ino),
        generation: 0,
        entry_valid: s,
        attr_valid: s,
        entry_valid_nsec: ns,
        attr_valid_nsec: ns,
        attr: a.map(attr).unwrap_or_default(),
    }
}

const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

fn dirent_type(kind: Kind) -> u32 {
    mode(kind, 0) >> 12
}

/// A READDIR body of at most `max` bytes.
struct Dir<'o, 'a> {
    out: &'o mut Out<'a>,
    max: usize,
}

impl DirSink for Dir<'_, '_> {
    fn entry(&mut self, ino: u64, off: u64, kind: Kind, name: &[u8]) -> bool {
        let size = std::mem::size_of::<abi::Dirent>() + name.len();
        if self.out.len() + align8(size) > self.max {
            return true;
        }
        let d = abi::Dirent {
            ino,
            off,
            namelen: name.len() as u32,
            typ: dirent_type(kind),
        };
        let pad = [0u8; 8];
        let ok = self.out.push(&d).is_ok()
            && self.out.extend(name).is_ok()
            && self.out.extend(&pad[..align8(size) - size]).is_ok();
        !ok
    }
}

impl DirPlusSink for Dir<'_, '_> {
    fn entry(&mut self, off: u64, name: &[u8], ttl: Duration, a: &NodeAttr) -> bool {
        let size =
            std::mem::size_of::<abi::EntryOut>() + std::mem::size_of::<abi::Dirent>() + name.len();
        if self.out.len() + align8(size) > self.max {
            return true;
        }
        let d = abi::Dirent {
            ino: a.ino,
            off,
            namelen: name.len() as u32,
            typ: dirent_type(a.kind),
        };
        let pad = [0u8; 8];
        let ok = self.out.push(&entry_out(Some(a), ttl)).is_ok()
            && self.out.push(&d).is_ok()
            && self.out.extend(name).is_ok()
            && self.out.extend(&pad[..align8(size) - size]).is_ok();
        !ok
    }
}

fn xattr(out: &mut Out, data: Result<Vec<u8>, Errno>, size: u32) -> Result<(), Errno> {
    match xattr_answer(&data?, size)? {
        Xattr::Size(n) => out.push(&abi::GetxattrOut {
            size: n,
            padding: 0,
        }),
        Xattr::Data(d) => out.extend(d),
    }
}

/// Answers request `op` (with header `h`) of file system `fs` into `out`.
pub fn serve(fs: &PackageFs, h: &abi::InHeader, op: Op, out: &mut Out) -> Done {
    let ino = h.nodeid;
    let r = match op {
        Op::Forget { nlookup } => {
            fs.do_forget(ino, nlookup);
            return Done::Nothing;
        }
        Op::BatchForget { items } => {
            for (ino, n) in items {
                fs.do_forget(ino, n);
            }
            return Done::Nothing;
        }
        // ENOSYS, as fuser answers: the kernel sends no more interrupts (requests here
        // end quickly by themselves).
        Op::Interrupt => Err(Errno::ENOSYS),
        // INIT is answered by the session; a second one is an error.
        Op::Init(_) => Err(Errno::EIO),
        Op::Destroy => Ok(()),
        Op::Lookup { name } => fs
            .do_lookup(ino, name)
            .and_then(|a| out.push(&entry_out(a.as_ref(), fs.ttl()))),
        Op::Getattr => fs.do_getattr(ino).and_then(|(a, ttl)| {
            let (s, ns) = split(ttl);
            out.push(&abi::AttrOut {
                attr_valid: s,
                attr_valid_nsec: ns,
                dummy: 0,
                attr: attr(&a),
            })
        }),
        Op::Readlink => fs.do_readlink(ino).and_then(|t| out.extend(&t)),
        Op::Open { flags } => fs.do_open_file(ino, flags).and_then(|o| {
            out.push(&abi::OpenOut {
                fh: o.fh,
                open_flags: o.flags,
                backing_id: o.backing_id as i32,
            })
        }),
        Op::Opendir => fs.do_opendir().and_then(|(fh, f)| {
            out.push(&abi::OpenOut {
                fh,
                open_flags: f,
                backing_id: 0,
            })
        }),
        // Each chunk's span goes straight into the reply buffer (no gathering copy).
        Op::Read { offset, size } => {
            let mut r = Ok(());
            fs.do_read_spans(h.pid, ino, offset, size, |d| {
                if r.is_ok() {
                    r = out.extend(d);
                }
            })
            .and(r)
        }
        Op::Release { fh } => {
            fs.do_release(ino, fh);
            Ok(())
        }
        Op::Releasedir => Ok(()),
        Op::Statfs => {
            let (blocks, files) = fs.do_statfs();
            out.push(&abi::Kstatfs {
                blocks,
                files,
                bsize: 4096,
                namelen: 255,
                frsize: 4096,
                ..Default::default()
            })
        }
        Op::Getxattr { name, size } => xattr(out, fs.do_getxattr(ino, name), size),
        Op::Listxattr { size } => xattr(out, fs.do_listxattr(ino), size),
        Op::Readdir { offset, size } => {
            let max = size as usize;
            fs.do_readdir(ino, offset, &mut Dir { out, max })
        }
        Op::Readdirplus { offset, size } => {
            let max = size as usize;
            fs.do_readdirplus(ino, offset, &mut Dir { out, max })
        }
        Op::NoSys | Op::Unknown(_) => Err(Errno::ENOSYS),
        Op::Ioctl => Err(Errno::ENOTTY),
        Op::Write(_) => Err(Errno::EROFS),
    };
    Done::Reply(r)
}
