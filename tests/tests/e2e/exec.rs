//! Programs run from the mount: shell scripts with a `#!/bin/sh` line, real ELF binaries
//! (exit codes, output), and a dynamically linked program whose loader and libraries are
//! all mapped from the mount.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{run_ok, Stack, TestTree};

/// `system`: bin/{env,true,false,cat,ls} and lib/ (the loader and the libraries of cat and
/// ls); `user`: bin/script.sh, bin/sibling.sh, bin/alias -> script.sh. `bin/` is merged.
fn exec_stack() -> Stack {
    let sys = TestTree::new();
    sys.copy_from("bin/env", "/usr/bin/env")
        .copy_from("bin/true", "/bin/true")
        .copy_from("bin/false", "/bin/false")
        .copy_from("bin/cat", "/bin/cat")
        .copy_from("bin/ls", "/bin/ls");
    let mut libs = BTreeSet::new();
    for bin in ["/bin/cat", "/bin/ls"] {
        libs.extend(shared_libraries(Path::new(bin)));
    }
    for lib in &libs {
        let name = lib.file_name().unwrap();
        sys.copy_from(Path::new("lib").join(name), lib);
    }
    sys.copy_from("lib/ld.so", loader());
    let user = TestTree::new();
    user.exe("bin/script.sh", "#!/bin/sh\necho \"script: $*\"\nexit 7\n")
        .exe(
            "bin/sibling.sh",
            "#!/bin/sh\nexec \"$(dirname \"$0\")/env\" printf 'sibling %s\\n' \"$1\"\n",
        )
        .symlink("bin/alias", "script.sh");
    let s = Stack::new(&["system", "user"]);
    s.add("system", sys.path(), "tools");
    s.add("user", user.path(), "scripts");
    s
}

/// The libraries `ldd` resolves for `bin` (without the loader and the vDSO).
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = run_ok(Command::new("ldd").arg(bin));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("=> ")?;
            let path = rest.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The dynamic loader of this system (the interpreter of /bin/cat).
fn loader() -> PathBuf {
    let out = run_ok(Command::new("ldd").arg("/bin/cat"));
    let text = String::from_utf8_lossy(&out.stdout);
    let l = text
        .lines()
        .find(|l| l.contains("ld-linux") && !l.contains("=>"))
        .expect("ldd names the loader");
    std::fs::canonicalize(l.split_whitespace().next().unwrap()).unwrap()
}

#[test]
fn sh_script_runs_from_the_mount_with_its_exit_code() {
    let s = exec_stack();
    let m = s.mount();
    let out = Command::new(m.join("bin/script.sh"))
        .args(["a", "b"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "script: a b\n");
    assert_eq!(out.status.code(), Some(7));
    // through a symlink, and read (not executed) by sh
    let out = Command::new(m.join("bin/alias")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "script: \n");
    assert_eq!(out.status.code(), Some(7));
    let out = Command::new("sh")
        .arg(m.join("bin/script.sh"))
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "script: x\n");
}

#[test]
fn binaries_run_from_the_mount_with_their_output_and_exit_codes() {
    let s = exec_stack();
    let m = s.mount();
    assert_eq!(
        Command::new(m.join("bin/true")).status().unwrap().code(),
        Some(0)
    );
    assert_eq!(
        Command::new(m.join("bin/false")).status().unwrap().code(),
        Some(1)
    );
    let out = run_ok(
        Command::new(m.join("bin/env"))
            .env_clear()
            .env("E2E_VAR", "from-the-mount"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "E2E_VAR=from-the-mount\n"
    );
    // a script in the user layer runs a binary of the system layer next to it
    let out = run_ok(Command::new(m.join("bin/sibling.sh")).arg("ok"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sibling ok\n");
    // the binary bytes are the originals
    assert_eq!(
        std::fs::read(m.join("bin/env")).unwrap(),
        std::fs::read("/usr/bin/env").unwrap()
    );
}

#[test]
fn loader_and_libraries_are_mapped_from_the_mount() {
    let s = exec_stack();
    let m = s.mount();
    let ld = m.join("lib/ld.so");
    let libdir = m.join("lib");
    let out = run_ok(
        Command::new(&ld)
            .arg("--library-path")
            .arg(&libdir)
            .arg(m.join("bin/cat"))
            .arg("/proc/self/maps"),
    );
    let maps = String::from_utf8_lossy(&out.stdout);
    for want in [m.join("bin/cat"), ld.clone()] {
        assert!(
            maps.contains(&*want.to_string_lossy()),
            "{} is not mapped from the mount:\n{maps}",
            want.display()
        );
    }
    let libc_from_mount = maps
        .lines()
        .any(|l| l.contains(&*libdir.to_string_lossy()) && l.contains("libc.so"));
    assert!(
        libc_from_mount,
        "libc is not mapped from the mount:\n{maps}"
    );
    let out = run_ok(
        Command::new(&ld)
            .arg("--library-path")
            .arg(&libdir)
            .arg(m.join("bin/ls"))
            .arg("-1")
            .arg(m.join("bin")),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alias\ncat\nenv\nfalse\nls\nscript.sh\nsibling.sh\ntrue\n"
    );
}
