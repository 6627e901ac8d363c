//! A file over 4 GiB (64-bit offsets), made from a sparse source so that it costs no disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Stdio;

use crate::util::*;

const LEN: u64 = (1 << 32) + 4097;

/// (offset, bytes) written into the otherwise zero file: at the start, the last byte below
/// 4 GiB, just above 4 GiB, and the very end.
fn markers() -> [(u64, &'static [u8]); 4] {
    [
        (0, b"START of the big file"),
        ((1 << 32) - 1, b"X"),
        ((1 << 32) + 100, b"just above 4 GiB"),
        (LEN - 3, b"END"),
    ]
}

/// Fills `buf` with the expected bytes at `off`: zeros, with the markers laid over them.
fn expected(off: u64, buf: &mut [u8]) {
    buf.fill(0);
    let end = off + buf.len() as u64;
    for (m, bytes) in markers() {
        for (i, &b) in bytes.iter().enumerate() {
            let p = m + i as u64;
            if (off..end).contains(&p) {
                buf[(p - off) as usize] = b;
            }
        }
    }
}

#[test]
fn file_over_4_gib_round_trips_and_zero_chunks_are_stored_once() {
    let f = Fixture::new();
    let s = Scratch::new();
    let src = s.join("src");
    std::fs::create_dir(&src).unwrap();
    let big = src.join("huge.bin");
    {
        let file = File::create(&big).unwrap();
        file.set_len(LEN).unwrap();
        for (off, bytes) in markers() {
            file.write_all_at(bytes, off).unwrap();
        }
    }
    std::fs::write(src.join("small"), b"a small neighbour\n").unwrap();
    let pkg = s.join("big.hpkg");
    f.build(&src, &pkg).ok();
    pkgtool(["verify"])
        .arg(&pkg)
        .arg("--key")
        .arg(&f.key.public)
        .ok();

    // Identical zero chunks are stored once: the heap holds a handful of distinct chunks,
    // and the file is essentially the chunk index (56 bytes per 256 KiB chunk).
    let info = pkgtool(["info", "--json"]).arg(&pkg).ok().json();
    assert_eq!(info["content_bytes"], LEN + 18);
    let heap = info["heap_bytes"].as_u64().unwrap();
    assert!(
        heap < 64 * 1024,
        "heap is {heap} bytes: zero chunks were not deduplicated"
    );
    let size = std::fs::metadata(&pkg).unwrap().len();
    assert!(size < 2 << 20, "archive is {size} bytes");
    assert_eq!(size, info["file_bytes"].as_u64().unwrap());

    let list = pkgtool(["list", "--json"]).arg(&pkg).ok().json_lines();
    let entry = list
        .iter()
        .find(|v| v["path"] == "huge.bin")
        .expect("listed");
    assert_eq!(entry["size"], LEN);

    // cat | compare, streamed: never 4 GiB in memory.
    let mut child = pkgtool(["cat"])
        .arg(&pkg)
        .arg("huge.bin")
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let n = stream_compare(
        child.stdout.take().unwrap(),
        expected,
        "pkgtool cat huge.bin",
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(n, LEN, "cat printed {n} bytes");

    // The source really is what `expected` says (the test compares against it, not the file).
    let file = File::open(&big).unwrap();
    for (off, bytes) in markers() {
        let mut got = vec![0; bytes.len() + 2];
        let k = file.read_at(&mut got, off.saturating_sub(1)).unwrap();
        let mut want = vec![0; k];
        expected(off.saturating_sub(1), &mut want);
        assert_eq!(got[..k], want[..]);
    }
}
