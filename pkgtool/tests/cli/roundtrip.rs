//! Round trips through the command line: build (shared fixtures), verify, list, list -l,
//! list --json, cat, extract, and a comparison of the extracted tree with the source.
//!
//! `cat` starts one process per file, and /usr/include alone has thousands of files, so
//! `cat` is run on every file of the odd tree and of /usr/share/doc/bash, and on an evenly
//! spread sample of about 300 files of each big tree. Every byte of every file is still
//! compared: `extract` reads each file through the same chunk reader as `cat`, and
//! `diff -r` compares the extracted tree with the source.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::util::*;

/// A `list -l` line, parsed: (mode string, size, "YYYY-MM-DD HH:MM:SS", target).
type LongLine = (String, u64, String, Option<String>);

fn parse_long(out: &str) -> BTreeMap<String, LongLine> {
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let mode = line[..10].to_string();
        let rest = line[10..].trim_start();
        let (size, rest) = rest.split_once(' ').expect("size");
        let (stamp, path) = rest.split_at(19);
        let path = path.strip_prefix(' ').expect("space before the path");
        let (path, target) = if mode.starts_with('l') {
            let (p, t) = path.split_once(" -> ").expect("symlink target");
            (p.to_string(), Some(t.to_string()))
        } else if mode.starts_with('d') {
            (
                path.strip_suffix('/').expect("dir ends in /").to_string(),
                None,
            )
        } else {
            (path.to_string(), None)
        };
        let size = size.parse().expect("size is a number");
        assert!(
            m.insert(path.clone(), (mode, size, stamp.to_string(), target))
                .is_none(),
            "{path} listed twice"
        );
    }
    m
}

/// `stat -c %A` for several paths at once: the `ls -l` mode strings.
fn ls_modes(paths: &[&std::path::Path]) -> Vec<String> {
    let out = Command::new("stat")
        .arg("-c")
        .arg("%A")
        .args(paths)
        .output()
        .expect("run stat");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn utc(secs: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S", "-d"])
        .arg(format!("@{secs}"))
        .output()
        .expect("run date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Everything but `cat`: verify, list (three forms), extract and compare.
/// Returns how many entries carry setuid, setgid or sticky bits (checked after extract).
fn check_round_trip(b: &Built, entries: &[SrcEntry], internal_links: bool) -> usize {
    let key = &Fixture::shared().key;

    pkgtool(["verify"])
        .arg(&b.pkg)
        .arg("--key")
        .arg(&key.public)
        .ok()
        .stdout_contains(": OK: testpkg 1.2.3")
        .stdout_contains(&key.id);

    // list: exactly the source's paths, escaped as `list --help` says.
    let want: BTreeSet<String> = entries.iter().map(|e| escape(&e.rel)).collect();
    assert_eq!(want.len(), entries.len(), "escaping must be injective");
    let r = pkgtool(["list"]).arg(&b.pkg).ok();
    let lines: Vec<&str> = r.stdout_str().lines().collect();
    let got: BTreeSet<String> = lines.iter().map(|s| s.to_string()).collect();
    assert_eq!(lines.len(), got.len(), "a path is listed twice");
    let missing: Vec<_> = want.difference(&got).take(10).collect();
    let extra: Vec<_> = got.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "list differs from the source: missing {missing:?}, extra {extra:?}"
    );

    // list --json: kind, mode, size, mtime, nlink and target of every entry.
    let r = pkgtool(["list", "--json"]).arg(&b.pkg).ok();
    let json: BTreeMap<String, serde_json::Value> = r
        .json_lines()
        .into_iter()
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    assert_eq!(json.len(), entries.len());
    for e in entries {
        let p = escape(&e.rel);
        let j = &json[&p];
        let kind = if e.is_dir() {
            "directory"
        } else if e.is_symlink() {
            "symlink"
        } else {
            "file"
        };
        assert_eq!(j["kind"], kind, "{p}");
        assert_eq!(j["mode"], format!("{:04o}", e.md.mode() & 0o7777), "{p}");
        assert_eq!(j["mtime"], e.md.mtime(), "{p}");
        if e.is_file() {
            assert_eq!(j["size"], e.md.len(), "{p}");
            if internal_links {
                assert_eq!(j["nlink"], e.md.nlink(), "{p}");
            }
        }
        if e.is_symlink() {
            let t = std::fs::read_link(&e.path).unwrap();
            assert_eq!(j["target"], escape(t.as_os_str().as_bytes()), "{p}");
        }
    }

    // list -l: mode strings (as `ls -l` prints them), sizes and times of a sample
    // holding files, directories and symlinks.
    let long = parse_long(pkgtool(["list", "-l"]).arg(&b.pkg).ok().stdout_str());
    assert_eq!(long.len(), entries.len());
    let mut sample: Vec<&SrcEntry> = sample_files(entries, 20);
    sample.extend(entries.iter().filter(|e| e.is_dir()).take(5));
    sample.extend(entries.iter().filter(|e| e.is_symlink()).take(5));
    let modes = ls_modes(&sample.iter().map(|e| e.path.as_path()).collect::<Vec<_>>());
    for (e, mode) in sample.iter().zip(modes) {
        let p = escape(&e.rel);
        let (m, size, stamp, target) = &long[&p];
        assert_eq!(m, &mode, "list -l mode of {p}");
        if !e.is_dir() {
            assert_eq!(*size, e.md.len(), "list -l size of {p}");
        }
        if e.is_symlink() {
            let t = std::fs::read_link(&e.path).unwrap();
            assert_eq!(
                target.as_deref(),
                Some(escape(t.as_os_str().as_bytes()).as_str())
            );
        }
        if e.rel == sample[0].rel {
            assert_eq!(stamp, &utc(e.md.mtime()), "list -l time of {p}");
        }
    }

    // extract (setuid bits and capabilities too: the package is signed by a trusted key),
    // then diff -r and compare what diff does not look at.
    let s = Scratch::new();
    let out = s.join("out");
    let r = pkgtool(["extract", "--preserve-privileges", "--trusted-keys"])
        .arg(&Fixture::shared().dir)
        .arg(&b.pkg)
        .arg(&out)
        .ok();
    let inodes: BTreeSet<(u64, u64)> = entries
        .iter()
        .filter(|e| e.is_file())
        .map(|e| (e.md.dev(), e.md.ino()))
        .collect();
    r.stdout_contains(&format!("extracted {} files", inodes.len()));
    assert_no_temp_left(s.path());
    let (code, text) = run_tool(
        Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&b.src)
            .arg(&out),
    );
    assert_eq!(
        code,
        0,
        "diff -r {} {}:\n{text}",
        b.src.display(),
        out.display()
    );
    compare_metadata(&b.src, &out, entries, internal_links)
}

/// Compares type, permission bits (setuid, setgid, sticky included), mtime (seconds and
/// nanoseconds), size and xattrs of every entry, and that hard links share an inode.
/// Returns how many entries carry setuid, setgid or sticky bits.
fn compare_metadata(
    src: &std::path::Path,
    out: &std::path::Path,
    entries: &[SrcEntry],
    internal_links: bool,
) -> usize {
    let extracted = walk(out);
    assert_eq!(extracted.len(), entries.len());
    let root_s = std::fs::symlink_metadata(src).unwrap();
    let root_o = std::fs::symlink_metadata(out).unwrap();
    assert_eq!(root_o.mode(), root_s.mode(), "mode of the extracted root");
    assert_eq!(
        (root_o.mtime(), root_o.mtime_nsec()),
        (root_s.mtime(), root_s.mtime_nsec()),
        "mtime of the extracted root"
    );
    assert_eq!(
        xattrs_of(out),
        xattrs_of(src),
        "xattrs of the extracted root"
    );
    let mut specials = 0;
    for (s, o) in entries.iter().zip(&extracted) {
        let p = escape(&s.rel);
        assert_eq!(s.rel, o.rel);
        assert_eq!(
            o.md.mode(),
            s.md.mode(),
            "st_mode of {p}: {:o}",
            o.md.mode()
        );
        if s.md.mode() & 0o7000 != 0 {
            specials += 1;
        }
        assert_eq!(
            (o.md.mtime(), o.md.mtime_nsec()),
            (s.md.mtime(), s.md.mtime_nsec()),
            "mtime of {p}"
        );
        if s.is_file() {
            assert_eq!(o.md.len(), s.md.len(), "size of {p}");
            if internal_links {
                assert_eq!(o.md.nlink(), s.md.nlink(), "nlink of {p}");
            }
        }
        if !s.is_symlink() {
            assert_eq!(xattrs_of(&o.path), xattrs_of(&s.path), "xattrs of {p}");
        }
    }
    let by_rel: BTreeMap<&[u8], &SrcEntry> =
        extracted.iter().map(|e| (e.rel.as_slice(), e)).collect();
    for group in hardlink_groups(entries) {
        let inos: BTreeSet<u64> = group
            .iter()
            .map(|e| by_rel[e.rel.as_slice()].md.ino())
            .collect();
        assert_eq!(
            inos.len(),
            1,
            "hard links {:?} do not share an inode after extract",
            group.iter().map(|e| escape(&e.rel)).collect::<Vec<_>>()
        );
    }
    specials
}

#[test]
fn round_trip_odd_tree() {
    let b = odd();
    let entries = walk(&b.src);
    let specials = check_round_trip(b, &entries, true);
    assert_eq!(
        specials, 5,
        "setuid (two names), setgid, setgid dir and sticky dir were checked"
    );

    // cat of every regular file, whatever its name.
    for e in entries.iter().filter(|e| e.is_file()) {
        assert_cat_matches(&b.pkg, e);
    }
    let cat = |p: &str| pkgtool(["cat"]).arg(&b.pkg).arg("--").arg(p).run();
    // Symlinks inside the package are followed, those leaving it are not.
    assert_eq!(cat("links/rel").ok().stdout, b"hello, packagefs\n");
    assert_eq!(
        cat("links/dirlink/nested/deep/file.txt").ok().stdout,
        b"deep inside\n"
    );
    assert_eq!(cat("hard/b").ok().stdout, b"one inode, three names\n");
    cat("links/abs")
        .fails(1)
        .one_line_error()
        .stderr_contains("outside the package");
    cat("links/dangling").fails(1).one_line_error();
    cat("dir")
        .fails(1)
        .one_line_error()
        .stderr_contains("directory");
    cat("no/such/file").fails(1).one_line_error();
    // A trailing `/` (or `/.`) asks for a directory, as it does for the kernel.
    cat("README/")
        .fails(1)
        .one_line_error()
        .stderr_contains("not a directory");
    cat("README/.")
        .fails(1)
        .one_line_error()
        .stderr_contains("not a directory");
    assert_eq!(cat("dir/../README").ok().stdout, b"hello, packagefs\n");
    cat("links/loop")
        .fails(1)
        .one_line_error()
        .stderr_contains("symbolic links");

    // list -l of known entries, exactly.
    let long = parse_long(pkgtool(["list", "-l"]).arg(&b.pkg).ok().stdout_str());
    let expect = [
        ("README", "-rw-r--r--", 17),
        ("empty", "-rw-r--r--", 0),
        ("bin/suid", "-rwsr-xr-x", 20),
        ("bin/sgid", "-rwx--s--x", 20),
        ("sgid-dir", "drwxrwsr-x", 0),
        ("sticky", "drwxrwxrwt", 0),
        ("ro", "dr-xr-xr-x", 0),
        ("emptydir", "drwx------", 0),
        ("ro/inside", "-r--r--r--", 19),
        ("dir/nested/deep/file.txt", "-rw-r-----", 12),
        ("big/random", "-rw-r--r--", 700 * 1024 + 3),
        ("links/rel", "lrwxrwxrwx", 9),
        ("names/new\\nline", "-rw-r--r--", 28),
        ("names/bad-\\377\\376-utf8", "-rw-r--r--", 31),
        ("names/ctrl\\001\\177", "-rw-r--r--", 26),
    ];
    for (p, mode, size) in expect {
        let (m, s, _, _) = long.get(p).unwrap_or_else(|| panic!("{p} not in list -l"));
        assert_eq!((m.as_str(), *s), (mode, size), "list -l of {p}");
    }
    assert_eq!(long["links/rel"].3.as_deref(), Some("../README"));
    assert_eq!(
        long["names/link to \\377"].3.as_deref(),
        Some("target with\\nnewline")
    );
    assert_eq!(long["old"].2, "2000-01-01 00:00:00");
    assert_eq!(long["time/before-1970"].2, "1969-01-01 00:00:00");
    assert_eq!(long["time/year-2100"].2, "2100-01-01 00:00:00");
    let mut long_path = "names/".to_string();
    long_path.push_str(std::str::from_utf8(&long_name()).unwrap());
    assert!(long.contains_key(&long_path), "the 255-byte name is listed");
}

#[test]
fn list_escapes_odd_names_as_its_help_says() {
    // Fixed strings, written by hand from `pkgtool list --help` ("control characters and
    // backslashes escaped (\n, \t, \\, \ooo)"), not computed by code.
    let r = pkgtool(["list"]).arg(&odd().pkg).ok();
    let lines: BTreeSet<&str> = r.stdout_str().lines().collect();
    for want in [
        r"names/with space",
        r"names/new\nline",
        r"names/tab\there",
        r"names/back\\slash",
        r"names/ctrl\001\177",
        "names/ünïcödé-日本語-😀",
        r"names/bad-\377\376-utf8",
        r"names/-leading-dash",
        r"names/--",
        r#"names/quote"'"#,
        r"names/dir\nwith\\odd name",
    ] {
        assert!(
            lines.contains(want),
            "`pkgtool list` lacks the line {want:?}"
        );
        assert!(
            lines.contains(escape_check(want).as_str()),
            "the tests' own escape disagrees with {want:?}"
        );
    }
}

/// The test-side escape applied to the unescaped form of a fixed string: both must agree.
fn escape_check(fixed: &str) -> String {
    let raw = fixed
        .replace(r"\\", "\u{0}")
        .replace(r"\n", "\n")
        .replace(r"\t", "\t")
        .replace(r"\001", "\u{1}")
        .replace(r"\177", "\u{7f}")
        .replace("\u{0}", "\\");
    let mut bytes = raw.into_bytes();
    // The two invalid bytes, written as \377\376 in the fixed string.
    if let Some(i) = bytes.windows(8).position(|w| w == br"\377\376") {
        bytes.splice(i..i + 8, [0xff, 0xfe]);
    }
    escape(&bytes)
}

#[test]
fn round_trip_usr_share_doc() {
    let b = doc();
    let entries = walk(&b.src);
    check_round_trip(b, &entries, false);
    let bash: Vec<&SrcEntry> = entries
        .iter()
        .filter(|e| e.is_file() && e.rel.starts_with(b"bash/"))
        .collect();
    assert!(bash.len() >= 5, "/usr/share/doc/bash has files");
    for e in bash {
        assert_cat_matches(&b.pkg, e);
    }
    for e in sample_files(&entries, 300) {
        assert_cat_matches(&b.pkg, e);
    }
}

#[test]
fn round_trip_usr_include() {
    let b = include();
    let entries = walk(&b.src);
    check_round_trip(b, &entries, false);
    let sample = sample_files(&entries, 300);
    assert!(sample.len() >= 250);
    for e in sample {
        assert_cat_matches(&b.pkg, e);
    }
    // Paths are bytes: a path given with a trailing slash or `./` still resolves.
    let stdio = entries
        .iter()
        .find(|e| e.rel == b"stdio.h")
        .expect("/usr/include/stdio.h");
    let r = pkgtool(["cat"])
        .arg(&b.pkg)
        .arg(OsStr::new("./stdio.h"))
        .ok();
    assert_eq!(r.stdout, std::fs::read(&stdio.path).unwrap());
}
