//! `pkgtool info`: JSON and human output agree with the source tree and with build/verify.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use crate::util::*;

/// (files, directories incl. the root, symlinks, extra hard-link names, content bytes)
fn counts(entries: &[SrcEntry]) -> (u64, u64, u64, u64, u64) {
    let mut inodes = BTreeSet::new();
    let (mut names, mut bytes) = (0, 0);
    for e in entries.iter().filter(|e| e.is_file()) {
        names += 1;
        if inodes.insert((e.md.dev(), e.md.ino())) {
            bytes += e.md.len();
        }
    }
    let dirs = entries.iter().filter(|e| e.is_dir()).count() as u64 + 1;
    let links = entries.iter().filter(|e| e.is_symlink()).count() as u64;
    let files = inodes.len() as u64;
    (files, dirs, links, names - files, bytes)
}

fn check_info(b: &Built) {
    let key = &Fixture::shared().key;
    let entries = walk(&b.src);
    let (files, dirs, links, hardlinks, bytes) = counts(&entries);
    let v = pkgtool(["info", "--json"]).arg(&b.pkg).ok().json();
    assert_eq!(v["manifest"]["name"], "testpkg");
    assert_eq!(v["manifest"]["version"], "1.2.3");
    assert_eq!(v["manifest"]["summary"], "test package");
    let id = v["id"].as_str().expect("id is a string");
    assert!(is_hex(id, 64), "id {id:?}");
    assert_eq!(
        v["signer"],
        key.id.as_str(),
        "signer is the key keygen printed"
    );
    assert_eq!(v["files"], files);
    assert_eq!(v["directories"], dirs);
    assert_eq!(v["symlinks"], links);
    assert_eq!(v["hardlinks"], hardlinks);
    assert_eq!(v["content_bytes"], bytes);
    assert_eq!(v["names"], entries.len() as u64);
    assert_eq!(v["entries"], files + dirs + links);
    assert_eq!(v["file_bytes"], std::fs::metadata(&b.pkg).unwrap().len());
    assert!(v["compression"].as_str().unwrap().starts_with("zstd"));

    // The same id everywhere: build's report, info's human output, verify.
    assert!(
        b.build_stdout.contains(&format!("id:    {id}")),
        "build printed another id:\n{}",
        b.build_stdout
    );
    pkgtool(["info"])
        .arg(&b.pkg)
        .ok()
        .stdout_contains("testpkg 1.2.3")
        .stdout_contains(id)
        .stdout_contains(&key.id)
        .stdout_contains(&format!(
            "{files} files, {dirs} directories, {links} symlinks, {hardlinks} hard links"
        ));
    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--key")
        .arg(&key.public)
        .ok()
        .stdout_contains(&format!("id {id}"));
}

#[test]
fn info_json_matches_the_odd_tree() {
    let b = odd();
    check_info(b);
    let v = pkgtool(["info", "--json"]).arg(&b.pkg).ok().json();
    assert_eq!(
        v["hardlinks"], 4,
        "hard/a has two more names, hard/empty-a and bin/suid one each"
    );
    assert_eq!(v["chunk_size"], 256 * 1024);
}

#[test]
fn info_json_matches_usr_share_doc() {
    let b = doc();
    check_info(b);
    let v = pkgtool(["info", "--json"]).arg(&b.pkg).ok().json();
    assert_eq!(v["chunk_size"], 64 * 1024);
}

#[test]
fn info_of_an_unsigned_package_has_no_signer() {
    let f = Fixture::new();
    let pkg = f.dir.join("unsigned.hpkg");
    pkgtool(["build", "--unsigned", "--quiet", "--manifest"])
        .arg(&f.manifest)
        .arg(&odd().src)
        .arg("-o")
        .arg(&pkg)
        .ok();
    let v = pkgtool(["info", "--json"]).arg(&pkg).ok().json();
    assert!(
        v["signer"].is_null(),
        "signer of an unsigned package: {}",
        v["signer"]
    );
    pkgtool(["info"]).arg(&pkg).ok().stdout_contains("unsigned");
}
