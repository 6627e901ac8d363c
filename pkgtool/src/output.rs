//! Output: a buffered stdout writer, JSON documents, human formatting helpers.

use std::io::{self, Write};

use serde::Serialize;

/// Where commands write their data (stdout); messages go to stderr.
pub struct Out<'a> {
    w: io::BufWriter<io::StdoutLock<'a>>,
}

impl<'a> Out<'a> {
    /// Wraps stdout.
    pub fn new(lock: io::StdoutLock<'a>) -> Self {
        Out {
            w: io::BufWriter::with_capacity(1 << 16, lock),
        }
    }

    /// Flushes buffered output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// Writes one JSON document (pretty) followed by a newline.
    pub fn json<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        // `io::Error::from` unwraps a write error, so `main` sees a broken pipe as one.
        serde_json::to_writer_pretty(&mut self.w, v).map_err(io::Error::from)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    /// Writes one JSON Lines record.
    pub fn json_line<T: Serialize>(&mut self, v: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.w, v).map_err(io::Error::from)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }
}

impl Write for Out<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// An error and its causes on one line ([`pkgset::stack::one_line`]).
pub fn one_line(e: &anyhow::Error) -> String {
    pkgset::stack::one_line(e.as_ref())
}

/// `1.5 MiB`-style sizes.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `drwxr-xr-x`-style mode string.
pub fn mode_string(kind: format::archive::Kind, perm: u32) -> String {
    use format::archive::Kind;
    let mut s = String::with_capacity(10);
    s.push(match kind {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::File => '-',
    });
    let bit = |m: u32, c: char| if perm & m != 0 { c } else { '-' };
    let special = |x: u32, s_bit: u32, on: char, off: char| match (perm & x != 0, perm & s_bit != 0)
    {
        (true, true) => on,
        (false, true) => off,
        (true, false) => 'x',
        (false, false) => '-',
    };
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(0o100, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(0o010, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(0o001, 0o1000, 't', 'T'));
    s
}

/// `YYYY-MM-DD HH:MM:SS` in UTC ([`pkgset::stack::utc`] with a space, as `tar tv` shows).
pub fn utc_time(secs: i64) -> String {
    pkgset::stack::utc(secs).replace('T', " ").replace('Z', "")
}

pub use format::text::escape;

/// A path inside a package for messages, of bounded length however deep or long it is:
/// each component escaped and, past 64 characters, cut in its middle; a path of more than
/// six components (or longer than 240 characters) shows its first two and last two
/// components and how many levels it has: `usr/share/.../d/leaf (452 levels)`.
pub fn short_path(comps: &[Vec<u8>]) -> String {
    const COMPONENT: usize = 64;
    if comps.is_empty() {
        return ".".into();
    }
    let shown: Vec<String> = comps
        .iter()
        .map(|c| cut_middle(&escape(c), COMPONENT))
        .collect();
    let n = shown.len();
    let joined = shown.join("/");
    if n <= 6 && joined.len() <= 240 {
        joined
    } else if n <= 4 {
        format!("{joined} ({n} levels)")
    } else {
        format!(
            "{}/{}/.../{}/{} ({n} levels)",
            shown[0],
            shown[1],
            shown[n - 2],
            shown[n - 1]
        )
    }
}

/// `s`, or its first and last characters around `...` when longer than `max` characters.
fn cut_middle(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_owned();
    }
    let keep = (max - 3) / 2;
    let head: String = s.chars().take(keep).collect();
    let tail: String = s.chars().skip(count - keep).collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        use format::archive::Kind;
        assert_eq!(mode_string(Kind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Kind::File, 0o1644), "-rw-r--r-T");
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(escape(b"a\nb\\c\xff"), "a\\nb\\\\c\\377");
        assert_eq!(human_size(1536), "1.5 KiB");
    }

    #[test]
    fn short_paths_are_bounded() {
        let c = |p: &str| -> Vec<Vec<u8>> { p.split('/').map(|s| s.as_bytes().to_vec()).collect() };
        assert_eq!(short_path(&[]), ".");
        assert_eq!(short_path(&c("usr/bin/x")), "usr/bin/x");
        let deep = c(&["d"; 500].join("/"));
        assert_eq!(short_path(&deep), "d/d/.../d/d (500 levels)");
        let long = vec![vec![b'x'; 255]; 5];
        let s = short_path(&long);
        assert!(s.len() < 300 && s.ends_with(" (5 levels)"), "{s}");
        let mut huge = vec![vec![b'\n'; 255]; 1000];
        huge.push(b"leaf".to_vec());
        let s = short_path(&huge);
        assert!(s.len() < 300 && s.ends_with("/leaf (1001 levels)"), "{s}");
    }
}

/// The JSON of why a set breaks the invariant: the problem's `kind` and fields, and the
/// line a human reads (`message`).
#[derive(Serialize)]
pub struct ProblemJson<'a> {
    /// The problem, tagged with its kind.
    #[serde(flatten)]
    pub problem: &'a pkgset::Problem,
    /// The problem as one line.
    pub message: String,
}

impl<'a> From<&'a pkgset::Problem> for ProblemJson<'a> {
    fn from(problem: &'a pkgset::Problem) -> Self {
        ProblemJson {
            problem,
            message: problem.to_string(),
        }
    }
}

/// The JSON of a package a change did not activate.
#[derive(Serialize)]
pub struct SkippedJson<'a> {
    /// `name-version`.
    pub package: &'a str,
    /// `not-newer` or `refused`.
    pub kind: &'static str,
    /// The problems, for `refused`.
    pub problems: Vec<ProblemJson<'a>>,
    /// The whole as one line.
    pub message: String,
}

impl<'a> From<&'a pkgset::Skipped> for SkippedJson<'a> {
    fn from(s: &'a pkgset::Skipped) -> Self {
        SkippedJson {
            package: &s.package,
            kind: s.why.kind(),
            problems: match &s.why {
                pkgset::Skip::Refused(r) => r.problems.iter().map(ProblemJson::from).collect(),
                pkgset::Skip::NotNewer { .. } => Vec::new(),
            },
            message: s.to_string(),
        }
    }
}

/// The JSON of a package file that was not opened: `kind` is `unreadable`, `untrusted`,
/// `invalid` or `policy`.
#[derive(Serialize)]
pub struct RefusalJson {
    /// The file.
    pub file: String,
    /// Why, by kind.
    pub kind: &'static str,
    /// Why, one line.
    pub reason: String,
}

impl From<&pkgset::stack::Refusal> for RefusalJson {
    fn from(r: &pkgset::stack::Refusal) -> Self {
        RefusalJson {
            file: r.path.display().to_string(),
            kind: r.reason.kind(),
            reason: r.reason.to_string(),
        }
    }
}

/// The kind of why a listed package cannot be used: `unreadable`, `untrusted`,
/// `invalid`, `policy` (the file does not open), `missing`, `other-id` or `other-label`.
pub fn unusable_kind(u: &pkgset::Unusable) -> &'static str {
    match u {
        pkgset::Unusable::Open(e) => e.kind(),
        pkgset::Unusable::Missing => "missing",
        pkgset::Unusable::OtherId { .. } => "other-id",
        pkgset::Unusable::OtherLabel { .. } => "other-label",
    }
}
