//! The Debian package: `scripts/package` builds it from the binaries under test, `dpkg
//! --root` installs it into a fresh root, and everything is used from there: the binaries
//! answer `--version`, `man -l` renders the pages, bash loads the completions, the units
//! and the generator link are where Debian 12's systemd looks, and `mount -t
//! fuse.packagefs` mounts a layer through fuse3's helper and the installed daemon.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use e2e::bins::workspace;
use e2e::{packagefs, pkgtool, process_temp_dir, run_ok, Stack, TestTree};

/// The package, built once per test run, and the root it is installed in.
struct Installed {
    deb: PathBuf,
    root: PathBuf,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

fn installed() -> &'static Installed {
    INSTALLED.get_or_init(|| {
        let dir = process_temp_dir("e2e-package-");
        let out = dir.join("deb");
        // The binaries under test, no cargo; lintian runs if the machine has it.
        run_ok(
            Command::new(workspace().join("scripts/package"))
                .arg("--out")
                .arg(&out)
                .env("PKGTOOL", pkgtool())
                .env("PACKAGEFS", packagefs())
                .env("NO_COLOR", "1"),
        );
        let debs: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out.display());
        let deb = debs[0].clone();

        // A fresh root: an empty dpkg database, nothing else.
        let root = dir.join("root");
        let admin = root.join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(d)).unwrap();
        }
        std::fs::write(admin.join("status"), "").unwrap();
        // libc6 and fuse3 are the host's; --path-include undoes a host's path-exclude
        // of documentation (minimal container images have one).
        let mut root_opt = OsString::from("--root=");
        root_opt.push(&root);
        run_ok(
            Command::new("dpkg")
                .arg(&root_opt)
                .args(["--force-depends", "--path-include=*", "-i"])
                .arg(&deb),
        );
        Installed { deb, root }
    })
}

fn field(deb: &Path, name: &str) -> String {
    let out = run_ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The version the workspace's Cargo.toml gives, as pkgtool under test reports it.
fn cargo_version() -> String {
    let out = stdout(&run_ok(Command::new(pkgtool()).arg("--version")));
    out.trim()
        .strip_prefix("pkgtool ")
        .unwrap_or_else(|| panic!("pkgtool --version: {out}"))
        .to_owned()
}

#[test]
fn deb_has_cargo_version_depends_and_section() {
    let i = installed();
    let version = cargo_version();
    assert_eq!(field(&i.deb, "Package"), "packagefs");
    assert_eq!(field(&i.deb, "Version"), version);
    assert_eq!(field(&i.deb, "Section"), "admin");
    let arch = stdout(&run_ok(Command::new("dpkg").arg("--print-architecture")));
    assert_eq!(field(&i.deb, "Architecture"), arch.trim());
    assert_eq!(
        i.deb.file_name().unwrap().to_string_lossy(),
        format!("packagefs_{version}_{}.deb", arch.trim())
    );
    let depends = field(&i.deb, "Depends");
    let deps: Vec<&str> = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .collect();
    assert!(
        deps.contains(&"libc6") && deps.contains(&"fuse3"),
        "Depends: {depends}"
    );
    let description = field(&i.deb, "Description");
    assert!(
        description.lines().count() > 5 && description.contains("mount -t fuse.packagefs"),
        "Description: {description}"
    );
    // Nothing in /etc is a conffile: the keys directory is a directory.
    let out = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&i.deb)
        .arg("conffiles")
        .output()
        .unwrap();
    assert!(!out.status.success(), "conffiles: {}", stdout(&out));
}

#[test]
fn installed_binaries_answer_version_from_the_fresh_root() {
    let i = installed();
    let version = cargo_version();
    for bin in ["packagefs", "pkgtool"] {
        let path = i.root.join("usr/bin").join(bin);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "{}", path.display());
        let out = run_ok(Command::new(&path).arg("--version"));
        assert_eq!(stdout(&out), format!("{bin} {version}\n"));
    }
    let status = stdout(&run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", i.root.display()))
            .args(["--status", "packagefs"]),
    ));
    assert!(
        status.contains("Status: install ok installed"),
        "dpkg --status:\n{status}"
    );
}

#[test]
fn installed_units_generator_link_and_keys_directory() {
    let i = installed();
    let unit = i.root.join("lib/systemd/system/packagefs@.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/packagefs "),
        "{}",
        unit.display()
    );
    // Debian 12's systemd runs generators from /lib/systemd/system-generators.
    let link = i
        .root
        .join("lib/systemd/system-generators/packagefs-generator");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/usr/bin/pkgtool")
    );
    assert!(i.root.join("usr/bin/pkgtool").is_file());
    let keys = i.root.join("etc/packagefs/keys");
    assert!(keys.is_dir(), "{}", keys.display());
    assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);
    let doc = i.root.join("usr/share/doc/packagefs");
    for f in ["README.md", "copyright", "changelog.gz"] {
        assert!(doc.join(f).is_file(), "{}", doc.join(f).display());
    }
}

/// `man -l PAGE` as text (no pager, no terminal).
fn man(page: &Path) -> String {
    let out = run_ok(
        Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100"),
    );
    stdout(&out)
}

#[test]
fn installed_man_pages_render_one_per_binary_and_subcommand() {
    let i = installed();
    let dir = i.root.join("usr/share/man/man1");
    let page = man(&dir.join("pkgtool.1.gz"));
    assert!(
        page.contains("SYNOPSIS") && page.contains("pkgtool-install(1)"),
        "pkgtool.1:\n{page}"
    );
    let page = man(&dir.join("pkgtool-install.1.gz"));
    assert!(
        page.contains("pkgtool install") && page.contains("--trusted-keys"),
        "pkgtool-install.1:\n{page}"
    );
    let page = man(&dir.join("pkgtool-keygen.1.gz"));
    assert!(page.contains("keys/alice"), "pkgtool-keygen.1:\n{page}");
    let page = man(&dir.join("packagefs.1.gz"));
    assert!(
        page.contains("--trusted-keys") && !page.contains("generate-docs"),
        "packagefs.1:\n{page}"
    );
    // Every command of `pkgtool --help` has its page.
    let help = stdout(&run_ok(Command::new(pkgtool()).arg("--help")));
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // a command's line; a description wrapped onto the next line is indented more
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 10, "{help}");
    for c in &commands {
        let p = dir.join(format!("pkgtool-{c}.1.gz"));
        assert!(p.is_file(), "no page {}", p.display());
    }
    assert!(dir.join("pkgtool-graft-deb.1.gz").is_file());
}

#[test]
fn installed_completions_for_bash_zsh_and_fish() {
    let i = installed();
    let share = i.root.join("usr/share");
    for bin in ["pkgtool", "packagefs"] {
        let bash = share.join("bash-completion/completions").join(bin);
        // bash loads it and registers a completion for the command.
        let out = run_ok(
            Command::new("bash")
                .arg("-c")
                .arg("source \"$1\" && complete -p \"$2\"")
                .arg("bash")
                .arg(&bash)
                .arg(bin),
        );
        assert!(stdout(&out).contains(bin), "{}", stdout(&out));
        let zsh =
            std::fs::read_to_string(share.join("zsh/vendor-completions").join(format!("_{bin}")))
                .unwrap();
        assert!(zsh.starts_with(&format!("#compdef {bin}")), "{zsh}");
        let fish = std::fs::read_to_string(
            share
                .join("fish/vendor_completions.d")
                .join(format!("{bin}.fish")),
        )
        .unwrap();
        assert!(fish.contains(&format!("complete -c {bin}")), "{fish}");
    }
    let bash = std::fs::read_to_string(share.join("bash-completion/completions/pkgtool")).unwrap();
    assert!(bash.contains("install") && bash.contains("rollback"));
    assert!(
        !bash.contains("generate-docs"),
        "the build-time flag is completed"
    );
}

/// `mount -t fuse.packagefs` with the installed package: mount(8) runs fuse3's
/// `/sbin/mount.fuse` with no PATH, which runs `packagefs` from sh's default PATH. So, in a
/// private mount namespace, the fresh root's `usr/bin` is bound over `/usr/local/sbin`
/// (first in that PATH): the daemon that serves the mount is the installed one.
#[test]
fn mount_t_fuse_packagefs_runs_the_installed_daemon() {
    let i = installed();
    let t = TestTree::new();
    t.file("hello", "hello from the installed package\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "hello");
    let dir = tempfile::Builder::new()
        .prefix("e2e-package-mount-")
        .tempdir()
        .unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = r#"
        set -eu
        bin=$1 layer=$2 keys=$3 mnt=$4
        test -d /usr/local/sbin
        mount --bind "$bin" /usr/local/sbin
        mount -t fuse.packagefs "system=$layer" "$mnt" -o "ro,trusted_keys=$keys"
        trap 'umount -l "$mnt" 2>/dev/null || :' EXIT
        echo "type: $(findmnt -n -o FSTYPE --mountpoint "$mnt")"
        echo "read: $(cat "$mnt/hello")"
        for p in /proc/[0-9]*; do
            if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF "$mnt"; then
                echo "exe: $(stat -L -c %d:%i "$p/exe")"
            fi
        done
        umount "$mnt"
        echo "unmounted"
    "#;
    let out = Command::new("timeout")
        .args(["60", "unshare", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", script, "sh"])
        .arg(i.root.join("usr/bin"))
        .arg(s.layer("system").path())
        .arg(s.keys().trusted())
        .arg(&mnt)
        .output()
        .unwrap();
    let text = format!(
        "{}\nstderr:\n{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", out.status);
    // The daemon's executable is the installed file (seen in the namespace through the
    // bind mount, so compared by device and inode).
    let daemon = std::fs::metadata(i.root.join("usr/bin/packagefs")).unwrap();
    for want in [
        "type: fuse.packagefs\n".to_owned(),
        "read: hello from the installed package\n".to_owned(),
        format!("exe: {}:{}\n", daemon.dev(), daemon.ino()),
        "unmounted\n".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
}
