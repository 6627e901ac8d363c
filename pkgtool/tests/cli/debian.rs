//! Real Debian packages for the graft tests, fetched with `apt-get download` at test time
//! and cached in `$CARGO_TARGET_TMPDIR/debian-debs/` (kept across runs, so only the first
//! run downloads), and hostile `.deb` files made in the test.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

/// The cache of downloaded `.deb` files.
fn cache_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-debs");
    fs::create_dir_all(&d).unwrap();
    d
}

/// The cached `.deb` of package `name`, if any (`NAME_*.deb`).
fn cached(dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}_");
    let mut hits: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
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

/// The `.deb` files of the named packages (the architecture's candidate versions),
/// downloaded with `apt-get download` unless cached. Runs `apt-get update` once if the
/// download fails (a machine without package lists). Panics if apt cannot get them.
pub fn debs(names: &[&str]) -> Vec<PathBuf> {
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = cache_dir();
    // Other test processes (the e2e suite) may fill the same cache: lock it.
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

// ---------------------------------------------------------------------------------------
// Hand-made .deb files

/// One tar entry: path (written raw, so `..` and `/` are possible), kind, data, link.
pub type Entry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

/// A tar archive of `entries` (mode 0644 or 0755, a fixed mtime).
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        let exec = *kind == tar::EntryType::Directory || path.contains("bin/");
        h.set_mode(if exec { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if !link.is_empty() {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_cksum();
        t.append(&h, *data).unwrap();
    }
    t.into_inner().unwrap()
}

/// xz-compresses `data`.
pub fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// gzip-compresses `data`.
pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// zstd-compresses `data`.
pub fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// bzip2-compresses `data`.
pub fn bz2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An ar archive of (member name, bytes).
pub fn ar_of(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = ar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        h.set_mode(0o644);
        b.append(&h, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The control member (control.tar.xz) for `control` text plus the named scripts.
pub fn control_tar(control: &str, scripts: &[&str]) -> Vec<u8> {
    let mut entries: Vec<Entry> = vec![
        ("./", tar::EntryType::Directory, b"", ""),
        ("./control", tar::EntryType::Regular, control.as_bytes(), ""),
    ];
    let paths: Vec<String> = scripts.iter().map(|s| format!("./{s}")).collect();
    for p in &paths {
        entries.push((p, tar::EntryType::Regular, b"#!/bin/sh\nexit 0\n", ""));
    }
    xz(&tar_of(&entries))
}

/// A minimal control file.
pub fn control(name: &str, version: &str, extra: &str) -> String {
    format!(
        "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{extra}Description: test package {name}\n a test\n"
    )
}

/// A `.deb` of `control` and the data tar `data` (already compressed) as `data_member`.
pub fn deb(control: &str, data_member: &str, data: Vec<u8>) -> Vec<u8> {
    ar_of(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.xz", control_tar(control, &[])),
        (data_member, data),
    ])
}

/// A well-formed `.deb` with a program, a library symlink and a document.
pub fn good_deb(name: &str) -> Vec<u8> {
    let bin = format!("./usr/bin/{name}");
    let data = tar_of(&[
        ("./", tar::EntryType::Directory, b"", ""),
        ("./usr/", tar::EntryType::Directory, b"", ""),
        ("./usr/bin/", tar::EntryType::Directory, b"", ""),
        (&bin, tar::EntryType::Regular, b"#!/bin/sh\necho hi\n", ""),
        (
            "./usr/share/doc/x/README",
            tar::EntryType::Regular,
            b"doc\n",
            "",
        ),
    ]);
    deb(&control(name, "1.0-1", ""), "data.tar.xz", xz(&data))
}
