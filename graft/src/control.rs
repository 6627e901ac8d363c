//! Debian control files: the one paragraph of a binary package's `control` (deb822
//! syntax), relation fields (`Depends`, `Provides`, ...), and package names.

use super::version::{DebVersion, Op};

/// The fields of a control paragraph, in order. Names compare case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct Paragraph {
    fields: Vec<(String, String)>,
}

/// The largest control file read, in bytes (dpkg's are a few KiB).
pub const MAX_CONTROL_BYTES: usize = 1 << 20;

impl Paragraph {
    /// Parses a binary package's `control` file: `Name: value` lines, continuation lines
    /// starting with a space or tab, exactly one paragraph (blank lines around it are
    /// allowed). Errors say which line is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Paragraph, String> {
        if bytes.len() > MAX_CONTROL_BYTES {
            return Err(format!("larger than {MAX_CONTROL_BYTES} bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            )
        })?;
        let mut p = Paragraph::default();
        let mut ended = false;
        for (i, raw) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                if !p.fields.is_empty() {
                    ended = true;
                }
                continue;
            }
            if ended {
                return Err(format!(
                    "line {n}: a second paragraph (a binary package's control file has one)"
                ));
            }
            if line.starts_with([' ', '\t']) {
                let Some((_, value)) = p.fields.last_mut() else {
                    return Err(format!("line {n}: a continuation line before any field"));
                };
                value.push('\n');
                value.push_str(line.trim());
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!(
                    "line {n}: {:?} is not a `Field: value` line",
                    cut(line)
                ));
            };
            let ok_name = !name.is_empty()
                && !name.starts_with(['#', '-'])
                && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            if !ok_name {
                return Err(format!("line {n}: {:?} is not a field name", cut(name)));
            }
            if p.get(name).is_some() {
                return Err(format!("line {n}: field {name} appears twice"));
            }
            p.fields.push((name.to_owned(), value.trim().to_owned()));
        }
        if p.fields.is_empty() {
            return Err("empty".into());
        }
        Ok(p)
    }

    /// A field's value (continuation lines joined with `\n`), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A field that must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        match self.get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(format!("field {name} is empty")),
            None => Err(format!("field {name} is missing")),
        }
    }
}

/// A line cut to 60 characters, for messages.
fn cut(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Checks a Debian package name: lowercase letters, digits, `+`, `-`, `.`, starting with
/// a letter or digit (Debian policy 5.6.1; one character is tolerated).
pub fn check_deb_name(name: &str) -> Result<(), String> {
    let ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a Debian package name (lowercase letters, digits, '+', '-', '.')",
            cut(name)
        ))
    }
}

/// Maps a (valid) Debian package name to a manifest name (docs/grafting.md). Debian names
/// are manifest names except for `..`, a trailing `.` and more than 64 characters: each
/// `.` that follows a `.` and a trailing `.` become `_` (which Debian names never
/// contain, so no two names collide), and a longer name is cut to 55 characters
/// followed by `_` and 8 hex digits of its BLAKE3 hash.
pub fn manifest_name(deb: &str) -> String {
    let mut out = String::with_capacity(deb.len());
    let mut prev = '\0';
    for c in deb.chars() {
        out.push(if c == '.' && prev == '.' { '_' } else { c });
        prev = c;
    }
    if out.ends_with('.') {
        out.pop();
        out.push('_');
    }
    if out.len() > format::manifest::MAX_NAME_LEN {
        let hash = blake3::hash(deb.as_bytes()).to_hex();
        out.truncate(55);
        out.push('_');
        out.push_str(&hash[..8]);
    }
    out
}

/// One alternative of a relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atom {
    /// The Debian package name (architecture qualifier removed).
    pub name: String,
    /// The version constraint, if any.
    pub version: Option<(Op, DebVersion)>,
    /// The text as written (normalized spacing), for messages.
    pub text: String,
}

/// A relation: one or more alternatives (`a | b`).
pub type Relation = Vec<Atom>;

/// Parses a relation field (`Depends`, `Pre-Depends`, `Breaks`, ...): comma-separated
/// relations, each `|`-separated alternatives. Architecture qualifiers (`:any`,
/// `:native`, `:amd64`) are dropped; architecture restrictions (`[amd64]`) and build
/// profiles (`<!nocheck>`) belong to source packages and are errors here.
pub fn parse_relations(field: &str, value: &str) -> Result<Vec<Relation>, String> {
    let mut out = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        if part.is_empty() {
            // dpkg tolerates a trailing comma, not an empty relation in the middle.
            continue;
        }
        let mut rel = Vec::new();
        for alt in part.split('|') {
            rel.push(parse_atom(alt).map_err(|e| format!("{field}: {e}"))?);
        }
        out.push(rel);
    }
    Ok(out)
}

fn parse_atom(s: &str) -> Result<Atom, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("an empty alternative".into());
    }
    if s.contains(['[', ']']) {
        return Err(format!(
            "{:?}: architecture restrictions belong to source packages",
            cut(s)
        ));
    }
    let outside = match (s.find('('), s.rfind(')')) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &s[..a], &s[b + 1..]),
        (Some(a), _) => s[..a].to_owned(),
        _ => s.to_owned(),
    };
    if outside.contains(['<', '>']) {
        return Err(format!(
            "{:?}: build profiles belong to source packages",
            cut(s)
        ));
    }
    let (head, constraint) = match s.find('(') {
        Some(i) => {
            let rest = &s[i + 1..];
            let Some(close) = rest.find(')') else {
                return Err(format!("{:?}: no closing ')'", cut(s)));
            };
            if !rest[close + 1..].trim().is_empty() {
                return Err(format!("{:?}: text after ')'", cut(s)));
            }
            (s[..i].trim(), Some(rest[..close].trim()))
        }
        None => (s, None),
    };
    if head.contains(char::is_whitespace) {
        return Err(format!("{:?}: a space inside the package name", cut(s)));
    }
    let name = match head.split_once(':') {
        Some((n, arch)) => {
            let ok_arch = !arch.is_empty()
                && arch
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok_arch {
                return Err(format!("{:?}: bad architecture qualifier", cut(s)));
            }
            n
        }
        None => head,
    };
    check_deb_name(name)?;
    let version = match constraint {
        None => None,
        Some(c) => {
            let op_len = c
                .find(|ch: char| !matches!(ch, '<' | '>' | '='))
                .unwrap_or(c.len());
            let (op_text, ver) = c.split_at(op_len);
            let op = Op::parse(op_text)
                .ok_or_else(|| format!("{:?}: unknown relation {op_text:?}", cut(s)))?;
            let ver = DebVersion::parse(ver).map_err(|e| format!("{:?}: {e}", cut(s)))?;
            Some((op, ver))
        }
    };
    let text = match &version {
        Some((op, v)) => format!("{name} ({} {v})", op.as_str()),
        None => name.to_owned(),
    };
    Ok(Atom {
        name: name.to_owned(),
        version,
        text,
    })
}

/// The text of a relation as written (`a (>= 1) | b`).
pub fn relation_text(rel: &Relation) -> String {
    rel.iter()
        .map(|a| a.text.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "Package: hello
Version: 2.10-3
Architecture: amd64
Maintainer: Santiago Vila <sanvila@debian.org>
Installed-Size: 280
Depends: libc6 (>= 2.34)
Conflicts: hello-traditional
Breaks: hello-debhelper (<< 2.9)
Replaces: hello-debhelper (<< 2.9), hello-traditional
Section: devel
Priority: optional
Homepage: https://www.gnu.org/software/hello/
Description: example package based on GNU hello
 The GNU hello program produces a familiar, friendly greeting.  It
 allows non-programmers to use a classic computer science tool which
 .
 would otherwise be unavailable to them.
";

    #[test]
    fn parses_a_real_control_file() {
        let p = Paragraph::parse(HELLO.as_bytes()).unwrap();
        assert_eq!(p.get("package"), Some("hello"));
        assert_eq!(p.required("Version").unwrap(), "2.10-3");
        let d = p.get("Description").unwrap();
        assert_eq!(d.lines().next(), Some("example package based on GNU hello"));
        assert_eq!(d.lines().count(), 5);
        assert_eq!(p.get("Pre-Depends"), None);
        assert!(p.required("Pre-Depends").unwrap_err().contains("missing"));
        // CRLF and surrounding blank lines are tolerated.
        let crlf = format!("\n\n{}\n\n", HELLO.replace('\n', "\r\n"));
        assert_eq!(
            Paragraph::parse(crlf.as_bytes()).unwrap().get("Package"),
            Some("hello")
        );
    }

    #[test]
    fn rejects_malformed_control_files() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "empty"),
            (b"\n \n", "empty"),
            (b" continued\nPackage: a\n", "line 1: a continuation line"),
            (b"Package: a\nno colon here\n", "line 2"),
            (b"Package: a\npackage: b\n", "appears twice"),
            (b"Package: a\n\nPackage: b\n", "second paragraph"),
            (b"Package: a\n\xff\n", "not UTF-8"),
            (b"Pack age: a\n", "not a field name"),
        ];
        for (bytes, want) in cases {
            let e = Paragraph::parse(bytes).unwrap_err();
            assert!(
                e.contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(bytes)
            );
            assert!(!e.contains('\n'));
        }
        let big = vec![b'a'; MAX_CONTROL_BYTES + 1];
        assert!(Paragraph::parse(&big).unwrap_err().contains("larger"));
    }

    #[test]
    fn parses_relations() {
        let r = parse_relations(
            "Depends",
            "libc6 (>= 2.34), libjq1 (= 1.6-2.1+deb12u3),python3:any (>= 3.11~), \
             default-mta | mail-transport-agent, debconf (>= 0.5) | debconf-2.0, foo (<<1.0),",
        )
        .unwrap();
        assert_eq!(r.len(), 6);
        assert_eq!(r[0][0].name, "libc6");
        assert_eq!(r[0][0].version.as_ref().unwrap().0, Op::GreaterEq);
        assert_eq!(
            r[1][0].version.as_ref().unwrap().1.to_string(),
            "1.6-2.1+deb12u3"
        );
        assert_eq!(r[2][0].name, "python3");
        assert_eq!(r[2][0].text, "python3 (>= 3.11~)");
        assert_eq!(r[3].len(), 2);
        assert_eq!(relation_text(&r[4]), "debconf (>= 0.5) | debconf-2.0");
        assert_eq!(r[5][0].text, "foo (<< 1.0)");
    }

    #[test]
    fn rejects_malformed_relations() {
        for (bad, want) in [
            ("libc6 (>= 2.34", "no closing"),
            ("libc6 (>= 2.34) x", "text after"),
            ("libc6 (~> 2.34)", "unknown relation"),
            ("libc6 (>= )", "empty version"),
            ("libc6 (>= 2 3)", "space"),
            ("Libc6", "not a Debian package name"),
            ("lib c6", "space inside"),
            ("a | | b", "empty alternative"),
            ("libc6 [amd64]", "architecture restrictions"),
            ("libc6 <!nocheck>", "build profiles"),
            ("libc6:", "architecture qualifier"),
        ] {
            let e = parse_relations("Depends", bad).unwrap_err();
            assert!(e.starts_with("Depends: "), "{e}");
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn maps_names() {
        for ok in [
            "hello",
            "libstdc++6",
            "g++",
            "0ad",
            "libc6",
            "python3.11",
            "a",
        ] {
            check_deb_name(ok).unwrap();
            assert_eq!(manifest_name(ok), ok);
        }
        for bad in ["", "Hello", "-a", ".a", "a_b", "a b", "é"] {
            assert!(check_deb_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(manifest_name("a..b"), "a._b");
        assert_eq!(manifest_name("a...b."), "a.__b_");
        assert_eq!(manifest_name("lib."), "lib_");
        let long = "x".repeat(75);
        let mapped = manifest_name(&long);
        assert_eq!(mapped.len(), 64);
        assert!(mapped.starts_with(&"x".repeat(55)));
        assert_ne!(mapped, manifest_name(&"x".repeat(76)));
        // Every mapped name is a valid manifest name.
        for name in [
            "a..b",
            "a...b.",
            "lib.",
            &long,
            &format!("{}.", "y".repeat(70)),
        ] {
            let m = format::manifest::Manifest::from_json(
                format!(r#"{{"name":"{}","version":"1.0.0"}}"#, manifest_name(name)).as_bytes(),
            );
            assert!(m.is_ok(), "{name}: {:?}", m.unwrap_err());
        }
    }
}
