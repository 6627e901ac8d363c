//! The generation a machine boots, and boot assessment.
//!
//! At boot the initramfs starts packagefs with `-o boot`, which calls [`choose`] for the
//! system layer before it mounts anything:
//!
//! ```text
//! kernel command line ──parse_cmdline──► packagefs.generation=N (this boot only), tries
//! state/boot (good, bad, on trial) ─┐
//! active.list ──────────────────────┴─► choose ──► the generation to serve + messages
//!                                          └──► state/boot written before the mount
//! ```
//!
//! - A generation pinned on the command line boots for this boot only: it is not counted
//!   and `active.list` is left alone (Haiku's "boot into an old state").
//! - Otherwise the active generation boots. One that is not known good is on trial: each
//!   boot of it counts one of its tries (default [`DEFAULT_TRIES`]; `tries=N` in
//!   `state/boot.conf`, or `packagefs.tries=N`), written crash-safely before the mount.
//!   Reaching "boot is good" ([`bless`], run by a unit after `boot-complete.target`) ends
//!   the trial. A boot that finds the tries used up marks the generation bad, takes the
//!   newest good generation that opens whole and makes that permanent (`active.list`
//!   names it again, as a rollback does), so the bad one is not retried on every boot.
//! - A generation that does not open whole (a package missing, corrupt, untrusted) falls
//!   back to the newest earlier generation that does, and the messages say which package
//!   and why. Nothing is written for that but the boot record: repairing the file brings
//!   the generation back at the next boot.
//! - Never a dead boot: when nothing better exists, the chosen generation boots anyway,
//!   with a warning.
//!
//! `state/boot` is text, one fact per line (FORMAT.md §11); a torn or garbled file is a
//! warning and counts as empty.
//!
//! [`boot_entries`] and [`write_entries`] make the Boot Loader Specification entries of a
//! layer (`pkgtool boot-entries`): one per generation, pinning it, and a default one.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::generation::{self, LayerPaths, StateError};
use crate::reconcile;
use crate::set::Candidate;
use crate::stack::{Opener, Stack};

/// Boots a generation not yet known good gets, unless configured otherwise.
pub const DEFAULT_TRIES: u32 = 3;

/// Most tries a generation can be given.
pub const MAX_TRIES: u32 = 100;

/// Largest `state/boot` and `state/boot.conf` read.
const MAX_STATE: u64 = 1 << 20;

/// What the kernel command line says to packagefs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `packagefs.generation=N`.
    pub generation: Option<u64>,
    /// `packagefs.tries=N`.
    pub tries: Option<u32>,
    /// Words of ours that did not parse (each ignored: never a dead boot).
    pub warnings: Vec<String>,
}

/// Parses `/proc/cmdline`.
pub fn parse_cmdline(text: &str) -> Cmdline {
    let mut c = Cmdline::default();
    for w in text.split_ascii_whitespace() {
        if let Some(v) = w.strip_prefix("packagefs.generation=") {
            match v.parse::<u64>() {
                Ok(n) if n > 0 => c.generation = Some(n),
                _ => c.warnings.push(format!(
                    "{w}: not a generation number: ignored, the active generation boots"
                )),
            }
        } else if let Some(v) = w.strip_prefix("packagefs.tries=") {
            match v.parse::<u32>() {
                Ok(n) if (1..=MAX_TRIES).contains(&n) => c.tries = Some(n),
                _ => c
                    .warnings
                    .push(format!("{w}: tries must be 1 to {MAX_TRIES}: ignored")),
            }
        }
    }
    c
}

/// How the generation of a boot was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The active generation.
    Active,
    /// Pinned on the kernel command line, for this boot only.
    Pinned,
    /// The one wanted did not open whole: an earlier one that does.
    Fallback,
    /// The active one used up its tries (or failed before): the last good one, made
    /// permanent.
    LastGood,
}

impl How {
    /// The word `state/boot` records.
    pub fn word(self) -> &'static str {
        match self {
            How::Active => "active",
            How::Pinned => "pinned",
            How::Fallback => "fallback",
            How::LastGood => "last-good",
        }
    }

    fn parse(w: &str) -> Option<How> {
        Some(match w {
            "active" => How::Active,
            "pinned" => How::Pinned,
            "fallback" => How::Fallback,
            "last-good" => How::LastGood,
            _ => return None,
        })
    }
}

/// The boot assessment record of a layer (`state/boot`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The generation booted last, and how it was chosen.
    pub booted: Option<(u64, How)>,
    /// Generations known good (a boot of each was blessed).
    pub good: BTreeSet<u64>,
    /// Generations that used up their tries.
    pub bad: BTreeSet<u64>,
    /// The generation on trial and its tries left.
    pub trying: Option<(u64, u32)>,
    /// Why the last boot did not boot what was asked for, if it did not.
    pub note: Option<String>,
}

impl BootState {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# packagefs boot assessment (FORMAT.md §11)\n");
        let nums =
            |set: &BTreeSet<u64>| set.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        if let Some((n, how)) = self.booted {
            let _ = writeln!(s, "booted {n} {}", how.word());
        }
        if !self.good.is_empty() {
            let _ = writeln!(s, "good {}", nums(&self.good));
        }
        if !self.bad.is_empty() {
            let _ = writeln!(s, "bad {}", nums(&self.bad));
        }
        if let Some((n, left)) = self.trying {
            let _ = writeln!(s, "trying {n} {left}");
        }
        if let Some(note) = &self.note {
            let _ = writeln!(s, "note {}", note.replace('\n', " "));
        }
        s.push_str("end\n");
        s
    }

    /// Parses the file's text; `None` if it is torn (no `end` line) or garbled.
    pub fn parse(text: &str) -> Option<BootState> {
        let mut st = BootState::default();
        let mut ended = false;
        for line in text.lines() {
            if ended {
                return None;
            }
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            let nums = || -> Option<BTreeSet<u64>> {
                rest.split_ascii_whitespace()
                    .map(|w| w.parse().ok())
                    .collect()
            };
            match key {
                "booted" => {
                    let (n, how) = rest.split_once(' ')?;
                    st.booted = Some((n.parse().ok()?, How::parse(how)?));
                }
                "good" => st.good = nums()?,
                "bad" => st.bad = nums()?,
                "trying" => {
                    let (n, left) = rest.split_once(' ')?;
                    st.trying = Some((n.parse().ok()?, left.parse().ok()?));
                }
                "note" => st.note = Some(rest.to_owned()),
                "end" => ended = true,
                _ => return None,
            }
        }
        ended.then_some(st)
    }

    /// Reads a layer's record: `(state, warning)`; a missing file is an empty record, a
    /// torn or garbled one an empty record and a warning.
    pub fn read(layer: &LayerPaths) -> (BootState, Option<String>) {
        let path = boot_file(layer);
        match generation::read_state_file(&path, MAX_STATE) {
            Ok(text) => match BootState::parse(&text) {
                Some(s) => (s, None),
                None => (
                    BootState::default(),
                    Some(format!(
                        "{}: torn or garbled: boot assessment starts afresh",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BootState::default(), None),
            Err(e) => (
                BootState::default(),
                Some(format!(
                    "{}: {e}: boot assessment starts afresh",
                    path.display()
                )),
            ),
        }
    }

    /// Writes the record crash-safely (the caller holds the layer's lock).
    pub fn write(&self, layer: &LayerPaths) -> Result<(), StateError> {
        generation::write_atomic(&boot_file(layer), self.to_text().as_bytes())?;
        generation::sync_dir(&layer.state())
    }
}

/// `state/boot`.
pub fn boot_file(layer: &LayerPaths) -> std::path::PathBuf {
    layer.state().join("boot")
}

/// `state/boot.conf`.
pub fn conf_file(layer: &LayerPaths) -> std::path::PathBuf {
    layer.state().join("boot.conf")
}

/// The tries a layer gives a new generation: `tries=N` in `state/boot.conf` (the last
/// such line), and a warning for each line that does not parse (each ignored).
pub fn configured_tries(layer: &LayerPaths) -> (Option<u32>, Vec<String>) {
    let path = conf_file(layer);
    let text = match generation::read_state_file(&path, MAX_STATE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (None, Vec::new()),
        Err(e) => return (None, vec![format!("{}: {e}: ignored", path.display())]),
    };
    let mut tries = None;
    let mut warnings = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_prefix("tries=").map(|v| v.trim().parse::<u32>()) {
            Some(Ok(n)) if (1..=MAX_TRIES).contains(&n) => tries = Some(n),
            Some(_) => warnings.push(format!(
                "{} line {}: {line}: tries must be 1 to {MAX_TRIES}: ignored",
                path.display(),
                i + 1
            )),
            None => warnings.push(format!(
                "{} line {}: {line}: not tries=N: ignored",
                path.display(),
                i + 1
            )),
        }
    }
    (tries, warnings)
}

/// What [`choose`] decided.
#[derive(Debug)]
pub struct BootChoice {
    /// The generation to serve.
    pub n: u64,
    /// How it was chosen.
    pub how: How,
    /// Its packages, opened.
    pub set: Vec<Candidate>,
    /// It is not what `active.list` names (pinned, or a fallback): serve it as it is and
    /// leave the layer alone for this boot.
    pub frozen: bool,
    /// What to say on the console and in the log, one line each.
    pub messages: Vec<String>,
}

/// Chooses the generation layer `l` boots, counts the boot try, and writes `state/boot`
/// (see the module's documentation). `below` are the sets of the layers under `l` (none
/// at boot). The caller holds the layer's lock. `Ok(None)`: the layer has no generation
/// yet (its first one is made from `packages/` as at any mount).
pub fn choose(
    stack: &Stack,
    l: usize,
    below: &[Vec<Candidate>],
    cmd: &Cmdline,
    opener: &mut Opener,
) -> Result<Option<BootChoice>, StateError> {
    let paths = stack.layers[l].paths.clone();
    let numbers = generation::generation_numbers(&paths)?;
    let Some(&newest) = numbers.last() else {
        return Ok(None);
    };
    let mut msgs: Vec<String> = cmd.warnings.clone();
    // An update the last shutdown interrupted is undone before anything is chosen: its
    // generation never passed its health checks.
    msgs.extend(crate::update::undo_at_boot(&paths));
    let (mut st, warning) = BootState::read(&paths);
    msgs.extend(warning);
    let (conf_tries, conf_warnings) = configured_tries(&paths);
    msgs.extend(conf_warnings);
    // The command line wins over the layer's boot.conf.
    let tries = cmd.tries.or(conf_tries).unwrap_or(DEFAULT_TRIES);
    let active = generation::read_list(&paths.active_list())
        .ok()
        .flatten()
        .and_then(|list| list.generation())
        .filter(|n| numbers.contains(n));
    let mut sets: Vec<Vec<Candidate>> = below.to_vec();
    sets.truncate(l);
    sets.push(Vec::new());

    let mut pinned = false;
    let mut target = active.unwrap_or(newest);
    if active.is_none() {
        msgs.push(format!(
            "active.list names no generation of this layer: booting the newest, {newest}"
        ));
    }
    match cmd.generation {
        Some(n) if numbers.contains(&n) => {
            pinned = true;
            target = n;
            msgs.push(format!(
                "booting generation {n} for this boot only (packagefs.generation={n}); the active one is {}",
                active.map_or("none".to_string(), |a| a.to_string())
            ));
        }
        Some(n) => msgs.push(format!(
            "packagefs.generation={n}: there is no generation {n}: booting generation {target}"
        )),
        None => {}
    }

    let mut how = if pinned { How::Pinned } else { How::Active };
    let mut note = None;
    // Boot assessment: a generation that used up its tries, or failed before, gives way
    // to the newest good one, for good.
    if !pinned {
        let spent = st.trying.is_some_and(|(n, left)| n == target && left == 0);
        if spent || st.bad.contains(&target) {
            let (why, reason) = if spent {
                st.bad.insert(target);
                st.trying = None;
                (
                    format!(
                        "generation {target} used up its {tries} boot tries without a good boot"
                    ),
                    format!("boot assessment: generation {target} failed {tries} boots"),
                )
            } else {
                (
                    format!(
                        "generation {target} is active but failed its boot assessment before \
                         (it is not booted by itself; packagefs.generation={target} and a \
                         blessed boot make it good)"
                    ),
                    format!("boot assessment: generation {target} failed before"),
                )
            };
            let good: Vec<u64> = st
                .good
                .iter()
                .copied()
                .filter(|&g| g != target && numbers.contains(&g))
                .collect();
            match reconcile::newest_whole(stack, l, &sets, &good, opener) {
                Ok(c) => {
                    generation::switch_to(&paths, c.n, "boot-assessment", &why)?;
                    msgs.push(format!(
                        "{why}: booting the last good generation, {}, and making it the active one",
                        c.n
                    ));
                    note = Some(format!("{reason}: rolled back to generation {}", c.n));
                    target = c.n;
                    how = How::LastGood;
                }
                Err(_) => {
                    msgs.push(format!(
                        "{why}, but no good generation opens whole: booting generation {target} anyway"
                    ));
                    note = Some(format!(
                        "{reason}, but no good generation opens whole: booted it anyway"
                    ));
                }
            }
        }
    }

    // The generation must open whole; else the newest earlier one that does, passing
    // over those that failed their assessment while another one will do.
    let upto: Vec<u64> = numbers.iter().copied().filter(|&n| n <= target).collect();
    let not_bad: Vec<u64> = upto
        .iter()
        .copied()
        .filter(|&n| n == target || !st.bad.contains(&n))
        .collect();
    let chosen = match reconcile::newest_whole(stack, l, &sets, &not_bad, opener) {
        Ok(c) => Ok(c),
        Err(_) if not_bad.len() < upto.len() => {
            reconcile::newest_whole(stack, l, &sets, &upto, opener)
        }
        Err(why) => Err(why),
    };
    let chosen = match chosen {
        Ok(c) => c,
        Err(why) => {
            let first = why
                .iter()
                .find(|w| w.0 == target)
                .or(why.first())
                .map(|(n, r)| format!(" (generation {n} {})", skip_text(r)))
                .unwrap_or_default();
            return Err(StateError::Bad {
                path: paths.generations(),
                reason: format!("no generation up to {target} opens whole{first}"),
            });
        }
    };
    if chosen.n != target {
        let mut skipped = chosen.skipped.iter();
        let reason = skipped
            .next()
            .filter(|s| s.0 == target)
            .map_or("does not open whole".to_string(), |s| skip_text(&s.1));
        let fallback = format!(
            "generation {target} {reason}; falling back to generation {}, the newest earlier one that opens whole",
            chosen.n
        );
        msgs.push(fallback.clone());
        for (n, r) in skipped {
            msgs.push(format!("generation {n} {} either", skip_text(r)));
        }
        note = Some(format!(
            "generation {target} did not open whole: booted generation {}",
            chosen.n
        ));
        if how != How::Pinned {
            how = How::Fallback;
        }
        // The audit trail: this boot serves another set than the one asked for.
        let mut rec = crate::journal::Record::new("boot-fallback", &fallback);
        rec.before = Some(target);
        rec.after = Some(chosen.n);
        rec.verdict = "fallback".into();
        if let (Ok(Some(from)), Ok(Some(to))) = (
            generation::read_list(&paths.generation_list(target)),
            generation::read_list(&paths.generation_list(chosen.n)),
        ) {
            rec = rec.between(Some(&from), &to);
        }
        crate::journal::append(&paths, &rec)?;
    }
    let n = chosen.n;

    // Count the try.
    if !pinned && !st.good.contains(&n) {
        let left = match st.trying {
            // Tries lowered during a trial count from the lower number.
            Some((t, left)) if t == n => left.min(tries).saturating_sub(1),
            _ => tries.saturating_sub(1),
        };
        st.trying = Some((n, left));
        msgs.push(format!(
            "generation {n} is on trial: boot {} of {tries} (pkgtool bless marks it good)",
            tries.saturating_sub(left)
        ));
    } else {
        msgs.push(format!("booting generation {n}"));
    }
    st.booted = Some((n, how));
    st.note = note;
    st.write(&paths)?;
    let frozen = how == How::Pinned || how == How::Fallback;
    Ok(Some(BootChoice {
        n,
        how,
        set: chosen.plan.sets[l].clone(),
        frozen,
        messages: msgs,
    }))
}

/// A reason of [`reconcile::newest_whole`] as the boot messages say it: the cause in
/// parentheses (`does not open whole (hello-2.0.0: ...)`).
fn skip_text(reason: &str) -> String {
    for head in ["does not open whole", "is refused", "cannot be read"] {
        if let Some(cause) = reason.strip_prefix(head).and_then(|r| r.strip_prefix(": ")) {
            return format!("{head} ({cause})");
        }
    }
    reason.to_string()
}

/// Marks the generation booted last as good: its trial ends, a `bad` mark goes. Returns
/// what to say. The caller holds the layer's lock.
pub fn bless(layer: &LayerPaths) -> Result<String, StateError> {
    let (mut st, warning) = BootState::read(layer);
    if let Some(w) = warning {
        return Err(StateError::Bad {
            path: boot_file(layer),
            reason: w,
        });
    }
    let Some((n, _)) = st.booted else {
        return Err(StateError::Bad {
            path: boot_file(layer),
            reason: "no boot is recorded: nothing to bless (was the layer booted with -o boot?)"
                .into(),
        });
    };
    if st.good.contains(&n) && st.trying.is_none_or(|(t, _)| t != n) {
        return Ok(format!("generation {n} is good already"));
    }
    st.good.insert(n);
    st.bad.remove(&n);
    if st.trying.is_some_and(|(t, _)| t == n) {
        st.trying = None;
    }
    st.write(layer)?;
    Ok(format!("generation {n} is good: this boot is blessed"))
}

// ---------------------------------------------------------------------------------------
// Boot Loader Specification entries

/// What every boot entry of a layer boots: the kernel, the initramfs, the kernel command
/// line (without the pin).
#[derive(Debug, Clone)]
pub struct EntrySpec {
    /// The kernel, as the boot loader finds it (`/vmlinuz`, relative to its partition).
    pub linux: String,
    /// The initramfs.
    pub initrd: String,
    /// Kernel command line words every entry gets.
    pub options: String,
}

/// One boot entry file: its name in the entries directory and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `packagefs-gen-N.conf`, or [`DEFAULT_ENTRY`].
    pub file: String,
    /// The generation it pins, `None` for the default entry.
    pub generation: Option<u64>,
    /// The file's text.
    pub text: String,
}

/// The entry that boots the active generation (under boot assessment).
pub const DEFAULT_ENTRY: &str = "packagefs.conf";

/// Prefix of the entries that pin a generation; others of ours with it are stale.
pub const ENTRY_PREFIX: &str = "packagefs-gen-";

/// A boot entry's value on one line: control characters become spaces.
fn entry_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// The Boot Loader Specification (type #1) entries of layer `layer`: one per generation,
/// which boots it with `packagefs.generation=N` (newest first in a boot menu), and a
/// default entry without the pin, listed first. Refuses a value with a line break.
pub fn boot_entries(layer: &LayerPaths, spec: &EntrySpec) -> Result<Vec<Entry>, StateError> {
    for (what, v) in [
        ("linux", &spec.linux),
        ("initrd", &spec.initrd),
        ("options", &spec.options),
    ] {
        if v.contains(['\n', '\r']) {
            return Err(StateError::Bad {
                path: layer.dir.clone(),
                reason: format!("boot entry {what}: a line break in {v:?}"),
            });
        }
    }
    let (st, _) = BootState::read(layer);
    let active = generation::read_list(&layer.active_list())
        .ok()
        .flatten()
        .and_then(|l| l.generation());
    let options = |pin: Option<u64>| {
        let mut o = spec.options.trim().to_string();
        if let Some(n) = pin {
            if !o.is_empty() {
                o.push(' ');
            }
            let _ = write!(o, "packagefs.generation={n}");
        }
        o
    };
    let body = |o: String| {
        let mut t = format!("linux {}\ninitrd {}\n", spec.linux, spec.initrd);
        if !o.is_empty() {
            let _ = writeln!(t, "options {o}");
        }
        t
    };
    let mut out = Vec::new();
    let default_version = active.map_or(String::new(), |n| format!("version {n}\n"));
    out.push(Entry {
        file: DEFAULT_ENTRY.to_string(),
        generation: None,
        text: format!(
            "# packagefs: the active generation, under boot assessment\ntitle packagefs{}\nsort-key packagefs\n{default_version}{}",
            active.map_or(String::new(), |n| format!(" (active: generation {n})")),
            body(options(None))
        ),
    });
    for n in generation::generation_numbers(layer)?.into_iter().rev() {
        let Some(list) = generation::read_list(&layer.generation_list(n))? else {
            continue;
        };
        let mut about: Vec<String> = ["time", "reason"]
            .iter()
            .filter_map(|k| list.meta.get(*k).map(|v| entry_value(v)))
            .filter(|v| !v.is_empty())
            .collect();
        if active == Some(n) {
            about.push("active".into());
        }
        if st.bad.contains(&n) {
            about.push("failed its boot assessment".into());
        } else if st.good.contains(&n) {
            about.push("good".into());
        }
        let about = if about.is_empty() {
            String::new()
        } else {
            format!(" ({})", about.join(", "))
        };
        out.push(Entry {
            file: format!("{ENTRY_PREFIX}{n}.conf"),
            generation: Some(n),
            text: format!(
                "# packagefs: generation {n} for one boot\ntitle packagefs generation {n}{about}\nsort-key packagefs-gen\nversion {n}\n{}",
                body(options(Some(n)))
            ),
        });
    }
    Ok(out)
}

/// Writes `entries` into `dir` (each crash-safely, 0644) and removes the files of ours
/// (`packagefs-gen-*.conf`) that are not among them. Returns the names removed.
pub fn write_entries(dir: &std::path::Path, entries: &[Entry]) -> Result<Vec<String>, StateError> {
    for e in entries {
        let path = dir.join(&e.file);
        // Unchanged entries are not rewritten (an ESP is FAT: spare it the writes).
        if generation::read_state_file(&path, MAX_STATE).is_ok_and(|t| t == e.text) {
            continue;
        }
        generation::write_atomic(&path, e.text.as_bytes())?;
    }
    let keep: BTreeSet<&str> = entries.iter().map(|e| e.file.as_str()).collect();
    let mut removed = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|source| StateError::Io {
        path: dir.to_owned(),
        source,
    })?;
    for d in rd.filter_map(|d| d.ok()) {
        let name = d.file_name().to_string_lossy().into_owned();
        let ours = name
            .strip_prefix(ENTRY_PREFIX)
            .and_then(|r| r.strip_suffix(".conf"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if ours && !keep.contains(name.as_str()) {
            std::fs::remove_file(d.path()).map_err(|source| StateError::Io {
                path: d.path(),
                source,
            })?;
            removed.push(name);
        }
    }
    removed.sort();
    if !removed.is_empty() {
        generation::sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words() {
        let c = parse_cmdline("console=ttyS0 packagefs.generation=4 quiet packagefs.tries=2");
        assert_eq!(c.generation, Some(4));
        assert_eq!(c.tries, Some(2));
        assert!(c.warnings.is_empty());
        let c = parse_cmdline("packagefs.generation=x packagefs.tries=0 packagefs.generation=0");
        assert_eq!(c.generation, None);
        assert_eq!(c.tries, None);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert_eq!(parse_cmdline(""), Cmdline::default());
    }

    #[test]
    fn state_round_trips_and_torn_files_are_refused() {
        let st = BootState {
            booted: Some((5, How::Fallback)),
            good: [1, 2, 4].into(),
            bad: [3].into(),
            trying: Some((5, 2)),
            note: Some("generation 6 did not open whole: booted generation 5".into()),
        };
        let text = st.to_text();
        assert_eq!(BootState::parse(&text), Some(st));
        // Torn: the end line is missing.
        let torn = &text[..text.len() - 4];
        assert_eq!(BootState::parse(torn), None);
        assert_eq!(BootState::parse("booted x active\nend\n"), None);
        assert_eq!(BootState::parse("end\nbooted 1 active\n"), None);
        assert_eq!(BootState::parse("what 1\nend\n"), None);
        assert_eq!(BootState::parse("end\n"), Some(BootState::default()));
    }

    use crate::generation::Lock;
    use crate::reconcile::tests::Rig;
    use crate::tests::m;

    /// Generation 1 holds a-1.0.0, generation 2 a-2.0.0 (active).
    fn two_generations() -> Rig {
        let mut r = Rig::new();
        r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        r.step();
        let v2 = r.lab.pkg(0, &m("a", "2.0.0", ""), &[("a", "2")]);
        r.overwrite("a.hpkg", &std::fs::read(&v2.path).unwrap());
        r.step();
        assert_eq!(r.generation(), Some(2));
        r
    }

    fn boot(r: &mut Rig, cmdline: &str) -> BootChoice {
        let _lock = Lock::acquire(&r.stack.layers[0].paths).unwrap();
        let cmd = parse_cmdline(cmdline);
        choose(&r.stack, 0, &[], &cmd, &mut r.opener)
            .unwrap()
            .expect("a generation")
    }

    fn state(r: &Rig) -> BootState {
        let (st, w) = BootState::read(&r.stack.layers[0].paths);
        assert_eq!(w, None);
        st
    }

    fn labels(c: &BootChoice) -> Vec<String> {
        c.set.iter().map(|c| c.label()).collect()
    }

    #[test]
    fn a_pinned_generation_boots_once_uncounted_and_changes_nothing() {
        let mut r = two_generations();
        let c = boot(&mut r, "quiet packagefs.generation=1");
        assert_eq!((c.n, c.how, c.frozen), (1, How::Pinned, true));
        assert_eq!(labels(&c), ["a-1.0.0"]);
        assert_eq!(r.generation(), Some(2), "active.list is left alone");
        let st = state(&r);
        assert_eq!(st.booted, Some((1, How::Pinned)));
        assert_eq!(st.trying, None, "a pinned boot is not a try");
        // The next boot without the pin: the active generation again, on trial.
        let c = boot(&mut r, "");
        assert_eq!((c.n, c.how, c.frozen), (2, How::Active, false));
        assert_eq!(state(&r).trying, Some((2, 2)));
    }

    #[test]
    fn tries_count_down_then_the_last_good_generation_boots_for_good() {
        let mut r = two_generations();
        // Generation 1 was blessed once.
        BootState {
            booted: Some((1, How::Active)),
            ..Default::default()
        }
        .write(&r.stack.layers[0].paths)
        .unwrap();
        assert!(bless(&r.stack.layers[0].paths).unwrap().contains("good"));
        for left in [2, 1, 0] {
            let c = boot(&mut r, "packagefs.tries=3");
            assert_eq!((c.n, c.how), (2, How::Active));
            assert_eq!(state(&r).trying, Some((2, left)));
            let said = c.messages.join("\n");
            assert!(said.contains(&format!("boot {} of 3", 3 - left)), "{said}");
        }
        // Never blessed: the fourth boot takes generation 1 and makes it permanent.
        let c = boot(&mut r, "packagefs.tries=3");
        assert_eq!((c.n, c.how, c.frozen), (1, How::LastGood, false));
        let said = c.messages.join("\n");
        assert!(
            said.contains("generation 2 used up its 3 boot tries")
                && said.contains("last good generation, 1"),
            "{said}"
        );
        assert_eq!(r.generation(), Some(1), "the rollback is permanent");
        let st = state(&r);
        assert!(st.bad.contains(&2) && st.trying.is_none(), "{st:?}");
        // The audit trail has it, with the reason.
        let h = crate::journal::read(&r.stack.layers[0].paths).unwrap();
        let last = h.records.last().unwrap();
        assert_eq!(
            (last.kind.as_str(), last.before, last.after),
            ("boot-assessment", Some(2), Some(1))
        );
        assert!(last.reason.contains("used up its 3 boot tries"), "{last:?}");
        // And stays so: the next boot is an ordinary boot of generation 1.
        let c = boot(&mut r, "");
        assert_eq!((c.n, c.how), (1, How::Active));
        // Generation 2 made active again by hand is not retried on its own...
        crate::generation::switch_to(&r.stack.layers[0].paths, 2, "rollback", "t").unwrap();
        let c = boot(&mut r, "");
        assert_eq!(c.n, 1, "{:?}", c.messages);
        assert!(c
            .messages
            .join(" ")
            .contains("failed its boot assessment before"));
        // ...but a pinned boot of it that is blessed makes it good again.
        crate::generation::switch_to(&r.stack.layers[0].paths, 2, "rollback", "t").unwrap();
        let c = boot(&mut r, "packagefs.generation=2");
        assert_eq!(c.n, 2);
        bless(&r.stack.layers[0].paths).unwrap();
        let c = boot(&mut r, "");
        assert_eq!((c.n, c.how), (2, How::Active));
        assert_eq!(state(&r).trying, None, "good: no trial");
    }

    #[test]
    fn no_good_generation_boots_the_chosen_one_anyway() {
        let mut r = two_generations();
        for _ in 0..3 {
            boot(&mut r, "packagefs.tries=3");
        }
        let c = boot(&mut r, "packagefs.tries=3");
        assert_eq!(c.n, 2);
        assert!(
            c.messages
                .join(" ")
                .contains("no good generation opens whole"),
            "{:?}",
            c.messages
        );
    }

    /// Spoils the active package of the rig's newest generation in the pool (and in
    /// packages/, its other copy), and forgets what was opened.
    fn spoil_active(r: &mut Rig) {
        let id = r.sets[0][0].id();
        let pool = r.stack.layers[0].paths.pool_file(&id);
        let mut bytes = std::fs::read(&pool).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        for f in [pool.clone(), r.pkgs().join("a.hpkg")] {
            let mut p = std::fs::metadata(&f).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o644);
            std::fs::set_permissions(&f, p).unwrap();
            std::fs::write(&f, &bytes).unwrap();
        }
        r.opener = Opener::new(crate::tests::lab_keys());
    }

    #[test]
    fn a_generation_that_does_not_open_whole_falls_back_and_says_which_package() {
        let mut r = two_generations();
        spoil_active(&mut r);
        let c = boot(&mut r, "");
        assert_eq!((c.n, c.how, c.frozen), (1, How::Fallback, true));
        let said = c.messages.join("\n");
        // One line: which generation, which package and why, and what boots instead.
        let line = c
            .messages
            .iter()
            .find(|m| m.starts_with("generation 2 does not open whole ("))
            .unwrap_or_else(|| panic!("{said}"));
        assert!(
            line.contains("a-2.0.0")
                && line.ends_with(
                    "); falling back to generation 1, the newest earlier one that opens whole"
                ),
            "{line}"
        );
        assert_eq!(
            c.messages.last().unwrap(),
            "generation 1 is on trial: boot 1 of 3 (pkgtool bless marks it good)"
        );
        assert_eq!(r.generation(), Some(2), "the list stays for a repair");
        let h = crate::journal::read(&r.stack.layers[0].paths).unwrap();
        let last = h.records.last().unwrap();
        assert_eq!(
            (
                last.kind.as_str(),
                last.before,
                last.after,
                last.verdict.as_str()
            ),
            ("boot-fallback", Some(2), Some(1), "fallback")
        );
        assert!(
            last.reason.contains("a-2.0.0") && last.removed == ["a-2.0.0"],
            "{last:?}"
        );
        let st = state(&r);
        assert_eq!(st.booted, Some((1, How::Fallback)));
        assert!(st.note.unwrap().contains("did not open whole"));
    }

    #[test]
    fn a_torn_state_file_is_a_warning_not_a_dead_boot() {
        let mut r = two_generations();
        std::fs::write(
            boot_file(&r.stack.layers[0].paths),
            "booted 2 active\ntrying 2",
        )
        .unwrap();
        let c = boot(&mut r, "");
        assert_eq!(c.n, 2);
        assert!(
            c.messages[0].contains("torn or garbled"),
            "{:?}",
            c.messages
        );
        assert_eq!(state(&r).trying, Some((2, 2)));
    }
    #[test]
    fn tries_come_from_boot_conf_and_the_command_line_wins() {
        let mut r = two_generations();
        let paths = r.stack.layers[0].paths.clone();
        std::fs::write(conf_file(&paths), "# tries of a new generation\ntries=5\n").unwrap();
        let c = boot(&mut r, "");
        assert!(
            c.messages
                .iter()
                .any(|m| m.ends_with("boot 1 of 5 (pkgtool bless marks it good)")),
            "{:?}",
            c.messages
        );
        assert_eq!(state(&r).trying, Some((2, 4)));
        // The command line wins; a trial under way counts from the lower number.
        let c = boot(&mut r, "packagefs.tries=2");
        assert_eq!(state(&r).trying, Some((2, 1)), "{:?}", c.messages);
        assert!(
            c.messages.iter().any(|m| m.contains("boot 1 of 2")),
            "{:?}",
            c.messages
        );
        // A bad line is a warning, ignored; the default holds.
        std::fs::write(conf_file(&paths), "tries=zero\nretries=2\n").unwrap();
        let (t, w) = configured_tries(&paths);
        assert_eq!(t, None);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("line 1: tries=zero: tries must be 1 to 100: ignored"),
            "{w:?}"
        );
        let c = boot(&mut r, "");
        assert!(
            c.messages
                .iter()
                .any(|m| m.contains("not tries=N: ignored")),
            "{:?}",
            c.messages
        );
        assert_eq!(c.n, 2);
    }

    #[test]
    fn a_fallback_passes_over_a_generation_that_failed_its_assessment() {
        let mut r = two_generations();
        let v3 = r.lab.pkg(0, &m("a", "3.0.0", ""), &[("a", "3")]);
        r.overwrite("a.hpkg", &std::fs::read(&v3.path).unwrap());
        r.step();
        assert_eq!(r.generation(), Some(3));
        BootState {
            bad: [2].into(),
            ..Default::default()
        }
        .write(&r.stack.layers[0].paths)
        .unwrap();
        spoil_active(&mut r);
        let c = boot(&mut r, "");
        assert_eq!((c.n, c.how), (1, How::Fallback), "{:?}", c.messages);
        assert!(
            c.messages[0].starts_with("generation 3 does not open whole (layer system: a-3.0.0"),
            "{:?}",
            c.messages
        );
    }

    #[test]
    fn nothing_that_opens_whole_is_a_one_line_error_not_a_panic() {
        let mut r = Rig::new();
        r.drop_pkg("a.hpkg", "a", "1.0.0", "");
        r.step();
        spoil_active(&mut r);
        let _lock = Lock::acquire(&r.stack.layers[0].paths).unwrap();
        let e = choose(&r.stack, 0, &[], &parse_cmdline(""), &mut r.opener).unwrap_err();
        let e = crate::stack::one_line(&e);
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains(
                "no generation up to 1 opens whole (generation 1 does not open whole (layer system: a-1.0.0"
            ),
            "{e}"
        );
    }

    #[test]
    fn bless_twice_says_so_and_without_a_boot_is_an_error() {
        let mut r = two_generations();
        let paths = r.stack.layers[0].paths.clone();
        let e = bless(&paths).unwrap_err();
        assert!(
            crate::stack::one_line(&e).contains("no boot is recorded"),
            "{e}"
        );
        boot(&mut r, "");
        assert_eq!(
            bless(&paths).unwrap(),
            "generation 2 is good: this boot is blessed"
        );
        assert_eq!(bless(&paths).unwrap(), "generation 2 is good already");
        let st = state(&r);
        assert!(st.good.contains(&2) && st.trying.is_none(), "{st:?}");
        // A good generation is not on trial at its next boot.
        let c = boot(&mut r, "");
        assert_eq!(c.messages, ["booting generation 2"]);
    }
    #[test]
    fn boot_entries_pin_each_generation_and_stale_ones_go() {
        let mut r = two_generations();
        boot(&mut r, "");
        bless(&r.stack.layers[0].paths).unwrap();
        let spec = EntrySpec {
            linux: "/vmlinuz".into(),
            initrd: "/initrd.img".into(),
            options: "console=ttyS0 ro".into(),
        };
        let paths = r.stack.layers[0].paths.clone();
        let e = boot_entries(&paths, &spec).unwrap();
        let files: Vec<&str> = e.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "packagefs.conf",
                "packagefs-gen-2.conf",
                "packagefs-gen-1.conf"
            ]
        );
        assert!(
            e[0].text.contains("\noptions console=ttyS0 ro\n"),
            "{}",
            e[0].text
        );
        assert!(!e[0].text.contains("packagefs.generation"), "{}", e[0].text);
        let g2 = &e[1].text;
        assert!(g2.contains("\ntitle packagefs generation 2 ("), "{g2}");
        assert!(g2.contains(", active, good)\n"), "{g2}");
        assert!(g2.contains("\nversion 2\nlinux /vmlinuz\ninitrd /initrd.img\noptions console=ttyS0 ro packagefs.generation=2\n"), "{g2}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("packagefs-gen-9.conf"), "stale").unwrap();
        std::fs::write(dir.path().join("other.conf"), "not ours").unwrap();
        let removed = write_entries(dir.path(), &e).unwrap();
        assert_eq!(removed, ["packagefs-gen-9.conf"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("packagefs-gen-1.conf")).unwrap(),
            e[2].text
        );
        assert!(dir.path().join("other.conf").exists());
        let bad = EntrySpec {
            options: "a\nb".into(),
            ..spec
        };
        let err = boot_entries(&paths, &bad).unwrap_err();
        assert!(
            err.to_string().contains("boot entry options: a line break"),
            "{err}"
        );
    }
}
