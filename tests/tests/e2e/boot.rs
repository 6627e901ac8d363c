//! `-o boot` (issue 12): the generation a machine boots, chosen at mount from a kernel
//! command line (`boot_cmdline=FILE` instead of /proc/cmdline) and the layer's boot
//! assessment, across "boots" (mount, unmount); the daemon is a root storage daemon
//! (argv[0] `@packagefs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{pkgtool, Mount, Pkg, Stack, TestTree};

use crate::read;

/// A system layer, a kernel command line file, and packages to install.
struct Machine {
    s: Stack,
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            s: Stack::new(&["system"]),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn layer(&self) -> &Path {
        self.s.layer("system").path()
    }

    /// Builds `hello` VERSION (its file `hello` says VERSION) and installs it with pkgtool.
    fn install(&self, version: &str) {
        let t = TestTree::new();
        t.file("hello", format!("{version}\n"));
        let out = self.dir.path().join(format!("hello-{version}.hpkg"));
        Pkg::new(t.path(), "hello", version)
            .key(self.s.keys())
            .build(&out);
        let o = self
            .pkgtool(&["install", &out.to_string_lossy()])
            .output()
            .unwrap();
        assert!(o.status.success(), "install {version}: {o:?}");
    }

    /// `pkgtool ARGS --layer LAYER` (`--trusted-keys` too, for the commands that open
    /// packages).
    fn pkgtool(&self, args: &[&str]) -> Command {
        let mut c = Command::new(pkgtool());
        c.args(args).arg("--layer").arg(self.layer());
        if args[0] != "bless" {
            c.arg("--trusted-keys").arg(self.s.keys().trusted());
        }
        c
    }

    fn cmdline(&self) -> PathBuf {
        self.dir.path().join("cmdline")
    }

    /// Boots: mounts with `-o boot` and this kernel command line.
    fn boot(&self, cmdline: &str) -> Mount {
        std::fs::write(self.cmdline(), format!("BOOT_IMAGE=/vmlinuz {cmdline}\n")).unwrap();
        self.s
            .builder()
            .arg("-o")
            .arg(format!("boot,boot_cmdline={}", self.cmdline().display()))
            .start()
    }

    fn active_generation(&self) -> String {
        let l = std::fs::read_to_string(self.layer().join("state/active.list")).unwrap();
        l.lines()
            .find_map(|l| l.strip_prefix("# generation: "))
            .unwrap_or("?")
            .to_string()
    }

    fn run(&self, c: &mut Command) -> String {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {o:?}");
        String::from_utf8(o.stdout).unwrap()
    }
}

/// The daemon's argv[0].
fn argv0(pid: u32) -> String {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(c.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
}

#[test]
fn r12_boots_pinned_then_on_trial_then_the_last_good_generation_for_good() {
    let m = Machine::new();
    m.install("1.0.0");

    // Boot 1: generation 1, on trial; blessed.
    let mnt = m.boot("");
    assert_eq!(read(mnt.join("hello")), "1.0.0\n");
    assert_eq!(argv0(mnt.pid()), "@packagefs", "a root storage daemon");
    assert!(
        mnt.log()
            .contains("packagefs: generation 1 is on trial: boot 1 of 3"),
        "{}",
        mnt.log()
    );
    drop(mnt);
    let said = m.run(&mut m.pkgtool(&["bless"]));
    assert_eq!(said.trim(), "generation 1 is good: this boot is blessed");

    // Boot 2: generation 2 is active, generation 1 pinned for this boot only.
    m.install("2.0.0");
    let mnt = m.boot("quiet packagefs.generation=1");
    assert_eq!(read(mnt.join("hello")), "1.0.0\n", "{}", mnt.log());
    assert!(
        mnt.log()
            .contains("packagefs: booting generation 1 for this boot only"),
        "{}",
        mnt.log()
    );
    assert_eq!(m.active_generation(), "2", "a pinned boot changes no list");
    let st = m.run(&mut m.pkgtool(&["status"]));
    assert!(
        st.contains("boot: booted generation 1 (pinned); good: 1"),
        "{st}"
    );
    drop(mnt);

    // Boot 3: generation 2, its one try; not blessed.
    let mnt = m.boot("packagefs.tries=1");
    assert_eq!(read(mnt.join("hello")), "2.0.0\n", "{}", mnt.log());
    assert!(
        mnt.log()
            .contains("packagefs: generation 2 is on trial: boot 1 of 1"),
        "{}",
        mnt.log()
    );
    drop(mnt);

    // Boot 4: its tries are spent: generation 1 boots, and is made the active one.
    let mnt = m.boot("packagefs.tries=1");
    assert_eq!(read(mnt.join("hello")), "1.0.0\n", "{}", mnt.log());
    assert!(
        mnt.log().contains(
            "packagefs: generation 2 used up its 1 boot tries without a good boot: booting the last good generation, 1, and making it the active one"
        ),
        "{}",
        mnt.log()
    );
    assert_eq!(m.active_generation(), "1", "the fallback is permanent");
    drop(mnt);
    let st = m.run(&mut m.pkgtool(&["status", "--json"]));
    let st: String = st.split_whitespace().collect();
    for want in [
        r#""booted":1,"how":"last-good""#,
        r#""bad":[2]"#,
        r#""good":[1]"#,
    ] {
        assert!(st.contains(want), "{want} in {st}");
    }

    // Boot 5: an ordinary boot of the good generation 1.
    let mnt = m.boot("");
    assert_eq!(read(mnt.join("hello")), "1.0.0\n");
    assert!(
        mnt.log().contains("packagefs: booting generation 1\n"),
        "{}",
        mnt.log()
    );
    drop(mnt);

    // Boot 6: the bad generation 2, pinned, serves it; a change made during a pinned boot
    // waits for the next boot; blessing the pinned boot makes generation 2 good again.
    let mnt = m.boot("packagefs.generation=2");
    assert_eq!(read(mnt.join("hello")), "2.0.0\n", "{}", mnt.log());
    m.install("3.0.0");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        read(mnt.join("hello")),
        "2.0.0\n",
        "a pinned boot is not changed live: {}",
        mnt.log()
    );
    assert!(
        mnt.log()
            .contains("changes to the layer take effect at the next boot"),
        "{}",
        mnt.log()
    );
    drop(mnt);
    let said = m.run(&mut m.pkgtool(&["bless"]));
    assert_eq!(said.trim(), "generation 2 is good: this boot is blessed");
    let st = m.run(&mut m.pkgtool(&["status"]));
    assert!(st.contains("good: 1 2; bad: none"), "{st}");

    // Boot 7: generation 3, installed during boot 6, is active and on trial.
    let mnt = m.boot("");
    assert_eq!(read(mnt.join("hello")), "3.0.0\n", "{}", mnt.log());
    assert!(
        mnt.log()
            .contains("packagefs: generation 3 is on trial: boot 1 of 3"),
        "{}",
        mnt.log()
    );
}
