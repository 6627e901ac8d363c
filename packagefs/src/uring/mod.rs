//! FUSE over io_uring (Linux 6.14+): the daemon's own FUSE session, used when the kernel
//! may offer the ring (`-o io_uring=auto|on`).
//!
//! fuser 0.18 answers INIT itself and refuses `FUSE_OVER_IO_URING`, and its `Request` and
//! replies cannot be built outside it, so this module speaks the protocol on its own:
//!
//! ```text
//! Session::init(fs, /dev/fuse fd)  reads INIT, negotiates (PackageFs::negotiate), replies
//!     ring offered and wanted  -> ring::start: one queue per CPU, thread pinned to it,
//!                                 REGISTER then COMMIT_AND_FETCH per entry
//!     else (auto)              -> requests over /dev/fuse, served by the same code
//! Session::run                     /dev/fuse: FORGET, INTERRUPT, DESTROY (and everything
//!                                  before the ring is up, or without it)
//! decode::decode -> serve::serve -> PackageFs::do_* (the methods fuse.rs calls too)
//! Notifier                         invalidations, written to /dev/fuse
//! ```
//!
//! The mount itself is made by `mount(2)` with the descriptor (as root, see main's
//! `mount.rs`); without root, fuser mounts and serves instead.

pub mod abi;
pub mod decode;
mod ring;
pub mod serve;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use fuser::{Errno, InitFlags, SessionACL};
use tracing::{debug, error, info, warn};

use self::abi::{op, InHeader, OutHeader};
use self::decode::{decode, split, Op};
use self::serve::{serve, Done, Out};
use crate::fuse::PackageFs;

/// `-o io_uring=`: whether to use the kernel's FUSE io_uring transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Use it when the kernel offers it, else `/dev/fuse` (the default).
    #[default]
    Auto,
    /// Use it; fail if the kernel does not offer it.
    On,
    /// Never: `/dev/fuse` through fuser.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" | "yes" | "1" => Ok(Mode::On),
            "off" | "no" | "0" => Ok(Mode::Off),
            _ => Err(format!("io_uring={s}: expected auto, on or off")),
        }
    }
}

/// The fuse module's switch for the ring, read (never written).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the kernel will offer the ring at INIT: the fuse module's `enable_uring`
/// (`None`: the kernel has no FUSE io_uring support).
pub fn kernel_enabled() -> Option<bool> {
    let s = std::fs::read_to_string(ENABLE_URING).ok()?;
    Some(matches!(s.trim(), "Y" | "y" | "1"))
}

/// The transport chosen at INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// io_uring, with this many queues.
    Ring(usize),
    /// `/dev/fuse` (the kernel did not offer the ring).
    DevFuse,
}

/// A FUSE session on a mounted `/dev/fuse` descriptor, past INIT.
pub struct Session {
    fs: Arc<PackageFs>,
    fd: Arc<OwnedFd>,
    allowed: ring::Allowed,
    threads: usize,
    bufsize: usize,
    /// The transport chosen at INIT.
    pub transport: Transport,
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // ENOENT: an interrupted request was taken back.
            Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
            _ => return Err(e),
        }
    }
}

fn write_fd(fd: RawFd, parts: &[&[u8]]) -> io::Result<()> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut _,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: the iovecs point into live slices.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as i32) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn reply(fd: RawFd, unique: u64, r: Result<&[u8], Errno>) -> io::Result<()> {
    let (body, error): (&[u8], i32) = match r {
        Ok(b) => (b, 0),
        Err(e) => (&[], -e.code()),
    };
    let h = OutHeader {
        len: (std::mem::size_of::<OutHeader>() + body.len()) as u32,
        error,
        unique,
    };
    match write_fd(fd, &[abi::bytes(&h), body]) {
        // ENOENT: the request was interrupted and is gone.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

/// Why the session could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `-o io_uring=on`, and the kernel did not offer the ring.
    #[error(
        "-o io_uring=on: the kernel does not offer FUSE over io_uring ({})",
        why_not()
    )]
    NotOffered,
    /// The kernel offered the ring, and setting it up failed.
    #[error("cannot set up the FUSE io_uring queues: {0}")]
    Ring(#[source] io::Error),
    /// Reading or answering INIT failed.
    #[error("FUSE INIT failed: {0}")]
    Init(#[source] io::Error),
}

/// Why the kernel does not offer the ring, as far as the daemon can tell.
pub fn why_not() -> &'static str {
    match kernel_enabled() {
        None => "this kernel has no FUSE io_uring support (Linux 6.14+, CONFIG_FUSE_IO_URING)",
        Some(false) => {
            "the fuse module's enable_uring is off: /sys/module/fuse/parameters/enable_uring"
        }
        Some(true) => "enable_uring is on, yet INIT did not offer it",
    }
}

impl Session {
    /// Answers the kernel's INIT on `fd` (a mounted `/dev/fuse`), choosing the ring if the
    /// kernel offers it and `mode` allows, and starts the ring's queues.
    pub fn init(
        mut fs: PackageFs,
        fd: OwnedFd,
        mode: Mode,
        acl: SessionACL,
        threads: usize,
    ) -> Result<Session, Error> {
        let raw = fd.as_raw_fd();
        let max_write = fs.max_read();
        let bufsize = max_write as usize + 4096;
        let mut buf = vec![0u8; bufsize];
        let (h, init) = loop {
            let n = read_fd(raw, &mut buf).map_err(Error::Init)?;
            let Some(h) = abi::read::<InHeader>(&buf[..n]) else {
                continue;
            };
            let body = &buf[std::mem::size_of::<InHeader>()..n.max(40)];
            let (op_in, payload) = split(h.opcode, body);
            match decode(&h, op_in, payload) {
                Ok(Op::Init(i)) if i.major > abi::KERNEL_VERSION => {
                    // A newer major version: say ours and wait for the next INIT.
                    let out = abi::InitOut {
                        major: abi::KERNEL_VERSION,
                        minor: abi::KERNEL_MINOR_VERSION,
                        ..Default::default()
                    };
                    reply(raw, h.unique, Ok(abi::bytes(&out))).map_err(Error::Init)?;
                }
                Ok(Op::Init(i)) => break (h, i),
                _ => {
                    let _ = reply(raw, h.unique, Err(Errno::EIO));
                    return Err(Error::Init(io::Error::other("a request before INIT")));
                }
            }
        };
        let mut offered = init.flags as u64;
        if offered & abi::FUSE_INIT_EXT != 0 {
            offered |= (init.flags2 as u64) << 32;
        }
        let ring_offered = offered & abi::FUSE_OVER_IO_URING != 0;
        let use_ring = ring_offered && mode != Mode::Off;
        if !ring_offered && mode == Mode::On {
            let _ = reply(raw, h.unique, Err(Errno::EPROTO));
            return Err(Error::NotOffered);
        }
        let mut granted = fs
            .negotiate(InitFlags::from_bits_retain(
                offered & !abi::FUSE_OVER_IO_URING,
            ))
            .bits();
        granted |= offered & (abi::FUSE_BIG_WRITES | abi::FUSE_INIT_EXT);
        if use_ring {
            granted |= abi::FUSE_OVER_IO_URING;
        }
        let max_pages = max_write.div_ceil(4096) as u16;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            max_readahead: init.max_readahead.min(max_write),
            flags: granted as u32,
            max_background: 16,
            congestion_threshold: 12,
            max_write,
            time_gran: 1,
            max_pages,
            flags2: (granted >> 32) as u32,
            // Backing files of passthrough opens on a file system that is not itself
            // stacked (as fuse.rs asks fuser for); this mount may be a layer of an overlay.
            max_stack_depth: u32::from(granted & InitFlags::FUSE_PASSTHROUGH.bits() != 0),
            ..Default::default()
        };
        reply(raw, h.unique, Ok(abi::bytes(&out))).map_err(Error::Init)?;
        let fs = Arc::new(fs);
        // SAFETY: geteuid cannot fail.
        let owner = unsafe { libc::geteuid() };
        let allowed = ring::Allowed {
            owner,
            all: acl == SessionACL::All,
            root: acl == SessionACL::RootAndOwner,
        };
        let transport = if use_ring {
            let payload = ring::payload_size(max_write, max_pages);
            let n = ring::start(fs.clone(), raw, payload, allowed).map_err(Error::Ring)?;
            info!(
                queues = n,
                depth = ring::DEPTH,
                "FUSE transport: io_uring ({n} queues, one per CPU)"
            );
            Transport::Ring(n)
        } else {
            info!("FUSE transport: /dev/fuse ({})", why_not());
            Transport::DevFuse
        };
        Ok(Session {
            fs,
            fd: Arc::new(fd),
            allowed,
            threads,
            bufsize,
            transport,
        })
    }

    /// Sends invalidations to the kernel.
    pub fn notifier(&self) -> Notifier {
        Notifier(self.fd.clone())
    }

    /// Serves `/dev/fuse` until the file system is unmounted: everything when the ring is
    /// not used, else FORGET and INTERRUPT (the ring's queues serve the rest).
    pub fn run(self) -> io::Result<()> {
        let n = match self.transport {
            Transport::Ring(_) => 1,
            Transport::DevFuse => self.threads.max(1),
        };
        let me = Arc::new(self);
        let mut handles = Vec::new();
        for i in 1..n {
            let me = me.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("fuse-dev-{i}"))
                    .spawn(move || me.serve_dev())?,
            );
        }
        let r = me.serve_dev();
        for h in handles {
            let _ = h.join();
        }
        r
    }

    fn serve_dev(&self) -> io::Result<()> {
        let raw = self.fd.as_raw_fd();
        let mut buf = vec![0u8; self.bufsize];
        let mut out = vec![0u8; self.bufsize];
        loop {
            let n = match read_fd(raw, &mut buf) {
                Ok(n) => n,
                // The file system was unmounted.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
                Err(e) => return Err(e),
            };
            let Some(h) = abi::read::<InHeader>(&buf[..n]) else {
                warn!(bytes = n, "short FUSE request");
                continue;
            };
            let (op_in, payload) = split(h.opcode, &buf[std::mem::size_of::<InHeader>()..n]);
            let op = match decode(&h, op_in, payload) {
                Ok(op) => op,
                Err(t) => {
                    error!(
                        opcode = t.opcode,
                        need = t.need,
                        got = t.got,
                        "truncated FUSE request"
                    );
                    reply(raw, h.unique, Err(Errno::EIO))?;
                    continue;
                }
            };
            let exempt = matches!(
                h.opcode,
                op::FORGET | op::BATCH_FORGET | op::INTERRUPT | op::DESTROY
            );
            if !exempt && !self.allowed.allows(h.uid) {
                reply(raw, h.unique, Err(Errno::EACCES))?;
                continue;
            }
            let destroy = op == Op::Destroy;
            let mut o = Out::new(&mut out);
            match serve(&self.fs, &h, op, &mut o) {
                Done::Reply(r) => {
                    if let Err(e) = reply(raw, h.unique, r.map(|()| o.bytes())) {
                        debug!(unique = h.unique, "cannot send a FUSE reply: {e}");
                    }
                }
                Done::Nothing => {}
            }
            if destroy {
                return Ok(());
            }
        }
    }
}

/// Sends invalidations to the kernel over `/dev/fuse` (notifications do not travel over
/// the ring).
#[derive(Clone)]
pub struct Notifier(Arc<OwnedFd>);

impl Notifier {
    /// Invalidates the entry `name` of directory `parent`.
    pub fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        let n = abi::NotifyInvalEntry {
            parent,
            namelen: name.len() as u32,
            flags: 0,
        };
        let body = [abi::bytes(&n), name, &[0]];
        self.send(abi::NOTIFY_INVAL_ENTRY, &body)
    }

    /// Invalidates the attributes and cached pages of inode `ino`.
    pub fn inval_inode(&self, ino: u64) -> io::Result<()> {
        let n = abi::NotifyInvalInode {
            ino,
            off: 0,
            len: 0,
        };
        self.send(abi::NOTIFY_INVAL_INODE, &[abi::bytes(&n)])
    }

    fn send(&self, code: i32, body: &[&[u8]]) -> io::Result<()> {
        let len: usize = body.iter().map(|b| b.len()).sum();
        let h = OutHeader {
            len: (std::mem::size_of::<OutHeader>() + len) as u32,
            error: code,
            unique: 0,
        };
        let mut parts = vec![abi::bytes(&h)];
        parts.extend_from_slice(body);
        write_fd(self.0.as_raw_fd(), &parts)
    }
}

#[cfg(test)]
mod tests;
