//! The io_uring queues: one per possible CPU (the kernel's `num_possible_cpus()`), each
//! served by a thread pinned to its CPU, so that a request is answered on the CPU of the
//! process that made it. Each queue has `DEPTH` entries; an entry is a header buffer
//! (`fuse_uring_req_header`) and a payload buffer of the kernel's largest request, given to
//! the kernel once with `FUSE_IO_URING_CMD_REGISTER`; from then on each reply is committed
//! and the next request fetched in one `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.

use std::os::fd::RawFd;
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tracing::{debug, error};

use super::abi::{self, InHeader, UringCmdReq, UringEntInOut, UringReqHeader};
use super::decode::decode;
use super::serve::{serve, Done, Out};
use crate::fuse::PackageFs;

/// Which users the session serves (`-o allow_root`: the kernel lets everyone through
/// and the daemon refuses all but its owner and root; `allow_other`: everyone; neither:
/// the kernel lets only the owner through).
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    /// The user the daemon runs as.
    pub owner: u32,
    /// Everyone (`allow_other`).
    pub all: bool,
    /// Root too (`allow_root`).
    pub root: bool,
}

impl Allowed {
    /// Whether requests of `uid` are served.
    pub fn allows(self, uid: u32) -> bool {
        self.all || uid == self.owner || (self.root && uid == 0)
    }
}

/// Entries per queue.
pub const DEPTH: usize = 8;

/// Number of queues the kernel expects: one per possible CPU.
pub fn queue_count() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    n.max(1) as usize
}

/// The payload buffer size the kernel requires of each entry, for `max_write` and
/// `max_pages` as negotiated at INIT.
pub fn payload_size(max_write: u32, max_pages: u16) -> usize {
    (abi::MIN_READ_BUFFER)
        .max(max_write as usize)
        .max(max_pages as usize * 4096)
}

struct Entry {
    header: Box<[u8]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    /// Request bytes copied out of the payload before the reply overwrites it.
    input: Vec<u8>,
}

/// A 128-byte SQE for a FUSE ring command on fixed file 0.
fn command(
    cmd_op: u32,
    req: UringCmdReq,
    iov: Option<*const libc::iovec>,
    ent: usize,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    let b = abi::bytes(&req);
    cmd[..b.len()].copy_from_slice(b);
    let mut e = opcode::UringCmd80::new(types::Fixed(0), cmd_op).cmd(cmd);
    if let Some(iov) = iov {
        e = e.addr(Some(iov as u64));
    }
    let e = e.build().user_data(ent as u64);
    match iov {
        None => e,
        Some(_) => {
            // REGISTER also needs sqe->len = 2 (two iovecs), which the crate's builder
            // does not set: the SQE's `len` is the u32 at byte 24.
            const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
            // SAFETY: Entry128 is a repr(C) 128-byte SQE; every byte pattern is valid.
            let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
            raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
            // SAFETY: as above.
            unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
        }
    }
}

/// Starts the queue threads on `/dev/fuse` descriptor `fd`. Returns once every queue has
/// registered its entries (or with the first error).
pub fn start(
    fs: Arc<PackageFs>,
    fd: RawFd,
    payload: usize,
    allowed: Allowed,
) -> std::io::Result<usize> {
    let n = queue_count();
    let (tx, rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    for qid in 0..n {
        let (fs, tx) = (fs.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("fuse-ring-{qid}"))
            .spawn(move || queue(fs, fd, qid, payload, allowed, tx))?;
    }
    drop(tx);
    for _ in 0..n {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("a ring thread ended")),
        }
    }
    Ok(n)
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                debug!(
                    cpu,
                    "cannot pin the ring thread: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn queue(
    fs: Arc<PackageFs>,
    fd: RawFd,
    qid: usize,
    payload: usize,
    allowed: Allowed,
    started: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    pin(qid);
    let setup = || -> std::io::Result<(IoUring<squeue::Entry128, cqueue::Entry>, Vec<Entry>)> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(2 * DEPTH as u32)
            .build(DEPTH as u32)?;
        ring.submitter().register_files(&[fd])?;
        let mut ents = Vec::with_capacity(DEPTH);
        for _ in 0..DEPTH {
            let mut header = vec![0u8; std::mem::size_of::<UringReqHeader>()].into_boxed_slice();
            let mut pl = vec![0u8; payload].into_boxed_slice();
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: header.len(),
                },
                libc::iovec {
                    iov_base: pl.as_mut_ptr().cast(),
                    iov_len: pl.len(),
                },
            ]);
            ents.push(Entry {
                header,
                payload: pl,
                iov,
                input: Vec::new(),
            });
        }
        Ok((ring, ents))
    };
    let (mut ring, mut ents) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let req = |commit_id: u64| UringCmdReq {
        flags: 0,
        commit_id,
        qid: qid as u16,
        padding: [0; 6],
    };
    for (i, ent) in ents.iter().enumerate() {
        let sqe = command(abi::URING_CMD_REGISTER, req(0), Some(ent.iov.as_ptr()), i);
        // SAFETY: the iovecs and the buffers they point to live as long as the ring.
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            let _ = started.send(Err(std::io::Error::other("submission queue full")));
            return;
        }
    }
    if let Err(e) = ring.submit() {
        let _ = started.send(Err(e));
        return;
    }
    // A REGISTER that fails completes at once: look before saying the queue is up.
    let mut early = Vec::new();
    for cqe in ring.completion() {
        early.push((cqe.user_data() as usize, cqe.result()));
    }
    if let Some((_, r)) = early.iter().find(|(_, r)| *r < 0) {
        let _ = started.send(Err(std::io::Error::from_raw_os_error(-r)));
        return;
    }
    let _ = started.send(Ok(()));
    drop(started);
    let mut done = early;
    loop {
        for (i, res) in done.drain(..) {
            if res < 0 {
                match -res {
                    libc::ENOTCONN | libc::ENODEV | libc::ECANCELED | libc::ECONNABORTED => {
                        debug!(
                            qid,
                            "ring queue ends: {}",
                            std::io::Error::from_raw_os_error(-res)
                        );
                        return;
                    }
                    e => {
                        error!(
                            qid,
                            "FUSE ring command failed: {}",
                            std::io::Error::from_raw_os_error(e)
                        );
                        return;
                    }
                }
            }
            let Some(ent) = ents.get_mut(i) else { continue };
            let commit_id = answer(&fs, ent, allowed);
            let sqe = command(abi::URING_CMD_COMMIT_AND_FETCH, req(commit_id), None, i);
            // SAFETY: as above; there is one SQE slot per entry.
            let _ = unsafe { ring.submission().push(&sqe) };
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                error!(qid, "io_uring_enter failed: {e}");
                return;
            }
        }
        for cqe in ring.completion() {
            done.push((cqe.user_data() as usize, cqe.result()));
        }
    }
}

/// Answers the request in `ent` in place; returns the commit id to send it with.
fn answer(fs: &PackageFs, ent: &mut Entry, allowed: Allowed) -> u64 {
    let hb = &ent.header;
    let h: InHeader = abi::read(&hb[..abi::URING_IN_OUT_HEADER_SZ]).unwrap_or_default();
    let io_off = abi::URING_IN_OUT_HEADER_SZ + abi::URING_OP_IN_OUT_SZ;
    let eio: UringEntInOut = abi::read(&hb[io_off..]).unwrap_or_default();
    let op_in: [u8; abi::URING_OP_IN_OUT_SZ] = hb[abi::URING_IN_OUT_HEADER_SZ..io_off]
        .try_into()
        .unwrap_or([0; abi::URING_OP_IN_OUT_SZ]);
    let n = (eio.payload_sz as usize).min(ent.payload.len());
    ent.input.clear();
    ent.input.extend_from_slice(&ent.payload[..n]);
    let mut out = Out::new(&mut ent.payload);
    let r = match decode(&h, &op_in, &ent.input) {
        // (The requests exempt from the check travel over /dev/fuse.)
        Ok(_) if !allowed.allows(h.uid) => Err(fuser::Errno::EACCES),
        Ok(op) => match serve(fs, &h, op, &mut out) {
            Done::Reply(r) => r,
            // (FORGET and INTERRUPT travel over /dev/fuse.)
            Done::Nothing => Ok(()),
        },
        Err(t) => {
            error!(
                opcode = t.opcode,
                need = t.need,
                got = t.got,
                "truncated FUSE request"
            );
            Err(fuser::Errno::EIO)
        }
    };
    let len = if r.is_ok() { out.len() } else { 0 };
    let oh = abi::OutHeader {
        len: (std::mem::size_of::<abi::OutHeader>() + len) as u32,
        error: r.err().map_or(0, |e| -e.code()),
        unique: h.unique,
    };
    ent.header[..16].copy_from_slice(abi::bytes(&oh));
    let eio_out = UringEntInOut {
        payload_sz: len as u32,
        ..eio
    };
    ent.header[io_off..io_off + 32].copy_from_slice(abi::bytes(&eio_out));
    eio.commit_id
}
