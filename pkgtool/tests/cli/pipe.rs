//! A closed stdout (`pkgtool list BIG | head -1`) ends the command quietly with exit 0.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use crate::util::*;

/// Spawns `pkgtool ARGS`, reads one line of its output, closes the pipe, and checks that
/// it exits 0 and says nothing on stderr.
fn head_1(args: &[&std::ffi::OsStr]) {
    let mut c = pkgtool(args);
    let mut child = c
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = Vec::new();
    out.read_until(b'\n', &mut line).unwrap();
    assert!(!line.is_empty(), "no output from {args:?}");
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{args:?} | head -1: exit {status}, stderr {err:?}"
    );
    assert!(
        err.is_empty(),
        "{args:?} | head -1 printed to stderr: {err:?}"
    );
}

#[test]
fn broken_pipe_exits_0_quietly() {
    let b = include();
    let pkg = b.pkg.as_os_str();
    for flags in [&[][..], &["-l"], &["--json"]] {
        let mut args = vec![std::ffi::OsStr::new("list")];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        args.push(pkg);
        head_1(&args);
    }
    // cat of a file much larger than a pipe buffer.
    let big = walk(&b.src)
        .into_iter()
        .filter(|e| e.is_file())
        .max_by_key(|e| e.md.len())
        .unwrap();
    assert!(big.md.len() > 1 << 20, "a file over 1 MiB in /usr/include");
    use std::os::unix::ffi::OsStrExt;
    head_1(&[
        "cat".as_ref(),
        pkg,
        "--".as_ref(),
        std::ffi::OsStr::from_bytes(&big.rel),
    ]);
}
