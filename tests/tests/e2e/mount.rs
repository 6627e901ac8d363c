//! Real trees (`/usr/share/doc`, `/usr/include`) packaged and mounted read back exactly:
//! names, contents, symlink targets (`diff -r`), and every entry's type, mode, size, mtime
//! and link count.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::fixtures::{self, SharedPkg};
use e2e::tree::walk;
use e2e::uring::{self, Transport};
use e2e::Mount;

fn mount_alone(p: &SharedPkg) -> Mount {
    Mount::builder()
        .layer("system", &p.layer)
        .trusting(fixtures::keys())
        .start()
}

/// `p` mounted alone, served over transport `t` (which the daemon says it chose).
fn mount_over(p: &SharedPkg, t: Transport) -> Mount {
    let m = Mount::builder()
        .layer("system", &p.layer)
        .trusting(fixtures::keys())
        .transport(t)
        .start();
    assert_transport(&m, t);
    m
}

/// The daemon of `m` logged that it serves over `t`.
pub(crate) fn assert_transport(m: &Mount, t: Transport) {
    let log = m.log();
    assert!(
        log.contains(t.log_line()),
        "{t:?}: the daemon did not log {:?}:\n{log}",
        t.log_line()
    );
}

/// `diff -r --no-dereference SRC MNT` reports nothing.
fn assert_diff_clean(src: &Path, mnt: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(src)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "diff -r {} {} (exit {}):\n{}{}",
        src.display(),
        mnt.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry of `src` is in `mnt` and vice versa, with the same type, permission bits,
/// size (files and symlinks), mtime to the nanosecond and, for directories, link count;
/// everything is owned by root, and st_blocks covers the size.
fn assert_metadata_matches(src: &Path, mnt: &Path) {
    let want = walk(src);
    let got = walk(mnt);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing from the mount: {missing:?}\nnot in the source: {extra:?}"
    );
    let mut bad = Vec::new();
    for (rel, w) in &want {
        let g = &got[rel];
        let mut why = Vec::new();
        if w.file_type() != g.file_type() {
            why.push(format!("type {:?} != {:?}", g.file_type(), w.file_type()));
        }
        if w.mode() & 0o7777 != g.mode() & 0o7777 {
            why.push(format!(
                "mode {:o} != {:o}",
                g.mode() & 0o7777,
                w.mode() & 0o7777
            ));
        }
        if !w.is_dir() && w.size() != g.size() {
            why.push(format!("size {} != {}", g.size(), w.size()));
        }
        if (w.mtime(), w.mtime_nsec()) != (g.mtime(), g.mtime_nsec()) {
            why.push(format!(
                "mtime {}.{:09} != {}.{:09}",
                g.mtime(),
                g.mtime_nsec(),
                w.mtime(),
                w.mtime_nsec()
            ));
        }
        if (w.is_dir() || w.is_file()) && w.nlink() != g.nlink() {
            why.push(format!("nlink {} != {}", g.nlink(), w.nlink()));
        }
        if (g.uid(), g.gid()) != (0, 0) {
            why.push(format!("owner {}:{} is not root", g.uid(), g.gid()));
        }
        if g.is_file() && (g.blocks() * 512 < g.size() || g.blocks() * 512 > g.size() + 4096) {
            why.push(format!("st_blocks {} for size {}", g.blocks(), g.size()));
        }
        if !why.is_empty() {
            bad.push(format!("{}: {}", rel.display(), why.join(", ")));
        }
    }
    assert!(
        bad.is_empty(),
        "{} entries differ from their source, e.g.:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
}

#[test]
fn doc_tree_reads_back_identical_to_its_source() {
    let p = fixtures::doc();
    uring::each(|t| {
        let m = mount_over(p, t);
        assert_diff_clean(&p.source, m.path());
        assert_metadata_matches(&p.source, m.path());
    });
}

#[test]
fn include_tree_reads_back_identical_to_its_source() {
    let p = fixtures::include();
    uring::each(|t| {
        let m = mount_over(p, t);
        assert_diff_clean(&p.source, m.path());
        assert_metadata_matches(&p.source, m.path());
    });
}

#[test]
fn lz4_package_reads_back_identical_to_its_source() {
    // The big fixture's tree (random bytes stored raw, text, 500 small files), as lz4.
    let p = fixtures::big();
    let layer = fixtures::shared_dir().join("layer-big-lz4");
    std::fs::create_dir_all(layer.join("packages")).unwrap();
    let package = layer.join("packages/big-lz4.hpkg");
    e2e::pkg::Pkg::new(&p.source, "big", "1.0.0")
        .key(fixtures::keys())
        .compression("lz4")
        .chunk_size("64K")
        .build(&package);
    let a = format::archive::Archive::open(&package).unwrap();
    assert_eq!(a.header().compression, format::archive::Compression::Lz4);
    assert!((0..a.chunk_count())
        .any(|c| a.chunk_info(c).unwrap().method == format::archive::Method::Lz4));
    let m = Mount::builder()
        .layer("system", &layer)
        .trusting(fixtures::keys())
        .start();
    assert_diff_clean(&p.source, m.path());
}

#[test]
fn mount_is_a_read_only_fuse_file_system_in_the_mount_table() {
    let p = fixtures::big();
    let m = mount_alone(p);
    let e = m.entry().expect("mounted");
    assert_eq!(e.fstype, "fuse.packagefs", "{e}");
    assert!(
        e.mount_options.split(',').any(|o| o == "ro"),
        "mount is not read-only: {e}"
    );
    let st = statvfs(m.path());
    assert_ne!(
        st.f_flag & libc::ST_RDONLY,
        0,
        "statvfs does not say read-only"
    );
    assert!(st.f_namemax >= 255, "f_namemax {}", st.f_namemax);
}

fn statvfs(p: &Path) -> libc::statvfs {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string and out-pointer.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0);
        st
    }
}

#[test]
fn unusual_names_and_deep_paths_read_back_identical() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let t = e2e::TestTree::new();
    for name in [
        &b"with space"[..],
        b"tab\there",
        b"new\nline",
        b"back\\slash",
        b"\xff\xfe not utf-8",
        "ünïcødé 😀".as_bytes(),
        b"-starts-with-dash",
        b".hidden",
        b"...",
        &[b'n'; 255],
    ] {
        t.file(Path::new(OsStr::from_bytes(name)), name);
    }
    let deep: PathBuf = std::iter::repeat_n("d", 100).collect();
    t.file(deep.join("f"), "deep\n")
        .symlink("link with space", "with space")
        .symlink("dangling", "/nonexistent/target");
    let s = e2e::Stack::new(&["system"]);
    s.add("system", t.path(), "names");
    uring::each(|tr| {
        let m = s.builder().transport(tr).start();
        assert_transport(&m, tr);
        assert_diff_clean(t.path(), m.path());
        assert_metadata_matches(t.path(), m.path());
        assert_eq!(std::fs::read(m.join(deep.join("f"))).unwrap(), b"deep\n");
    });
}
