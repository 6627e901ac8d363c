//! `pkgtool extract` as root next to an unprivileged user: privileges (setuid, setgid,
//! file capabilities) are extracted only from trusted packages and when asked for; a
//! temporary directory swapped for a symlink cannot steer it outside its target; deep
//! trees give short errors. Each attack runs for real: the attacker is a thread of this
//! test that has dropped to `nobody` ([`become_nobody`]), racing the real `pkgtool`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// Sets an xattr on a path without following a final symlink.
fn lsetxattr(p: &Path, name: &str, value: &[u8]) {
    let (pc, nc) = (
        CString::new(p.as_os_str().as_bytes()).unwrap(),
        CString::new(name).unwrap(),
    );
    // SAFETY: valid C strings and buffer.
    let r = unsafe {
        libc::lsetxattr(
            pc.as_ptr(),
            nc.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "lsetxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// All xattrs of a path, not following a final symlink (the SELinux label included).
fn all_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    xattr::list(p)
        .unwrap()
        .map(|n| {
            let v = xattr::get(p, &n).unwrap().unwrap_or_default();
            (n.as_bytes().to_vec(), v)
        })
        .collect()
}

/// Everything about a tree an attack could change: per path, kind, mode, owner, size,
/// mtime, contents or target, and xattrs.
fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut all = vec![(Vec::new(), root.to_owned())];
    all.extend(walk(root).into_iter().map(|e| (e.rel, e.path)));
    all.into_iter()
        .map(|(rel, p)| {
            let md = fs::symlink_metadata(&p).unwrap();
            let data = if md.is_file() {
                fs::read(&p).unwrap()
            } else if md.file_type().is_symlink() {
                fs::read_link(&p).unwrap().into_os_string().into_vec()
            } else {
                Vec::new()
            };
            let s = format!(
                "mode {:o} uid {} size {} mtime {}.{} data {:?} xattrs {:?}",
                md.mode(),
                md.uid(),
                md.len(),
                md.mtime(),
                md.mtime_nsec(),
                data,
                all_xattrs(&p)
            );
            (rel, s)
        })
        .collect()
}

/// A version 2 `security.capability` value granting cap_net_raw (effective, permitted).
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn extract(pkg: &Path, dest: &Path) -> TestCommand {
    let mut c = pkgtool(["extract"]);
    c.arg(pkg).arg(dest);
    c
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A tree with setuid and setgid files (one hard-linked), a file with a capability, a
/// setgid directory, and a plain file.
fn privileged_tree(root: &Path) -> PathBuf {
    let mut t = TestTree::new(root);
    t.dir("bin", 0o755)
        .file("bin/suid", b"#!/bin/sh\necho suid\n", 0o4755)
        .hardlink("bin/suid-again", "bin/suid")
        .file("bin/sgid", b"#!/bin/sh\necho sgid\n", 0o2711)
        .file("bin/ping", b"#!/bin/sh\necho ping\n", 0o755)
        .xattr("bin/ping", "security.capability", &CAP_NET_RAW)
        .xattr("bin/ping", "user.note", b"kept")
        .file("bin/plain", b"plain\n", 0o755)
        .dir("shared", 0o2775);
    t.finish()
}

#[test]
fn extract_drops_setuid_setgid_and_capabilities_unless_preserved_from_a_trusted_package() {
    let f = Fixture::new();
    let s = Scratch::new();
    let src = privileged_tree(&s.join("src"));
    let pkg = s.join("priv.hpkg");
    f.build(&src, &pkg).ok();
    let trusted = s.join("trusted");
    fs::create_dir(&trusted).unwrap();
    fs::copy(&f.key.public, trusted.join("alice.pub")).unwrap();

    // By default: the bits and the capability are dropped, and one warning line counts them.
    let out = s.join("default");
    let r = extract(&pkg, &out).ok();
    let err = r.stderr_str();
    assert_eq!(err.lines().count(), 1, "one warning line: {err:?}");
    assert!(
        err.starts_with("pkgtool: warning: ")
            && err.contains("setuid/setgid bits of 2 files")
            && err.contains("capabilities of 1 file")
            && err.contains("--preserve-privileges"),
        "{err:?}"
    );
    assert_eq!(mode(&out.join("bin/suid")), 0o755);
    assert_eq!(mode(&out.join("bin/suid-again")), 0o755);
    assert_eq!(mode(&out.join("bin/sgid")), 0o711);
    assert_eq!(mode(&out.join("bin/ping")), 0o755);
    assert_eq!(
        mode(&out.join("shared")),
        0o2775,
        "a setgid directory is not a privilege"
    );
    let x = all_xattrs(&out.join("bin/ping"));
    assert!(!x.contains_key(&b"security.capability"[..]), "{x:?}");
    assert_eq!(
        x.get(&b"user.note"[..]).map(Vec::as_slice),
        Some(&b"kept"[..])
    );
    assert_eq!(
        fs::read(out.join("bin/suid")).unwrap(),
        b"#!/bin/sh\necho suid\n"
    );

    // Asked for, from a package signed by a trusted key: restored, silently.
    let out = s.join("preserved");
    let r = extract(&pkg, &out)
        .arg("--preserve-privileges")
        .arg("--trusted-keys")
        .arg(&trusted)
        .ok();
    assert_eq!(r.stderr_str(), "", "no warning when nothing is dropped");
    assert_eq!(mode(&out.join("bin/suid")), 0o4755);
    assert_eq!(mode(&out.join("bin/sgid")), 0o2711);
    assert_eq!(
        all_xattrs(&out.join("bin/ping"))
            .get(&b"security.capability"[..])
            .map(Vec::as_slice),
        Some(&CAP_NET_RAW[..])
    );

    // Asked for, but the package is signed by a key that is not trusted, or not signed:
    // refused with one line, nothing extracted.
    let other = Scratch::new();
    keygen(other.path(), "mallory");
    let mallory = other.join("mallory.key");
    let evil = s.join("evil.hpkg");
    pkgtool(["build"])
        .arg(&src)
        .arg("-o")
        .arg(&evil)
        .arg("--key")
        .arg(&mallory)
        .arg("--manifest")
        .arg(&f.manifest)
        .arg("--quiet")
        .ok();
    let unsigned = s.join("unsigned.hpkg");
    pkgtool(["build"])
        .arg(&src)
        .arg("-o")
        .arg(&unsigned)
        .arg("--unsigned")
        .arg("--manifest")
        .arg(&f.manifest)
        .arg("--quiet")
        .ok();
    for p in [&evil, &unsigned] {
        let out = s.join("refused");
        extract(p, &out)
            .arg("--preserve-privileges")
            .arg("--trusted-keys")
            .arg(&trusted)
            .fails(1)
            .one_line_error()
            .stderr_contains("--preserve-privileges");
        assert!(fs::symlink_metadata(&out).is_err(), "{}", p.display());
    }
    assert_no_temp_left(s.path());
    // --trusted-keys alone means nothing: a usage error.
    extract(&pkg, &s.join("usage"))
        .arg("--trusted-keys")
        .arg(&trusted)
        .fails(2);
}

/// Watches `parent` as `nobody` and, each time a directory named `.pkgtool-extract-*`
/// appears in it, waits `delay` and swaps it for a symlink to `outside` (the directory is
/// moved aside, as an unprivileged user with write access to `parent` can). Returns how
/// many swaps it made.
fn swap_extract_dirs(
    parent: PathBuf,
    outside: PathBuf,
    delay: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        become_nobody();
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok(rd) = fs::read_dir(&parent) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if !name.as_bytes().starts_with(b".pkgtool-extract-") {
                    continue;
                }
                let p = e.path();
                if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                std::thread::sleep(delay);
                let aside = parent.join(format!("moved-{swaps}"));
                if fs::rename(&p, &aside).is_ok() {
                    std::os::unix::fs::symlink(&outside, &p).unwrap();
                    swaps += 1;
                }
            }
        }
        swaps
    })
}

#[test]
fn extract_stays_in_its_target_while_its_temp_dir_is_swapped_for_a_symlink() {
    // The package: enough files to take a while, then symlinks carrying xattrs (one of
    // them a file capability), named like root-owned files of a directory outside.
    let f = Fixture::new();
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = s.join("src");
    let mut t = TestTree::new(&src);
    t.dir("a", 0o755);
    for i in 0..1000 {
        t.file(
            format!("a/f{i:04}"),
            &pseudo_random(2000 + i % 7, i as u64),
            0o644,
        );
    }
    t.file("b-suid", b"#!/bin/sh\n", 0o4755);
    let outside = s.join("outside");
    fs::create_dir(&outside).unwrap();
    for i in 0..100 {
        let name = format!("z{i:03}");
        t.symlink(&name, "anywhere");
        lsetxattr(&t.path(&name), "trusted.planted", b"by the package");
        fs::write(outside.join(&name), format!("root's file {i}\n")).unwrap();
    }
    t.symlink("zcap", "anywhere");
    lsetxattr(&t.path("zcap"), "security.capability", &CAP_NET_RAW);
    fs::write(outside.join("zcap"), b"#!/bin/sh\necho root's binary\n").unwrap();
    fs::set_permissions(outside.join("zcap"), fs::Permissions::from_mode(0o755)).unwrap();
    t.finish();
    let pkg = s.join("race.hpkg");
    f.build(&src, &pkg).ok();
    let trusted = s.join("trusted");
    fs::create_dir(&trusted).unwrap();
    fs::copy(&f.key.public, trusted.join("alice.pub")).unwrap();

    // The target's parent is writable by the attacker.
    let parent = s.join("parent");
    fs::create_dir(&parent).unwrap();
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o777)).unwrap();
    let before = snapshot(&outside);
    let mut total_swaps = 0;
    // Round 0 extracts as by default (the xattrs of the links still go through the
    // swapped directory on the old code), the others with privileges kept.
    for (round, delay_ms) in [20u64, 5, 30].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = swap_extract_dirs(
            parent.clone(),
            outside.clone(),
            Duration::from_millis(delay_ms),
            stop.clone(),
        );
        let dest = parent.join(format!("dest{round}"));
        let mut c = extract(&pkg, &dest);
        if round > 0 {
            c.arg("--preserve-privileges")
                .arg("--trusted-keys")
                .arg(&trusted);
        }
        let r = c.run();
        stop.store(true, Ordering::Relaxed);
        total_swaps += attacker.join().unwrap();
        let after = snapshot(&outside);
        let changed: Vec<String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .map(|k| format!("{}: {:?}", escape(k), after.get(k)))
            .take(3)
            .collect();
        assert!(
            changed.is_empty(),
            "round {round}: extract changed files outside its target (exit {:?}, stderr {}): {changed:?}",
            r.code,
            r.stderr_str()
        );
        match fs::symlink_metadata(&dest) {
            // It may notice and fail, with one line ...
            Err(_) => {
                assert_eq!(r.code, Some(1), "round {round}: {}", r.stderr_str());
                let err = r.stderr_str();
                assert!(
                    err.starts_with("pkgtool: ") && err.lines().count() == 1,
                    "{err:?}"
                );
            }
            // ... or the target is the extracted tree itself, never the attacker's link.
            Ok(md) => {
                assert!(
                    md.is_dir(),
                    "round {round}: the target is a symlink (exit {:?})",
                    r.code
                );
                assert_eq!(r.code, Some(0), "{}", r.stderr_str());
                let want = if round > 0 { 0o4755 } else { 0o755 };
                assert_eq!(mode(&dest.join("b-suid")), want);
            }
        }
    }
    assert!(
        total_swaps >= 3,
        "the attacker never got to swap the temporary directory"
    );
}

/// A directory tree `levels` deep under `root`, made relative to descriptors so any depth
/// works, with a file at the bottom.
fn deep_tree(root: &Path, levels: usize, name: &[u8], leaf: &[u8]) {
    fs::create_dir_all(root).unwrap();
    let mut dir = fs::File::open(root).unwrap();
    use std::os::fd::AsRawFd;
    let c = CString::new(name).unwrap();
    for _ in 0..levels {
        // SAFETY: valid fd and C string; openat's fd is owned by the File.
        unsafe {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755), 0);
            let fd = libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            );
            assert!(fd >= 0);
            dir = std::os::fd::FromRawFd::from_raw_fd(fd);
        }
    }
    let leaf_name = CString::new("leaf").unwrap();
    // SAFETY: valid fd and C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            leaf_name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT,
            0o644,
        )
    };
    assert!(fd >= 0);
    // SAFETY: the fd was just opened.
    let mut file: fs::File = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    use std::io::Write;
    file.write_all(leaf).unwrap();
}

#[test]
fn errors_past_deep_nesting_are_one_short_line() {
    let f = Fixture::new();
    let s = Scratch::new();

    // 300 levels extract.
    let ok = s.join("ok");
    deep_tree(&ok, 300, b"d", b"300 levels down\n");
    let pkg = s.join("ok.hpkg");
    f.build(&ok, &pkg).ok();
    let out = s.join("ok-out");
    extract(&pkg, &out).ok();
    let leaf: PathBuf = std::iter::once(out.clone())
        .chain(std::iter::repeat_n(PathBuf::from("d"), 300))
        .chain(std::iter::once(PathBuf::from("leaf")))
        .collect();
    assert_eq!(fs::read(&leaf).unwrap(), b"300 levels down\n");

    // 450 levels are refused, in one short line that says how deep.
    let deep = s.join("deep");
    deep_tree(&deep, 450, b"d", b"deep\n");
    let pkg = s.join("deep.hpkg");
    f.build(&deep, &pkg).ok();
    let out = s.join("deep-out");
    let r = extract(&pkg, &out).fails(1).one_line_error();
    let err = r.stderr_str();
    assert!(err.len() < 500, "a {}-byte error line", err.len());
    assert!(err.contains("levels"), "{err}");
    assert!(fs::symlink_metadata(&out).is_err());
    assert_no_temp_left(s.path());

    // Any error inside a tree of long names names the path in a bounded line: here a
    // corrupted chunk of a file 15 levels of 200-byte names down (3 KB of path).
    let long = s.join("long");
    deep_tree(&long, 15, &[b'n'; 200], &pseudo_random(5000, 9));
    let pkg = s.join("long.hpkg");
    f.build(&long, &pkg).args(["--compression", "none"]).ok();
    let mut bytes = fs::read(&pkg).unwrap();
    let (heap, heap_len) = section(&bytes, HEAP);
    bytes[(heap + heap_len - 10) as usize] ^= 0xff;
    fs::write(&pkg, &bytes).unwrap();
    let out = s.join("long-out");
    let r = extract(&pkg, &out).fails(1).one_line_error();
    let err = r.stderr_str();
    assert!(
        err.len() < 800,
        "a {}-byte error line: {}",
        err.len(),
        &err[..300]
    );
    assert!(err.contains("chunk") && err.contains("16 levels"), "{err}");
    assert!(err.contains("/leaf"), "the last component is named: {err}");
    assert!(fs::symlink_metadata(&out).is_err());
}
