//! Real Debian packages, fetched with `apt-get download` at test time and cached in
//! `<target>/tmp/debian-debs/` (the directory pkgtool's CLI tests cache them in too), so
//! only the first run on a machine downloads.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::bins::target_dir;

static LOCK: Mutex<()> = Mutex::new(());

/// The newest cached `.deb` of package `name` (`NAME_*.deb`), if any.
fn cached(dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}_");
    let mut hits: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".deb")
        })
        .collect();
    hits.sort();
    hits.pop()
}

fn apt_download(dir: &Path, names: &[&str]) -> bool {
    Command::new("apt-get")
        .arg("download")
        .args(names)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The `.deb` files of the named packages (the candidate versions of this machine's
/// architecture), downloaded with `apt-get download` unless cached; `apt-get update` is
/// run once if the download fails. Panics if apt cannot get them.
pub fn debs(names: &[&str]) -> Vec<PathBuf> {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir().join("tmp").join("debian-debs");
    fs::create_dir_all(&dir).unwrap();
    let lock = File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a file we own; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| cached(&dir, n).is_none())
        .collect();
    if !missing.is_empty() {
        let tmp = tempfile::Builder::new()
            .prefix(".download-")
            .tempdir_in(&dir)
            .unwrap();
        let ok = apt_download(tmp.path(), &missing) || {
            let _ = Command::new("apt-get").args(["update", "-qq"]).output();
            apt_download(tmp.path(), &missing)
        };
        assert!(
            ok,
            "apt-get download {} failed: the graft tests need Debian's archive (apt)",
            missing.join(" ")
        );
        for e in fs::read_dir(tmp.path()).unwrap().flatten() {
            fs::rename(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    names
        .iter()
        .map(|n| cached(&dir, n).unwrap_or_else(|| panic!("no .deb of {n} after download")))
        .collect()
}
