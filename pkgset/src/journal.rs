//! The audit trail of a layer: one record for every change of its set, whoever made it
//! (`pkgtool install`, a file dropped into `packages/` and taken up by the daemon, a
//! rollback, a boot fallback, a boot assessment that gave up on a generation, gc, ...).
//!
//! ```text
//! <layer>/state/journal        one record a line:  <16 hex digits> <JSON>\n
//! <layer>/state/journal.old    the previous file, once the journal passed ROTATE_AT
//! ```
//!
//! The hex digits are the first 8 bytes of the BLAKE3 hash of the JSON. A record is
//! appended with one `write` (`O_APPEND`) and made durable with `fsync` before the change
//! it records is reported done. A power cut can leave only the last line torn: readers skip
//! a line whose checksum does not match (and say how many they skipped), never fail on
//! it; the next writer cuts a torn tail off before it appends, so one torn record never
//! glues itself to the next.
//!
//! Records are written by [`crate::generation::commit`], [`crate::generation::switch_to`]
//! and [`crate::generation::gc`] themselves, so no path that changes a set can forget
//! one, and by [`crate::boot`] for a boot that serves another generation than the
//! active one. They also go to the systemd journal (when one runs) with the
//! [`MESSAGE_ID`] below.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use format::active_list::ActiveList;
use serde::{Deserialize, Serialize};

use crate::generation::{io_err, sync_dir, LayerPaths, StateError};

/// The systemd journal's MESSAGE_ID of a record of this trail (`journalctl
/// MESSAGE_ID=...` lists every change of every layer).
pub const MESSAGE_ID: &str = "5f0c2c8e7a0b4d3c9a6e2b1f4d8c7a10";

/// A journal larger than this is renamed to `journal.old` before the next append.
pub const ROTATE_AT: u64 = 8 << 20;

/// The most bytes of journal a reader takes in (of each of the two files).
pub const MAX_READ: u64 = 64 << 20;

/// The journal file of a layer.
pub fn path(layer: &LayerPaths) -> PathBuf {
    layer.state().join("journal")
}

/// The previous journal file of a layer.
pub fn old_path(layer: &LayerPaths) -> PathBuf {
    layer.state().join("journal.old")
}

/// Who made a change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    /// The real user id of the process.
    pub uid: u32,
    /// Its user name (from /etc/passwd), or the number.
    pub user: String,
    /// `$SUDO_USER`, when the process runs under sudo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_user: Option<String>,
    /// The process's command line.
    pub command: String,
}

impl Who {
    /// The calling process.
    pub fn me() -> Who {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let command = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        Who {
            uid,
            // uid 0 is root even where there is no /etc/passwd (an initramfs).
            user: user_name(uid).unwrap_or_else(|| {
                if uid == 0 {
                    "root".into()
                } else {
                    uid.to_string()
                }
            }),
            sudo_user: std::env::var("SUDO_USER").ok().filter(|s| !s.is_empty()),
            command: clip(&command, 1024),
        }
    }
}

/// The name of `uid` in /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    let text = fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id = f.nth(1)?;
        (id.parse() == Ok(uid)).then(|| name.to_owned())
    })
}

/// One health check of a service (filled by service transactions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The service (unit) checked.
    pub service: String,
    /// Which check: `ready`, `health`, `watchdog`, `stable`.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// What it saw, on one line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One record of the trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When (UTC, RFC 3339).
    pub time: String,
    /// What kind of change: `install`, `remove`, `update`, `drop`, `rollback`,
    /// `boot-fallback`, `boot-assessment`, `health-rollback`, `gc`, `adopt`, ...
    pub kind: String,
    /// Who made it.
    pub who: Who,
    /// The reason as the change gives it (a generation's reason, a boot's message).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The active generation before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// The active generation after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Packages that became active (`name-version`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// Packages that stopped being active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Generations deleted (gc).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_generations: Vec<u64>,
    /// Services stopped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
    /// Services started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<String>,
    /// Health checks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// The outcome: `done`, `fallback`, `rolled-back`, `failed`.
    pub verdict: String,
}

impl Record {
    /// A record of `kind` made now by this process, with `verdict` `done`.
    pub fn new(kind: &str, reason: &str) -> Record {
        Record {
            time: crate::stack::now_utc(),
            kind: kind.to_owned(),
            who: Who::me(),
            reason: clip(reason, 4096),
            verdict: "done".into(),
            ..Record::default()
        }
    }

    /// Fills `before`, `after`, `added` and `removed` from two active lists.
    pub fn between(mut self, before: Option<&ActiveList>, after: &ActiveList) -> Record {
        let gen = |l: &ActiveList| l.meta.get("generation").and_then(|g| g.parse().ok());
        let labels =
            |l: &ActiveList| -> Vec<String> { l.entries.iter().map(|e| e.label.clone()).collect() };
        let old = before.map(labels).unwrap_or_default();
        let new = labels(after);
        self.before = before.and_then(gen);
        self.after = gen(after);
        self.added = new.iter().filter(|l| !old.contains(l)).cloned().collect();
        self.removed = old.iter().filter(|l| !new.contains(l)).cloned().collect();
        self
    }

    /// The record as one line of text: `<checksum> <JSON>\n`.
    pub fn to_line(&self) -> String {
        let json = serde_json::to_string(self).expect("a record serializes");
        format!("{} {json}\n", checksum(json.as_bytes()))
    }

    /// One line of a journal (without its newline); `None` if torn or damaged.
    pub fn parse_line(line: &str) -> Option<Record> {
        let (sum, json) = line.split_once(' ')?;
        if sum != checksum(json.as_bytes()) {
            return None;
        }
        serde_json::from_str(json).ok()
    }

    /// One human line: time, generations, kind, who, packages, verdict.
    pub fn summary(&self) -> String {
        let gens = match (self.before, self.after) {
            (Some(b), Some(a)) if a != b => format!("{b} -> {a}"),
            (_, Some(a)) => format!("{a}"),
            (Some(b), None) => format!("{b}"),
            (None, None) => "-".into(),
        };
        let who = match &self.who.sudo_user {
            Some(s) => format!("{} (sudo {s})", self.who.user),
            None => self.who.user.clone(),
        };
        let mut what: Vec<String> = self.added.iter().map(|l| format!("+{l}")).collect();
        what.extend(self.removed.iter().map(|l| format!("-{l}")));
        what.extend(
            self.deleted_generations
                .iter()
                .map(|g| format!("-generation {g}")),
        );
        let what = if what.len() > 6 {
            format!("{} ... ({} in all)", what[..6].join(" "), what.len())
        } else {
            what.join(" ")
        };
        let mut s = format!(
            "{}  {:<8} {:<16} {:<10} {}",
            self.time, gens, self.kind, who, self.verdict
        );
        if !what.is_empty() {
            s.push_str("  ");
            s.push_str(&what);
        }
        for c in &self.checks {
            s.push_str(&format!(
                "  [{} {} {} {} ms{}]",
                c.service,
                c.check,
                if c.ok { "ok" } else { "FAILED" },
                c.ms,
                if c.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.detail)
                }
            ));
        }
        if self.verdict != "done" && !self.reason.is_empty() {
            s.push_str(&format!("  ({})", self.reason));
        }
        s
    }
}

fn checksum(bytes: &[u8]) -> String {
    let h = blake3::hash(bytes);
    h.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `s` on one line, at most `max` characters.
fn clip(s: &str, max: usize) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() <= max {
        one
    } else {
        one.chars().take(max).collect::<String>() + "..."
    }
}

/// Appends `rec` to the layer's journal, durably, and sends it to the systemd journal
/// when one runs. The caller holds the layer's lock (it is changing the set).
pub fn append(layer: &LayerPaths, rec: &Record) -> Result<(), StateError> {
    let path = path(layer);
    fs::create_dir_all(layer.state()).map_err(io_err(&layer.state()))?;
    rotate(layer)?;
    let created = !path.exists();
    let mut f = open_for_append(&path).map_err(io_err(&path))?;
    cut_torn_tail(&mut f).map_err(io_err(&path))?;
    f.write_all(rec.to_line().as_bytes())
        .map_err(io_err(&path))?;
    f.sync_data().map_err(io_err(&path))?;
    if created {
        sync_dir(&layer.state())?;
    }
    to_systemd_journal(layer, rec);
    Ok(())
}

/// Opens the journal for appending: never through a link, never a FIFO or a device.
fn open_for_append(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// A journal whose last line has no newline (an append cut short) loses that line.
fn cut_torn_tail(f: &mut File) -> io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::Start(len - 1))?;
    f.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the last newline, reading backwards in blocks.
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return f.set_len(start + i as u64 + 1);
        }
        end = start;
    }
    f.set_len(0)
}

/// Renames a journal past [`ROTATE_AT`] to `journal.old` (replacing the older one).
fn rotate(layer: &LayerPaths) -> Result<(), StateError> {
    let path = path(layer);
    match fs::symlink_metadata(&path) {
        Ok(md) if md.is_file() && md.len() >= ROTATE_AT => {
            fs::rename(&path, old_path(layer)).map_err(io_err(&path))?;
            sync_dir(&layer.state())
        }
        _ => Ok(()),
    }
}

/// What a reader found: the records, oldest first, and how many lines it skipped.
#[derive(Debug, Default)]
pub struct History {
    /// The records, oldest first.
    pub records: Vec<Record>,
    /// Lines that were torn or damaged (skipped).
    pub skipped: usize,
}

/// Reads a layer's trail (`journal.old`, then `journal`). No journal is an empty history.
pub fn read(layer: &LayerPaths) -> Result<History, StateError> {
    let mut h = History::default();
    for p in [old_path(layer), path(layer)] {
        let bytes = match read_tail(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&p)(e)),
        };
        let text = String::from_utf8_lossy(&bytes);
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            match Record::parse_line(line) {
                Some(r) => h.records.push(r),
                None => h.skipped += 1,
            }
        }
    }
    Ok(h)
}

/// The last [`MAX_READ`] bytes of a journal file (from a line start).
fn read_tail(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = crate::owner::open_in_layer(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_READ);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(MAX_READ).read_to_end(&mut bytes)?;
    if start > 0 {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(i) => {
                bytes.drain(..=i);
            }
            None => bytes.clear(),
        }
    }
    Ok(bytes)
}

/// Sends a record to the systemd journal (native protocol), if journald runs. Best effort.
fn to_systemd_journal(layer: &LayerPaths, rec: &Record) {
    let sock = Path::new("/run/systemd/journal/socket");
    if !sock.exists() {
        return;
    }
    let field = |k: &str, v: &str| format!("{k}={}\n", v.replace('\n', " "));
    let mut msg = String::new();
    msg += &field("MESSAGE_ID", MESSAGE_ID);
    msg += &field("PRIORITY", if rec.verdict == "done" { "5" } else { "4" });
    msg += &field("SYSLOG_IDENTIFIER", "packagefs-audit");
    msg += &field(
        "MESSAGE",
        &format!("layer {}: {}", layer.dir.display(), rec.summary()),
    );
    msg += &field("PACKAGEFS_LAYER", &layer.dir.display().to_string());
    msg += &field("PACKAGEFS_KIND", &rec.kind);
    msg += &field("PACKAGEFS_VERDICT", &rec.verdict);
    if let Some(a) = rec.after {
        msg += &field("PACKAGEFS_GENERATION", &a.to_string());
    }
    msg += &field(
        "PACKAGEFS_RECORD",
        &serde_json::to_string(rec).unwrap_or_default(),
    );
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(msg.as_bytes(), sock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use format::active_list::Entry;

    fn layer() -> (tempfile::TempDir, LayerPaths) {
        let d = tempfile::tempdir().unwrap();
        let l = LayerPaths::new(d.path());
        (d, l)
    }

    fn rec(kind: &str, after: u64) -> Record {
        let mut r = Record::new(kind, "test");
        r.after = Some(after);
        r
    }

    #[test]
    fn appends_and_reads_back_in_order() {
        let (_d, l) = layer();
        for n in 1..=3 {
            append(&l, &rec("install", n)).unwrap();
        }
        let h = read(&l).unwrap();
        assert_eq!(h.skipped, 0);
        assert_eq!(
            h.records
                .iter()
                .map(|r| r.after.unwrap())
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(h.records[0].who, Who::me());
        let text = fs::read_to_string(path(&l)).unwrap();
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn a_torn_last_record_is_skipped_then_cut_off() {
        let (_d, l) = layer();
        append(&l, &rec("install", 1)).unwrap();
        append(&l, &rec("install", 2)).unwrap();
        // A power cut in the middle of the third append.
        let line = rec("install", 3).to_line();
        let mut f = OpenOptions::new().append(true).open(path(&l)).unwrap();
        f.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
        drop(f);
        let h = read(&l).unwrap();
        assert_eq!((h.records.len(), h.skipped), (2, 1));
        // The next append cuts the torn tail off: it does not glue itself to it.
        append(&l, &rec("rollback", 4)).unwrap();
        let h = read(&l).unwrap();
        assert_eq!((h.records.len(), h.skipped), (3, 0));
        assert_eq!(h.records[2].kind, "rollback");
    }

    #[test]
    fn a_damaged_record_is_skipped_not_fatal() {
        let (_d, l) = layer();
        append(&l, &rec("install", 1)).unwrap();
        append(&l, &rec("remove", 2)).unwrap();
        let text = fs::read_to_string(path(&l))
            .unwrap()
            .replacen("install", "INSTALL", 1);
        fs::write(path(&l), text).unwrap();
        let h = read(&l).unwrap();
        assert_eq!((h.records.len(), h.skipped), (1, 1));
        assert_eq!(h.records[0].kind, "remove");
    }

    #[test]
    fn no_journal_is_an_empty_history() {
        let (_d, l) = layer();
        let h = read(&l).unwrap();
        assert!(h.records.is_empty() && h.skipped == 0);
    }

    #[test]
    fn rotates_past_the_limit_and_reads_both() {
        let (_d, l) = layer();
        append(&l, &rec("install", 1)).unwrap();
        let f = OpenOptions::new().write(true).open(path(&l)).unwrap();
        // A journal at the limit (padding lines that are skipped).
        let len = f.metadata().unwrap().len();
        f.set_len(ROTATE_AT.max(len)).unwrap();
        drop(f);
        let mut text = fs::read(path(&l)).unwrap();
        let n = text.len();
        text[n - 1] = b'\n';
        fs::write(path(&l), &text).unwrap();
        append(&l, &rec("install", 2)).unwrap();
        assert!(old_path(&l).exists());
        let h = read(&l).unwrap();
        let gens: Vec<u64> = h.records.iter().map(|r| r.after.unwrap()).collect();
        assert_eq!(gens, [1, 2]);
    }

    #[test]
    fn a_link_or_a_fifo_is_never_written_through() {
        let (d, l) = layer();
        fs::create_dir_all(l.state()).unwrap();
        let target = d.path().join("elsewhere");
        fs::write(&target, "").unwrap();
        std::os::unix::fs::symlink(&target, path(&l)).unwrap();
        assert!(append(&l, &rec("install", 1)).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "");
        fs::remove_file(path(&l)).unwrap();
        let c = std::ffi::CString::new(path(&l).as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(
            append(&l, &rec("install", 1)).is_err(),
            "a FIFO journal must be refused, not block"
        );
    }

    #[test]
    fn between_names_the_packages_that_changed() {
        let list = |g: u64, labels: &[&str]| {
            let mut l = ActiveList::default();
            l.meta.insert("generation".into(), g.to_string());
            for (i, lab) in labels.iter().enumerate() {
                let mut id = [0u8; 32];
                id[0] = i as u8;
                l.entries.push(Entry {
                    id: format::archive::PackageId(id),
                    label: lab.to_string(),
                });
            }
            l
        };
        let a = list(1, &["a-1.0.0", "b-1.0.0"]);
        let b = list(2, &["a-1.0.0", "b-2.0.0", "c-1.0.0"]);
        let r = Record::new("install", "x").between(Some(&a), &b);
        assert_eq!((r.before, r.after), (Some(1), Some(2)));
        assert_eq!(r.added, ["b-2.0.0", "c-1.0.0"]);
        assert_eq!(r.removed, ["b-1.0.0"]);
        assert!(r.summary().contains("1 -> 2") && r.summary().contains("+c-1.0.0"));
    }
}
