//! What a running view gives systemd (issue 13): the daemon publishes the list it serves
//! in `state/served` after each switch (what `pkgtool update` waits for before it starts
//! services), and pkgtool run as `packagefs-generator` hands systemd, for a view mounted
//! with its layers as the source, the units of the active packages' services (links into
//! the view, with the package's own `*.wants/` links) and their capability drop-ins:
//! exactly the units of the active set, before and after a change.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{pkgtool, Keys, Layer, Mount};

/// A package `name-version` with a service `name` (its unit and its wants link), asking
/// for `caps`.
fn service_pkg(dir: &Path, keys: &Keys, name: &str, version: &str, caps: &[&str]) -> PathBuf {
    let t = dir.join(format!("tree-{name}-{version}"));
    let units = t.join("usr/lib/systemd/system");
    fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
    fs::write(
        units.join(format!("{name}.service")),
        format!("[Service]\nExecStart=/usr/bin/{name}\nDynamicUser=yes\n"),
    )
    .unwrap();
    symlink(
        format!("../{name}.service"),
        units.join(format!("multi-user.target.wants/{name}.service")),
    )
    .unwrap();
    let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
    let man = dir.join(format!("{name}-{version}.json"));
    fs::write(
        &man,
        format!(
            r#"{{"name":"{name}","version":"{version}","capabilities":[{}],"services":[{{"name":"{name}","unit":"usr/lib/systemd/system/{name}.service"}}]}}"#,
            caps.join(",")
        ),
    )
    .unwrap();
    let out = dir.join(format!("{name}-{version}.hpkg"));
    let st = Command::new(pkgtool())
        .arg("build")
        .arg(&t)
        .arg("-o")
        .arg(&out)
        .arg("--key")
        .arg(keys.secret())
        .arg("--manifest")
        .arg(&man)
        .arg("-q")
        .status()
        .unwrap();
    assert!(st.success());
    out
}

fn set(layer: &Path, keys: &Keys, args: &[&std::ffi::OsStr]) {
    let out = Command::new(pkgtool())
        .args(args)
        .arg("--layer")
        .arg(format!("system={}", layer.display()))
        .arg("--trusted-keys")
        .arg(keys.trusted())
        .arg("--no-restart")
        .output()
        .unwrap();
    assert!(out.status.success(), "pkgtool {args:?}: {out:?}");
}

/// Waits until the daemon's `state/served` names `label` (or not, with `present` false).
fn served_names(layer: &Path, label: &str, present: bool) -> String {
    let t0 = Instant::now();
    loop {
        let s = fs::read_to_string(layer.join("state/served")).unwrap_or_default();
        // An entry line, `name-version (id)`: the reason may name it too.
        if s.contains(&format!("\n{label} (")) == present {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "state/served never {} {label}: {s:?}",
            if present { "named" } else { "dropped" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs pkgtool as `packagefs-generator OUT OUT OUT`, into a fresh `out`.
fn generate(tmp: &Path, out: &Path) {
    let link = tmp.join("packagefs-generator");
    if !link.exists() {
        symlink(pkgtool(), &link).unwrap();
    }
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out).unwrap();
    let o = Command::new(&link).args([out, out, out]).output().unwrap();
    // Other tests' views may be mounted too (the generator reads every view of the
    // machine): only this test's packages must not be complained of.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && !err.contains(": web-") && !err.contains(": db-"),
        "generator: {o:?}"
    );
}

#[test]
fn a_view_publishes_what_it_serves_and_the_generator_hands_systemd_its_services() {
    let keys = Keys::new("vendor");
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new();
    let web = service_pkg(tmp.path(), &keys, "web", "1.0.0", &["net.bind"]);
    set(layer.path(), &keys, &["install".as_ref(), web.as_os_str()]);
    let m = Mount::builder()
        .trusted_keys(keys.trusted())
        .arg("-f")
        .arg(format!("system={}", layer.path().display()))
        .start();
    // The daemon says what it serves.
    let served = served_names(layer.path(), "web-1.0.0", true);
    assert!(served.contains("generation: 1"), "{served}");
    // The generator links the unit and its wants link into the view, with the drop-in.
    let out = tmp.path().join("gen");
    generate(tmp.path(), &out);
    let unit = m.join("usr/lib/systemd/system/web.service");
    assert_eq!(fs::read_link(out.join("web.service")).unwrap(), unit);
    assert_eq!(
        fs::read_link(out.join("multi-user.target.wants/web.service")).unwrap(),
        unit
    );
    assert!(fs::read_to_string(out.join("web.service"))
        .unwrap()
        .contains("ExecStart=/usr/bin/web"));
    let dropin =
        fs::read_to_string(out.join("web.service.d/zz-packagefs-capabilities.conf")).unwrap();
    assert!(dropin.contains("CapabilityBoundingSet=\nAmbientCapabilities=\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n"), "{dropin}");
    assert!(dropin.contains("NoNewPrivileges=yes") && dropin.contains("ProtectSystem=strict"));
    // A second service comes with its install, and goes with its removal.
    let db = service_pkg(tmp.path(), &keys, "db", "1.0.0", &[]);
    set(layer.path(), &keys, &["install".as_ref(), db.as_os_str()]);
    served_names(layer.path(), "db-1.0.0", true);
    generate(tmp.path(), &out);
    assert!(out.join("db.service").exists() && out.join("web.service").exists());
    set(layer.path(), &keys, &["remove".as_ref(), "web".as_ref()]);
    let served = served_names(layer.path(), "web-1.0.0", false);
    assert!(served.contains("generation: 3"), "{served}");
    generate(tmp.path(), &out);
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("web")), "{names:?}");
    assert!(out.join("db.service.d").exists());
    drop(m);
}

#[test]
fn the_generator_neither_follows_links_nor_blocks_on_a_fifo_in_a_layer() {
    let keys = Keys::new("vendor");
    let tmp = tempfile::tempdir().unwrap();
    let layer = Layer::new();
    let trap = service_pkg(tmp.path(), &keys, "trap", "1.0.0", &[]);
    set(layer.path(), &keys, &["install".as_ref(), trap.as_os_str()]);
    let _m = Mount::builder()
        .trusted_keys(keys.trusted())
        .arg("-f")
        .arg(format!("system={}", layer.path().display()))
        .start();
    served_names(layer.path(), "trap-1.0.0", true);
    // The layer's owner swaps the pool copy for a FIFO (a reader would wait for ever), then
    // for a link to a package elsewhere.
    let pool = fs::read_dir(layer.path().join("state/pool"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "hpkg"))
        .unwrap();
    fs::remove_file(&pool).unwrap();
    let c = std::ffi::CString::new(pool.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let link = tmp.path().join("packagefs-generator");
    symlink(pkgtool(), &link).unwrap();
    let out = tmp.path().join("gen");
    fs::create_dir(&out).unwrap();
    for round in ["fifo", "link"] {
        if round == "link" {
            fs::remove_file(&pool).unwrap();
            symlink(&trap, &pool).unwrap();
        }
        let t0 = Instant::now();
        let o = Command::new("timeout")
            .arg("20")
            .arg(&link)
            .args([&out, &out, &out])
            .output()
            .unwrap();
        assert!(o.status.success(), "{round}: {o:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{round}: the generator waited"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("packagefs-generator: trap-1.0.0:"),
            "{round}: {err}"
        );
        assert!(
            !out.join("trap.service.d").exists(),
            "{round}: it used the {round}"
        );
    }
}
