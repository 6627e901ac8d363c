//! The systemd units packagefs ships for hosts (`dist/systemd/`) and the fstab form the
//! README documents, checked by systemd's own tools: `systemd-analyze verify` loads each
//! unit as PID 1 would (every setting parsed, every command found) in a root of its own,
//! and `systemd-fstab-generator` turns the fstab line into the mount unit that boot would
//! use. A warning counts as a failure. (The service is started for real, Type=notify,
//! hardening and restart included, in the booted VM: scripts/boot-test basic.)

use std::fs;
use std::path::Path;
use std::process::Command;

use e2e::bins::workspace;
use e2e::packagefs;

/// The fstab line of README.md ("packagefs at boot").
const FSTAB: &str = "system=/var/lib/packagefs/system  /opt/pkg  fuse.packagefs  \
    allow_other,nofail,x-systemd.requires-mounts-for=/var/lib/packagefs/system  0 0\n";

/// A root for `systemd-analyze --root`: the shipped units, and the programs they run.
fn root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("e2e-units-")
        .tempdir()
        .unwrap();
    let r = root.path();
    let units = r.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    for e in fs::read_dir(workspace().join("dist/systemd")).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), units.join(e.file_name())).unwrap();
    }
    for d in [
        "usr/bin",
        "bin",
        "etc/packagefs/mounts",
        "etc/systemd/system",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    // Copies: systemd-analyze resolves links inside the root.
    for (from, to) in [
        (packagefs(), "usr/bin/packagefs"),
        (Path::new("/bin/mkdir"), "bin/mkdir"),
    ] {
        fs::hard_link(from, r.join(to))
            .or_else(|_| fs::copy(from, r.join(to)).map(drop))
            .unwrap_or_else(|e| panic!("cannot copy {} into the root: {e}", from.display()));
    }
    root
}

/// `systemd-analyze verify` of `units` under `root`: success and not a word on stderr.
fn verify(root: &Path, units: &[&str]) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .expect("systemd-analyze (package systemd) is not installed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify {units:?}: {}: {err}",
        out.status
    );
}

#[test]
fn the_service_template_verifies() {
    let root = root();
    fs::write(
        root.path().join("etc/packagefs/mounts/opt-pkg.conf"),
        "LAYERS=system=/var/lib/packagefs/system:user=/home/alice/pkg\nOPTIONS=allow_other\n",
    )
    .unwrap();
    verify(root.path(), &["packagefs@opt-pkg.service"]);
    let unit = fs::read_to_string(
        root.path()
            .join("usr/lib/systemd/system/packagefs@.service"),
    )
    .unwrap();
    for need in [
        "Type=notify",
        "Restart=on-failure",
        "DeviceAllow=/dev/fuse rw",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(need), "packagefs@.service lacks {need}");
    }
    // Any of these would give the service a mount namespace of its own, where its FUSE
    // mount would be invisible to everyone else.
    for never in [
        "ProtectSystem",
        "PrivateTmp",
        "ProtectHome",
        "PrivateDevices",
        "PrivateMounts",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "MountFlags",
        "TemporaryFileSystem",
    ] {
        assert!(
            !unit
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{never}="))),
            "packagefs@.service sets {never}=, which gives it a mount namespace of its own"
        );
    }
}

#[test]
fn a_broken_unit_does_not_verify() {
    // The check above can fail: a misspelt setting is a warning, which fails it.
    let root = root();
    let p = root
        .path()
        .join("usr/lib/systemd/system/packagefs@.service");
    let unit = fs::read_to_string(&p)
        .unwrap()
        .replace("Type=notify", "Tpye=notify");
    fs::write(&p, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("packagefs@opt-pkg.service")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Tpye"),
        "systemd-analyze did not report the misspelt key: {out:?}"
    );
}

#[test]
fn the_fstab_form_makes_a_mount_unit_that_verifies() {
    let root = root();
    let fstab = root.path().join("etc/fstab");
    fs::write(&fstab, FSTAB).unwrap();
    let readme = fs::read_to_string(workspace().join("README.md")).unwrap();
    assert!(
        readme.contains(FSTAB.trim_end()),
        "README.md does not show the fstab line tested here"
    );
    let gen = root.path().join("generated");
    fs::create_dir(&gen).unwrap();
    let generator = [
        "/usr/lib/systemd/system-generators/systemd-fstab-generator",
        "/lib/systemd/system-generators/systemd-fstab-generator",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("systemd-fstab-generator (package systemd) is not installed");
    let out = Command::new(generator)
        .args([&gen, &gen, &gen])
        .env("SYSTEMD_FSTAB", &fstab)
        .env("SYSTEMD_PROC_CMDLINE", "")
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    assert!(out.status.success(), "systemd-fstab-generator: {out:?}");
    let unit = fs::read_to_string(gen.join("opt-pkg.mount"))
        .unwrap_or_else(|e| panic!("the generator made no opt-pkg.mount ({e}): {out:?}"));
    for need in [
        "What=system=/var/lib/packagefs/system",
        "Type=fuse.packagefs",
        "RequiresMountsFor=/var/lib/packagefs/system",
        "Options=allow_other",
    ] {
        assert!(unit.contains(need), "opt-pkg.mount lacks {need}:\n{unit}");
    }
    fs::copy(
        gen.join("opt-pkg.mount"),
        root.path().join("etc/systemd/system/opt-pkg.mount"),
    )
    .unwrap();
    verify(root.path(), &["opt-pkg.mount"]);
}
