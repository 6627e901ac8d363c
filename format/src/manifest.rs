//! The package manifest: what a package is, what it provides and what it needs.
//!
//! A manifest is a JSON document (see `manifests/schema.json` and
//! `manifests/README.md` in the repository for the full rules):
//!
//! ```
//! use format::manifest::Manifest;
//!
//! let m = Manifest::from_json(br#"{
//!     "name": "core.graphics",
//!     "version": "2.4.1",
//!     "requires": [ { "api": "core.io", "version": "~2.1" } ]
//! }"#).unwrap();
//! assert_eq!(m.provided().next(), Some(("core.graphics", &m.version)));
//!
//! let err = Manifest::from_json(br#"{ "name": "Core", "version": "1.0.0" }"#).unwrap_err();
//! assert_eq!(err.field, "name");
//! ```
//!
//! [`Manifest::from_json`] parses and validates; every error is a [`ManifestError`]
//! that names the offending field as a path such as `requires[1].version`.
//! [`Manifest::to_json`] writes the canonical form: pretty JSON, keys in a fixed
//! order, empty optional fields left out, a trailing newline.

use std::collections::HashMap;
use std::fmt;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

/// The largest manifest [`Manifest::from_json`] accepts, in bytes (1 MiB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The longest package, api, `uses` entry, service or capability name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// The longest summary, in characters (Unicode scalar values).
pub const MAX_SUMMARY_CHARS: usize = 512;
/// The longest service `exec` path, in bytes.
pub const MAX_EXEC_BYTES: usize = 4096;
/// The longest component of a service `exec` path, in bytes.
pub const MAX_EXEC_COMPONENT_BYTES: usize = 255;

/// The field name used for errors about the document as a whole.
const WHOLE: &str = "manifest";
/// Reasons quoting serde messages are cut to this many characters.
const MAX_REASON_CHARS: usize = 300;
/// Values quoted in error messages are cut to this many characters.
const MAX_SHOWN_CHARS: usize = 80;

/// A package manifest, as stored in a package archive.
///
/// Build one with [`Manifest::from_json`], which also validates it; a manifest
/// built in code should be checked with [`Manifest::validate`] before use.
/// The derived `Deserialize` only checks types: it neither applies the rules of
/// [`Manifest::validate`] nor refuses a struct written as a JSON array, so read
/// manifests with [`Manifest::from_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The package name; the package always provides this name at [`Manifest::version`].
    pub name: String,
    /// The package version (semver 2).
    #[serde(deserialize_with = "de::version")]
    pub version: Version,
    /// A one-line human description; empty if absent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// The API contracts this package provides, besides its own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<Provide>,
    /// The API contracts this package needs, each with a semver range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<Require>,
    /// Shared system components this package links against; each must be provided
    /// by an active package of the `system` layer, at any version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uses: Vec<String>,
    /// Capabilities the package asks for (the system decides whether to grant them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Long-running services the package declares.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// The range of OS versions the package runs on; `None` means any.
    #[serde(
        default,
        deserialize_with = "de::some_version_req",
        skip_serializing_if = "Option::is_none"
    )]
    pub os: Option<VersionReq>,
    /// Where a grafted package came from (`pkgtool graft`); `None` for a package built
    /// from its own sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// The origin of a package grafted from another ecosystem (a Debian `.deb`, a tarball,
/// a directory): the original name and version, and what the manifest's own fields
/// could not carry. Informational: nothing in a package set depends on it.
///
/// ```
/// use format::manifest::Manifest;
///
/// let m = Manifest::from_json(br#"{
///     "name": "hello",
///     "version": "2.10.0+debian.3",
///     "origin": {
///         "from": "debian", "name": "hello", "version": "2.10-3", "arch": "amd64",
///         "unmapped": ["Breaks: hello-debhelper (<< 2.9): not enforced"],
///         "scripts": ["postinst"]
///     }
/// }"#).unwrap();
/// assert_eq!(m.origin.unwrap().version, "2.10-3");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// The ecosystem or kind of input, a name: `debian`, `tar`, `dir`.
    pub from: String,
    /// The original package name, if it had one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The original version string, verbatim (for example the Debian `1:9.2p1-2`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The original architecture (`amd64`, `all`), if it had one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub arch: String,
    /// What could not be expressed in the manifest (dropped alternatives, negative or
    /// weak dependencies, ...), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmapped: Vec<String>,
    /// Install-time scripts the original carried, which were not run (`postinst`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<String>,
}

/// The longest `origin.name`, `origin.version` or `origin.arch`, in characters.
pub const MAX_ORIGIN_FIELD_CHARS: usize = 256;
/// The longest `origin.unmapped` entry, in characters.
pub const MAX_UNMAPPED_CHARS: usize = 4096;
/// The most entries `origin.unmapped` may have.
pub const MAX_UNMAPPED_ENTRIES: usize = 1024;

/// An API contract a package provides, at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provide {
    /// The API name.
    pub api: String,
    /// The version of the contract provided.
    #[serde(deserialize_with = "de::version")]
    pub version: Version,
}

/// An API contract a package needs, with the range of versions it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Require {
    /// The API name.
    pub api: String,
    /// The accepted versions.
    #[serde(deserialize_with = "de::version_req")]
    pub version: VersionReq,
}

/// A service a package declares: its systemd unit (shipped in the package) and how its
/// health is judged after a start (see [`Health`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service name, unique within the package.
    pub name: String,
    /// The program, as a relative path inside the package (for example `bin/compositor`);
    /// informational when the package ships a unit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub exec: String,
    /// The unit file, a relative path inside the package ending in `.service`; empty:
    /// `lib/systemd/system/NAME.service` (see [`Service::unit_path`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// How the service's health is judged after it starts.
    #[serde(default, skip_serializing_if = "Health::is_default")]
    pub health: Health,
}

impl Service {
    /// The unit file's path inside the package.
    pub fn unit_path(&self) -> String {
        if self.unit.is_empty() {
            format!("lib/systemd/system/{}.service", self.name)
        } else {
            self.unit.clone()
        }
    }

    /// The unit's name, as systemd knows it (`web.service`).
    pub fn unit_name(&self) -> String {
        let p = self.unit_path();
        p.rsplit('/').next().unwrap_or(&p).to_owned()
    }
}

/// When a started service counts as ready.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// Once systemd reports the unit active (for `Type=notify` units, that is after the
    /// service sent `READY=1`).
    #[default]
    Started,
    /// Only after `READY=1`: the unit must be `Type=notify` (checked when it starts).
    Notify,
}

/// How a service's health is judged after a start (an update is rolled back when any
/// check fails): it must be ready, its health command (if any) must succeed within
/// `timeout`, its watchdog (if any) must not fire, and it must stay up, without a
/// restart, for `stable`; all within `deadline` of its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// When the service counts as ready.
    pub ready: Ready,
    /// A command that exits 0 when the service is healthy: argv, the program an absolute
    /// path or a relative path inside the package; empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The longest one run of `command` may take.
    pub timeout: Span,
    /// The service's watchdog interval (`WatchdogSec=`), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Span>,
    /// How long the service must stay up without a restart.
    pub stable: Span,
    /// The time from the start by which every check must have passed.
    pub deadline: Span,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            ready: Ready::Started,
            command: Vec::new(),
            timeout: Span::secs(10),
            watchdog: None,
            stable: Span::secs(5),
            deadline: Span::secs(30),
        }
    }
}

impl Health {
    fn is_default(&self) -> bool {
        *self == Health::default()
    }
}

/// The most arguments a health command may have.
pub const MAX_HEALTH_ARGS: usize = 64;

/// A time span in a manifest, written as systemd writes them: a whole number and a unit,
/// `ms`, `s` or `min` (`500ms`, `5s`, `2min`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span {
    /// Milliseconds.
    pub ms: u64,
}

impl Span {
    /// `n` seconds.
    pub const fn secs(n: u64) -> Span {
        Span { ms: n * 1000 }
    }

    /// As a [`std::time::Duration`].
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ms)
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ms.is_multiple_of(60_000) && self.ms > 0 {
            write!(f, "{}min", self.ms / 60_000)
        } else if self.ms.is_multiple_of(1000) {
            write!(f, "{}s", self.ms / 1000)
        } else {
            write!(f, "{}ms", self.ms)
        }
    }
}

impl From<Span> for String {
    fn from(s: Span) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Span {
    type Error = String;
    fn try_from(s: String) -> Result<Span, String> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = s.split_at(digits);
        let per = match unit {
            "ms" => 1,
            "s" => 1000,
            "min" => 60_000,
            _ => {
                return Err(format!(
                    "{} is not a time span: a whole number and ms, s or min (\"5s\")",
                    shown(&s)
                ))
            }
        };
        num.parse::<u64>()
            .ok()
            .filter(|_| num.len() <= 9)
            .map(|n| Span { ms: n * per })
            .ok_or_else(|| {
                format!(
                    "{} is not a time span: a whole number and ms, s or min (\"5s\")",
                    shown(&s)
                )
            })
    }
}

/// A manifest that does not parse or does not validate.
///
/// `field` is a path into the document such as `name`, `requires[1].version` or
/// `services[0].exec`, or `manifest` for the document as a whole (too large,
/// invalid JSON); `reason` says what is wrong, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest: {}{reason}", if field == WHOLE { String::new() } else { format!("{field}: ") })]
pub struct ManifestError {
    /// The offending field, as a path into the document.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ManifestError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ManifestError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl Manifest {
    /// Parses a manifest from JSON and validates it.
    ///
    /// Rejects documents larger than [`MAX_MANIFEST_BYTES`], invalid JSON (with its
    /// line and column), trailing data, duplicate or unknown keys, missing fields,
    /// values of the wrong type (`null` included), and anything
    /// [`Manifest::validate`] rejects.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::new(
                WHOLE,
                format!(
                    "{} bytes is larger than the limit of {MAX_MANIFEST_BYTES} bytes (1 MiB)",
                    bytes.len()
                ),
            ));
        }
        check_shape(bytes)?;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let manifest: Manifest = serde_path_to_error::deserialize(&mut de).map_err(parse_error)?;
        de.end().map_err(|e| json_error(&e))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Writes the manifest as canonical JSON: pretty-printed with two-space
    /// indentation, keys in declaration order, empty `summary`, empty lists and
    /// a missing `os` left out, and a trailing newline.
    ///
    /// A valid manifest round-trips: `Manifest::from_json(&m.to_json())` gives `m` back.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, versions and lists into a Vec cannot fail:
        // there are no maps with non-string keys and no fallible Serialize impls.
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialization cannot fail");
        out.push(b'\n');
        out
    }

    /// Checks the rules that types alone do not express, returning the first
    /// problem found (fields are checked in document order).
    ///
    /// The rules are documented in `manifests/README.md`: name syntax, a one-line
    /// summary, no duplicates in `requires`, `uses`, `capabilities` and service
    /// names, an api listed twice in `provides` only at semver-incompatible
    /// versions, a package neither lists its own name in `provides` nor requires
    /// it, and service programs are safe relative paths.
    pub fn validate(&self) -> Result<(), ManifestError> {
        check_name(&self.name).map_err(|r| ManifestError::new("name", r))?;
        check_summary(&self.summary).map_err(|r| ManifestError::new("summary", r))?;
        self.validate_provides()?;
        self.validate_requires()?;
        check_unique_names(&self.uses, "uses", check_name)?;
        check_unique_names(&self.capabilities, "capabilities", check_capability)?;
        self.validate_services()?;
        match &self.origin {
            Some(o) => o.validate(),
            None => Ok(()),
        }
    }

    /// Every API this package provides: its own name at its own version first,
    /// then each entry of `provides` in order.
    pub fn provided(&self) -> impl Iterator<Item = (&str, &Version)> {
        std::iter::once((self.name.as_str(), &self.version))
            .chain(self.provides.iter().map(|p| (p.api.as_str(), &p.version)))
    }

    fn validate_provides(&self) -> Result<(), ManifestError> {
        // api -> (compatibility line, index) of the entries seen so far.
        let mut seen: HashMap<&str, Vec<(CompatLine, usize)>> = HashMap::new();
        for (i, p) in self.provides.iter().enumerate() {
            let field = |sub: &str| format!("provides[{i}].{sub}");
            check_name(&p.api).map_err(|r| ManifestError::new(field("api"), r))?;
            if p.api == self.name {
                let reason = if p.version == self.version {
                    format!(
                        "{} is the package's own name, which it always provides at its own version: leave it out",
                        shown(&p.api)
                    )
                } else {
                    format!(
                        "{} is the package's own name, which it provides only at its own version {}",
                        shown(&p.api),
                        self.version
                    )
                };
                return Err(ManifestError::new(field("api"), reason));
            }
            let line = CompatLine::of(&p.version);
            let earlier = seen.entry(p.api.as_str()).or_default();
            if let Some(&(_, j)) = earlier.iter().find(|(l, _)| *l == line) {
                return Err(ManifestError::new(
                    field("api"),
                    format!(
                        "{} is already provided at the compatible version {} (provides[{j}]); \
                         an api may be listed again only at a semver-incompatible version",
                        shown(&p.api),
                        self.provides[j].version
                    ),
                ));
            }
            earlier.push((line, i));
        }
        Ok(())
    }

    fn validate_requires(&self) -> Result<(), ManifestError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, r) in self.requires.iter().enumerate() {
            let field = format!("requires[{i}].api");
            check_name(&r.api).map_err(|reason| ManifestError::new(field.clone(), reason))?;
            if r.api == self.name {
                return Err(ManifestError::new(
                    field,
                    format!(
                        "{} is the package's own name: a package must not require itself",
                        shown(&r.api)
                    ),
                ));
            }
            if let Some(j) = seen.insert(r.api.as_str(), i) {
                return Err(ManifestError::new(
                    field,
                    format!(
                        "{} is already required (requires[{j}]); combine the ranges in one entry, as in \">=1.2, <2\"",
                        shown(&r.api)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_services(&self) -> Result<(), ManifestError> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let field = |sub: &str| format!("services[{i}].{sub}");
            check_name(&s.name).map_err(|r| ManifestError::new(field("name"), r))?;
            if let Some(j) = seen.insert(s.name.as_str(), i) {
                return Err(ManifestError::new(
                    field("name"),
                    format!("{} is already declared (services[{j}])", shown(&s.name)),
                ));
            }
            if !s.exec.is_empty() {
                check_exec(&s.exec).map_err(|r| ManifestError::new(field("exec"), r))?;
            }
            if !s.unit.is_empty() {
                check_exec(&s.unit).map_err(|r| ManifestError::new(field("unit"), r))?;
                let file = s.unit.rsplit('/').next().unwrap_or("");
                if file.len() <= ".service".len() || !file.ends_with(".service") {
                    return Err(ManifestError::new(
                        field("unit"),
                        format!("{} must name a unit file NAME.service", shown(&s.unit)),
                    ));
                }
            }
            s.health.validate(&field("health"))?;
        }
        Ok(())
    }
}

impl Health {
    /// `command`: at most [`MAX_HEALTH_ARGS`] single-line arguments, the program a path;
    /// `timeout` 100ms to 10min; `watchdog` 1s to 1h; `stable` at most 10min; `deadline`
    /// 1s to 1h and longer than `stable`.
    fn validate(&self, at: &str) -> Result<(), ManifestError> {
        let field = |sub: &str| format!("{at}.{sub}");
        if self.command.len() > MAX_HEALTH_ARGS {
            return Err(ManifestError::new(
                field("command"),
                format!(
                    "has {} arguments, more than the limit of {MAX_HEALTH_ARGS}",
                    self.command.len()
                ),
            ));
        }
        for (i, a) in self.command.iter().enumerate() {
            let f = format!("{}[{i}]", field("command"));
            check_line(a, MAX_EXEC_BYTES).map_err(|r| ManifestError::new(f.clone(), r))?;
            if i == 0 {
                match a.strip_prefix('/') {
                    Some(abs) if !abs.is_empty() => check_exec(abs)
                        .map_err(|r| ManifestError::new(f, format!("(absolute) {r}")))?,
                    _ => check_exec(a).map_err(|r| ManifestError::new(f, r))?,
                }
            }
        }
        let range = |name: &str, v: Span, lo: u64, hi: u64| {
            if v.ms < lo || v.ms > hi {
                Err(ManifestError::new(
                    field(name),
                    format!(
                        "{v} is out of range: {} to {}",
                        Span { ms: lo },
                        Span { ms: hi }
                    ),
                ))
            } else {
                Ok(())
            }
        };
        range("timeout", self.timeout, 100, 600_000)?;
        if let Some(w) = self.watchdog {
            range("watchdog", w, 1000, 3_600_000)?;
        }
        range("stable", self.stable, 0, 600_000)?;
        range("deadline", self.deadline, 1000, 3_600_000)?;
        if self.deadline <= self.stable {
            return Err(ManifestError::new(
                field("deadline"),
                format!(
                    "{} must be longer than the stability window ({})",
                    self.deadline, self.stable
                ),
            ));
        }
        Ok(())
    }
}

impl Origin {
    /// `from` is a name; `name`, `version` and `arch` are single lines of at most
    /// [`MAX_ORIGIN_FIELD_CHARS`] characters; `unmapped` has at most
    /// [`MAX_UNMAPPED_ENTRIES`] single-line entries of at most [`MAX_UNMAPPED_CHARS`];
    /// `scripts` are distinct names.
    fn validate(&self) -> Result<(), ManifestError> {
        check_name(&self.from).map_err(|r| ManifestError::new("origin.from", r))?;
        for (field, value) in [
            ("origin.name", &self.name),
            ("origin.version", &self.version),
            ("origin.arch", &self.arch),
        ] {
            check_line(value, MAX_ORIGIN_FIELD_CHARS).map_err(|r| ManifestError::new(field, r))?;
        }
        if self.unmapped.len() > MAX_UNMAPPED_ENTRIES {
            return Err(ManifestError::new(
                "origin.unmapped",
                format!(
                    "has {} entries, more than the limit of {MAX_UNMAPPED_ENTRIES}",
                    self.unmapped.len()
                ),
            ));
        }
        for (i, u) in self.unmapped.iter().enumerate() {
            check_line(u, MAX_UNMAPPED_CHARS)
                .map_err(|r| ManifestError::new(format!("origin.unmapped[{i}]"), r))?;
        }
        check_unique_names(&self.scripts, "origin.scripts", check_name)
    }
}

/// The semver compatibility line of a version: versions on one line are
/// compatible under caret rules (`1.x.y`; `0.3.x`; `0.0.7` alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CompatLine {
    Major(u64),
    Minor(u64),
    Patch(u64),
}

impl CompatLine {
    fn of(v: &Version) -> Self {
        if v.major > 0 {
            CompatLine::Major(v.major)
        } else if v.minor > 0 {
            CompatLine::Minor(v.minor)
        } else {
            CompatLine::Patch(v.patch)
        }
    }
}

/// Quotes a value for an error message, cut to a readable length.
fn shown(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// The rule for package, api, `uses` and service names: a superset of Debian
/// package names (`libstdc++6`, `g++`, `0ad`) and dotted names (`core.graphics`).
fn check_name(s: &str) -> Result<(), String> {
    check_identifier(
        s,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_' | '+'),
        "lowercase ASCII letters, digits, '.', '-', '_' and '+'",
    )?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(format!(
            "{} must start with a lowercase letter or a digit",
            shown(s)
        ));
    }
    check_dots(s)
}

/// The rule for capability names, such as `net.configure`.
fn check_capability(s: &str) -> Result<(), String> {
    check_identifier(
        s,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'),
        "lowercase ASCII letters, digits, '.', '-' and '_'",
    )?;
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("{} must start with a lowercase letter", shown(s)));
    }
    check_dots(s)
}

/// Checks length and character set; `allowed_text` describes `allowed`.
fn check_identifier(
    s: &str,
    allowed: impl Fn(char) -> bool,
    allowed_text: &str,
) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(c) = s.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "{} contains {c:?}: only {allowed_text} are allowed",
            shown(s)
        ));
    }
    // All characters are ASCII now, so bytes count characters.
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "{} is {} characters long, more than the limit of {MAX_NAME_LEN}",
            shown(s),
            s.len()
        ));
    }
    Ok(())
}

fn check_dots(s: &str) -> Result<(), String> {
    if s.contains("..") {
        return Err(format!("{} must not contain \"..\"", shown(s)));
    }
    if s.ends_with('.') {
        return Err(format!("{} must not end with '.'", shown(s)));
    }
    Ok(())
}

fn check_summary(s: &str) -> Result<(), String> {
    check_line(s, MAX_SUMMARY_CHARS)
}

/// One line of text: at most `max` characters, no control characters, no U+2028/U+2029.
fn check_line(s: &str, max: usize) -> Result<(), String> {
    let chars = s.chars().count();
    if chars > max {
        return Err(format!(
            "is {chars} characters long, more than the limit of {max}"
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Err(format!(
            "contains the control character {c:?}: it must be a single line of text"
        ));
    }
    Ok(())
}

fn check_exec(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > MAX_EXEC_BYTES {
        return Err(format!(
            "is {} bytes long, more than the limit of {MAX_EXEC_BYTES}",
            s.len()
        ));
    }
    if s.contains('\0') {
        return Err(format!("{} contains a NUL character", shown(s)));
    }
    if s.starts_with('/') {
        return Err(format!(
            "{} is an absolute path: it must be relative to the package root",
            shown(s)
        ));
    }
    for component in s.split('/') {
        match component {
            "" => {
                return Err(format!(
                    "{} has an empty path component (\"//\" or a trailing '/')",
                    shown(s)
                ))
            }
            "." | ".." => {
                return Err(format!(
                    "{} has a {component:?} component: it must be a plain path inside the package",
                    shown(s)
                ))
            }
            c if c.len() > MAX_EXEC_COMPONENT_BYTES => {
                return Err(format!(
                "{} has a component of {} bytes, more than the limit of {MAX_EXEC_COMPONENT_BYTES}",
                shown(s),
                c.len()
            ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks each entry of a list of names with `check`, and that no name repeats.
fn check_unique_names(
    names: &[String],
    list: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<(), ManifestError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let field = || format!("{list}[{i}]");
        check(name).map_err(|r| ManifestError::new(field(), r))?;
        if let Some(j) = seen.insert(name.as_str(), i) {
            return Err(ManifestError::new(
                field(),
                format!("{} is already listed ({list}[{j}])", shown(name)),
            ));
        }
    }
    Ok(())
}

/// Cuts a message to [`MAX_REASON_CHARS`] characters.
fn cut(mut msg: String) -> String {
    if let Some((at, _)) = msg.char_indices().nth(MAX_REASON_CHARS) {
        msg.truncate(at);
        msg.push_str("...");
    }
    msg
}

/// The message of a serde_json error without its " at line L column C" suffix.
fn bare_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match msg.strip_suffix(&suffix) {
        Some(bare) => bare.to_owned(),
        None => msg,
    }
}

/// An error about the JSON text itself, located by line and column.
fn json_error(e: &serde_json::Error) -> ManifestError {
    ManifestError::new(
        WHOLE,
        format!(
            "invalid JSON at line {} column {}: {}",
            e.line(),
            e.column(),
            bare_message(e)
        ),
    )
}

/// Checks the JSON syntax, and that the document and the entries of `provides`,
/// `requires` and `services` are objects: serde's derived `Deserialize` would also
/// accept a struct written as an array of its field values, which the schema forbids.
fn check_shape(bytes: &[u8]) -> Result<(), ManifestError> {
    use serde_json::Value;
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    let not_object = |field: String, v: &Value| {
        ManifestError::new(
            field,
            format!("invalid type: {}, expected an object", kind(v)),
        )
    };
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
    let Some(root) = doc.as_object() else {
        return Err(not_object(WHOLE.to_owned(), &doc));
    };
    for list in ["provides", "requires", "services"] {
        if let Some(Value::Array(items)) = root.get(list) {
            if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
                return Err(not_object(format!("{list}[{i}]"), item));
            }
        }
    }
    if let Some(Value::Array(services)) = root.get("services") {
        for (i, s) in services.iter().enumerate() {
            if let Some(h) = s.get("health").filter(|h| !h.is_object()) {
                return Err(not_object(format!("services[{i}].health"), h));
            }
        }
    }
    if let Some(origin) = root.get("origin") {
        if !origin.is_object() {
            return Err(not_object("origin".to_owned(), origin));
        }
    }
    Ok(())
}

/// Renders a serde_path_to_error path as `requires[1].version`; keys that are not
/// plain identifiers are quoted, as in `requires[0]["odd key"]`, so the field stays
/// unambiguous and on one line.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut out, key),
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    out
}

fn push_key(out: &mut String, key: &str) {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push_str(&format!("[{}]", shown(key)));
    }
}

/// Maps a deserialization error to a [`ManifestError`] naming the field.
fn parse_error(e: serde_path_to_error::Error<serde_json::Error>) -> ManifestError {
    use serde_json::error::Category;
    let mut field = field_path(e.path());
    let inner = e.inner();
    match inner.classify() {
        Category::Io | Category::Syntax | Category::Eof => return json_error(inner),
        Category::Data => {}
    }
    let msg = bare_message(inner);
    // serde's own messages for struct keys name the key but the path stops at its
    // struct (missing, duplicate) or already includes it (unknown): make the field
    // the key's full path and the reason short.
    let reason = if let Some(key) = quoted_key(&msg, "missing field `") {
        push_key(&mut field, key);
        "missing field".to_owned()
    } else if let Some(key) = quoted_key(&msg, "duplicate field `") {
        push_key(&mut field, key);
        "duplicate field".to_owned()
    } else if let Some(rest) = msg.strip_prefix("unknown field `") {
        match rest.split_once("`, ") {
            Some((_, expected)) => format!("unknown field ({expected})"),
            None => "unknown field".to_owned(),
        }
    } else {
        msg
    };
    if field.is_empty() {
        field = WHOLE.to_owned();
    }
    ManifestError::new(field, cut(reason))
}

/// The key in a message of the form "<prefix>key`".
fn quoted_key<'m>(msg: &'m str, prefix: &str) -> Option<&'m str> {
    msg.strip_prefix(prefix)?.strip_suffix('`')
}

/// Deserializers for semver types whose errors quote the offending string.
mod de {
    use super::{fmt, shown, Version, VersionReq};
    use serde::de::{Deserializer, Error, Visitor};

    struct Semver<T> {
        what: &'static str,
        example: &'static str,
        parse: fn(&str) -> Result<T, semver::Error>,
    }

    impl<T> Visitor<'_> for Semver<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a {} string such as {:?}", self.what, self.example)
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<T, E> {
            (self.parse)(s)
                .map_err(|e| E::custom(format_args!("invalid {} {}: {e}", self.what, shown(s))))
        }
    }

    pub(super) fn version<'de, D: Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        d.deserialize_str(Semver {
            what: "semver version",
            example: "1.2.3",
            parse: Version::parse,
        })
    }

    pub(super) fn version_req<'de, D: Deserializer<'de>>(d: D) -> Result<VersionReq, D::Error> {
        d.deserialize_str(Semver {
            what: "semver range",
            example: ">=1.2, <2",
            parse: VersionReq::parse,
        })
    }

    pub(super) fn some_version_req<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<VersionReq>, D::Error> {
        version_req(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"{
  "name": "core.graphics",
  "version": "2.4.1",
  "summary": "2D and window API",
  "provides": [ { "api": "api.graphics", "version": "2.4.1" }, { "api": "api.window", "version": "1.2.0" } ],
  "requires": [ { "api": "core.kernel", "version": ">=1.0" }, { "api": "core.io", "version": "~2.1" } ],
  "uses": ["system.opengl"],
  "capabilities": ["net.configure"],
  "services": [ { "name": "compositor", "exec": "bin/compositor" } ],
  "os": ">=1.0"
}"#;

    fn design() -> Manifest {
        Manifest::from_json(DESIGN_EXAMPLE.as_bytes()).expect("the DESIGN.md example is valid")
    }

    #[test]
    fn parses_the_design_example() {
        let m = design();
        assert_eq!(m.name, "core.graphics");
        assert_eq!(m.version, Version::new(2, 4, 1));
        assert_eq!(m.summary, "2D and window API");
        assert_eq!(
            m.provides,
            vec![
                Provide {
                    api: "api.graphics".into(),
                    version: Version::new(2, 4, 1)
                },
                Provide {
                    api: "api.window".into(),
                    version: Version::new(1, 2, 0)
                },
            ]
        );
        assert_eq!(m.requires[1].api, "core.io");
        assert!(m.requires[1].version.matches(&Version::new(2, 1, 7)));
        assert!(!m.requires[1].version.matches(&Version::new(2, 2, 0)));
        assert_eq!(m.uses, ["system.opengl"]);
        assert_eq!(m.capabilities, ["net.configure"]);
        assert_eq!(
            m.services,
            [Service {
                name: "compositor".into(),
                exec: "bin/compositor".into(),
                unit: String::new(),
                health: Health::default(),
            }]
        );
        assert_eq!(m.os, Some(VersionReq::parse(">=1.0").unwrap()));
    }

    #[test]
    fn provided_lists_own_name_first() {
        let m = design();
        let provided: Vec<(&str, String)> =
            m.provided().map(|(api, v)| (api, v.to_string())).collect();
        assert_eq!(
            provided,
            [
                ("core.graphics", "2.4.1".to_owned()),
                ("api.graphics", "2.4.1".to_owned()),
                ("api.window", "1.2.0".to_owned()),
            ]
        );
    }

    #[test]
    fn minimal_manifest_has_defaults() {
        let m = Manifest::from_json(br#"{"name":"a","version":"0.0.1"}"#).unwrap();
        assert_eq!(m.summary, "");
        assert!(m.provides.is_empty() && m.requires.is_empty() && m.uses.is_empty());
        assert!(m.capabilities.is_empty() && m.services.is_empty());
        assert_eq!(m.os, None);
        assert_eq!(
            m.to_json(),
            b"{\n  \"name\": \"a\",\n  \"version\": \"0.0.1\"\n}\n"
        );
    }

    #[test]
    fn to_json_is_canonical() {
        let expected = r#"{
  "name": "core.graphics",
  "version": "2.4.1",
  "summary": "2D and window API",
  "provides": [
    {
      "api": "api.graphics",
      "version": "2.4.1"
    },
    {
      "api": "api.window",
      "version": "1.2.0"
    }
  ],
  "requires": [
    {
      "api": "core.kernel",
      "version": ">=1.0"
    },
    {
      "api": "core.io",
      "version": "~2.1"
    }
  ],
  "uses": [
    "system.opengl"
  ],
  "capabilities": [
    "net.configure"
  ],
  "services": [
    {
      "name": "compositor",
      "exec": "bin/compositor"
    }
  ],
  "os": ">=1.0"
}
"#;
        let m = design();
        assert_eq!(String::from_utf8(m.to_json()).unwrap(), expected);
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn accepts_debian_and_dotted_names() {
        for name in [
            "libstdc++6",
            "g++",
            "0ad",
            "389-ds",
            "libc6",
            "lib32gcc-s1",
            "a",
            "x11-apps",
            "core.graphics",
            "api.json.v1",
            "python3.11",
            "my_pkg",
            "libgtk-4-1",
            "libreoffice-l10n-en-gb",
            "a.b-c_d+e",
            &"a".repeat(64),
        ] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn accepts_semver_forms() {
        for (v, r) in [
            ("2.4.1", ">=1.0"),
            ("1.0.0-rc.1+build5", "~2.1"),
            ("0.0.0", "^3"),
            ("10.20.30-alpha.beta.1", "*"),
            ("1.2.3+20240101", ">=1.2, <2"),
            ("1.2.3", "=1.7.1"),
            ("1.2.3", "1.*"),
            ("1.2.3", "<0.5.0-beta"),
        ] {
            let json = format!(
                r#"{{"name":"p","version":"{v}","requires":[{{"api":"q","version":"{r}"}}],"os":"{r}"}}"#
            );
            let m = Manifest::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{v} {r}: {e}"));
            assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        }
    }

    /// Replaces (or with `None` removes) the value at a JSON pointer in the DESIGN example.
    fn edited(pointer: &str, value: Option<serde_json::Value>) -> Vec<u8> {
        let mut doc: serde_json::Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = doc.pointer_mut(parent).unwrap();
        match (parent, value) {
            (serde_json::Value::Object(map), Some(v)) => {
                map.insert(key.to_owned(), v);
            }
            (serde_json::Value::Object(map), None) => {
                map.remove(key);
            }
            (serde_json::Value::Array(list), Some(v)) => {
                let i: usize = key.parse().unwrap();
                if i == list.len() {
                    list.push(v);
                } else {
                    list[i] = v;
                }
            }
            (serde_json::Value::Array(list), None) => {
                list.remove(key.parse().unwrap());
            }
            _ => panic!("bad pointer {pointer}"),
        }
        serde_json::to_vec(&doc).unwrap()
    }

    fn set(pointer: &str, value: serde_json::Value) -> Vec<u8> {
        edited(pointer, Some(value))
    }

    #[test]
    fn each_rule_names_its_field() {
        use serde_json::json;
        let long = |n: usize| "a".repeat(n);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            // Size and syntax.
            ("too large", vec![b' '; MAX_MANIFEST_BYTES + 1], "manifest"),
            ("invalid JSON", br#"{"name": "a",, }"#.to_vec(), "manifest"),
            (
                "trailing data",
                br#"{"name":"a","version":"1.0.0"} x"#.to_vec(),
                "manifest",
            ),
            ("empty input", b"".to_vec(), "manifest"),
            ("not an object", br#"["a"]"#.to_vec(), "manifest"),
            ("struct as array", br#"["a", "1.0.0"]"#.to_vec(), "manifest"),
            (
                "provide as array",
                set("/provides/1", json!(["api.x", "1.0.0"])),
                "provides[1]",
            ),
            (
                "require as string",
                set("/requires/0", json!("core.kernel")),
                "requires[0]",
            ),
            (
                "service as array",
                set("/services/0", json!(["a", "bin/a"])),
                "services[0]",
            ),
            // Missing, unknown, duplicate and mistyped fields.
            ("missing name", edited("/name", None), "name"),
            ("missing version", edited("/version", None), "version"),
            (
                "missing requires api",
                edited("/requires/1/api", None),
                "requires[1].api",
            ),
            (
                "unknown top field",
                set("/homepage", json!("x")),
                "homepage",
            ),
            (
                "unknown nested field",
                set("/provides/1/compat", json!("1")),
                "provides[1].compat",
            ),
            ("odd unknown key", set("/a b", json!(1)), "[\"a b\"]"),
            (
                "duplicate key",
                br#"{"name":"a","version":"1.0.0","name":"b"}"#.to_vec(),
                "name",
            ),
            ("name not a string", set("/name", json!(5)), "name"),
            (
                "uses not a list",
                set("/uses", json!("system.opengl")),
                "uses",
            ),
            ("null os", set("/os", json!(null)), "os"),
            ("null summary", set("/summary", json!(null)), "summary"),
            // Versions and ranges.
            ("bad version", set("/version", json!("2.4")), "version"),
            (
                "version with v",
                set("/version", json!("v2.4.1")),
                "version",
            ),
            (
                "bad provide version",
                set("/provides/0/version", json!(">=1")),
                "provides[0].version",
            ),
            (
                "bad range",
                set("/requires/1/version", json!("~>2")),
                "requires[1].version",
            ),
            (
                "range not a string",
                set("/requires/0/version", json!(1)),
                "requires[0].version",
            ),
            ("bad os", set("/os", json!("latest")), "os"),
            // Names.
            ("empty name", set("/name", json!("")), "name"),
            (
                "uppercase name",
                set("/name", json!("Core.graphics")),
                "name",
            ),
            ("name starts with dot", set("/name", json!(".core")), "name"),
            (
                "name starts with dash",
                set("/name", json!("-core")),
                "name",
            ),
            (
                "name with slash",
                set("/name", json!("core/graphics")),
                "name",
            ),
            (
                "name with double dot",
                set("/name", json!("core..graphics")),
                "name",
            ),
            ("name ends with dot", set("/name", json!("core.")), "name"),
            ("name too long", set("/name", json!(long(65))), "name"),
            ("non-ASCII name", set("/name", json!("café")), "name"),
            // Summary.
            (
                "summary too long",
                set("/summary", json!(long(513))),
                "summary",
            ),
            (
                "summary two lines",
                set("/summary", json!("a\nb")),
                "summary",
            ),
            ("summary tab", set("/summary", json!("a\tb")), "summary"),
            (
                "summary line separator",
                set("/summary", json!("a\u{2028}b")),
                "summary",
            ),
            // Provides.
            (
                "bad provide api",
                set("/provides/1/api", json!("API")),
                "provides[1].api",
            ),
            (
                "duplicate provide",
                set(
                    "/provides/1",
                    json!({"api": "api.graphics", "version": "2.0.0"}),
                ),
                "provides[1].api",
            ),
            (
                "duplicate provide 0.x",
                set(
                    "/provides/2",
                    json!({"api": "api.window", "version": "1.0.0"}),
                ),
                "provides[2].api",
            ),
            (
                "own name other version",
                set(
                    "/provides/2",
                    json!({"api": "core.graphics", "version": "1.0.0"}),
                ),
                "provides[2].api",
            ),
            (
                "own name same version",
                set(
                    "/provides/0",
                    json!({"api": "core.graphics", "version": "2.4.1"}),
                ),
                "provides[0].api",
            ),
            // Requires.
            (
                "bad require api",
                set("/requires/0/api", json!("core kernel")),
                "requires[0].api",
            ),
            (
                "duplicate require",
                set(
                    "/requires/2",
                    json!({"api": "core.kernel", "version": "<3"}),
                ),
                "requires[2].api",
            ),
            (
                "requires itself",
                set(
                    "/requires/1",
                    json!({"api": "core.graphics", "version": "*"}),
                ),
                "requires[1].api",
            ),
            // Uses and capabilities.
            ("bad uses", set("/uses/1", json!("System.GL")), "uses[1]"),
            (
                "duplicate uses",
                set("/uses/1", json!("system.opengl")),
                "uses[1]",
            ),
            (
                "empty capability",
                set("/capabilities/0", json!("")),
                "capabilities[0]",
            ),
            (
                "capability with plus",
                set("/capabilities/0", json!("net+raw")),
                "capabilities[0]",
            ),
            (
                "capability starts with digit",
                set("/capabilities/0", json!("1net")),
                "capabilities[0]",
            ),
            (
                "capability too long",
                set("/capabilities/0", json!(long(65))),
                "capabilities[0]",
            ),
            (
                "duplicate capability",
                set("/capabilities/1", json!("net.configure")),
                "capabilities[1]",
            ),
            // Services.
            (
                "bad service name",
                set("/services/0/name", json!("Compositor")),
                "services[0].name",
            ),
            (
                "duplicate service",
                set(
                    "/services/1",
                    json!({"name": "compositor", "exec": "bin/other"}),
                ),
                "services[1].name",
            ),
            (
                "absolute exec",
                set("/services/0/exec", json!("/bin/compositor")),
                "services[0].exec",
            ),
            (
                "dotdot exec",
                set("/services/0/exec", json!("bin/../../etc/x")),
                "services[0].exec",
            ),
            (
                "dot exec",
                set("/services/0/exec", json!("./bin/compositor")),
                "services[0].exec",
            ),
            (
                "empty component exec",
                set("/services/0/exec", json!("bin//compositor")),
                "services[0].exec",
            ),
            (
                "trailing slash exec",
                set("/services/0/exec", json!("bin/")),
                "services[0].exec",
            ),
            (
                "NUL exec",
                set("/services/0/exec", json!("bin/a\u{0}b")),
                "services[0].exec",
            ),
            (
                "long exec",
                set("/services/0/exec", json!(vec!["a"; 2049].join("/"))),
                "services[0].exec",
            ),
            (
                "long exec component",
                set("/services/0/exec", json!(long(256))),
                "services[0].exec",
            ),
            // Units and health.
            (
                "unit not a .service",
                set(
                    "/services/0/unit",
                    json!("lib/systemd/system/compositor.socket"),
                ),
                "services[0].unit",
            ),
            (
                "unit outside the package",
                set("/services/0/unit", json!("../compositor.service")),
                "services[0].unit",
            ),
            (
                "unit named only .service",
                set("/services/0/unit", json!("lib/.service")),
                "services[0].unit",
            ),
            (
                "health not an object",
                set("/services/0/health", json!("yes")),
                "services[0].health",
            ),
            (
                "unknown health field",
                set("/services/0/health", json!({"retries": 3})),
                "services[0].health.retries",
            ),
            (
                "bad readiness",
                set("/services/0/health", json!({"ready": "listening"})),
                "services[0].health.ready",
            ),
            (
                "timeout without a unit",
                set("/services/0/health", json!({"timeout": "5"})),
                "services[0].health.timeout",
            ),
            (
                "timeout with a fraction",
                set("/services/0/health", json!({"timeout": "1.5s"})),
                "services[0].health.timeout",
            ),
            (
                "timeout too long",
                set("/services/0/health", json!({"timeout": "11min"})),
                "services[0].health.timeout",
            ),
            (
                "timeout too short",
                set("/services/0/health", json!({"timeout": "10ms"})),
                "services[0].health.timeout",
            ),
            (
                "watchdog too short",
                set("/services/0/health", json!({"watchdog": "500ms"})),
                "services[0].health.watchdog",
            ),
            (
                "deadline not after the stability window",
                set(
                    "/services/0/health",
                    json!({"stable": "30s", "deadline": "30s"}),
                ),
                "services[0].health.deadline",
            ),
            (
                "health command a number",
                set("/services/0/health", json!({"command": [1]})),
                "services[0].health.command[0]",
            ),
            (
                "health command outside the package",
                set("/services/0/health", json!({"command": ["../bin/check"]})),
                "services[0].health.command[0]",
            ),
            (
                "health command with a line break",
                set(
                    "/services/0/health",
                    json!({"command": ["bin/check", "a\nb"]}),
                ),
                "services[0].health.command[1]",
            ),
            (
                "health command too long",
                set("/services/0/health", json!({"command": vec!["x"; 65]})),
                "services[0].health.command",
            ),
        ];
        assert!(cases.len() >= 25);
        for (what, json, field) in cases {
            match Manifest::from_json(&json) {
                Ok(m) => panic!("{what}: accepted {m:?}"),
                Err(e) => {
                    assert_eq!(e.field, field, "{what}: {e}");
                    assert!(!e.reason.is_empty(), "{what}");
                    assert!(!e.to_string().contains('\n'), "{what}: {e}");
                }
            }
        }
    }

    #[test]
    fn a_service_needs_no_exec_when_it_ships_a_unit() {
        // exec is informational since services ship their units: absent or empty is fine.
        for json in [
            edited("/services/0/exec", None),
            set("/services/0/exec", serde_json::json!("")),
        ] {
            let m = Manifest::from_json(&json).unwrap();
            assert_eq!(m.services[0].exec, "");
            assert_eq!(m.services[0].unit_name(), "compositor.service");
        }
    }

    #[test]
    fn services_with_units_and_health_round_trip() {
        let m = Manifest::from_json(
            br#"{"name": "web", "version": "1.0.0", "services": [
                {"name": "web", "unit": "lib/systemd/system/pkgfs-web.service",
                 "health": {"ready": "notify", "command": ["bin/web-check", "--port", "8080"],
                            "timeout": "2s", "watchdog": "10s", "stable": "3s", "deadline": "1min"}},
                {"name": "plain"}
            ]}"#,
        )
        .unwrap();
        let s = &m.services[0];
        assert_eq!(
            (s.unit_name().as_str(), s.health.ready),
            ("pkgfs-web.service", Ready::Notify)
        );
        assert_eq!(s.health.command, ["bin/web-check", "--port", "8080"]);
        assert_eq!(
            (s.health.timeout.ms, s.health.watchdog.unwrap().ms),
            (2000, 10_000)
        );
        assert_eq!((s.health.stable.ms, s.health.deadline.ms), (3000, 60_000));
        // Defaults: the unit under lib/systemd/system, started is ready, 10s, 5s, 30s.
        let p = &m.services[1];
        assert_eq!(p.unit_path(), "lib/systemd/system/plain.service");
        assert_eq!(p.health, Health::default());
        assert_eq!(
            (
                p.health.timeout.ms,
                p.health.stable.ms,
                p.health.deadline.ms
            ),
            (10_000, 5000, 30_000)
        );
        let again = Manifest::from_json(&m.to_json()).unwrap();
        assert_eq!(again, m);
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(
            text.contains("\"deadline\": \"1min\"")
                && !text.contains("\"plain\",\n      \"health\""),
            "{text}"
        );
        // An absolute health program is allowed (curl from the system).
        Manifest::from_json(
            br#"{"name": "w", "version": "1.0.0", "services": [{"name": "w", "health": {"command": ["/usr/bin/curl", "-fsS", "http://127.0.0.1:8080/"]}}]}"#,
        )
        .unwrap();
    }

    fn error_text(json: &[u8]) -> String {
        Manifest::from_json(json).unwrap_err().to_string()
    }

    #[test]
    fn messages_read_well() {
        use serde_json::json;
        let e = error_text(&set("/requires/1/version", json!("~>2")));
        assert!(
            e.starts_with(r#"manifest: requires[1].version: invalid semver range "~>2": "#),
            "{e}"
        );
        assert_eq!(
            error_text(&edited("/name", None)),
            "manifest: name: missing field"
        );
        let e = error_text(&set("/homepage", json!("x")));
        assert!(
            e.starts_with("manifest: homepage: unknown field (expected one of `name`, "),
            "{e}"
        );
        let e = error_text(b"{\n  \"name\": \"a\",\n  \"version\" \"1.0.0\"\n}");
        assert_eq!(
            e,
            "manifest: invalid JSON at line 3 column 13: expected `:`"
        );
        let e = error_text(&set("/name", json!(5)));
        assert_eq!(
            e,
            "manifest: name: invalid type: integer `5`, expected a string"
        );
        let e = error_text(&set("/version", json!(2)));
        assert_eq!(
            e,
            "manifest: version: invalid type: integer `2`, expected a semver version string such as \"1.2.3\""
        );
        let e = error_text(&set("/name", json!("x".repeat(1000) + "A")));
        assert!(e.len() < 300, "{e}");
    }

    const GRAFTED: &str = r#"{
  "name": "libgcc-s1",
  "version": "12.2.0+debian.14.deb.12.u.1",
  "summary": "GCC support library",
  "origin": {
    "from": "debian",
    "name": "libgcc-s1",
    "version": "12.2.0-14+deb12u1",
    "arch": "amd64",
    "unmapped": [
      "Breaks: gnat (<< 7): not enforced"
    ],
    "scripts": [
      "postinst"
    ]
  }
}
"#;

    #[test]
    fn origin_round_trips_in_canonical_form() {
        let m = Manifest::from_json(GRAFTED.as_bytes()).unwrap();
        let o = m.origin.as_ref().unwrap();
        assert_eq!((o.from.as_str(), o.arch.as_str()), ("debian", "amd64"));
        assert_eq!(o.scripts, ["postinst"]);
        assert_eq!(String::from_utf8(m.to_json()).unwrap(), GRAFTED);
        // Only `from` is required; empty fields are left out.
        let m = Manifest::from_json(br#"{"name":"a","version":"1.0.0","origin":{"from":"tar"}}"#)
            .unwrap();
        assert_eq!(m.origin.as_ref().unwrap().from, "tar");
        assert!(String::from_utf8(m.to_json())
            .unwrap()
            .contains("\"origin\": {\n    \"from\": \"tar\"\n  }\n"));
    }

    #[test]
    fn origin_rules_name_their_field() {
        use serde_json::json;
        let base: serde_json::Value = serde_json::from_str(GRAFTED).unwrap();
        let with = |pointer: &str, v: serde_json::Value| {
            let mut doc = base.clone();
            *doc.pointer_mut(pointer).unwrap() = v;
            serde_json::to_vec(&doc).unwrap()
        };
        let cases = [
            (with("/origin", json!([])), "origin"),
            (with("/origin", json!({"name": "x"})), "origin.from"),
            (
                with("/origin", json!({"from": "debian", "homepage": "x"})),
                "origin.homepage",
            ),
            (with("/origin/from", json!("Debian")), "origin.from"),
            (with("/origin/version", json!("1.0\n2")), "origin.version"),
            (with("/origin/arch", json!("a".repeat(257))), "origin.arch"),
            (
                with("/origin/unmapped/0", json!("two\nlines")),
                "origin.unmapped[0]",
            ),
            (
                with("/origin/unmapped/0", json!("x".repeat(4097))),
                "origin.unmapped[0]",
            ),
            (
                with("/origin/unmapped", json!(vec!["x"; 1025])),
                "origin.unmapped",
            ),
            (
                with("/origin/scripts", json!(["postinst", "postinst"])),
                "origin.scripts[1]",
            ),
            (
                with("/origin/scripts/0", json!("post inst")),
                "origin.scripts[0]",
            ),
        ];
        for (json, field) in cases {
            let e = Manifest::from_json(&json).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let mut ok = base.clone();
        *ok.pointer_mut("/origin/unmapped").unwrap() = json!(vec!["x"; 1024]);
        assert!(Manifest::from_json(&serde_json::to_vec(&ok).unwrap()).is_ok());
    }

    #[test]
    fn size_limit_is_exact() {
        let head = br#"{"name":"a","version":"1.0.0"}"#;
        let mut json = head.to_vec();
        json.resize(MAX_MANIFEST_BYTES, b' ');
        assert!(Manifest::from_json(&json).is_ok());
        json.push(b' ');
        assert_eq!(Manifest::from_json(&json).unwrap_err().field, "manifest");
    }

    #[test]
    fn provides_the_same_api_at_incompatible_versions() {
        let json = br#"{"name":"lib.json","version":"2.1.0","provides":[
            {"api":"api.json","version":"2.1.0"},
            {"api":"api.json","version":"1.9.4"},
            {"api":"api.json","version":"0.9.0"},
            {"api":"api.json","version":"0.8.0"},
            {"api":"api.json","version":"0.0.3"},
            {"api":"api.json","version":"0.0.2"}]}"#;
        let m = Manifest::from_json(json).unwrap();
        assert_eq!(m.provided().count(), 7);
    }

    #[test]
    fn validate_checks_manifests_built_in_code() {
        let mut m = design();
        assert_eq!(m.validate(), Ok(()));
        m.services.push(Service {
            name: "helper".into(),
            exec: "bin/../x".into(),
            unit: String::new(),
            health: Health::default(),
        });
        assert_eq!(m.validate().unwrap_err().field, "services[1].exec");
    }

    #[test]
    fn examples_are_valid_and_canonical() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let is_json = path.extension().is_some_and(|e| e == "json");
            if !is_json || path.file_name().is_some_and(|n| n == "schema.json") {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let m =
                Manifest::from_json(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert_eq!(
                m.name,
                stem,
                "{}: file name should be the package name",
                path.display()
            );
            assert!(
                m.to_json() == bytes,
                "{} is not in canonical form (Manifest::to_json); expected:\n{}",
                path.display(),
                String::from_utf8_lossy(&m.to_json())
            );
            checked += 1;
        }
        assert!(checked >= 4, "found only {checked} examples in {dir}");
    }

    mod prop {
        use super::super::*;
        use proptest::collection::{btree_map, btree_set, vec};
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            "[a-z0-9][a-z0-9+_-]{0,12}(\\.[a-z0-9+_-]{1,12}){0,3}"
        }

        fn capability() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9_-]{0,12}(\\.[a-z0-9_-]{1,12}){0,3}"
        }

        fn pre() -> impl Strategy<Value = String> {
            "(-(0|[1-9][0-9]{0,3}|[a-zA-Z-][0-9a-zA-Z-]{0,6})(\\.(0|[1-9][0-9]{0,3}|[a-zA-Z-][0-9a-zA-Z-]{0,6})){0,2})?"
        }

        fn version() -> impl Strategy<Value = Version> {
            (
                0u64..30,
                0u64..30,
                0u64..30,
                pre(),
                "(\\+[0-9a-zA-Z-]{1,6}(\\.[0-9a-zA-Z-]{1,6}){0,2})?",
            )
                .prop_map(|(a, b, c, pre, build)| {
                    Version::parse(&format!("{a}.{b}.{c}{pre}{build}")).unwrap()
                })
        }

        fn comparator() -> impl Strategy<Value = String> {
            let op = prop::sample::select(vec!["", "=", ">", ">=", "<", "<=", "~", "^"]);
            let partial = prop_oneof![
                (0u64..20).prop_map(|a| a.to_string()),
                (0u64..20, 0u64..20).prop_map(|(a, b)| format!("{a}.{b}")),
                (0u64..20, 0u64..20, 0u64..20, pre())
                    .prop_map(|(a, b, c, p)| format!("{a}.{b}.{c}{p}")),
            ];
            (op, partial).prop_map(|(op, v)| format!("{op}{v}"))
        }

        fn version_req() -> impl Strategy<Value = VersionReq> {
            prop_oneof![
                Just("*".to_owned()),
                (0u64..9).prop_map(|a| format!("{a}.*")),
                vec(comparator(), 1..3).prop_map(|c| c.join(", ")),
            ]
            .prop_map(|s| VersionReq::parse(&s).unwrap())
        }

        prop_compose! {
            fn manifest()(
                own in name(),
                version in version(),
                summary in "[^\\p{Cc}\u{2028}\u{2029}]{0,40}",
                provides in btree_map(name(), version(), 0..4),
                requires in btree_map(name(), version_req(), 0..4),
                uses in btree_set(name(), 0..3),
                capabilities in btree_set(capability(), 0..3),
                services in btree_map(name(), vec("[^/\u{0}]{1,8}", 1..4), 0..3),
                os in proptest::option::of(version_req()),
                origin in proptest::option::of(origin()),
            ) -> Manifest {
                Manifest {
                    provides: provides.into_iter().filter(|(api, _)| *api != own)
                        .map(|(api, version)| Provide { api, version }).collect(),
                    requires: requires.into_iter().filter(|(api, _)| *api != own)
                        .map(|(api, version)| Require { api, version }).collect(),
                    uses: uses.into_iter().collect(),
                    capabilities: capabilities.into_iter().collect(),
                    services: services.into_iter().map(|(name, parts)| Service {
                        name,
                        exec: parts.into_iter()
                            .map(|p| if p == "." || p == ".." { format!("{p}x") } else { p })
                            .collect::<Vec<_>>().join("/"),
                        unit: String::new(),
                        health: Health::default(),
                    }).collect(),
                    name: own,
                    version,
                    summary,
                    os,
                    origin,
                }
            }
        }

        prop_compose! {
            fn origin()(
                from in name(),
                name in "[^\\p{Cc}\u{2028}\u{2029}]{0,20}",
                version in "[0-9a-z.:~+-]{0,12}",
                arch in "[a-z0-9]{0,6}",
                unmapped in vec("[^\\p{Cc}\u{2028}\u{2029}]{1,40}", 0..4),
                scripts in btree_set(name(), 0..3),
            ) -> Origin {
                Origin { from, name, version, arch, unmapped, scripts: scripts.into_iter().collect() }
            }
        }

        proptest! {
            #[test]
            fn valid_manifests_round_trip(m in manifest()) {
                prop_assert_eq!(m.validate(), Ok(()));
                let json = m.to_json();
                let back = Manifest::from_json(&json);
                prop_assert_eq!(back.as_ref(), Ok(&m));
                prop_assert_eq!(back.unwrap().to_json(), json);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
                let _ = Manifest::from_json(&bytes);
            }
        }
    }
}
