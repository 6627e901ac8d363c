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

/// The versions of package `name` apt can download here (`apt-cache madison`), newest
/// first, without repeats.
pub fn versions(name: &str) -> Vec<String> {
    let out = Command::new("apt-cache")
        .args(["madison", name])
        .output()
        .expect("run apt-cache madison");
    let mut v: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split('|').map(str::trim);
        let (Some(n), Some(ver)) = (f.next(), f.next()) else {
            continue;
        };
        if n == name && !ver.is_empty() && !v.iter().any(|x| x == ver) {
            v.push(ver.to_string());
        }
    }
    let dpkg_gt = |a: &str, b: &str| {
        Command::new("dpkg")
            .args(["--compare-versions", a, "gt", b])
            .status()
            .is_ok_and(|s| s.success())
    };
    v.sort_by(|a, b| {
        if dpkg_gt(a, b) {
            std::cmp::Ordering::Less
        } else if dpkg_gt(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    v
}

/// The `.deb` of package `name` at exactly `version` (`apt-get download name=version`),
/// cached in `<target>/tmp/debian-debs-versions/` (apart from [`debs`]' cache, whose
/// "newest file" rule older versions would confuse). Panics if apt cannot get it.
pub fn deb_version(name: &str, version: &str) -> PathBuf {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir().join("tmp").join("debian-debs-versions");
    fs::create_dir_all(&dir).unwrap();
    let lock = File::create(dir.join(".lock")).unwrap();
    // SAFETY: flock on a file we own; released when `lock` is closed.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    // apt names the file NAME_VERSION_ARCH.deb, with the epoch's `:` as `%3a`.
    let stem = format!("{name}_{}_", version.replace(':', "%3a"));
    let find = || {
        fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap_or_default().to_string_lossy();
                n.starts_with(&stem) && n.ends_with(".deb")
            })
    };
    if let Some(p) = find() {
        return p;
    }
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(&dir)
        .unwrap();
    let spec = format!("{name}={version}");
    let ok = apt_download(tmp.path(), &[&spec]) || {
        let _ = Command::new("apt-get").args(["update", "-qq"]).output();
        apt_download(tmp.path(), &[&spec])
    };
    assert!(
        ok,
        "apt-get download {spec} failed: the delta tests need Debian's archive (apt)"
    );
    for e in fs::read_dir(tmp.path()).unwrap().flatten() {
        fs::rename(e.path(), dir.join(e.file_name())).unwrap();
    }
    find().unwrap_or_else(|| panic!("no .deb of {spec} after download"))
}
