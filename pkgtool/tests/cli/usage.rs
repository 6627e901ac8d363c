//! Usage errors exit 2; every subcommand's `--help` exits 0 and shows an example.

use crate::util::*;

#[test]
fn usage_errors_exit_2() {
    let cases: [&[&str]; 10] = [
        &[],
        &["frobnicate"],
        &["list", "--no-such-flag", "x.hpkg"],
        &["list"],
        &[
            "build",
            "src",
            "-o",
            "x.hpkg",
            "--unsigned",
            "--manifest",
            "m.json",
            "--compression",
            "brotli",
        ],
        &[
            "build",
            "src",
            "-o",
            "x.hpkg",
            "--unsigned",
            "--manifest",
            "m.json",
            "--compression",
            "zstd:99",
        ],
        &[
            "build",
            "src",
            "-o",
            "x.hpkg",
            "--unsigned",
            "--manifest",
            "m.json",
            "--chunk-size",
            "100K",
        ],
        &[
            "build",
            "src",
            "-o",
            "x.hpkg",
            "--unsigned",
            "--manifest",
            "m.json",
            "--chunk-size",
            "2M",
        ],
        &["build", "src", "-o", "x.hpkg", "--manifest", "m.json"],
        &[
            "verify",
            "x.hpkg",
            "--key",
            "a.pub",
            "--trusted-keys",
            "dir",
        ],
    ];
    let s = Scratch::new();
    for args in cases {
        let mut c = pkgtool(args);
        c.command().current_dir(s.path());
        let r = c.fails(2);
        assert!(
            !r.stderr.is_empty(),
            "`{}` explains the usage error",
            r.shown
        );
    }
    assert!(dir_names(s.path()).is_empty(), "a usage error wrote a file");
    pkgtool(["build", "--compression", "brotli"])
        .fails(2)
        .stderr_contains("unknown compression `brotli`");
    pkgtool(["build", "--compression", "lz4:1"])
        .fails(2)
        .stderr_contains("lz4 has no levels");
    pkgtool(["build", "--chunk-size", "100K"])
        .fails(2)
        .stderr_contains("100K");
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let top = pkgtool(["--help"]).ok();
    for sub in [
        "keygen", "build", "info", "list", "cat", "extract", "verify",
    ] {
        assert!(top.stdout_str().contains(sub), "--help lists {sub}");
        for args in [vec![sub, "--help"], vec!["help", sub]] {
            let r = pkgtool(&args).ok().stdout_contains("Example");
            assert!(
                r.stdout_str().contains(&format!("pkgtool {sub}")),
                "`{}` shows a {sub} example",
                r.shown
            );
        }
    }
    pkgtool(["--version"]).ok().stdout_contains("pkgtool");
    // The escaping rules that `util::escape` implements (and the list tests rely on) are
    // the documented ones.
    pkgtool(["list", "--help"])
        .ok()
        .stdout_contains(r"control characters and backslashes escaped (\n, \t, \\, \ooo)");
}
