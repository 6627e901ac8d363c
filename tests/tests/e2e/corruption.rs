//! A chunk whose stored bytes no longer match their hash: the files that use it fail with
//! EIO, every other file reads correctly, and the daemon logs the package and the chunk
//! once.

use std::collections::BTreeSet;
use std::process::Command;

use e2e::hpkg::Hpkg;
use e2e::tree::{random_bytes, text_bytes, walk};
use e2e::{log_lines, pkgtool, Pkg, Stack, TestTree};

use crate::assert_errno;

/// 300 small files of different sizes (several per 64 KiB chunk) and two files of several
/// chunks each.
fn many_files() -> TestTree {
    let t = TestTree::new();
    for i in 0..300u64 {
        let len = 500 + (i as usize * 997) % 12_000;
        t.file(format!("files/{:02}/f{i:03}", i % 17), text_bytes(i, len));
    }
    t.file("large/random", random_bytes(1, 300_000))
        .file("large/text", text_bytes(999, 200_000))
        .file("empty", "");
    t
}

#[test]
fn corrupt_chunk_gives_eio_only_for_its_files_and_is_logged_once() {
    let tree = many_files();
    let other = TestTree::new();
    other.file("other/a", "another package\n");
    let s = Stack::new(&["system"]);
    let pkg = s.add_pkg(
        "system",
        "corrupt",
        Pkg::new(tree.path(), "corrupt", "1.0.0")
            .chunk_size("64K")
            .compression("zstd:3"),
    );
    s.add("system", other.path(), "other");

    // Pick the chunk of a small file in the middle and flip a byte in its stored bytes.
    let mut bytes = std::fs::read(&pkg).unwrap();
    let h = Hpkg::parse(&bytes);
    assert!(h.chunks.len() > 10, "only {} chunks", h.chunks.len());
    let target = h
        .files
        .iter()
        .filter(|f| f.path.starts_with("files/") && f.chunks.len() == 1)
        .nth(150)
        .expect("a small file");
    let range = h.stored_range(target.chunks.start);
    let pos = range.start + (range.end - range.start) / 2;
    bytes[pos as usize] ^= 0x40;
    std::fs::write(&pkg, &bytes).unwrap();
    let bad_chunks = h.chunks_at(pos);
    let affected = h.files_using(&bad_chunks);
    assert!(affected.contains(&target.path));
    assert!(
        affected.len() < h.files.len() / 4,
        "the corruption should be local: {affected:?}"
    );

    // pkgtool agrees that exactly these chunks are bad
    let out = Command::new(pkgtool())
        .args(["verify", "--integrity-only"])
        .arg(&pkg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "pkgtool verify of a corrupted package"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for c in &bad_chunks {
        assert!(err.contains(&format!("chunk {c}")), "pkgtool verify: {err}");
    }

    let m = s.mount();
    let mut wrong = Vec::new();
    for (rel, md) in walk(tree.path()) {
        if !md.is_file() {
            continue;
        }
        let rel_s = rel.to_string_lossy().into_owned();
        let got = std::fs::read(m.join(&rel));
        if affected.contains(&rel_s) {
            match got {
                Err(e) if e.raw_os_error() == Some(libc::EIO) => {}
                other => wrong.push(format!(
                    "{rel_s}: expected EIO, got {:?}",
                    other.map(|v| v.len())
                )),
            }
            // its metadata is intact
            assert_eq!(std::fs::metadata(m.join(&rel)).unwrap().len(), md.len());
        } else {
            match got {
                Ok(v) if v == std::fs::read(tree.join(&rel)).unwrap() => {}
                Ok(_) => wrong.push(format!("{rel_s}: wrong bytes")),
                Err(e) => wrong.push(format!("{rel_s}: {e}")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        std::fs::read_to_string(m.join("other/a")).unwrap(),
        "another package\n"
    );
    // asking again still fails: a bad chunk is never served
    for f in &affected {
        assert_errno(std::fs::read(m.join(f)), libc::EIO, f);
    }

    let log = m.log();
    let lines = log_lines(&log, &["cannot read chunk"]);
    let want: BTreeSet<String> = bad_chunks.iter().map(|c| format!("chunk={c}")).collect();
    assert_eq!(
        lines.len(),
        want.len(),
        "one log line per bad chunk, however often it is read:\n{log}"
    );
    for l in &lines {
        assert!(
            l.split_whitespace().any(|w| want.contains(w)),
            "the line names the chunk: {l}"
        );
        assert!(
            l.contains("corrupt-1.0.0") || l.contains("corrupt.hpkg"),
            "the line names the package: {l}"
        );
        // ... and a file that uses it (what an admin looks for).
        assert!(
            affected.iter().any(|f| l.contains(f.as_str())),
            "the line names a file that uses the chunk: {l}\naffected: {affected:?}"
        );
    }
}

/// An active package file truncated in place, or overwritten in place by `cp` with another
/// package (both write into the file the daemon has open): the daemon lives on, every other
/// package keeps serving, and the overwriting package becomes active.
#[test]
fn a_package_file_truncated_or_overwritten_in_place_does_not_take_the_mount_down() {
    let s = Stack::new(&["system"]);
    let victim = s.add_pkg(
        "system",
        "victim",
        Pkg::new(many_files().path(), "victim", "1.0.0").chunk_size("64K"),
    );
    let other = TestTree::new();
    other.file("other/a", "another package\n");
    s.add("system", other.path(), "other");
    let m = s.mount();
    // Its metadata is held by the daemon (lookups, the chunk index).
    assert!(m.join("files/00/f000").exists());

    // truncated to nothing: the files of the package fail, nothing else does
    std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(0)
        .unwrap();
    for i in 0..300u64 {
        let p = m.join(format!("files/{:02}/f{i:03}", i % 17));
        let _ = std::fs::read(&p); // EIO, or gone once the daemon saw the change
    }
    let _ = std::fs::read(m.join("large/random"));
    assert_eq!(
        std::fs::read_to_string(m.join("other/a")).unwrap(),
        "another package\n",
        "{}",
        m.log()
    );
    assert!(m.is_mounted(), "{}", m.log());

    // overwritten in place with another package: it replaces the old one
    let t = TestTree::new();
    t.file("files/new", "the new package\n");
    let next = tempfile::tempdir().unwrap();
    let new_pkg = Pkg::new(t.path(), "victim", "2.0.0")
        .key(s.keys())
        .build(next.path().join("v2.hpkg"));
    std::fs::write(&victim, std::fs::read(&new_pkg).unwrap()).unwrap();
    assert!(
        e2e::wait_until(std::time::Duration::from_secs(5), || {
            std::fs::read_to_string(m.join("files/new")).is_ok_and(|s| s == "the new package\n")
        }),
        "{}",
        m.log()
    );
    assert_eq!(
        std::fs::read_to_string(m.join("other/a")).unwrap(),
        "another package\n"
    );
    assert!(m.is_mounted(), "{}", m.log());
}
