//! Finding (and, when needed, building) the `pkgtool` and `packagefs` binaries.
//!
//! The binaries of `target/release/` are used through private snapshots (hard links in a
//! temporary directory), taken once per test run.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

struct Bins {
    pkgtool: PathBuf,
    packagefs: PathBuf,
}

static BINS: OnceLock<Bins> = OnceLock::new();

/// The `pkgtool` binary.
pub fn pkgtool() -> &'static Path {
    &BINS.get_or_init(locate).pkgtool
}

/// The `packagefs` binary.
pub fn packagefs() -> &'static Path {
    &BINS.get_or_init(locate).packagefs
}

/// The workspace root (the parent of this crate).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Cargo's target directory (`$CARGO_TARGET_DIR`, else `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target"),
    }
}

fn locate() -> Bins {
    let release = target_dir().join("release");
    let from_env = |var: &str| std::env::var_os(var).map(PathBuf::from);
    let (env_pkgtool, env_packagefs) = (from_env("PKGTOOL"), from_env("PACKAGEFS"));
    let bins = Bins {
        pkgtool: env_pkgtool
            .clone()
            .unwrap_or_else(|| release.join("pkgtool")),
        packagefs: env_packagefs
            .clone()
            .unwrap_or_else(|| release.join("packagefs")),
    };
    let ours = |env: &Option<PathBuf>, bin: &Path| env.is_none() && needs_build(bin);
    if ours(&env_pkgtool, &bins.pkgtool) || ours(&env_packagefs, &bins.packagefs) {
        std::fs::create_dir_all(&release)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", release.display()));
        let lock_path = target_dir().join(".e2e-build.lock");
        let lock = File::create(&lock_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
        // SAFETY: flock on a file we own; released when `lock` is closed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            panic!(
                "cannot lock {}: {}",
                lock_path.display(),
                std::io::Error::last_os_error()
            );
        }
        // Another test run may have built them while we waited for the lock.
        if ours(&env_pkgtool, &bins.pkgtool) || ours(&env_packagefs, &bins.packagefs) {
            build();
        }
        drop(lock);
    }
    for b in [&bins.pkgtool, &bins.packagefs] {
        assert!(b.is_file(), "binary {} does not exist", b.display());
    }
    // Run private snapshots (hard links, else copies) of the binaries of target/, so that
    // another build replacing them halfway through this run changes nothing for it.
    let snap = crate::process_temp_dir("e2e-bins-");
    let snapshot = |env: &Option<PathBuf>, bin: &Path| -> PathBuf {
        if env.is_some() {
            return bin.to_path_buf();
        }
        let dst = snap.join(bin.file_name().unwrap());
        if std::fs::hard_link(bin, &dst).is_err() {
            std::fs::copy(bin, &dst)
                .unwrap_or_else(|e| panic!("cannot copy {}: {e}", bin.display()));
        }
        dst
    };
    Bins {
        pkgtool: snapshot(&env_pkgtool, &bins.pkgtool),
        packagefs: snapshot(&env_packagefs, &bins.packagefs),
    }
}

/// Missing, or older than a source file of the crates it is built from.
fn needs_build(bin: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let ws = workspace();
    ["format", "pkgset", "pkgtool", "packagefs"]
        .iter()
        .filter_map(|c| newest_source(&ws.join(c)))
        .any(|t| t > built)
}

fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name();
            if ft.is_dir() {
                // fuzz/ has a crate of its own; target/ holds outputs
                if name != "target" && name != "fuzz" && name != "tests" {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") || name == "Cargo.toml" {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    newest = newest.max(Some(t));
                }
            }
        }
    }
    newest
}

fn build() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("e2e: building pkgtool and packagefs (cargo build --release --bins)");
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bins",
            "-p",
            "pkgtool",
            "-p",
            "packagefs",
        ])
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
    assert!(
        out.status.success(),
        "cargo build --release --bins -p pkgtool -p packagefs failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
