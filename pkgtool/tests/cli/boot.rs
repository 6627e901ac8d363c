//! Boot assessment from the command line (issue 12): `bless` (with and without
//! `--check-failed-units`), the boot record in `status`, and `boot-entries`. The record
//! `packagefs -o boot` would write before the mount is written here by hand, in the
//! format FORMAT.md §11 documents.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::util::{keygen, pkgtool, write_manifest, KeyPair, Scratch};

/// A system layer with generations 1 (hello 1.0.0) and 2 (hello 2.0.0, active).
struct Machine {
    s: Scratch,
    key: KeyPair,
}

impl Machine {
    fn new() -> Machine {
        let s = Scratch::new();
        let key = keygen(s.path(), "signer");
        fs::create_dir(s.join("keys")).unwrap();
        fs::copy(&key.public, s.join("keys/signer.pub")).unwrap();
        fs::create_dir_all(s.join("system/packages")).unwrap();
        let m = Machine { s, key };
        for v in ["1.0.0", "2.0.0"] {
            let tree = m.s.join(format!("tree-{v}"));
            fs::create_dir_all(&tree).unwrap();
            fs::write(tree.join("hello"), v).unwrap();
            let man = write_manifest(m.s.path(), "hello", v);
            let out = m.s.join(format!("hello-{v}.hpkg"));
            pkgtool(["build"])
                .arg(&tree)
                .arg("-o")
                .arg(&out)
                .arg("--key")
                .arg(&m.key.secret)
                .arg("--manifest")
                .arg(&man)
                .arg("--quiet")
                .ok();
            pkgtool(["install"])
                .arg(&out)
                .arg("--layer")
                .arg(m.layer())
                .arg("--trusted-keys")
                .arg(m.s.join("keys"))
                .ok();
        }
        m
    }

    fn layer(&self) -> PathBuf {
        self.s.join("system")
    }

    fn record(&self, text: &str) {
        fs::write(self.layer().join("state/boot"), text).unwrap();
    }

    fn status(&self, json: bool) -> crate::util::Run {
        let mut c = pkgtool(["status", "--layer"]);
        c.arg(self.layer())
            .arg("--trusted-keys")
            .arg(self.s.join("keys"));
        if json {
            c.arg("--json");
        }
        c.ok()
    }
}

#[test]
fn bless_ends_the_trial_and_status_shows_the_boot_record() {
    let m = Machine::new();
    // No record: status says nothing of boots, and bless has nothing to bless.
    assert!(!m.status(false).stdout_str().contains("boot:"));
    assert!(m.status(true).json()["boot"].is_null());
    pkgtool(["bless", "--layer"])
        .arg(m.layer())
        .fails(1)
        .one_line_error()
        .stderr_contains("no boot is recorded");

    // Generation 2 booted, on trial with 2 tries left; generation 1 good.
    m.record("booted 2 active\ngood 1\ntrying 2 2\nend\n");
    m.status(false).stdout_contains(
        "boot: booted generation 2 (active); good: 1; bad: none; on trial: 2, 2 tries left",
    );
    let j = m.status(true).json();
    assert_eq!(j["boot"]["booted"], 2);
    assert_eq!(j["boot"]["tries_left"], 2);

    let out = pkgtool(["bless", "--layer"]).arg(m.layer()).ok();
    assert_eq!(
        out.stdout_str(),
        "generation 2 is good: this boot is blessed\n"
    );
    m.status(false)
        .stdout_contains("boot: booted generation 2 (active); good: 1 2; bad: none\n");
    let out = pkgtool(["bless", "--layer"]).arg(m.layer()).ok();
    assert_eq!(out.stdout_str(), "generation 2 is good already\n");
    let text = fs::read_to_string(m.layer().join("state/boot")).unwrap();
    assert!(
        text.ends_with("end\n") && text.contains("\ngood 1 2\n"),
        "{text}"
    );
    let mode = fs::metadata(m.layer().join("state/boot"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    // A torn record: status warns, bless refuses, nothing is fatal to status.
    m.record("booted 2 active\ntrying 2");
    m.status(false).stdout_contains("torn or garbled");
    pkgtool(["bless", "--layer"])
        .arg(m.layer())
        .fails(1)
        .one_line_error()
        .stderr_contains("torn or garbled");
    pkgtool(["bless", "--layer"])
        .arg(m.s.join("nowhere"))
        .fails(1)
        .one_line_error()
        .stderr_contains("not a directory");
    assert!(!m.s.join("nowhere").exists());
}

#[test]
fn bless_with_check_failed_units_refuses_while_systemd_lists_any() {
    let m = Machine::new();
    m.record("booted 2 active\ntrying 2 1\nend\n");
    // A systemctl of our own, first in PATH.
    let bin = m.s.join("bin");
    fs::create_dir(&bin).unwrap();
    let failed = m.s.join("failed");
    fs::write(
        bin.join("systemctl"),
        format!("#!/bin/sh\ncat '{}'\n", failed.display()),
    )
    .unwrap();
    fs::set_permissions(bin.join("systemctl"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    fs::write(
        &failed,
        "pkgfs-breaker.service loaded failed failed Breaks\nfoo.mount loaded failed failed Foo\n",
    )
    .unwrap();
    pkgtool(["bless", "--check-failed-units", "--layer"])
        .arg(m.layer())
        .env("PATH", &path)
        .fails(1)
        .one_line_error()
        .stderr_contains("not blessed: 2 failed units: pkgfs-breaker.service, foo.mount");
    assert!(fs::read_to_string(m.layer().join("state/boot"))
        .unwrap()
        .contains("trying 2 1"));
    fs::write(&failed, "").unwrap();
    pkgtool(["bless", "--check-failed-units", "--layer"])
        .arg(m.layer())
        .env("PATH", &path)
        .ok()
        .stdout_contains("generation 2 is good");
}

#[test]
fn boot_entries_pin_every_generation_and_remove_stale_ones() {
    let m = Machine::new();
    m.record("booted 2 active\ngood 1\nbad 2\nend\n");
    let dir = m.s.join("esp/loader/entries");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("packagefs-gen-7.conf"), "gone").unwrap();
    fs::write(dir.join("debian.conf"), "someone else's").unwrap();
    let out = pkgtool(["boot-entries", "--layer"])
        .arg(m.layer())
        .arg("--dir")
        .arg(&dir)
        .args(["--linux", "/vmlinuz", "--initrd", "/initrd.img"])
        .args(["--options", "console=ttyS0 quiet"])
        .ok();
    assert_eq!(
        out.stdout_str(),
        format!(
            "{}: packagefs.conf and 2 generation entries written; removed packagefs-gen-7.conf\n",
            dir.display()
        )
    );
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "debian.conf",
            "packagefs-gen-1.conf",
            "packagefs-gen-2.conf",
            "packagefs.conf"
        ]
    );
    let g1 = fs::read_to_string(dir.join("packagefs-gen-1.conf")).unwrap();
    let title = g1.lines().find(|l| l.starts_with("title ")).unwrap();
    assert!(
        title.starts_with("title packagefs generation 1 (20") && title.ends_with(", good)"),
        "{g1}"
    );
    assert!(g1.contains("\nversion 1\nlinux /vmlinuz\ninitrd /initrd.img\noptions console=ttyS0 quiet packagefs.generation=1\n"), "{g1}");
    let g2 = fs::read_to_string(dir.join("packagefs-gen-2.conf")).unwrap();
    assert!(
        g2.contains(", active, failed its boot assessment)\n"),
        "{g2}"
    );
    let d = fs::read_to_string(dir.join("packagefs.conf")).unwrap();
    assert!(
        d.contains("\noptions console=ttyS0 quiet\n") && !d.contains("packagefs.generation"),
        "{d}"
    );

    // --json; a line break in an option is refused, one line, nothing written.
    let j = pkgtool(["boot-entries", "--json", "--layer"])
        .arg(m.layer())
        .arg("--dir")
        .arg(&dir)
        .args(["--linux", "/vmlinuz", "--initrd", "/initrd.img"])
        .ok()
        .json();
    assert_eq!(j["entries"][0]["file"], "packagefs.conf");
    assert_eq!(j["entries"][1]["generation"], 2);
    assert_eq!(j["removed"], serde_json::json!([]));
    pkgtool(["boot-entries", "--layer"])
        .arg(m.layer())
        .arg("--dir")
        .arg(&dir)
        .args([
            "--linux",
            "/vmlinuz\ninit=/bin/sh",
            "--initrd",
            "/initrd.img",
        ])
        .fails(1)
        .one_line_error()
        .stderr_contains("boot entry linux: a line break");
}
