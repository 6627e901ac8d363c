//! `-o io_uring=auto|on|off`: which FUSE transport a mount is served by, chosen at INIT
//! from what the kernel offers (the fuse module's `enable_uring`, which the daemon reads and
//! never writes), logged once. The rest of the suite's transport variants (`uring::each`)
//! check that both transports serve the same bytes.

use e2e::uring::{self, NoRing, RingSwitch, Transport, ENABLE_URING};
use e2e::{run_packagefs, Stack};

use crate::mount::assert_transport;

fn stack() -> Stack {
    let t = e2e::TestTree::new();
    t.file("etc/motd", "over the ring\n");
    let s = Stack::new(&["system"]);
    s.add("system", t.path(), "motd");
    s
}

/// The names of the daemon's threads.
fn threads(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect();
    v.sort();
    v
}

fn switch() -> String {
    std::fs::read_to_string(ENABLE_URING)
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn auto_serves_over_one_ring_per_cpu_when_the_kernel_offers_it() {
    let Some(_on) = RingSwitch::on() else { return };
    let s = stack();
    let m = s.builder().transport(Transport::Auto).start();
    assert_transport(&m, Transport::Ring);
    assert_eq!(crate::read(m.join("etc/motd")), "over the ring\n");
    // One queue thread per possible CPU (the kernel's num_possible_cpus()).
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) } as usize;
    let rings: Vec<String> = threads(m.pid())
        .into_iter()
        .filter(|t| t.starts_with("fuse-ring-"))
        .collect();
    assert_eq!(rings.len(), cpus, "{rings:?}");
    assert_eq!(
        e2e::log_lines(&m.log(), &["FUSE transport"]).len(),
        1,
        "logged once"
    );
    // Off: /dev/fuse, through fuser's session, even with the ring offered.
    let m = s.builder().transport(Transport::DevFuse).start();
    assert!(m
        .log()
        .contains("FUSE transport: /dev/fuse (-o io_uring=off)"));
    assert!(!threads(m.pid()).iter().any(|t| t.starts_with("fuse-ring-")));
    assert_eq!(crate::read(m.join("etc/motd")), "over the ring\n");
}

#[test]
fn without_the_ring_auto_uses_dev_fuse_and_on_fails_in_one_line() {
    if let Some(why) = uring::unavailable() {
        eprintln!("no FUSE io_uring switch here ({why}): only auto's fallback is checked");
    }
    let off = NoRing::hold();
    let s = stack();
    let m = s.builder().transport(Transport::Auto).start();
    assert_transport(&m, Transport::DevFuse);
    assert_eq!(crate::read(m.join("etc/motd")), "over the ring\n");
    drop(m);
    if off.is_some() {
        // The daemon never turns the kernel's switch on.
        assert_eq!(switch(), "N");
    }
    let mnt = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = vec!["--layer".into()];
    let mut spec = std::ffi::OsString::from("system=");
    spec.push(s.layer("system").path());
    args.push(spec);
    args.push("--trusted-keys".into());
    args.push(s.keys().trusted().into());
    args.push("-o".into());
    args.push("io_uring=on".into());
    args.push(mnt.path().into());
    let r = run_packagefs(&args);
    assert_eq!(r.code(), 1, "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("packagefs: -o io_uring=on: the kernel does not offer FUSE over io_uring"),
        "{}",
        r.stderr
    );
    assert!(
        !e2e::mountinfo::is_fuse_mounted(mnt.path()),
        "left a mount behind"
    );
}

#[test]
fn a_bad_io_uring_value_is_a_usage_error() {
    let s = stack();
    let mnt = tempfile::tempdir().unwrap();
    let mut spec = std::ffi::OsString::from("system=");
    spec.push(s.layer("system").path());
    let r = run_packagefs([
        std::ffi::OsString::from("--layer"),
        spec,
        "-o".into(),
        "io_uring=maybe".into(),
        mnt.path().into(),
    ]);
    assert_eq!(r.code(), 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("io_uring=maybe: expected auto, on or off"),
        "{}",
        r.stderr
    );
}
