//! r11: no operation on a layer may lose a generation. Package files overwritten in place,
//! filled with garbage, cut short by a full disk; a damaged active package; `state/` and
//! `packages/` briefly gone: every kept generation stays whole, the rescue commands work,
//! and the daemon recovers without a remount.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e::{log_lines, pkgtool, run_ok, wait_until, Pkg, Stack, TestTree};

use crate::read;

const SOON: Duration = Duration::from_secs(5);

fn tree(files: &[(&str, &[u8])]) -> TestTree {
    let t = TestTree::new();
    for (p, c) in files {
        t.file(p, c);
    }
    t
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("e2e-trust-")
        .tempdir()
        .unwrap()
}

/// Package `pk` at `version`, `share/pk` holding `body`, built into `dir`.
fn pk(s: &Stack, dir: &Path, version: &str, body: &[u8]) -> PathBuf {
    let n = dir.read_dir().unwrap().count();
    Pkg::new(tree(&[("share/pk", body)]).path(), "pk", version)
        .key(s.keys())
        .build(dir.join(format!("pk{n}.hpkg")))
}

/// `bytes` of pseudo-random data (no compressor shrinks it).
fn noise(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Overwrites `dst` in place (same inode, truncated first), as `cp` does.
fn cp_over(src: &Path, dst: &Path) {
    let bytes = fs::read(src).unwrap();
    fs::write(dst, bytes).unwrap();
}

fn tool(layer: &Path, s: &Stack, args: &[&str]) -> Output {
    Command::new(pkgtool())
        .args(args)
        .arg("--layer")
        .arg(format!("system={}", layer.display()))
        .arg("--trusted-keys")
        .arg(s.keys().trusted())
        .output()
        .unwrap()
}

fn tool_ok(layer: &Path, s: &Stack, args: &[&str]) -> String {
    let out = tool(layer, s, args);
    assert!(
        out.status.success(),
        "pkgtool {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn generation(layer: &Path) -> Option<u64> {
    fs::read_to_string(layer.join("state/active.list"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("# generation: ")?.parse().ok())
}

#[test]
fn r11_overwriting_a_package_in_place_is_an_update_and_every_generation_survives() {
    let s = Stack::new(&["system"]);
    let v1 = noise(300_000, 1);
    let file = s.add_pkg(
        "system",
        "pk",
        Pkg::new(tree(&[("share/pk", &v1)]).path(), "pk", "1.0.0"),
    );
    let layer = s.layer("system").path().to_owned();
    let m = s.mount();
    let d = scratch();
    // A reader that opened v1 before the update reads v1 to the end, no EIO.
    let mut held = fs::File::open(m.join("share/pk")).unwrap();
    let mut first = vec![0; 1000];
    held.read_exact(&mut first).unwrap();
    let v2 = noise(300_000, 2);
    cp_over(&pk(&s, d.path(), "2.0.0", &v2), &file);
    assert!(
        wait_until(SOON, || fs::read(m.join("share/pk")).ok()
            == Some(v2.clone())),
        "{}",
        m.log()
    );
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert!(first == v1, "the open file changed under its reader");
    assert_eq!(generation(&layer), Some(2));
    // Garbage over the active name: refused, the active package stays, rollback works.
    fs::write(&file, b"garbage").unwrap();
    assert!(
        wait_until(SOON, || !log_lines(&m.log(), &["refused pk.hpkg"])
            .is_empty()),
        "{}",
        m.log()
    );
    assert!(fs::read(m.join("share/pk")).unwrap() == v2);
    tool_ok(&layer, &s, &["rollback"]);
    assert!(
        wait_until(SOON, || fs::read(m.join("share/pk")).ok()
            == Some(v1.clone())),
        "{}",
        m.log()
    );
    tool_ok(&layer, &s, &["rollback", "--to", "2"]);
    assert!(wait_until(SOON, || fs::read(m.join("share/pk")).ok()
        == Some(v2.clone())));
    // An older version copied over the active name: a downgrade, never an empty view.
    cp_over(&pk(&s, d.path(), "1.5.0", b"one and a half\n"), &file);
    assert!(
        wait_until(SOON, || fs::read(m.join("share/pk")).ok().as_deref()
            == Some(&b"one and a half\n"[..])),
        "{}",
        m.log()
    );
    let status = tool_ok(&layer, &s, &["status"]);
    assert!(status.contains("pk-1.5.0"), "{status}");
    // Every generation there has been still opens whole.
    for g in 1..=generation(&layer).unwrap() {
        let list = fs::read_to_string(layer.join(format!("state/generations/{g}/active.list")));
        if list.is_err() {
            continue;
        }
        tool_ok(&layer, &s, &["rollback", "--to", &g.to_string()]);
    }
}

/// A tmpfs of `size` mounted for the test; unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let d = scratch();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "e2e-full"])
                .arg(d.path()),
        );
        Tmpfs(d)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn r11_a_full_disk_during_an_update_damages_no_generation() {
    let s = Stack::new(&["system"]);
    let fs_ = Tmpfs::new("2m");
    let layer = fs_.0.path().join("layer");
    fs::create_dir_all(layer.join("packages")).unwrap();
    let d = scratch();
    let v1 = noise(700_000, 3);
    fs::copy(
        pk(&s, d.path(), "1.0.0", &v1),
        layer.join("packages/pk.hpkg"),
    )
    .unwrap();
    let m = e2e::Mount::builder()
        .trusting(s.keys())
        .layer("system", &layer)
        .start();
    assert!(fs::read(m.join("share/pk")).unwrap() == v1, "{}", m.log());
    // v2 does not fit next to v1's file and its pool copy: the copy stops half-way.
    let v2 = pk(&s, d.path(), "2.0.0", &noise(1_500_000, 4));
    let r = fs::write(layer.join("packages/pk.hpkg"), fs::read(&v2).unwrap());
    assert!(r.is_err(), "the disk was not full");
    std::thread::sleep(Duration::from_millis(500));
    assert!(fs::read(m.join("share/pk")).unwrap() == v1, "{}", m.log());
    // The pool's copy is whole: the generation opens, status and rollback work.
    fs::remove_file(layer.join("packages/pk.hpkg")).unwrap();
    assert!(
        wait_until(SOON, || !m.join("share/pk").exists()),
        "{}",
        m.log()
    );
    tool_ok(&layer, &s, &["rollback"]);
    assert!(
        wait_until(SOON, || fs::read(m.join("share/pk")).ok()
            == Some(v1.clone())),
        "{}",
        m.log()
    );
}

#[test]
fn r11_drops_lost_while_state_or_packages_were_gone_are_picked_up_without_a_remount() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", b"base\n")]).path(), "base");
    let layer = s.layer("system").path().to_owned();
    let m = s.mount();
    let d = scratch();
    let build = |name: &str| {
        let n = d.path().read_dir().unwrap().count();
        Pkg::new(
            tree(&[(&format!("etc/{name}") as &str, b"x\n")]).path(),
            name,
            "1.0.0",
        )
        .key(s.keys())
        .build(d.path().join(format!("{name}{n}.hpkg")))
    };
    // state/ is briefly not a directory: the drop cannot be recorded...
    let state = layer.join("state");
    fs::rename(&state, layer.join("state.away")).unwrap();
    fs::write(&state, b"not a directory\n").unwrap();
    fs::copy(build("a"), layer.join("packages/a.hpkg")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!m.join("etc/a").exists(), "activated without recording it");
    // ...and once it is back, it is, without a new event about the file.
    fs::remove_file(&state).unwrap();
    fs::rename(layer.join("state.away"), &state).unwrap();
    assert!(wait_until(SOON, || m.join("etc/a").exists()), "{}", m.log());
    // packages/ removed: nothing is decided while it is gone; made again, its files are
    // compared with what the set accounted for (a is gone), and new drops are seen.
    fs::remove_dir_all(layer.join("packages")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(m.join("etc/a").exists(), "{}", m.log());
    fs::create_dir(layer.join("packages")).unwrap();
    fs::copy(build("b"), layer.join("packages/b.hpkg")).unwrap();
    assert!(
        wait_until(SOON, || m.join("etc/b").exists()
            && !m.join("etc/a").exists()),
        "{}",
        m.log()
    );
    // packages/ moved away and another one moved in.
    let other = layer.join("packages.new");
    fs::create_dir(&other).unwrap();
    fs::copy(build("c"), other.join("c.hpkg")).unwrap();
    fs::rename(layer.join("packages"), layer.join("packages.old")).unwrap();
    fs::rename(&other, layer.join("packages")).unwrap();
    assert!(
        wait_until(SOON, || m.join("etc/c").exists()
            && !m.join("etc/b").exists()),
        "{}",
        m.log()
    );
    fs::copy(build("e"), layer.join("packages/e.hpkg")).unwrap();
    assert!(wait_until(SOON, || m.join("etc/e").exists()), "{}", m.log());
    // The old directory is not watched any more: a drop there is not a drop.
    fs::copy(build("f"), layer.join("packages.old/f.hpkg")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(!m.join("etc/f").exists());
}

/// Flips one byte of the manifest of package `label`: its pool copy and its file in
/// packages/ (which would stand in for a damaged pool copy).
fn damage(layer: &Path, label: &str) {
    let list = fs::read_to_string(layer.join("state/active.list")).unwrap();
    let line = list.lines().find(|l| l.starts_with(label)).unwrap();
    let id = &line[line.find('(').unwrap() + 1..line.len() - 1];
    let pool = layer.join(format!("state/pool/{id}.hpkg"));
    let file = layer.join(format!("packages/{label}.hpkg"));
    let same = fs::metadata(&file).is_ok_and(|f| fs::metadata(&pool).unwrap().ino() == f.ino());
    for p in if same { vec![pool] } else { vec![pool, file] } {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let mut b = fs::read(&p).unwrap();
        b[140] ^= 0x20;
        fs::write(&p, b).unwrap();
    }
}

#[test]
fn r11_a_damaged_active_package_does_not_block_the_rescue_commands() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", b"base\n")]).path(), "base");
    let layer = s.layer("system").path().to_owned();
    let d = scratch();
    let v1 = pk(&s, d.path(), "1.0.0", b"1\n");
    let v2 = pk(&s, d.path(), "2.0.0", b"2\n");
    tool_ok(&layer, &s, &["install", v1.to_str().unwrap()]);
    tool_ok(&layer, &s, &["install", v2.to_str().unwrap()]);
    assert_eq!(generation(&layer), Some(3));
    damage(&layer, "pk-2.0.0");
    // status names the damaged package and fails.
    let st = tool(&layer, &s, &["status"]);
    let out = String::from_utf8_lossy(&st.stdout);
    assert_eq!(st.status.code(), Some(1), "{out}");
    assert!(out.contains("pk-2.0.0") && out.contains("DAMAGED"), "{out}");
    assert!(out.contains("set: BROKEN: pk-2.0.0"), "{out}");
    // An unrelated install is refused, saying why and what to do.
    let other = Pkg::new(tree(&[("etc/other", b"o\n")]).path(), "other", "1.0.0")
        .key(s.keys())
        .build(d.path().join("other.hpkg"));
    let r = tool(&layer, &s, &["install", other.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("damaged") && err.contains("pk-2.0.0"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // gc keeps the newest generation that opens whole (2), and the active one (3).
    tool_ok(&layer, &s, &["gc", "--keep", "1"]);
    assert!(layer.join("state/generations/2/active.list").exists());
    assert!(layer.join("state/generations/3/active.list").exists());
    assert!(!layer.join("state/generations/1/active.list").exists());
    // rollback finds the whole one; rollback --to the damaged generation is refused.
    let out = tool_ok(&layer, &s, &["rollback"]);
    assert!(out.contains("-> 2"), "{out}");
    assert!(tool_ok(&layer, &s, &["status"]).contains("set: ok"));
    let r = tool(&layer, &s, &["rollback", "--to", "3"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("generation 3 does not open whole"), "{err}");
    // Back at the damaged generation (an admin's copy): remove of the bad package works.
    fs::copy(
        layer.join("state/generations/3/active.list"),
        layer.join("state/active.list"),
    )
    .unwrap();
    let out = tool_ok(&layer, &s, &["remove", "pk"]);
    assert!(out.contains("-pk-2.0.0"), "{out}");
    let st = tool_ok(&layer, &s, &["status"]);
    assert!(st.contains("set: ok") && st.contains("active (1):"), "{st}");
    // And installing a good copy over a damaged one works too.
    fs::copy(
        layer.join("state/generations/3/active.list"),
        layer.join("state/active.list"),
    )
    .unwrap();
    let v3 = pk(&s, d.path(), "3.0.0", b"3\n");
    tool_ok(&layer, &s, &["install", v3.to_str().unwrap()]);
    assert!(tool_ok(&layer, &s, &["status"]).contains("set: ok"));
    // The daemon serves it.
    let m = s.mount();
    assert_eq!(read(m.join("share/pk")), "3\n", "{}", m.log());
}

/// A directory owned by nobody (65534:65534), mode 0755, in a new temp dir: a user's layer.
fn users_dir(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    fs::create_dir_all(&d).unwrap();
    chown_nobody(&d);
    d
}

fn chown_nobody(p: &Path) {
    std::os::unix::fs::lchown(p, Some(65534), Some(65534)).unwrap();
}

/// Runs pkgtool as nobody.
fn tool_as_nobody(layer: &Path, keys: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(pkgtool())
        .args(args)
        .arg("--layer")
        .arg(layer)
        .arg("--trusted-keys")
        .arg(keys)
        .output()
        .unwrap()
}

/// r11: the root daemon reaches nothing through a user's layer that its owner could not,
/// and writes there only what the owner owns; the owner manages the layer with pkgtool.
#[test]
fn r11_a_users_layer_gives_its_owner_nothing_more_and_stays_theirs() {
    let s = Stack::new(&["system"]);
    s.add("system", tree(&[("etc/base", b"base\n")]).path(), "base");
    // The system layer is readable by all, as /pkg/system would be.
    fs::set_permissions(s.layer("system").path(), fs::Permissions::from_mode(0o755)).unwrap();
    let top = tempfile::Builder::new()
        .prefix("e2e-trust-user-")
        .tempdir()
        .unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // Keys the user can read.
    let keys = top.path().join("keys");
    fs::create_dir(&keys).unwrap();
    for e in fs::read_dir(s.keys().trusted()).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), keys.join(e.file_name())).unwrap();
    }
    // Root's secrets: a root-only package and a root-owned directory with a temp-looking
    // file and a list.
    let vault = top.path().join("vault");
    fs::create_dir(&vault).unwrap();
    fs::set_permissions(&vault, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = Pkg::new(
        tree(&[("etc/secret", b"root only\n")]).path(),
        "secret",
        "1.0.0",
    )
    .key(s.keys())
    .build(vault.join("secret.hpkg"));
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let roots = top.path().join("roots");
    fs::create_dir(&roots).unwrap();
    fs::write(roots.join(".tmp-keep"), b"mine\n").unwrap();
    fs::write(roots.join("active.list"), b"# root's\n").unwrap();
    // A fresh user layer: a package of theirs, a link to root's package, and in a second
    // user layer, state/ a link to root's directory.
    let user = users_dir(top.path(), "user");
    let pk = users_dir(&user, "packages");
    let app = Pkg::new(tree(&[("bin/app", b"app\n")]).path(), "app", "1.0.0")
        .key(s.keys())
        .build(pk.join("app.hpkg"));
    chown_nobody(&app);
    std::os::unix::fs::symlink(&secret, pk.join("secret.hpkg")).unwrap();
    let other = users_dir(top.path(), "other");
    users_dir(&other, "packages");
    std::os::unix::fs::symlink(&roots, other.join("state")).unwrap();
    chown_nobody(&other.join("state"));
    let m = s
        .builder()
        .layer("user", &user)
        .layer("other", &other)
        .trusted_keys(&keys)
        .start();
    assert_eq!(read(m.join("bin/app")), "app\n", "{}", m.log());
    assert!(
        !m.join("etc/secret").exists(),
        "root's package served through a user's link:\n{}",
        m.log()
    );
    // Root's directory is untouched.
    assert_eq!(fs::read(roots.join(".tmp-keep")).unwrap(), b"mine\n");
    assert_eq!(fs::read(roots.join("active.list")).unwrap(), b"# root's\n");
    assert_eq!(
        fs::read_dir(&roots).unwrap().count(),
        2,
        "the daemon wrote in root's directory"
    );
    // Everything the daemon made in the user's layer is the user's.
    let state = user.join("state");
    for e in walk(&state) {
        let md = fs::symlink_metadata(&e).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (65534, 65534),
            "{} is not the user's",
            e.display()
        );
    }
    // The owner manages the layer: status and install as the user, picked up live.
    let st = tool_as_nobody(&user, &keys, &["status"]);
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let tool_pkg = Pkg::new(tree(&[("bin/tool", b"tool\n")]).path(), "tool", "1.0.0")
        .key(s.keys())
        .build(top.path().join("tool.hpkg"));
    fs::set_permissions(&tool_pkg, fs::Permissions::from_mode(0o644)).unwrap();
    let r = tool_as_nobody(&user, &keys, &["install", tool_pkg.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        wait_until(SOON, || m.join("bin/tool").exists()),
        "{}",
        m.log()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A user's layer whose state/ an older packagefs made as root (0755, root's files in it)
/// is given back to the user at mount, and works.
#[test]
fn r11_a_users_state_made_by_root_is_given_back_at_mount() {
    let s = Stack::new(&["user"]);
    let top = scratch();
    let user = users_dir(top.path(), "user");
    let pk = users_dir(&user, "packages");
    let app = Pkg::new(tree(&[("bin/app", b"app\n")]).path(), "app", "1.0.0")
        .key(s.keys())
        .build(pk.join("app.hpkg"));
    chown_nobody(&app);
    fs::create_dir_all(user.join("state/generations")).unwrap();
    fs::write(user.join("state/lock"), b"").unwrap();
    fs::set_permissions(user.join("state/lock"), fs::Permissions::from_mode(0o600)).unwrap();
    let m = e2e::Mount::builder()
        .trusting(s.keys())
        .layer("user", &user)
        .start();
    assert_eq!(read(m.join("bin/app")), "app\n", "{}", m.log());
    assert_eq!(
        log_lines(&m.log(), &["entries are the owner's now"]).len(),
        1,
        "{}",
        m.log()
    );
    for e in walk(&user.join("state")) {
        let md = fs::symlink_metadata(&e).unwrap();
        assert_eq!(md.uid(), 65534, "{} is not the user's", e.display());
    }
}
