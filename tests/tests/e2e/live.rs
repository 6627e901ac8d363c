//! Live package sets on a real mount: packages dropped in (cp, mv, ln) and deleted, refused
//! drops, active.list replaced, pkgtool rollback under concurrent readers, files held open
//! across a switch, shine-through, and the daemon killed at random moments.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{log_lines, pkgtool, run_ok, wait_until, Pkg, Stack, TestTree};

use crate::read;

const SOON: Duration = Duration::from_secs(5);

/// Builds package `name` `version` holding `files` into a scratch dir (not a layer).
fn build(s: &Stack, dir: &Path, name: &str, version: &str, files: &[(&str, &str)]) -> PathBuf {
    build_pkg(s, dir, Pkg::new(tree(files).path(), name, version))
}

fn build_pkg(s: &Stack, dir: &Path, p: Pkg) -> PathBuf {
    let n = dir.read_dir().unwrap().count();
    p.key(s.keys()).build(dir.join(format!("p{n}.hpkg")))
}

fn tree(files: &[(&str, &str)]) -> TestTree {
    let t = TestTree::new();
    for (p, c) in files {
        t.file(p, *c);
    }
    t
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("e2e-live-")
        .tempdir()
        .unwrap()
}

fn active_list(layer: &Path) -> String {
    fs::read_to_string(layer.join("state/active.list")).unwrap_or_default()
}

fn pkgtool_in(layer: &Path, keys: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(pkgtool())
            .args(args)
            .arg("--layer")
            .arg(format!("system={}", layer.display()))
            .arg("--trusted-keys")
            .arg(keys),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dropped_packages_appear_and_deleted_ones_vanish() {
    e2e::uring::each(|tr| {
        let s = Stack::new(&["system"]);
        let base = s.add("system", tree(&[("etc/base", "base\n")]).path(), "base");
        let m = s.builder().transport(tr).start();
        let layer = s.layer("system").path().to_owned();
        let pk = layer.join("packages");
        let d = scratch();
        assert_eq!(read(m.join("etc/base")), "base\n");
        assert!(active_list(&layer).contains("# generation: 1"));

        // cp, mv and ln, each seen within the deadline
        let a = build(&s, d.path(), "via-cp", "1.0.0", &[("etc/cp", "copied\n")]);
        let b = build(&s, d.path(), "via-mv", "1.0.0", &[("etc/mv", "moved\n")]);
        let c = build(&s, d.path(), "via-ln", "1.0.0", &[("etc/ln", "linked\n")]);
        let t = Instant::now();
        fs::copy(&a, pk.join("via-cp.hpkg")).unwrap();
        assert!(
            wait_until(SOON, || m.join("etc/cp").exists()),
            "cp: {}",
            m.log()
        );
        let latency = t.elapsed();
        fs::rename(&b, pk.join("via-mv.hpkg")).unwrap();
        assert!(
            wait_until(SOON, || m.join("etc/mv").exists()),
            "mv: {}",
            m.log()
        );
        fs::hard_link(&c, pk.join("via-ln.hpkg")).unwrap();
        assert!(
            wait_until(SOON, || m.join("etc/ln").exists()),
            "ln: {}",
            m.log()
        );
        assert_eq!(read(m.join("etc/cp")), "copied\n");
        assert_eq!(read(m.join("etc/mv")), "moved\n");
        assert_eq!(read(m.join("etc/ln")), "linked\n");
        eprintln!("drop-to-visible latency (cp): {latency:?}");
        let list = active_list(&layer);
        for n in ["base-1.0.0", "via-cp-1.0.0", "via-mv-1.0.0", "via-ln-1.0.0"] {
            assert!(list.contains(n), "{n} not in active.list:\n{list}");
        }
        // a newer version replaces the active one
        let cp2 = build(
            &s,
            d.path(),
            "via-cp",
            "1.1.0",
            &[("etc/cp", "copied, v1.1\n")],
        );
        fs::copy(&cp2, pk.join("via-cp-1.1.hpkg")).unwrap();
        assert!(wait_until(SOON, || read(m.join("etc/cp")) == "copied, v1.1\n"));
        // an older one dropped later does not
        fs::copy(&a, pk.join("via-cp-old.hpkg")).unwrap();
        assert!(wait_until(SOON, || !log_lines(
            &m.log(),
            &["not activated", "not newer than the active via-cp-1.1.0"]
        )
        .is_empty()));
        assert_eq!(read(m.join("etc/cp")), "copied, v1.1\n");

        // deleting a file deactivates its package
        fs::remove_file(pk.join("via-mv.hpkg")).unwrap();
        assert!(wait_until(SOON, || !m.join("etc/mv").exists()));
        fs::remove_file(&base).unwrap();
        assert!(wait_until(SOON, || !m.join("etc/base").exists()));
        assert!(m.join("etc/ln").exists());
        assert!(!active_list(&layer).contains("via-mv"));
        // every change is a generation
        let gens = fs::read_dir(layer.join("state/generations"))
            .unwrap()
            .count();
        assert!(gens >= 7, "{gens} generations");
        // ... and one record of the audit trail, made by the daemon.
        let h = pkgset::journal::read(&pkgset::generation::LayerPaths::new(&layer)).unwrap();
        assert_eq!(
            h.records.len(),
            gens,
            "one record per generation: {:?}",
            h.records
        );
        let drops: Vec<_> = h.records.iter().filter(|r| r.kind == "packages").collect();
        assert!(
            drops.len() >= 6,
            "the drops and deletions are not recorded as such: {drops:?}"
        );
        for r in &drops {
            assert!(
                r.who.command.contains("packagefs"),
                "a drop recorded as made by another program than the daemon: {r:?}"
            );
        }
        assert!(
            drops
                .iter()
                .any(|r| r.reason == "deleted via-mv.hpkg" && r.removed == ["via-mv-1.0.0"]),
            "the deletion of via-mv.hpkg is not in the trail: {drops:?}"
        );
        assert!(
            drops
                .iter()
                .any(|r| r.added == ["via-cp-1.1.0"] && r.removed == ["via-cp-1.0.0"]),
            "the update of via-cp is not in the trail: {drops:?}"
        );
    });
}

#[test]
fn a_copy_in_progress_is_not_read_half_way() {
    let s = Stack::new(&["system"]);
    let m = s.mount();
    let pk = s.layer("system").path().join("packages");
    let d = scratch();
    let big: String = (0..200_000).map(|i| format!("line {i}\n")).collect();
    let p = build(&s, d.path(), "slow", "1.0.0", &[("share/slow", &big)]);
    let bytes = fs::read(&p).unwrap();
    let mut f = fs::File::create(pk.join("slow.hpkg")).unwrap();
    f.write_all(&bytes[..bytes.len() / 2]).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!m.join("share").exists(), "activated half a file");
    assert!(
        log_lines(&m.log(), &["refused"]).is_empty(),
        "a copy in progress was refused:\n{}",
        m.log()
    );
    f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    drop(f);
    assert!(
        wait_until(SOON, || m.join("share/slow").exists()),
        "{}",
        m.log()
    );
    assert_eq!(read(m.join("share/slow")), big);
}

#[test]
fn a_drop_with_an_unmet_requirement_is_refused_until_its_library_arrives() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", "base\n")]).path(), "base");
    let m = s.mount();
    let layer = s.layer("system").path().to_owned();
    let pk = layer.join("packages");
    let d = scratch();
    let app = build_pkg(
        &s,
        d.path(),
        Pkg::new(tree(&[("bin/app", "app\n")]).path(), "app", "1.0.0").requires("libfoo", "^2.1"),
    );
    let lib = build(&s, d.path(), "libfoo", "2.3.0", &[("lib/libfoo", "foo\n")]);
    let before = active_list(&layer);
    fs::copy(&app, pk.join("app.hpkg")).unwrap();
    assert!(
        wait_until(SOON, || !log_lines(
            &m.log(),
            &[
                "refused app.hpkg",
                "app 1.0.0 requires libfoo ^2.1, but nothing provides it"
            ]
        )
        .is_empty()),
        "{}",
        m.log()
    );
    assert!(!m.join("bin").exists(), "the view changed");
    assert_eq!(active_list(&layer), before, "a generation was written");
    // the library arrives: the waiting app comes with it
    fs::copy(&lib, pk.join("libfoo.hpkg")).unwrap();
    assert!(
        wait_until(SOON, || m.join("bin/app").exists()),
        "{}",
        m.log()
    );
    assert_eq!(read(m.join("lib/libfoo")), "foo\n");
    // deleting the library takes the app with it, named in the log
    fs::remove_file(pk.join("libfoo.hpkg")).unwrap();
    assert!(wait_until(SOON, || !m.join("bin/app").exists()));
    assert!(!log_lines(&m.log(), &["also deactivated", "app 1.0.0 requires libfoo"]).is_empty());
    // corrupt and unsigned drops are refused with the reason; the view is untouched
    fs::write(pk.join("junk.hpkg"), b"not a package at all").unwrap();
    assert!(wait_until(SOON, || !log_lines(
        &m.log(),
        &["junk.hpkg", "refused"]
    )
    .is_empty()));
    assert!(m.join("etc/base").exists());
}

#[test]
fn replacing_active_list_switches_the_view_or_is_refused_whole() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/v", "one\n")]).path(), "v");
    let m = s.mount();
    let layer = s.layer("system").path().to_owned();
    let gen1 = active_list(&layer);
    let d = scratch();
    let v2 = build(&s, d.path(), "v", "2.0.0", &[("etc/v", "two\n")]);
    fs::copy(&v2, layer.join("packages/v2.hpkg")).unwrap();
    assert!(wait_until(SOON, || read(m.join("etc/v")) == "two\n"));
    // an admin puts generation 1's list back (write + rename, as editors and cp do)
    let tmp = layer.join("state/active.list.new");
    fs::write(
        &tmp,
        fs::read(layer.join("state/generations/1/active.list")).unwrap(),
    )
    .unwrap();
    fs::rename(&tmp, layer.join("state/active.list")).unwrap();
    assert!(
        wait_until(SOON, || read(m.join("etc/v")) == "one\n"),
        "{}",
        m.log()
    );
    assert!(active_list(&layer).contains(gen1.lines().last().unwrap()));
    // a list naming a package nobody has is refused whole and put back
    let bogus = format!("v-9.0.0 ({})\n", "ab".repeat(32));
    fs::write(&tmp, bogus).unwrap();
    fs::rename(&tmp, layer.join("state/active.list")).unwrap();
    assert!(wait_until(SOON, || !log_lines(
        &m.log(),
        &["refused state/active.list"]
    )
    .is_empty()));
    assert!(wait_until(SOON, || active_list(&layer).contains("v-1.0.0")));
    assert!(layer.join("state/active.list.refused").exists());
    assert_eq!(read(m.join("etc/v")), "one\n");
}

/// Two versions of one package with the same paths and different contents: the first is
/// put in the layer, the second built aside (returned) for `pkgtool install`.
fn two_versions(s: &Stack, d: &Path, files: usize) -> (Vec<String>, Vec<String>, PathBuf) {
    let gen = |v: &str| -> (TestTree, Vec<String>) {
        let t = TestTree::new();
        let mut bodies = Vec::new();
        for i in 0..files {
            let body: String =
                std::iter::repeat_n(format!("{v} file {i} "), 200 + i * 37).collect();
            t.file(format!("share/f{i:03}"), &body);
            bodies.push(body);
        }
        (t, bodies)
    };
    let ((ta, a), (tb, b)) = (gen("v1"), gen("v2"));
    s.add_pkg("system", "data-1", Pkg::new(ta.path(), "data", "1.0.0"));
    let b_pkg = Pkg::new(tb.path(), "data", "2.0.0")
        .key(s.keys())
        .build(d.join("data-2.hpkg"));
    (a, b, b_pkg)
}

#[test]
fn rollback_under_eight_readers_has_no_errors_and_no_torn_reads() {
    const FILES: usize = 40;
    let s = Stack::new(&["system"]);
    let d = scratch();
    let (v1, v2, b_pkg) = two_versions(&s, d.path(), FILES);
    let m = s.mount();
    let layer = s.layer("system").path().to_owned();
    let keys = s.keys().trusted().to_owned();
    pkgtool_in(&layer, &keys, &["install", &b_pkg.display().to_string()]);
    assert!(wait_until(SOON, || read(m.join("share/f000")) == v2[0]));

    let stop = Arc::new(AtomicBool::new(false));
    let (reads, errors, torn) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (v1, v2) = (Arc::new(v1), Arc::new(v2));
    let readers: Vec<_> = (0..8)
        .map(|r| {
            let (stop, reads, errors, torn) =
                (stop.clone(), reads.clone(), errors.clone(), torn.clone());
            let (v1, v2) = (v1.clone(), v2.clone());
            let root = m.path().to_owned();
            std::thread::spawn(move || {
                let mut i = r;
                let mut first_error = None;
                while !stop.load(Ordering::Relaxed) {
                    let f = i % FILES;
                    i += 7;
                    match fs::read_to_string(root.join(format!("share/f{f:03}"))) {
                        Ok(t) if t == v1[f] || t == v2[f] => {}
                        Ok(_) => {
                            torn.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                first_error
            })
        })
        .collect();
    let rss = |pid: u32| -> u64 {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let mut rss_after_10 = 0;
    // 100 switches: rollback to 1, forward to 2, ...
    let mut switch_times = Vec::new();
    for k in 0..100 {
        let to = if k % 2 == 0 { "1" } else { "2" };
        let want = if k % 2 == 0 { &v1[0] } else { &v2[0] };
        let t = Instant::now();
        pkgtool_in(&layer, &keys, &["rollback", "--to", to]);
        assert!(
            wait_until(SOON, || fs::read_to_string(m.join("share/f000"))
                .ok()
                .as_ref()
                == Some(want)),
            "switch {k} to generation {to} not seen:\n{}",
            m.log()
        );
        switch_times.push(t.elapsed());
        if k == 9 {
            rss_after_10 = rss(m.pid());
        }
    }
    let rss_end = rss(m.pid());
    assert!(
        rss_end < rss_after_10 + 16 * 1024,
        "daemon RSS grew from {rss_after_10} kB after 10 switches to {rss_end} kB after 100"
    );
    stop.store(true, Ordering::Relaxed);
    let first_errors: Vec<String> = readers
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    switch_times.sort();
    eprintln!(
        "{} reads; rollback command to visible: median {:?}, max {:?}",
        reads.load(Ordering::Relaxed),
        switch_times[50],
        switch_times[99]
    );
    if switch_times[99] > Duration::from_secs(1) {
        eprintln!("slow switch; daemon log:\n{}", m.log());
    }
    assert!(
        reads.load(Ordering::Relaxed) > 1000,
        "the readers barely ran"
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "read errors across switches: {first_errors:?}"
    );
    assert_eq!(
        torn.load(Ordering::Relaxed),
        0,
        "torn reads (a mix of generations)"
    );
}

#[test]
fn a_file_held_open_across_a_switch_reads_its_old_bytes_to_the_end() {
    e2e::uring::each(|tr| {
        let s = Stack::new(&["system"]);
        // several chunks (64 KiB each) so the rest is read after the switch, not from cache
        let old: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let t = TestTree::new();
        t.file("share/blob", old.clone());
        let file = s.add_pkg(
            "system",
            "blob",
            Pkg::new(t.path(), "blob", "1.0.0").chunk_size("64K"),
        );
        let m = s.builder().transport(tr).start();
        let mut f = fs::File::open(m.join("share/blob")).unwrap();
        let mut head = vec![0u8; 100_000];
        f.read_exact(&mut head).unwrap();
        // the package file is deleted: its package leaves the view
        fs::remove_file(&file).unwrap();
        assert!(
            wait_until(SOON, || !m.join("share/blob").exists()),
            "{}",
            m.log()
        );
        // drop the kernel's page cache too, so the rest really comes from the daemon
        fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        head.extend_from_slice(&rest);
        assert_eq!(head.len(), old.len());
        assert!(head == old, "the old bytes changed");
        f.seek(SeekFrom::Start(2_500_000)).unwrap();
        let mut tail = vec![0u8; 1000];
        f.read_exact(&mut tail).unwrap();
        assert_eq!(tail, old[2_500_000..2_501_000]);
    });
}

#[test]
fn shine_through_reaches_each_layer_and_a_covered_layer_directory() {
    let s = Stack::new(&["system", "user"]);
    s.add("system", tree(&[("etc/sys", "s\n")]).path(), "sys");
    let m = s.mount();
    let d = scratch();
    // /.layers/NAME is found by name, not listed
    assert!(!crate::names(m.path()).contains(&".layers".to_string()));
    let user_pk = m.join(".layers/user/packages");
    assert!(user_pk.is_dir(), "{}", m.log());
    assert!(m.join(".layers/system/state/active.list").is_file());
    // drop through the mount
    let u = build(&s, d.path(), "userpkg", "1.0.0", &[("etc/user", "u\n")]);
    fs::copy(&u, user_pk.join("userpkg.hpkg")).unwrap();
    assert!(
        wait_until(SOON, || m.join("etc/user").exists()),
        "{}",
        m.log()
    );
    drop(m);

    // Mounted over the layer directory itself (as Haiku does): packages/ and state/ stay
    // reachable at the root, and a drop there goes to the real directory underneath.
    let layer = s.layer("system").path().to_owned();
    let m = e2e::Mount::builder()
        .trusting(s.keys())
        .layer("system", &layer)
        .mountpoint(&layer)
        .start();
    assert_eq!(read(layer.join("etc/sys")), "s\n");
    assert!(layer.join("state/active.list").is_file(), "{}", m.log());
    let p = build(&s, d.path(), "over", "1.0.0", &[("etc/over", "o\n")]);
    fs::copy(&p, layer.join("packages/over.hpkg")).unwrap();
    assert!(
        wait_until(SOON, || layer.join("etc/over").exists()),
        "{}",
        m.log()
    );
    let out = run_ok(
        Command::new(pkgtool())
            .args(["status", "--layer"])
            .arg(&layer)
            .arg("--trusted-keys")
            .arg(s.keys().trusted()),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("over-1.0.0"));
}

#[test]
fn the_daemon_killed_at_random_moments_leaves_a_consistent_layer() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", "base\n")]).path(), "base");
    let layer = s.layer("system").path().to_owned();
    let pk = layer.join("packages");
    let d = scratch();
    for round in 0..12u64 {
        let mut m = s.mount();
        let p = build(
            &s,
            d.path(),
            &format!("k{round}"),
            "1.0.0",
            &[(&format!("etc/k{round}"), "k\n")],
        );
        fs::copy(&p, pk.join(format!("k{round}.hpkg"))).unwrap();
        std::thread::sleep(Duration::from_millis(round * 7 % 40));
        m.signal(libc::SIGKILL);
        m.wait_exit(SOON);
        e2e::mount::lazy_unmount(m.path());
        drop(m);
        // whatever the moment, the layer is at a whole generation that mounts
        let list = active_list(&layer);
        assert!(list.contains("base-1.0.0"), "round {round}:\n{list}");
        let m = s.mount();
        for line in list
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split('-').next().unwrap();
            if name == "base" {
                continue;
            }
            assert!(
                m.join(format!("etc/{name}")).exists(),
                "round {round}: {line} listed but not shown"
            );
        }
        let left: Vec<_> = fs::read_dir(layer.join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
        drop(m);
    }
}

/// The package lines (not the comments) of an active.list.
fn package_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The layer is at one whole generation: active.list names exactly the packages of the
/// generation it says it is, all of them are in the pool, and pkgtool finds the set valid.
fn assert_whole_generation(layer: &Path, keys: &Path, what: &str) {
    let active = active_list(layer);
    let g: u64 = active
        .lines()
        .find_map(|l| l.strip_prefix("# generation: "))
        .unwrap_or_else(|| panic!("{what}: active.list has no generation:\n{active}"))
        .parse()
        .unwrap();
    let gen_list =
        fs::read_to_string(layer.join(format!("state/generations/{g}/active.list"))).unwrap();
    assert_eq!(
        package_lines(&active),
        package_lines(&gen_list),
        "{what}: active.list is not generation {g}"
    );
    for l in package_lines(&active) {
        let id = l.rsplit_once(" (").unwrap().1.trim_end_matches(')');
        assert!(
            layer.join(format!("state/pool/{id}.hpkg")).is_file(),
            "{what}: {l} is not in the pool"
        );
    }
    let out = Command::new(pkgtool())
        .args(["status", "--layer"])
        .arg(format!("system={}", layer.display()))
        .arg("--trusted-keys")
        .arg(keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: pkgtool status: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pkgtool_killed_at_random_points_leaves_a_whole_generation() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", "base\n")]).path(), "base");
    let layer = s.layer("system").path().to_owned();
    let keys = s.keys().trusted().to_owned();
    let d = scratch();
    // big enough that copying into packages/ and fsyncing take a while
    let filler: String = (0..300_000).map(|i| format!("{i:x}\n")).collect();
    let pkg = |name: &str, version: &str, extra: &str| {
        build(
            &s,
            d.path(),
            name,
            version,
            &[(&format!("share/{name}"), &format!("{extra}\n{filler}"))],
        )
    };
    let spawn = |p: Option<&Path>| {
        let mut cmd = Command::new(pkgtool());
        match p {
            Some(p) => cmd.arg("install").arg(p),
            None => cmd.arg("rollback"),
        };
        cmd.arg("--layer")
            .arg(format!("system={}", layer.display()))
            .arg("--trusted-keys")
            .arg(&keys)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill points are fractions of how long a whole run takes on this machine now, so
    // that they fall inside the run however fast or loaded the machine is.
    let whole = |p: Option<&Path>| {
        let t = Instant::now();
        let st = spawn(p).wait().unwrap();
        assert!(st.success(), "calibration run failed: {st}");
        t.elapsed()
    };
    let mut install_t = Vec::new();
    let mut rollback_t = Vec::new();
    for i in 0..3 {
        install_t.push(whole(Some(&pkg("calib", &format!("1.{i}.0"), "c"))));
        rollback_t.push(whole(None));
    }
    install_t.sort();
    rollback_t.sort();
    let mut killed = 0;
    for round in 0..16u32 {
        let (p, t) = if round % 4 == 3 {
            (None, rollback_t[0])
        } else {
            (
                Some(pkg("app", &format!("1.{round}.0"), &round.to_string())),
                install_t[0],
            )
        };
        // spread over the first 90% of the fastest whole run, in a shuffled order
        let at = t.mul_f64(0.9 * (f64::from(round * 7 % 16) + 0.5) / 16.0);
        let mut child = spawn(p.as_deref());
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        if layer.join("state/active.list").exists() {
            assert_whole_generation(&layer, &keys, &format!("round {round} (killed at {at:?})"));
        }
    }
    assert!(
        killed >= 8,
        "only {killed} of 16 runs were killed before they finished \
         (whole runs: install {install_t:?}, rollback {rollback_t:?})"
    );
    // the next writer clears what the killed ones left, and the daemon mounts the set
    pkgtool_in(
        &layer,
        &keys,
        &[
            "install",
            &build(&s, d.path(), "last", "1.0.0", &[("etc/last", "l\n")])
                .display()
                .to_string(),
        ],
    );
    assert_whole_generation(&layer, &keys, "after the kills");
    for dir in ["state", "packages"] {
        let left: Vec<String> = fs::read_dir(layer.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temp files left in {dir}: {left:?}");
    }
    let m = s.mount();
    for l in package_lines(&active_list(&layer)) {
        if l.starts_with("app-") {
            assert!(m.join("share/app").exists());
        }
    }
    assert_eq!(read(m.join("etc/last")), "l\n");
}

#[test]
fn a_rollback_right_after_a_big_install_is_not_undone_by_late_events() {
    // pkgtool install copies into packages/ and deletes the replaced files; their events
    // reach the daemon late. They must not count as drops or deletions after a rollback.
    const N: usize = 60;
    let s = Stack::new(&["system"]);
    let d = scratch();
    let mut v2 = Vec::new();
    for i in 0..N {
        let f = format!("share/p{i}");
        s.add_pkg(
            "system",
            &format!("p{i}"),
            Pkg::new(tree(&[(&f, "v1\n")]).path(), &format!("p{i}"), "1.0.0"),
        );
        v2.push(
            build(&s, d.path(), &format!("p{i}"), "2.0.0", &[(&f, "v2\n")])
                .display()
                .to_string(),
        );
    }
    let m = s.mount();
    let layer = s.layer("system").path().to_owned();
    let keys = s.keys().trusted().to_owned();
    for round in 0..3 {
        let mut args = vec!["install"];
        args.extend(v2.iter().map(String::as_str));
        pkgtool_in(&layer, &keys, &args);
        pkgtool_in(&layer, &keys, &["rollback", "--to", "1"]);
        assert!(
            wait_until(SOON, || read(m.join(format!("share/p{}", N - 1))) == "v1\n"),
            "{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(1500));
        let list = active_list(&layer);
        assert!(
            list.contains("# generation: 1\n"),
            "round {round}: the rollback was undone:\n{list}"
        );
        for i in 0..N {
            assert_eq!(
                read(m.join(format!("share/p{i}"))),
                "v1\n",
                "round {round}: p{i}"
            );
        }
        // put the v2 files back for the next round (install removed the v1 files)
        pkgtool_in(&layer, &keys, &["rollback", "--to", "2"]);
    }
}

#[test]
fn a_directory_listing_begun_before_a_switch_lists_every_entry_once() {
    e2e::uring::each(|tr| {
        let s = Stack::new(&["system"]);
        let t = TestTree::new();
        for i in 0..3000 {
            t.file(format!("d/f{i:04}"), "x");
        }
        s.add_pkg("system", "big", Pkg::new(t.path(), "big", "1.0.0"));
        let m = s.builder().transport(tr).start();
        let d = scratch();
        // 100 names that sort before every name listed so far, and one after
        let mut files: Vec<(String, String)> = (0..100)
            .map(|i| (format!("d/a{i:03}"), "y".to_string()))
            .collect();
        files.push(("d/z".into(), "z".into()));
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let extra = build(&s, d.path(), "extra", "1.0.0", &refs);

        let mut it = fs::read_dir(m.join("d")).unwrap();
        let mut names: Vec<String> = Vec::new();
        for _ in 0..200 {
            names.push(
                it.next()
                    .unwrap()
                    .unwrap()
                    .file_name()
                    .into_string()
                    .unwrap(),
            );
        }
        // the switch, in the middle of the listing
        fs::copy(&extra, s.layer("system").path().join("packages/extra.hpkg")).unwrap();
        assert!(
            wait_until(SOON, || m.join("d/a000").exists()),
            "{}",
            m.log()
        );
        names.extend(it.map(|e| e.unwrap().file_name().into_string().unwrap()));
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "entries listed twice");
        let old: Vec<&String> = names.iter().filter(|n| n.starts_with('f')).collect();
        assert_eq!(
            old.len(),
            3000,
            "entries present before and after were skipped"
        );
        // a listing begun after the switch sees the new set
        assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 3101);
    });
}

#[test]
fn a_package_dropped_while_unmounted_is_activated_at_the_next_mount_and_a_rollback_stays() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", "base\n")]).path(), "base");
    let layer = s.layer("system").path().to_owned();
    let keys = s.keys().trusted().to_owned();
    let pk = layer.join("packages");
    let d = scratch();
    {
        let m = s.mount();
        assert_eq!(read(m.join("etc/base")), "base\n");
    }
    // dropped while no daemon runs: activated at the next mount, as a new generation
    let v1 = build(&s, d.path(), "app", "1.0.0", &[("etc/app", "v1\n")]);
    fs::copy(&v1, pk.join("app-1.hpkg")).unwrap();
    {
        let m = s.mount();
        assert_eq!(read(m.join("etc/app")), "v1\n", "{}", m.log());
        assert!(
            active_list(&layer).contains("# generation: 2\n"),
            "{}",
            active_list(&layer)
        );
        let log = m.log();
        assert!(log.contains("dropped app-1.hpkg"), "{log}");
        // version 2 arrives live, then the admin rolls back to version 1
        let v2 = build(&s, d.path(), "app", "2.0.0", &[("etc/app", "v2\n")]);
        fs::copy(&v2, pk.join("app-2.hpkg")).unwrap();
        assert!(
            wait_until(SOON, || read(m.join("etc/app")) == "v2\n"),
            "{}",
            m.log()
        );
        pkgtool_in(&layer, &keys, &["rollback"]);
        assert!(
            wait_until(SOON, || read(m.join("etc/app")) == "v1\n"),
            "{}",
            m.log()
        );
    }
    // the inactive version 2 left in packages/ is older than the rollback: not a drop, even
    // after gc removed its pool link (which changes the file's ctime)
    assert!(pk.join("app-2.hpkg").exists(), "the rollback kept the file");
    let other = build(&s, d.path(), "other", "1.0.0", &[("etc/other", "o\n")]);
    pkgtool_in(&layer, &keys, &["install", &other.display().to_string()]);
    let gc = pkgtool_in(&layer, &keys, &["gc", "--keep", "1"]);
    assert!(!layer.join("state/generations/3").exists(), "gc: {gc}");
    let before = active_list(&layer);
    let m = s.mount();
    assert_eq!(read(m.join("etc/app")), "v1\n", "{}", m.log());
    assert_eq!(active_list(&layer), before, "{}", m.log());
}

#[test]
fn pkgtool_given_only_the_user_layer_checks_against_the_layers_below_it() {
    let s = Stack::new(&["system", "user"]);
    s.add(
        "system",
        tree(&[("lib/libcore", "core\n")]).path(),
        "core.io",
    );
    let user = s.layer("user").path().to_owned();
    let system = std::fs::canonicalize(s.layer("system").path()).unwrap();
    let keys = s.keys().trusted().to_owned();
    let d = scratch();
    let app = build_pkg(
        &s,
        d.path(),
        Pkg::new(tree(&[("bin/app", "app\n")]).path(), "app", "1.0.0").requires("core.io", "^1"),
    );
    let install = |expect_ok: bool| {
        let out = Command::new(pkgtool())
            .arg("install")
            .arg(&app)
            .arg("--layer")
            .arg(&user)
            .arg("--trusted-keys")
            .arg(&keys)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.success(), expect_ok, "{err}");
        err
    };
    // Before any mount the user layer does not know what lies below it: core.io is unmet.
    let err = install(false);
    assert!(err.contains("core.io"), "{err}");
    let m = s.mount();
    let rec = fs::read_to_string(user.join("state/stack")).unwrap();
    assert!(rec.contains("# layer: user\n"), "{rec}");
    assert!(
        rec.contains(&format!("\nsystem={}\n", system.display())),
        "{rec}"
    );
    let sys_rec = fs::read_to_string(s.layer("system").path().join("state/stack")).unwrap();
    assert!(
        !sys_rec.contains('='),
        "nothing lies below system: {sys_rec}"
    );
    // Mounted once, the same command finds core.io in system, and the daemon activates it.
    let err = install(true);
    assert!(err.contains("layers below user"), "{err}");
    assert!(
        wait_until(SOON, || m.join("bin/app").exists()),
        "{}",
        m.log()
    );
    assert!(active_list(&user).contains("app-1.0.0"));
}

#[test]
fn a_package_spoiled_in_place_while_unmounted_changes_nothing_and_a_spoiled_pool_serves_the_rest() {
    let s = Stack::new(&["system"]);
    let lib = s.add(
        "system",
        tree(&[("lib/libcore", "core\n")]).path(),
        "core.io",
    );
    s.add_pkg(
        "system",
        "app",
        Pkg::new(tree(&[("bin/app", "app\n")]).path(), "app", "1.0.0").requires("core.io", "^1"),
    );
    s.add("system", tree(&[("etc/other", "other\n")]).path(), "other");
    {
        let m = s.mount();
        assert_eq!(read(m.join("bin/app")), "app\n");
    }
    // r11: the pool holds its own copy, so truncating the file in packages/ spoils that
    // file only: every generation still opens whole, and the view is unchanged.
    let before = active_list(s.layer("system").path());
    fs::OpenOptions::new()
        .write(true)
        .open(&lib)
        .unwrap()
        .set_len(100)
        .unwrap();
    {
        let m = s.mount();
        assert_eq!(read(m.join("lib/libcore")), "core\n", "{}", m.log());
        assert_eq!(read(m.join("bin/app")), "app\n");
        assert!(log_lines(&m.log(), &["no generation opens whole"]).is_empty());
    }
    assert_eq!(active_list(s.layer("system").path()), before);
    // The pool's copy itself damaged (by hand, as root): no generation naming core.io
    // opens whole any more, and what does open is served.
    let pool = s.layer("system").path().join("state/pool");
    for e in fs::read_dir(&pool).unwrap() {
        let p = e.unwrap().path();
        let name = format::archive::Archive::open(&p).map(|a| a.manifest().name.clone());
        if name.is_ok_and(|n| n == "core.io") {
            let mut perm = fs::metadata(&p).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
            fs::set_permissions(&p, perm).unwrap();
            fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(100)
                .unwrap();
        }
    }
    let m = s.mount();
    assert_eq!(read(m.join("etc/other")), "other\n", "{}", m.log());
    assert!(!m.join("lib/libcore").exists());
    assert!(!m.join("bin/app").exists(), "app lost its requirement");
    let log = m.log();
    assert_eq!(
        log_lines(
            &log,
            &["no generation opens whole", "serving 1 of the 3 packages"]
        )
        .len(),
        1,
        "{log}"
    );
    assert!(
        !log_lines(&log, &["not served", "core.io"]).is_empty(),
        "{log}"
    );
    assert!(!log_lines(&log, &["not served", "app"]).is_empty(), "{log}");
}

/// A name looked up while absent is remembered absent by the kernel (a negative entry,
/// which spares search paths a round trip per miss); a package that brings the name
/// makes it appear at once, at any depth, and a rollback makes it vanish and come back.
#[test]
fn names_looked_up_while_absent_appear_when_a_package_brings_them() {
    e2e::uring::each(|tr| {
        let s = Stack::new(&["system"]);
        s.add("system", tree(&[("etc/base", "base\n")]).path(), "base");
        let m = s.builder().transport(tr).start();
        let layer = s.layer("system").path().to_owned();
        let d = scratch();
        // Looked up (and missed) before the package exists: twice, so the second miss is
        // the kernel's own.
        for _ in 0..2 {
            assert!(!m.join("etc/new").exists());
            assert!(!m.join("newdir/deep/file").exists());
            assert!(!m.join("bin/tool").exists());
        }
        let p = build(
            &s,
            d.path(),
            "brings",
            "1.0.0",
            &[
                ("etc/new", "new\n"),
                ("newdir/deep/file", "deep\n"),
                ("bin/tool", "tool\n"),
            ],
        );
        fs::copy(&p, layer.join("packages/brings.hpkg")).unwrap();
        assert!(
            wait_until(SOON, || m.join("etc/new").exists()
                && m.join("newdir/deep/file").exists()
                && m.join("bin/tool").exists()),
            "a name missed before the drop did not appear: {}",
            m.log()
        );
        assert_eq!(read(m.join("newdir/deep/file")), "deep\n");
        // Rolled back: gone (a negative entry again); forward again: back.
        let keys = s.keys().trusted().to_owned();
        pkgtool_in(&layer, &keys, &["rollback"]);
        assert!(
            wait_until(SOON, || !m.join("etc/new").exists()),
            "{}",
            m.log()
        );
        assert!(!m.join("bin/tool").exists());
        pkgtool_in(&layer, &keys, &["rollback", "--to", "2"]);
        assert!(
            wait_until(SOON, || m.join("etc/new").exists()),
            "{}",
            m.log()
        );
        assert_eq!(read(m.join("bin/tool")), "tool\n");
    });
}
