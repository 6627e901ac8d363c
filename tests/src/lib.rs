//! The end-to-end harness: real packages built by the real `pkgtool`, mounted by the real
//! `packagefs`, checked through the kernel with `std::fs` and real processes.
//!
//! ```text
//! TestTree (files, modes, links, xattrs, mtimes)
//!   -> Pkg::new(tree, name, version).key(&keys).build(layer.package("x"))   (pkgtool build)
//!   -> Mount::builder().layer("system", &layer).trusted_keys(keys.trusted()).start()
//!   -> std::fs / diff / find / tar on mount.path()
//!   -> drop(mount): SIGTERM, bounded wait, reap our own child, assert nothing is left mounted
//! ```
//!
//! The binaries come from `$PKGTOOL` / `$PACKAGEFS`, else `<workspace>/target/release/`;
//! when one is missing or older than the sources of `format`, `pkgtool` or `packagefs`,
//! it is built once per test run (`cargo build --release --bins -p pkgtool -p packagefs`,
//! under a file lock, so parallel test runs do not race).
//!
//! Every fixture lives in its own temporary directory: other test runs may use this
//! machine at the same time, so nothing here uses a fixed path.

#![deny(missing_docs)]

pub mod bins;
pub mod debian;
pub mod fixtures;
pub mod hpkg;
pub mod mount;
pub mod mountinfo;
pub mod pkg;
pub mod servers;
pub mod tree;
pub mod uring;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub use bins::{packagefs, pkgtool};
pub use mount::{run_packagefs, Mount, MountBuilder};
pub use pkg::{build_pkg, Keys, Layer, Pkg, Stack};
pub use tree::TestTree;

/// How long anything in these tests may take to happen (a mount to appear, a daemon to exit).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Runs a command to completion; panics, showing its output, unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `sh -c SCRIPT` and returns its output (whatever the exit status).
pub fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"))
}

/// A path as a shell word, single-quoted.
pub fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Polls `cond` every 10 ms until it is true or `deadline` has passed; returns whether it
/// became true.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines of `log` that contain every one of `needles`.
pub fn log_lines<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static REGISTER: Once = Once::new();

extern "C" fn remove_registered() {
    let paths = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()));
    for p in paths {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// A new temporary directory that lives until the test process exits (for fixtures
/// shared by several tests), then is removed.
pub fn process_temp_dir(prefix: &str) -> PathBuf {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory")
        .keep();
    AT_EXIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(d.clone());
    // SAFETY: registering a plain extern "C" function, once.
    REGISTER.call_once(|| unsafe {
        libc::atexit(remove_registered);
    });
    d
}
