//! Damaged packages: a flipped heap byte is pinned to its chunk and the files using it; a
//! flipped metadata byte makes every command fail with one line, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::util::*;

/// The chunks whose stored bytes hold heap offset `x` (several when stored once for many).
fn chunks_holding(pkg: &[u8], x: u64) -> BTreeSet<u64> {
    let (idx, len) = section(pkg, CHUNK_INDEX);
    let mut out = BTreeSet::new();
    for i in 0..len / 56 {
        let o = (idx + i * 56) as usize;
        let off = u64::from_le_bytes(pkg[o..o + 8].try_into().unwrap());
        let stored = u32::from_le_bytes(pkg[o + 8..o + 12].try_into().unwrap()) as u64;
        if (off..off + stored).contains(&x) {
            out.insert(i);
        }
    }
    out
}

#[test]
fn flipped_heap_byte_names_its_chunk_and_exactly_the_files_using_it() {
    let b = doc();
    let s = Scratch::new();
    let pkg = s.join("doc.hpkg");
    let mut bytes = fs::read(&b.pkg).unwrap();
    let (heap, heap_len) = section(&bytes, HEAP);
    let x = heap_len / 2;
    let bad = chunks_holding(&bytes, x);
    assert!(!bad.is_empty());
    bytes[(heap + x) as usize] ^= 0x40;
    fs::write(&pkg, &bytes).unwrap();
    let key = &Fixture::shared().key;

    let r = pkgtool(["verify", "--key"])
        .arg(&key.public)
        .arg(&pkg)
        .fails(1);
    let err = r.stderr_str();
    assert!(err.lines().all(|l| l.starts_with("pkgtool: ")), "{err}");
    for c in &bad {
        assert!(
            err.contains(&format!("chunk {c} ")),
            "stderr does not name chunk {c}:\n{err}"
        );
    }
    let v = pkgtool(["verify", "--json", "--key"])
        .arg(&key.public)
        .arg(&pkg)
        .fails(1)
        .json();
    assert_eq!(v["ok"], false);
    let reported: BTreeSet<u64> = v["bad_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["chunk"].as_u64().unwrap())
        .collect();
    assert_eq!(
        reported, bad,
        "verify reports the chunks that hold the flipped byte"
    );
    let users: BTreeSet<String> = v["bad_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["files"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(
        !users.is_empty(),
        "the middle of the heap belongs to some file"
    );
    for u in &users {
        assert!(err.contains(u.as_str()), "stderr does not name {u}:\n{err}");
    }

    // Exactly those files fail to cat, naming a bad chunk; the files around them in
    // package order, and a sample of the rest, still cat correctly.
    let entries = walk(&b.src);
    let files: Vec<&SrcEntry> = entries.iter().filter(|e| e.is_file()).collect();
    let pos: BTreeMap<String, usize> = files
        .iter()
        .enumerate()
        .map(|(i, e)| (escape(&e.rel), i))
        .collect();
    let mut good: BTreeSet<usize> = BTreeSet::new();
    for u in &users {
        let i = *pos
            .get(u)
            .unwrap_or_else(|| panic!("{u} is not a file of the source"));
        let e = files[i];
        let r = pkgtool(["cat"])
            .arg(&pkg)
            .arg("--")
            .arg(OsStr::from_bytes(&e.rel))
            .fails(1)
            .one_line_error();
        let err = r.stderr_str();
        assert!(
            bad.iter().any(|c| err.contains(&format!("chunk {c} "))),
            "cat {u}: error does not name a bad chunk: {err}"
        );
        for j in [i.wrapping_sub(1), i + 1, i + 2] {
            good.insert(j);
        }
    }
    good.extend((0..files.len()).step_by(files.len() / 60));
    let mut checked = 0;
    for j in good {
        let Some(e) = files.get(j) else { continue };
        if users.contains(&escape(&e.rel)) {
            continue;
        }
        assert_cat_matches(&pkg, e);
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} intact files checked");
}

/// Every reading command on `pkg`: each must exit 1 with a one-line error.
fn all_commands_fail(pkg: &Path, key: &Path, what: &str) {
    let s = Scratch::new();
    let out = s.join("out");
    let runs = [
        pkgtool(["info"]).arg(pkg).run(),
        pkgtool(["info", "--json"]).arg(pkg).run(),
        pkgtool(["list"]).arg(pkg).run(),
        pkgtool(["list", "-l"]).arg(pkg).run(),
        pkgtool(["cat"]).arg(pkg).arg("README").run(),
        pkgtool(["verify", "--key"]).arg(key).arg(pkg).run(),
        pkgtool(["verify", "--integrity-only"]).arg(pkg).run(),
        pkgtool(["extract"]).arg(pkg).arg(&out).run(),
    ];
    for r in runs {
        assert_eq!(r.code, Some(1), "{what}: `{}` exit {:?}", r.shown, r.code);
        assert!(r.stdout.is_empty(), "{what}: `{}` printed data", r.shown);
        r.one_line_error();
    }
    assert!(!out.exists(), "{what}: extract created its target");
    assert_no_temp_left(s.path());
}

#[test]
fn flipped_metadata_byte_fails_every_command_with_one_line() {
    let b = odd();
    let key = &Fixture::shared().key.public;
    let orig = fs::read(&b.pkg).unwrap();
    let (manifest, manifest_len) = section(&orig, MANIFEST);
    let (toc, toc_len) = section(&orig, TOC);
    let (index, index_len) = section(&orig, CHUNK_INDEX);
    let (trailer, _) = section(&orig, TRAILER);
    let places = [
        ("magic", 1),
        ("major version", 8),
        ("minor version", 10),
        ("flags", 16),
        ("chunk size", 22),
        ("toc offset", 48),
        ("heap length", 88),
        ("file size", 120),
        ("manifest", manifest + manifest_len / 2),
        ("toc header", toc + 1),
        ("toc inodes", toc + 32 + 48 * 3 + 4),
        ("toc middle", toc + toc_len / 2),
        ("toc strings", toc + toc_len - 3),
        ("chunk index", index + index_len / 2),
        ("trailer magic", trailer + 2),
        ("trailer key", trailer + 20),
        ("trailer id", trailer + 50),
        ("trailer signature", trailer + 100),
    ];
    let s = Scratch::new();
    for (what, off) in places {
        for mask in [0x01u8, 0x80] {
            let mut bytes = orig.clone();
            bytes[off as usize] ^= mask;
            let pkg = s.join("flipped.hpkg");
            fs::write(&pkg, &bytes).unwrap();
            all_commands_fail(&pkg, key, &format!("{what} (byte {off} ^ {mask:#x})"));
        }
    }
}
