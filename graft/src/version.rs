//! Debian versions: parsing, dpkg's ordering, and the mapping to semver (docs/grafting.md).
//!
//! A Debian version is `[epoch:]upstream[-revision]`. The mapping keeps semver's
//! *precedence* (what ranges compare) to the upstream version's leading numbers, and puts
//! everything else in build metadata, which ranges ignore:
//!
//! ```text
//! 2.36-9+deb12u4   ->  2.36.0+debian.9.deb.12.u.4
//! 1:9.2p1-2        ->  9.2.0+epoch.1.p.1.debian.2
//! 0.9.8~rc1-1      ->  0.9.8+pre.rc.1.debian.1
//! 20230311         ->  20230311.0.0
//! ```
//!
//! It never makes a semver pre-release: a pre-release only satisfies ranges that name a
//! pre-release of the same `x.y.z`, so `~` versions would fail every plain dependency
//! on them. The mapping is monotone: when dpkg orders `a < b`, then `map(a) <= map(b)` in
//! semver precedence, for versions of one epoch (semver has no epoch). Within one
//! precedence, the build identifiers (digit and letter runs, so `u4 < u14`) order
//! versions the way dpkg does in the common cases, which is what "newest" uses.

#[cfg(test)]
use std::cmp::Ordering;
use std::fmt;

use semver::{BuildMetadata, Prerelease, Version};

/// A parsed Debian version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebVersion {
    /// The epoch (0 when absent).
    pub epoch: u64,
    /// The upstream version.
    pub upstream: String,
    /// The Debian revision; `None` for a native package (no `-`).
    pub revision: Option<String>,
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.epoch > 0 {
            write!(f, "{}:", self.epoch)?;
        }
        f.write_str(&self.upstream)?;
        if let Some(r) = &self.revision {
            write!(f, "-{r}")?;
        }
        Ok(())
    }
}

/// Where a version lies within the set of versions that map to the same `x.y.z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Before the plain `x.y.z` (the upstream version continues with `~`): `1.0~rc1`.
    Below,
    /// Exactly the plain numbers, no revision: `1.0`, `2.36`.
    Plain,
    /// After the plain numbers: a revision, more components, letters, `+`: `1.0-1`, `9.2p1`.
    Above,
}

impl DebVersion {
    /// Parses a version as dpkg does (`parseversion`), rejecting what dpkg rejects: empty
    /// parts, a non-numeric epoch, characters outside `[A-Za-z0-9.+~-]` (and `:` only
    /// after an epoch), whitespace inside.
    pub fn parse(s: &str) -> Result<DebVersion, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty version".into());
        }
        if let Some(c) = s.chars().find(|c| c.is_whitespace()) {
            return Err(format!("version {s:?} contains the space character {c:?}"));
        }
        let has_epoch = s.contains(':');
        let (epoch, rest) = match s.split_once(':') {
            Some((e, rest)) => {
                if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("version {s:?} has an epoch that is not a number"));
                }
                let epoch: u64 = e
                    .parse()
                    .map_err(|_| format!("version {s:?} has an epoch that is too large"))?;
                (epoch, rest)
            }
            None => (0, s),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, Some(r)),
            None => (rest, None),
        };
        if upstream.is_empty() {
            return Err(format!("version {s:?} has an empty upstream part"));
        }
        if revision == Some("") {
            return Err(format!("version {s:?} has an empty revision after '-'"));
        }
        let bad_upstream = |c: char| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-' | ':'))
                || (c == ':' && !has_epoch)
        };
        if let Some(c) = upstream.chars().find(|&c| bad_upstream(c)) {
            return Err(format!("version {s:?} contains {c:?}"));
        }
        if let Some(c) = revision.and_then(|r| {
            r.chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~')))
        }) {
            return Err(format!("version {s:?} has {c:?} in its revision"));
        }
        Ok(DebVersion {
            epoch,
            upstream: upstream.to_owned(),
            revision: revision.map(str::to_owned),
        })
    }

    /// The leading numbers of the upstream version (at most three: `major.minor.patch`,
    /// missing ones 0, each saturating at `u64::MAX`) and the rest of it.
    fn split_numbers(&self) -> ([u64; 3], &str) {
        let b = self.upstream.as_bytes();
        let mut nums = [0u64; 3];
        let mut n = 0;
        let mut i = 0;
        while i < b.len() && b[i].is_ascii_digit() && n < 3 {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            nums[n] = self.upstream[start..i].bytes().fold(0u64, |acc, d| {
                acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            });
            n += 1;
            // Go on only with ".<digit>" and while a slot is free.
            if n < 3 && i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
                i += 1;
            } else {
                break;
            }
        }
        (nums, &self.upstream[i..])
    }

    /// Where this version lies among the versions with the same `x.y.z` (see [`Place`]).
    pub fn place(&self) -> Place {
        let (_, tail) = self.split_numbers();
        if tail.starts_with('~') {
            Place::Below
        } else if tail.is_empty() && self.revision.is_none() {
            Place::Plain
        } else {
            Place::Above
        }
    }

    /// The semver version's `major.minor.patch` alone (what ranges are built from).
    pub fn plain_semver(&self) -> Version {
        let ([major, minor, patch], _) = self.split_numbers();
        Version::new(major, minor, patch)
    }

    /// The semver version this Debian version maps to (docs/grafting.md).
    pub fn to_semver(&self) -> Version {
        let (_, tail) = self.split_numbers();
        let mut ids: Vec<String> = Vec::new();
        if self.epoch > 0 {
            ids.push("epoch".into());
            ids.push(self.epoch.to_string());
        }
        push_identifiers(&mut ids, tail);
        if let Some(r) = &self.revision {
            ids.push("debian".into());
            push_identifiers(&mut ids, r);
        }
        let mut v = self.plain_semver();
        v.pre = Prerelease::EMPTY;
        if !ids.is_empty() {
            // Identifiers are non-empty runs of [0-9A-Za-z]: always valid build metadata.
            v.build = BuildMetadata::new(&ids.join(".")).expect("valid build identifiers");
        }
        v
    }
}

/// Appends the identifiers of `s`: maximal runs of digits and of letters; `~` becomes
/// `pre` (it sorts before what follows it); other characters separate.
fn push_identifiers(ids: &mut Vec<String>, s: &str) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'~' {
            ids.push("pre".into());
            i += 1;
        } else if c.is_ascii_digit() || c.is_ascii_alphabetic() {
            let digit = c.is_ascii_digit();
            let start = i;
            while i < b.len()
                && (if digit {
                    b[i].is_ascii_digit()
                } else {
                    b[i].is_ascii_alphabetic()
                })
            {
                i += 1;
            }
            ids.push(s[start..i].to_owned());
        } else {
            i += 1;
        }
    }
}

// dpkg's own ordering, the reference the mapping is tested against.

/// dpkg's order of one character in a non-digit run: `~` first, then the end of the run,
/// then letters, then everything else.
#[cfg(test)]
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: compares two upstream versions or two revisions.
#[cfg(test)]
fn verrevcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied());
            let bc = order(b.get(j).copied());
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// dpkg's order of two versions (`dpkg --compare-versions`).
#[cfg(test)]
pub fn dpkg_cmp(a: &DebVersion, b: &DebVersion) -> Ordering {
    a.epoch
        .cmp(&b.epoch)
        .then_with(|| verrevcmp(&a.upstream, &b.upstream))
        .then_with(|| {
            verrevcmp(
                a.revision.as_deref().unwrap_or(""),
                b.revision.as_deref().unwrap_or(""),
            )
        })
}

/// A Debian version relation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Less,
    /// `<=` (and the obsolete `<`)
    LessEq,
    /// `=`
    Eq,
    /// `>=` (and the obsolete `>`)
    GreaterEq,
    /// `>>`
    Greater,
}

impl Op {
    /// Parses `<<`, `<=`, `=`, `>=`, `>>`, and the obsolete `<` (`<=`) and `>` (`>=`).
    pub fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Less,
            "<=" | "<" => Op::LessEq,
            "=" => Op::Eq,
            ">=" | ">" => Op::GreaterEq,
            ">>" => Op::Greater,
            _ => return None,
        })
    }

    /// The Debian spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Less => "<<",
            Op::LessEq => "<=",
            Op::Eq => "=",
            Op::GreaterEq => ">=",
            Op::Greater => ">>",
        }
    }
}

/// The semver comparator for the Debian relation `op v` (docs/grafting.md): ranges see
/// only `x.y.z`, so a relation accepts every version of the same `x.y.z`, except that
/// `<< v` with `v` at or below the plain `x.y.z` (`<< 2.37`, `<< 2.37~`) excludes them.
pub fn comparator(op: Op, v: &DebVersion) -> String {
    let c = v.plain_semver();
    match op {
        Op::GreaterEq | Op::Greater => format!(">={c}"),
        Op::LessEq => format!("<={c}"),
        Op::Eq => format!("={c}"),
        Op::Less => match v.place() {
            Place::Below | Place::Plain => format!("<{c}"),
            Place::Above => format!("<={c}"),
        },
    }
}

/// Does the Debian relation `op bound` hold for `v`, by dpkg's rules?
#[cfg(test)]
pub fn dpkg_satisfies(v: &DebVersion, op: Op, bound: &DebVersion) -> bool {
    let o = dpkg_cmp(v, bound);
    match op {
        Op::Less => o == Ordering::Less,
        Op::LessEq => o != Ordering::Greater,
        Op::Eq => o == Ordering::Equal,
        Op::GreaterEq => o != Ordering::Less,
        Op::Greater => o == Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semver::VersionReq;

    fn v(s: &str) -> DebVersion {
        DebVersion::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn m(s: &str) -> String {
        v(s).to_semver().to_string()
    }

    /// Real versions from Debian bookworm (and a few from older or newer releases).
    const REAL: &[&str] = &[
        "2.36-9+deb12u4",
        "2.36-9+deb12u14",
        "2.36-9",
        "2.36-10",
        "2.37-1",
        "2.35-1~bpo11+1",
        "1:9.2p1-2",
        "1:9.2p1-2+deb12u3",
        "1:9.3p1-1",
        "1.6-2.1",
        "1.6-2.1+deb12u3",
        "1.7.1-3",
        "2.10.4+dfsg-1",
        "0.9.8~rc1-1",
        "0.9.8-1",
        "0.9.8",
        "2.10-3",
        "12.2.0-14+deb12u1",
        "12.2.0-14",
        "6.9.8-1",
        "20230311",
        "20230311+deb12u1",
        "2024a-0+deb12u1",
        "2024b-0+deb12u1",
        "0~20220623.1-1",
        "0.0~git20230101.1a2b3c4-1",
        "0.0~git20230215.9f8e7d6-1",
        "1:2.66-4",
        "2:8.39-15",
        "7:5.1.6-0+deb12u1",
        "3.1-20221030-2",
        "2.1.12-stable-8",
        "2.9.14+dfsg-1.3~deb12u1",
        "2.9.14+dfsg-1.3",
        "115.9.0esr-1~deb12u1",
        "115.10.0esr-1~deb12u1",
        "3.6.1+dfsg+~3.5.14-1",
        "2.4+20151223.gitfa8646d.1-2+b2",
        "1.0.8-5+b1",
        "5.36.0-7+deb12u1",
        "1:14.0.6-12",
        "17.0.11+9-1~deb12u1",
        "1.2.3.4-1",
        "1.2.3.5-1",
        "1.2.4-1",
        "252.22-1~deb12u1",
        "1.20.1-2+deb12u2",
        "3.0.13-1~deb12u1",
        "2.38.1-5+b1",
        "6.1.0-28",
        "1.5.82",
        "0.270",
        "3.11.2-1+b1",
        "3.11~rc1-1",
        "3.12~",
    ];

    #[test]
    fn maps_real_versions() {
        let cases = [
            ("2.36-9+deb12u4", "2.36.0+debian.9.deb.12.u.4"),
            ("1:9.2p1-2", "9.2.0+epoch.1.p.1.debian.2"),
            ("1.6-2.1", "1.6.0+debian.2.1"),
            ("2.10.4+dfsg-1", "2.10.4+dfsg.debian.1"),
            ("0.9.8~rc1-1", "0.9.8+pre.rc.1.debian.1"),
            ("2.10-3", "2.10.0+debian.3"),
            ("12.2.0-14+deb12u1", "12.2.0+debian.14.deb.12.u.1"),
            ("20230311", "20230311.0.0"),
            ("1.5.82", "1.5.82"),
            ("0.270", "0.270.0"),
            ("2024a-0+deb12u1", "2024.0.0+a.debian.0.deb.12.u.1"),
            ("0~20220623.1-1", "0.0.0+pre.20220623.1.debian.1"),
            (
                "0.0~git20230101.1a2b3c4-1",
                "0.0.0+pre.git.20230101.1.a.2.b.3.c.4.debian.1",
            ),
            ("7:5.1.6-0+deb12u1", "5.1.6+epoch.7.debian.0.deb.12.u.1"),
            ("3.1-20221030-2", "3.1.0+20221030.debian.2"),
            ("2.1.12-stable-8", "2.1.12+stable.debian.8"),
            (
                "2.9.14+dfsg-1.3~deb12u1",
                "2.9.14+dfsg.debian.1.3.pre.deb.12.u.1",
            ),
            (
                "115.9.0esr-1~deb12u1",
                "115.9.0+esr.debian.1.pre.deb.12.u.1",
            ),
            ("1.2.3.4-1", "1.2.3+4.debian.1"),
            ("3.12~", "3.12.0+pre"),
            ("1.02.003", "1.2.3"),
        ];
        for (deb, want) in cases {
            assert_eq!(m(deb), want, "{deb}");
            // Valid semver, and valid by the manifest's own rules.
            let back = Version::parse(&m(deb)).unwrap();
            assert!(back.pre.is_empty(), "{deb}: a pre-release");
        }
    }

    #[test]
    fn huge_numbers_saturate() {
        assert_eq!(m("99999999999999999999999.1"), format!("{}.1.0", u64::MAX));
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "",
            " ",
            "1.0 2",
            "a:1.0",
            ":1.0",
            "1:",
            "-1",
            "1.0-",
            "1.0_1",
            "1.0-1_2",
            "1.0-1:2",
            "1:2:3-4-5!",
            "1.0/2",
            "99999999999999999999999:1",
        ] {
            assert!(DebVersion::parse(bad).is_err(), "{bad:?} was accepted");
        }
        // ':' in the upstream part needs an epoch; '-' needs a revision (the last '-').
        assert_eq!(v("1:2:3").upstream, "2:3");
        assert_eq!(v("1.0-beta-1").upstream, "1.0-beta");
        assert_eq!(v("1.0-beta-1").revision.as_deref(), Some("1"));
        assert_eq!(v("1:9.2p1-2").to_string(), "1:9.2p1-2");
    }

    #[test]
    fn dpkg_order_matches_dpkg() {
        // Pairs from dpkg's own test suite and policy (a < b).
        let less = [
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0-1"),
            ("1.0-1", "1.0+1"),
            ("1.0~~", "1.0~"),
            ("1.0~", "1.0"),
            ("1.0a", "1.0.1"),
            ("1.0", "1.0a"),
            ("1.2.3", "1.2.10"),
            ("2.36-9+deb12u4", "2.36-9+deb12u14"),
            ("2.9.14+dfsg-1.3~deb12u1", "2.9.14+dfsg-1.3"),
            ("1:1.0", "2:0.1"),
            ("9.9", "1:0.1"),
            ("1.0-1", "1.0-1.1"),
            ("0.0~git2023", "0.0.1"),
        ];
        for (a, b) in less {
            assert_eq!(dpkg_cmp(&v(a), &v(b)), Ordering::Less, "{a} < {b}");
            assert_eq!(dpkg_cmp(&v(b), &v(a)), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(dpkg_cmp(&v("1.01"), &v("1.1")), Ordering::Equal);
        assert_eq!(dpkg_cmp(&v("1.0"), &v("1.0-0")), Ordering::Equal);
        assert_eq!(dpkg_cmp(&v("0:1.0"), &v("1.0")), Ordering::Equal);
    }

    /// The mapping is monotone in precedence for every pair of real versions of one epoch,
    /// and strictly so where the `x.y.z` differ.
    #[test]
    fn mapping_is_monotone_on_real_versions() {
        for a in REAL {
            for b in REAL {
                let (da, db) = (v(a), v(b));
                if da.epoch != db.epoch || dpkg_cmp(&da, &db) != Ordering::Less {
                    continue;
                }
                let (ma, mb) = (da.to_semver(), db.to_semver());
                assert_ne!(
                    ma.cmp_precedence(&mb),
                    Ordering::Greater,
                    "{a} < {b} in dpkg but {ma} > {mb}"
                );
            }
        }
    }

    /// Where two versions share `x.y.z`, the full semver order (the one "newest" uses)
    /// agrees with dpkg for the revisions that matter: security updates and rebuilds.
    #[test]
    fn build_metadata_orders_revisions() {
        let ordered = [
            "2.36-9",
            "2.36-9+deb12u4",
            "2.36-9+deb12u14",
            "2.36-10",
            "2.36-10+b1",
        ];
        for w in ordered.windows(2) {
            let (a, b) = (v(w[0]), v(w[1]));
            assert_eq!(dpkg_cmp(&a, &b), Ordering::Less);
            assert_eq!(
                a.to_semver().cmp(&b.to_semver()),
                Ordering::Less,
                "{} < {}",
                a.to_semver(),
                b.to_semver()
            );
        }
        // Different Debian versions of one package map to different semver versions.
        let mut seen = std::collections::HashMap::new();
        for s in REAL {
            if let Some(other) = seen.insert(v(s).to_semver(), *s) {
                panic!("{s} and {other} map to the same version");
            }
        }
    }

    fn req(op: Op, bound: &str) -> VersionReq {
        VersionReq::parse(&comparator(op, &v(bound))).unwrap()
    }

    #[test]
    fn relations_map_to_ranges() {
        let cases = [
            (Op::GreaterEq, "2.34", ">=2.34.0"),
            (Op::GreaterEq, "1:9.2p1", ">=9.2.0"),
            (Op::Eq, "1.6-2.1+deb12u3", "=1.6.0"),
            (Op::LessEq, "2.36-9", "<=2.36.0"),
            (Op::Greater, "2.9", ">=2.9.0"),
            (Op::Less, "2.37", "<2.37.0"),
            (Op::Less, "2.37~", "<2.37.0"),
            (Op::Less, "91~", "<91.0.0"),
            (Op::Less, "2.9-1", "<=2.9.0"),
        ];
        for (op, bound, want) in cases {
            assert_eq!(comparator(op, &v(bound)), want, "{} {bound}", op.as_str());
        }
    }

    /// What a mapped relation accepts, compared with dpkg, over every pair of real
    /// versions of one epoch: it never refuses what dpkg accepts, except `<< v` with `v`
    /// at or below its plain numbers (`<< 3.12~`), where it refuses the other `~`
    /// versions of the same numbers.
    #[test]
    fn relations_never_refuse_what_dpkg_accepts() {
        let ops = [Op::Less, Op::LessEq, Op::Eq, Op::GreaterEq, Op::Greater];
        let mut strict_refusals = 0;
        let mut checked = 0;
        for bound in REAL {
            for cand in REAL {
                let (b, c) = (v(bound), v(cand));
                if b.epoch != c.epoch {
                    continue;
                }
                for op in ops {
                    let dpkg = dpkg_satisfies(&c, op, &b);
                    let ours = req(op, bound).matches(&c.to_semver());
                    checked += 1;
                    if dpkg && !ours {
                        let below = c.place() == Place::Below
                            && c.plain_semver() == b.plain_semver()
                            && op == Op::Less;
                        assert!(
                            below,
                            "{cand} satisfies {} {bound} in dpkg, not mapped",
                            op.as_str()
                        );
                        strict_refusals += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
        assert!(strict_refusals <= 8, "{strict_refusals}");
        // And the approximations go the expected way: `<< 2.37` refuses 2.37 and 2.37-1.
        assert!(!req(Op::Less, "2.37").matches(&v("2.37-1").to_semver()));
        assert!(req(Op::Less, "2.37").matches(&v("2.36-9+deb12u14").to_semver()));
        assert!(req(Op::GreaterEq, "2.34").matches(&v("2.36-9+deb12u14").to_semver()));
        assert!(!req(Op::GreaterEq, "2.37").matches(&v("2.36-9+deb12u14").to_semver()));
        // A `~` version satisfies plain and unversioned dependencies (no pre-release).
        assert!(VersionReq::STAR.matches(&v("0.0~git20230101.1a2b3c4-1").to_semver()));
        assert!(req(Op::GreaterEq, "3.11~").matches(&v("3.11~rc1-1").to_semver()));
    }
}
