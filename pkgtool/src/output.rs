//! Output: a buffered stdout writer, JSON documents, human formatting helpers.

use std::io::{self, Write};

use format::archive::ChunkId;
use format::manifest::{Manifest, Origin};
use graft::Stats;
use pkgset::journal::Record;
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

// The JSON documents of the commands (`--json`), command by command.

// pkgtool apply-delta

#[derive(Serialize)]
pub struct AppliedJson {
    pub output: String,
    pub id: String,
    pub old_id: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub signer: Option<String>,
    pub trusted: bool,
}

// pkgtool boot-entries

/// `--json`: what was written.
#[derive(Serialize)]
pub struct EntriesJson {
    pub dir: String,
    /// Every entry file, the default one first.
    pub entries: Vec<EntryJson>,
    /// Stale `packagefs-gen-*.conf` removed.
    pub removed: Vec<String>,
}

#[derive(Serialize)]
pub struct EntryJson {
    pub file: String,
    pub generation: Option<u64>,
}

// pkgtool build

#[derive(Serialize)]
pub struct BuiltJson {
    pub output: String,
    pub name: String,
    pub version: String,
    pub id: String,
    pub signer: Option<String>,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub deduplicated_files: u64,
    pub content_bytes: u64,
    pub unique_bytes: u64,
    pub heap_bytes: u64,
    pub file_bytes: u64,
    pub chunks: u32,
    pub deduplicated_chunks: u32,
    pub ratio: f64,
    pub compression: String,
    pub chunk_size: u32,
}

// pkgtool gc

#[derive(Serialize)]
pub struct GcJson {
    pub removed_generations: Vec<u64>,
    pub removed_package_files: usize,
}

// pkgtool generations

#[derive(Serialize)]
pub struct GenerationJson {
    pub generation: u64,
    pub time: Option<String>,
    pub reason: Option<String>,
    pub packages: Vec<String>,
    pub active: bool,
}

// pkgtool graft

/// The result of one graft, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct GraftedJson {
    pub input: String,
    pub output: String,
    pub name: String,
    pub version: String,
    pub id: String,
    pub signer: Option<String>,
    pub origin: Option<Origin>,
    pub requires: Vec<String>,
    pub provides: Vec<String>,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub content_bytes: u64,
    pub file_bytes: u64,
    pub chunks: u32,
    pub compression: String,
    pub chunk_size: u32,
    #[serde(flatten)]
    pub stats: Stats,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GraftJson {
    pub packages: Vec<GraftedJson>,
}

// pkgtool history

#[derive(Serialize)]
pub struct HistoryJson<'a> {
    pub layer: String,
    pub records: &'a [Record],
    /// Torn or damaged records that were skipped.
    pub skipped: usize,
}

// pkgtool info

#[derive(Serialize)]
pub struct InfoJson<'a> {
    pub path: String,
    pub id: String,
    pub signer: Option<String>,
    pub format_version: String,
    pub manifest: &'a Manifest,
    pub entries: u32,
    pub names: u32,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub content_bytes: u64,
    pub unique_bytes: u64,
    pub heap_bytes: u64,
    pub file_bytes: u64,
    pub ratio: f64,
    pub compression: String,
    pub chunk_size: u32,
    pub chunks: u32,
    /// A thin package's source (FORMAT.md §12); absent for a whole package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thin: Option<&'a format::archive::thin::Source>,
}

// pkgtool list

#[derive(Serialize)]
pub struct ListLineJson {
    pub path: String,
    pub kind: &'static str,
    pub mode: String,
    pub size: u64,
    pub mtime: i64,
    pub nlink: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

// pkgtool publish

#[derive(serde::Serialize)]
pub struct PublishJson<'a> {
    pub repository: &'a str,
    pub version: u64,
    pub added: &'a [repo::IndexEntry],
    pub uploaded: usize,
    /// When the index expires (`YYYY-MM-DDTHH:MM:SSZ`).
    pub expires: String,
    /// What was not done and why (a delta that could not be made).
    pub notes: &'a [String],
}

// pkgtool resolve

#[derive(Serialize)]
pub struct LayerJson {
    pub name: String,
    pub dir: String,
    pub packages: Vec<PkgJson>,
}

#[derive(Serialize)]
pub struct ResolveJson<'a> {
    pub ok: bool,
    pub layers: Vec<LayerJson>,
    /// Why the stack does not resolve, one line.
    pub error: Option<String>,
    /// The same, problem by problem, each with its kind and fields.
    pub problems: Vec<ProblemJson<'a>>,
    /// Package files that were not opened, each with its kind.
    pub refused: Vec<RefusalJson>,
}

// pkgtool set

#[derive(Serialize)]
pub struct PkgJson {
    pub name: String,
    pub version: String,
    pub id: String,
    pub file: String,
}

#[derive(Serialize)]
pub struct ChangeJson<'a> {
    pub layer: String,
    pub generation: Option<u64>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub broken: Vec<ProblemJson<'a>>,
    pub skipped: Vec<SkippedJson<'a>>,
}

// pkgtool status

#[derive(Serialize)]
pub struct InactiveJson {
    pub file: String,
    pub package: Option<String>,
    pub reason: String,
}

#[derive(Serialize)]
pub struct StatusJson {
    pub layer: String,
    pub dir: String,
    pub generation: Option<u64>,
    pub time: Option<String>,
    pub reason: Option<String>,
    pub active: Vec<PkgJson>,
    pub inactive: Vec<InactiveJson>,
    pub ok: bool,
    pub problems: Vec<String>,
    pub damaged: Vec<DamagedJson>,
    pub pending: Option<PendingJson>,
    /// Boot assessment (`state/boot`), where the layer was booted from.
    pub boot: Option<BootJson>,
}

#[derive(Serialize)]
pub struct BootJson {
    pub booted: Option<u64>,
    pub how: Option<String>,
    pub good: Vec<u64>,
    pub bad: Vec<u64>,
    pub trying: Option<u64>,
    pub tries_left: Option<u32>,
    pub note: Option<String>,
    pub warning: Option<String>,
}

/// A file of packages/ the set refuses for now (decided again when the set changes).
#[derive(Serialize)]
pub struct WaitingJson {
    pub file: String,
    pub reason: String,
}

#[derive(Serialize)]
pub struct DamagedJson {
    pub package: String,
    pub id: String,
    /// `missing`, `other-id`, `other-label`, or why its file does not open
    /// (`unreadable`, `untrusted`, `invalid`, `policy`).
    pub kind: &'static str,
    pub reason: String,
}

/// What the next reconcile (the daemon's, or the next pkgtool change) would do with the
/// files of `packages/`.
#[derive(Serialize)]
pub struct PendingJson {
    pub reason: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub waiting: Vec<WaitingJson>,
}

// pkgtool verify

#[derive(Serialize)]
pub struct BadChunkJson {
    pub chunk: ChunkId,
    pub error: String,
    pub files: Vec<String>,
}

#[derive(Serialize)]
pub struct VerifiedJson {
    pub package: String,
    pub ok: bool,
    pub id: String,
    pub name: String,
    pub version: String,
    pub signer: Option<String>,
    pub trusted: Option<bool>,
    pub trust_error: Option<String>,
    pub chunks: u32,
    pub bad_chunks: Vec<BadChunkJson>,
    pub heap_error: Option<String>,
}
