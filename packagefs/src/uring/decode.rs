//! Decoding of the requests packagefs serves, from the two halves the kernel hands over:
//! the per-op header and the payload after it. Over `/dev/fuse` both follow the
//! `fuse_in_header` in one buffer (`split`); over io_uring the per-op header is in the ring
//! entry's header buffer and the rest in its payload buffer.

use super::abi::{self, op, InHeader};

/// A request, decoded: each variant is the FUSE opcode of its name, with the fields
/// packagefs uses.
#[allow(missing_docs)]
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Init(abi::InitIn),
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        items: Vec<(u64, u64)>,
    },
    Getattr,
    Readlink,
    Open {
        flags: i32,
    },
    Read {
        offset: u64,
        size: u32,
    },
    Release {
        fh: u64,
    },
    Statfs,
    Getxattr {
        name: &'a [u8],
        size: u32,
    },
    Listxattr {
        size: u32,
    },
    Opendir,
    Readdir {
        offset: u64,
        size: u32,
    },
    Readdirplus {
        offset: u64,
        size: u32,
    },
    Releasedir,
    Interrupt,
    /// FLUSH, FSYNC, FSYNCDIR: ENOSYS, which the kernel remembers.
    NoSys,
    /// IOCTL: ENOTTY, as on any regular file.
    Ioctl,
    /// A request that would change the tree: EROFS.
    Write(u32),
    /// Any other opcode: ENOSYS. (ACCESS among them: with default_permissions, always on,
    /// the kernel checks permissions itself and never sends it.)
    Unknown(u32),
}

/// A request the kernel sent too short for its opcode.
#[derive(Debug, PartialEq, Eq)]
pub struct Truncated {
    /// Its opcode.
    pub opcode: u32,
    /// Bytes its op header needs.
    pub need: usize,
    /// Bytes there were.
    pub got: usize,
}

/// Size of the per-op header of `opcode` (what the kernel passes as its first argument).
pub fn op_header_size(opcode: u32) -> usize {
    use std::mem::size_of;
    match opcode {
        op::INIT => size_of::<abi::InitIn>(),
        op::FORGET => size_of::<abi::ForgetIn>(),
        op::BATCH_FORGET => size_of::<abi::BatchForgetIn>(),
        op::GETATTR => 16,
        op::OPEN | op::OPENDIR => size_of::<abi::OpenIn>(),
        op::READ | op::READDIR | op::READDIRPLUS => size_of::<abi::ReadIn>(),
        op::RELEASE | op::RELEASEDIR => size_of::<abi::ReleaseIn>(),
        op::GETXATTR | op::LISTXATTR => size_of::<abi::GetxattrIn>(),
        op::INTERRUPT => 8,
        _ => 0,
    }
}

/// Splits the body of a `/dev/fuse` request (what follows its `fuse_in_header`) into the
/// per-op header and the payload.
pub fn split(opcode: u32, body: &[u8]) -> (&[u8], &[u8]) {
    body.split_at(op_header_size(opcode).min(body.len()))
}

/// The name in `b`: up to its first NUL byte.
fn name(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

/// Decodes request `h` from its per-op header `op_in` and its `payload`.
pub fn decode<'a>(h: &InHeader, op_in: &'a [u8], payload: &'a [u8]) -> Result<Op<'a>, Truncated> {
    let need = |n: usize| {
        if op_in.len() < n {
            Err(Truncated {
                opcode: h.opcode,
                need: n,
                got: op_in.len(),
            })
        } else {
            Ok(())
        }
    };
    fn get<T: abi::Pod>(b: &[u8]) -> T {
        abi::read(b).unwrap_or_default()
    }
    need(op_header_size(h.opcode).min(match h.opcode {
        // Kernels before 7.36 send a 16-byte fuse_init_in.
        op::INIT => 16,
        _ => usize::MAX,
    }))?;
    Ok(match h.opcode {
        op::INIT => {
            let mut b = [0u8; 64];
            let n = op_in.len().min(64);
            b[..n].copy_from_slice(&op_in[..n]);
            Op::Init(get(&b))
        }
        op::DESTROY => Op::Destroy,
        op::LOOKUP => Op::Lookup {
            name: name(payload),
        },
        op::FORGET => Op::Forget {
            nlookup: get::<abi::ForgetIn>(op_in).nlookup,
        },
        op::BATCH_FORGET => {
            let count = get::<abi::BatchForgetIn>(op_in).count as usize;
            let items = payload
                .chunks_exact(16)
                .take(count)
                .map(|c| {
                    let f: abi::ForgetOne = get(c);
                    (f.nodeid, f.nlookup)
                })
                .collect();
            Op::BatchForget { items }
        }
        op::GETATTR => Op::Getattr,
        op::READLINK => Op::Readlink,
        op::OPEN => Op::Open {
            flags: get::<abi::OpenIn>(op_in).flags as i32,
        },
        op::OPENDIR => Op::Opendir,
        op::READ | op::READDIR | op::READDIRPLUS => {
            let r: abi::ReadIn = get(op_in);
            let (offset, size) = (r.offset, r.size);
            match h.opcode {
                op::READ => Op::Read { offset, size },
                op::READDIR => Op::Readdir { offset, size },
                _ => Op::Readdirplus { offset, size },
            }
        }
        op::RELEASE => Op::Release {
            fh: get::<abi::ReleaseIn>(op_in).fh,
        },
        op::RELEASEDIR => Op::Releasedir,
        op::STATFS => Op::Statfs,
        op::GETXATTR => Op::Getxattr {
            name: name(payload),
            size: get::<abi::GetxattrIn>(op_in).size,
        },
        op::LISTXATTR => Op::Listxattr {
            size: get::<abi::GetxattrIn>(op_in).size,
        },
        op::INTERRUPT => Op::Interrupt,
        op::FLUSH | op::FSYNC | op::FSYNCDIR => Op::NoSys,
        op::IOCTL => Op::Ioctl,
        o if op::WRITES.contains(&o) => Op::Write(o),
        o => Op::Unknown(o),
    })
}
