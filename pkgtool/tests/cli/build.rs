//! `pkgtool build` reports: --json, relative paths, a manifest using every field.

use std::fs;

use crate::util::*;

const FULL_MANIFEST: &str = r#"{
  "name": "app.full",
  "version": "2.0.0-rc.1",
  "summary": "Uses every manifest field",
  "provides": [{ "api": "api.full", "version": "2.0.0" }],
  "requires": [
    { "api": "api.graphics", "version": "^2.2" },
    { "api": "api.window", "version": ">=1.1, <2" }
  ],
  "uses": ["core.runtime"],
  "capabilities": ["net.connect"],
  "services": [{ "name": "full-indexer", "exec": "libexec/app.full/indexer" }],
  "os": ">=1.0, <3"
}"#;

#[test]
fn build_json_with_relative_paths_and_a_full_manifest() {
    let s = Scratch::new();
    let key = keygen(s.path(), "erin");
    fs::write(s.join("full.json"), FULL_MANIFEST).unwrap();
    TestTree::new(&s.join("root"))
        .dir("bin", 0o755)
        .file("bin/app", b"#!/bin/sh\n", 0o755)
        .file("bin/copy", b"#!/bin/sh\n", 0o755)
        .finish();
    let mut c = pkgtool([
        "build",
        "root",
        "-o",
        "full.hpkg",
        "--key",
        "erin.key",
        "--manifest",
        "full.json",
        "--json",
        "--compression",
        "zlib:6",
        "--chunk-size",
        "1M",
    ]);
    c.command().current_dir(s.path());
    let built = c.ok().json();
    assert_eq!(built["name"], "app.full");
    assert_eq!(built["version"], "2.0.0-rc.1");
    assert_eq!(built["signer"], key.id.as_str());
    assert_eq!(built["files"], 2);
    assert_eq!(
        built["deduplicated_files"], 1,
        "two identical files are stored once"
    );
    assert_eq!(built["compression"], "zlib:6");
    assert_eq!(built["chunk_size"], 1 << 20);
    let pkg = s.join("full.hpkg");
    assert_eq!(built["file_bytes"], fs::metadata(&pkg).unwrap().len());
    assert_no_temp_left(s.path());

    let info = pkgtool(["info", "--json"]).arg(&pkg).ok().json();
    assert_eq!(info["id"], built["id"]);
    let want: serde_json::Value = serde_json::from_str(FULL_MANIFEST).unwrap();
    assert_eq!(
        info["manifest"], want,
        "the manifest survives the round trip"
    );
    assert_eq!(info["compression"], "zlib:6");
    pkgtool(["info"])
        .arg(&pkg)
        .ok()
        .stdout_contains("app.full 2.0.0-rc.1")
        .stdout_contains("api.full 2.0.0")
        .stdout_contains("api.window >=1.1, <2")
        .stdout_contains("full-indexer -> libexec/app.full/indexer");
    let v = pkgtool(["verify", "--json", "--key"])
        .arg(&key.public)
        .arg(&pkg)
        .ok()
        .json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["trusted"], true);
    assert_eq!(v["id"], built["id"]);
    assert_eq!(
        pkgtool(["cat"]).arg(&pkg).arg("bin/copy").ok().stdout,
        b"#!/bin/sh\n"
    );
}

#[test]
fn uncompressed_build_round_trips() {
    let f = Fixture::new();
    let s = Scratch::new();
    let pkg = s.join("raw.hpkg");
    let src = &odd().src;
    f.build(src, &pkg).args(["--compression", "none"]).ok();
    let info = pkgtool(["info", "--json"]).arg(&pkg).ok().json();
    assert_eq!(info["compression"], "none");
    // Stored raw: a file's bytes appear verbatim in the package.
    let bytes = fs::read(&pkg).unwrap();
    let random = fs::read(src.join("big/random")).unwrap();
    let needle = &random[300_000..304_096];
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle),
        "content is not stored raw"
    );
    let out = s.join("out");
    pkgtool(["extract"]).arg(&pkg).arg(&out).ok();
    let (code, text) = run_tool(
        std::process::Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(src)
            .arg(&out),
    );
    assert_eq!(code, 0, "{text}");
}

#[test]
fn no_progress_bar_when_stderr_is_not_a_terminal() {
    let f = Fixture::new();
    let s = Scratch::new();
    let pkg = s.join("p.hpkg");
    // Without --quiet: stderr is a pipe here, so it must stay empty.
    let r = pkgtool(["build", "--key"])
        .arg(&f.key.secret)
        .arg("--manifest")
        .arg(&f.manifest)
        .arg(&odd().src)
        .arg("-o")
        .arg(&pkg)
        .ok()
        .stdout_contains("id:");
    assert!(r.stderr.is_empty(), "stderr: {}", r.stderr_str());
}

#[test]
fn lz4_build_round_trips_as_format_1_1() {
    let f = Fixture::new();
    let s = Scratch::new();
    let pkg = s.join("lz4.hpkg");
    let src = &odd().src;
    let built = f
        .build(src, &pkg)
        .args(["--compression", "lz4", "--json"])
        .ok()
        .json();
    assert_eq!(built["compression"], "lz4");
    let info = pkgtool(["info", "--json"]).arg(&pkg).ok().json();
    assert_eq!(info["compression"], "lz4");
    assert_eq!(info["format_version"], "1.1");
    pkgtool(["verify", "--key"])
        .arg(&f.key.public)
        .arg(&pkg)
        .ok();
    let out = s.join("out");
    pkgtool(["extract"]).arg(&pkg).arg(&out).ok();
    let (code, text) = run_tool(
        std::process::Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(src)
            .arg(&out),
    );
    assert_eq!(code, 0, "{text}");
    // A zstd build of the same tree stays format 1.0.
    let zstd = s.join("zstd.hpkg");
    f.build(src, &zstd).ok();
    let info = pkgtool(["info", "--json"]).arg(&zstd).ok().json();
    assert_eq!(info["format_version"], "1.0");
}

#[test]
fn lz4_with_a_level_is_a_usage_error() {
    let f = Fixture::new();
    let s = Scratch::new();
    f.build(&odd().src, &s.join("x.hpkg"))
        .args(["--compression", "lz4:9"])
        .fails(2)
        .stderr_contains("lz4 has no levels");
    assert!(!s.join("x.hpkg").exists());
}
