//! `active.list`: the active set of one layer, as text (documented in `FORMAT.md`).
//!
//! ```text
//! # packagefs active set
//! # generation: 7
//! # time: 2026-11-23T07:30:00Z
//! # reason: install hello-1.0.0
//! core.graphics-2.4.1 (263a687c598015de9bda599faf68f89f62962c6af7c00fb25040a6bc8dd01bb8)
//! hello-1.0.0 (877b5b9e83668a6058c05665e8a340d9d469e9da7f590ace06c0207e1f61dfbd)
//! ```
//!
//! One `name-version (id)` line per package, sorted by name then version; `#` starts a
//! comment line; `# key: value` comment lines before the first package are metadata. The id
//! (64 hex digits) is what identifies a package; `name-version` must match its manifest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::archive::PackageId;

/// One line of the list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// `name-version`.
    pub label: String,
    /// The package id.
    pub id: PackageId,
}

/// A parsed `active.list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActiveList {
    /// `# key: value` metadata (generation, time, reason, ...).
    pub meta: BTreeMap<String, String>,
    /// The packages, sorted.
    pub entries: Vec<Entry>,
}

/// A line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("active.list line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// The largest `active.list` accepted (a million packages would not fit; 16 MiB is plenty).
pub const MAX_LEN: usize = 16 << 20;

impl ActiveList {
    /// Parses the text of an `active.list`.
    pub fn parse(text: &str) -> Result<ActiveList, ParseError> {
        if text.len() > MAX_LEN {
            return Err(ParseError {
                line: 0,
                reason: "larger than 16 MiB".into(),
            });
        }
        let mut list = ActiveList::default();
        let mut seen = std::collections::HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let bad = |reason: &str| ParseError {
                line: i + 1,
                reason: reason.to_owned(),
            };
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix('#') {
                if list.entries.is_empty() {
                    if let Some((k, v)) = c.split_once(':') {
                        let k = k.trim();
                        if !k.is_empty()
                            && k.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        {
                            list.meta.insert(k.to_owned(), v.trim().to_owned());
                        }
                    }
                }
                continue;
            }
            let (label, rest) = line
                .rsplit_once(" (")
                .ok_or_else(|| bad("expected `name-version (id)`"))?;
            let hex = rest
                .strip_suffix(')')
                .ok_or_else(|| bad("missing `)` after the id"))?;
            let id = parse_id(hex).ok_or_else(|| bad("the id is not 64 hex digits"))?;
            let label = label.trim();
            if label.is_empty() || label.contains(char::is_whitespace) {
                return Err(bad("expected `name-version` before the id"));
            }
            if !seen.insert(id) {
                return Err(bad("package listed twice"));
            }
            list.entries.push(Entry {
                label: label.to_owned(),
                id,
            });
        }
        list.entries.sort();
        Ok(list)
    }

    /// The text of the list: metadata first (`# key: value`), then one line per package.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# packagefs active set\n");
        for (k, v) in &self.meta {
            let v = v.replace(['\n', '\r'], " ");
            let _ = writeln!(s, "# {k}: {v}");
        }
        let mut entries = self.entries.clone();
        entries.sort();
        for e in entries {
            let _ = writeln!(s, "{} ({})", e.label, e.id);
        }
        s
    }

    /// The generation number recorded in the metadata, if any.
    pub fn generation(&self) -> Option<u64> {
        self.meta.get("generation").and_then(|g| g.parse().ok())
    }

    /// True if both lists name the same packages (metadata aside).
    pub fn same_packages(&self, other: &ActiveList) -> bool {
        let ids = |l: &ActiveList| {
            let mut v: Vec<PackageId> = l.entries.iter().map(|e| e.id).collect();
            v.sort();
            v
        };
        ids(self) == ids(other)
    }
}

/// Parses 64 hex digits.
pub fn parse_id(hex: &str) -> Option<PackageId> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(PackageId(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PackageId {
        PackageId([n; 32])
    }

    #[test]
    fn round_trips_with_metadata() {
        let mut l = ActiveList::default();
        l.meta.insert("generation".into(), "7".into());
        l.meta.insert(
            "reason".into(),
            "install hello-1.0.0\nwith a newline".into(),
        );
        l.entries.push(Entry {
            label: "zlib-1.3.0".into(),
            id: id(2),
        });
        l.entries.push(Entry {
            label: "core.graphics-2.4.1-rc.1".into(),
            id: id(1),
        });
        let text = l.to_text();
        assert!(text.contains("# generation: 7\n"));
        assert!(text
            .lines()
            .nth(3)
            .unwrap()
            .starts_with("core.graphics-2.4.1-rc.1 ("));
        let back = ActiveList::parse(&text).unwrap();
        assert_eq!(back.generation(), Some(7));
        assert_eq!(back.meta["reason"], "install hello-1.0.0 with a newline");
        assert!(back.same_packages(&l));
        assert_eq!(back.to_text(), text);
    }

    #[test]
    fn rejects_bad_lines_naming_the_line() {
        let good = format!("a-1.0.0 ({})", id(3));
        for (text, line) in [
            ("just-a-name-1.0.0\n".to_string(), 1),
            (format!("# c\n{good}\nx-1.0.0 (abc)\n"), 3),
            (format!("{good}\n{good}\n"), 2),
            (format!("a b-1.0.0 ({})\n", id(4)), 1),
            (format!("a-1.0.0 ({}\n", id(4)), 1),
        ] {
            let e = ActiveList::parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
        assert!(ActiveList::parse("").unwrap().entries.is_empty());
        assert!(ActiveList::parse(&format!("\n  {good}  \n\n")).is_ok());
    }
}
