//! End-to-end tests of packagefs: packages built by the real `pkgtool` from real trees,
//! mounted by the real `packagefs`, checked through the kernel with `std::fs` and real
//! processes (`diff`, `find`, `tar`, `du`, `sh`, `mount`).
//!
//! One test binary (STYLE.md, "Tests"); the harness is the `e2e` library (`tests/src/`).
//! Mounting needs root and /dev/fuse.

mod boot;
mod corruption;
mod dead_mounts;
mod errors;
mod exec;
mod exec_cache;
mod fleet;
mod graft;
mod inodes;
mod layers;
mod lifecycle;
mod live;
mod mount;
mod mount_helper;
mod package;
mod parallel;
mod permissions;
mod readonly;
mod refusal;
mod services;
mod setuid;
mod transport;
mod trust;
mod units;
mod xattrs;

use std::io;
use std::path::Path;

/// Asserts that `r` failed with `errno`, naming `what` otherwise.
#[track_caller]
fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected errno {errno}"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "{what}: failed with {e}, expected {}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// The names of a directory, in the order `readdir` returns them.
fn names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Reads a file through the mount as a string.
fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}
