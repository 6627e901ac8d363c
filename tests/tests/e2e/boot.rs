//! `-o boot`: the generation a machine boots, over three "boots" (mount, unmount) of a
//! real mount: pinned on the kernel command line for one boot, the active one on trial,
//! blessed; and the daemon runs as `@packagefs` (systemd's root storage daemons).

use std::fs;
use std::path::Path;
use std::process::Command;

use e2e::{pkgtool, run_ok, Pkg, Stack, TestTree};

use crate::read;

fn boot(s: &Stack, cmdline: &Path) -> e2e::Mount {
    s.builder()
        .arg("-o")
        .arg(format!("boot,boot_cmdline={}", cmdline.display()))
        .start()
}

#[test]
fn boots_pin_a_generation_count_tries_and_bless() {
    let s = Stack::new(&["system"]);
    let v1 = TestTree::new();
    v1.file("etc/version", "1\n");
    s.add_pkg("system", "app", Pkg::new(v1.path(), "app", "1.0.0"));
    let layer = s.layer("system").path().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cmdline = dir.path().join("cmdline");
    fs::write(&cmdline, "console=ttyS0\n").unwrap();
    // The first mount makes generation 1.
    drop(s.mount());
    // Generation 2: version 2 of the package.
    let v2 = TestTree::new();
    v2.file("etc/version", "2\n");
    let p2 = Pkg::new(v2.path(), "app", "2.0.0")
        .key(s.keys())
        .build(dir.path().join("app2.hpkg"));
    run_ok(
        Command::new(pkgtool())
            .arg("install")
            .arg(&p2)
            .arg("--layer")
            .arg(&layer)
            .arg("--trusted-keys")
            .arg(s.keys().trusted()),
    );

    // Boot 1: generation 2, on trial; the daemon is @packagefs.
    let m = boot(&s, &cmdline);
    assert_eq!(read(m.join("etc/version")), "2\n");
    let argv = fs::read(format!("/proc/{}/cmdline", m.pid())).unwrap();
    assert!(
        argv.starts_with(b"@packagefs\0"),
        "{:?}",
        String::from_utf8_lossy(&argv)
    );
    assert!(
        m.log().contains("generation 2 is on trial: boot 1 of 3"),
        "{}",
        m.log()
    );
    drop(m);

    // Boot 2: pinned to generation 1 for this boot only.
    fs::write(&cmdline, "quiet packagefs.generation=1\n").unwrap();
    let m = boot(&s, &cmdline);
    assert_eq!(read(m.join("etc/version")), "1\n");
    assert!(
        m.log().contains("booting generation 1 for this boot only"),
        "{}",
        m.log()
    );
    drop(m);
    let list = fs::read_to_string(layer.join("state/active.list")).unwrap();
    assert!(
        list.contains("# generation: 2"),
        "a pinned boot changed active.list:\n{list}"
    );

    // Boot 3: generation 2 again, its second try; blessed.
    fs::write(&cmdline, "\n").unwrap();
    let m = boot(&s, &cmdline);
    assert_eq!(read(m.join("etc/version")), "2\n");
    assert!(m.log().contains("boot 2 of 3"), "{}", m.log());
    let out = run_ok(
        Command::new(pkgtool())
            .args(["bless", "--layer"])
            .arg(&layer),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2 is good"));
    drop(m);
    let out = run_ok(
        Command::new(pkgtool())
            .args(["status", "--layer"])
            .arg(&layer)
            .arg("--trusted-keys")
            .arg(s.keys().trusted()),
    );
    let st = String::from_utf8_lossy(&out.stdout);
    assert!(
        st.contains("boot: booted generation 2 (active); good: 2; bad: none"),
        "{st}"
    );
}
