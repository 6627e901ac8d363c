//! The two FUSE transports a mount can be served by, and the kernel's switch for the ring.
//!
//! The fuse module offers FUSE over io_uring only while its `enable_uring` parameter is on.
//! The daemon never changes it; these tests do, for themselves: a [`RingSwitch`] turns it on
//! while any test of this process holds one, and puts back what was there when the last
//! one is dropped (also when the test panics). A test that needs it off holds a
//! [`NoRing`], which waits for the ring tests to finish. `E2E_IO_URING=on` runs every mount
//! of the suite over the ring (see [`MountBuilder`](crate::MountBuilder)).

use std::sync::{Condvar, Mutex, MutexGuard};

/// The fuse module's switch.
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// A transport to serve a mount with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/dev/fuse` (`-o io_uring=off`).
    DevFuse,
    /// FUSE over io_uring (`-o io_uring=on`).
    Ring,
    /// Whatever the kernel offers (`-o io_uring=auto`), with the switch as it is.
    Auto,
}

impl Transport {
    /// The daemon's option for it.
    pub fn option(self) -> &'static str {
        match self {
            Transport::DevFuse => "io_uring=off",
            Transport::Ring => "io_uring=on",
            Transport::Auto => "io_uring=auto",
        }
    }

    /// What the daemon logs once it is chosen.
    pub fn log_line(self) -> &'static str {
        match self {
            Transport::DevFuse => "FUSE transport: /dev/fuse",
            Transport::Ring | Transport::Auto => "FUSE transport: io_uring",
        }
    }
}

/// Why this machine cannot serve a mount over the ring, or `None` if it can.
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match std::fs::metadata(ENABLE_URING) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "{ENABLE_URING}: {e} (Linux 6.14+ with CONFIG_FUSE_IO_URING)"
        )),
    }
}

/// Who holds the switch: ring tests (any number, also nested: a test holding one mounts
/// with another) or one test that needs it off.
struct State {
    ring_users: usize,
    exclusive: bool,
    /// The value found before the first ring user.
    before: Option<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    ring_users: 0,
    exclusive: false,
    before: None,
});
static CHANGED: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

fn set(v: &str) {
    if let Err(e) = std::fs::write(ENABLE_URING, v) {
        panic!("cannot write {v} to {ENABLE_URING}: {e}");
    }
}

fn get() -> String {
    std::fs::read_to_string(ENABLE_URING)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `enable_uring` on while held (see the module's doc).
#[derive(Debug)]
pub struct RingSwitch(());

impl RingSwitch {
    /// Turns the ring on, or `None` (with the reason printed) where there is none.
    pub fn on() -> Option<RingSwitch> {
        if let Some(why) = unavailable() {
            eprintln!(
                "FUSE over io_uring is not available here: {why}; the ring variant is skipped"
            );
            return None;
        }
        let mut st = lock();
        while st.exclusive {
            st = CHANGED.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.ring_users == 0 {
            st.before = Some(get());
            set("Y");
        }
        st.ring_users += 1;
        Some(RingSwitch(()))
    }
}

impl Drop for RingSwitch {
    fn drop(&mut self) {
        let mut st = lock();
        st.ring_users -= 1;
        if st.ring_users == 0 {
            if let Some(v) = st.before.take() {
                set(&v);
            }
            CHANGED.notify_all();
        }
    }
}

/// `enable_uring` off while held, with no ring test running (see the module's doc). A
/// test holding it must not mount over the ring (give its mounts a transport).
#[derive(Debug)]
pub struct NoRing {
    before: String,
}

impl NoRing {
    /// Turns the ring off, or `None` where the kernel has no switch (then it is off).
    pub fn hold() -> Option<NoRing> {
        if unavailable().is_some() {
            return None;
        }
        let mut st = lock();
        while st.exclusive || st.ring_users > 0 {
            st = CHANGED.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.exclusive = true;
        let before = get();
        set("N");
        Some(NoRing { before })
    }
}

impl Drop for NoRing {
    fn drop(&mut self) {
        set(&self.before);
        lock().exclusive = false;
        CHANGED.notify_all();
    }
}

/// Runs `test` over each transport: `/dev/fuse`, then the ring with `enable_uring` on
/// (skipped, saying so, where the machine has none).
pub fn each(test: impl Fn(Transport)) {
    test(Transport::DevFuse);
    if let Some(_on) = RingSwitch::on() {
        test(Transport::Ring);
    }
}
