//! Which repositories thin packages in a layer owned by someone other than root may name
//! (`/etc/packagefs/repositories`).
//!
//! A thin package's source (its mirrors) is not signed: it is where its chunks are fetched
//! from, and the bytes are checked whatever serves them. But the daemon runs as root, so a
//! thin package dropped into a user's layer would make root connect wherever its owner
//! wrote (a service on loopback, a host only root's firewall rules reach): more than the
//! user had. So a thin package in such a layer may only name repositories the admin lists
//! here; one naming any other is refused as a package, by `pkgtool` and by the daemon
//! alike (pkgset's `Opener`). Layers owned by root are the admin's own and name any.
//!
//! ```text
//! # one repository a line: an http:// address and its path, or an oci:// registry and name;
//! # it allows itself and everything below it
//! http://repo.lan:8080/main
//! oci://registry.lan:5000/packagefs
//! ```

use std::path::{Path, PathBuf};

use crate::remote::Base;

/// The default file.
pub const DEFAULT_PATH: &str = "/etc/packagefs/repositories";

/// The largest file read.
const MAX: u64 = 1 << 20;

/// The repositories a user's layer may name.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    entries: Vec<Base>,
    /// Where it was read from, for messages.
    source: Option<PathBuf>,
}

impl AllowList {
    /// No repository.
    pub fn none() -> AllowList {
        AllowList::default()
    }

    /// Reads the file at `path`; a missing file allows no repository. Errors name the file
    /// and the line.
    pub fn load(path: &Path) -> Result<AllowList, String> {
        use std::io::Read;
        let f = match format::archive::open_regular(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AllowList {
                    entries: Vec::new(),
                    source: Some(path.to_owned()),
                })
            }
            Err(e) => return Err(format!("repositories {}: {e}", path.display())),
        };
        let mut text = String::new();
        f.take(MAX + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("repositories {}: {e}", path.display()))?;
        if text.len() as u64 > MAX {
            return Err(format!(
                "repositories {}: larger than 1 MiB",
                path.display()
            ));
        }
        let mut l =
            AllowList::parse(&text).map_err(|e| format!("repositories {}: {e}", path.display()))?;
        l.source = Some(path.to_owned());
        Ok(l)
    }

    /// Parses the text: one address a line, `#` starts a comment.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let b = canonical(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            entries.push(b);
        }
        Ok(AllowList {
            entries,
            source: None,
        })
    }

    /// True if `mirror` is a listed repository or below one.
    pub fn permits(&self, mirror: &str) -> bool {
        let Ok(m) = canonical(mirror) else {
            return false;
        };
        self.entries.iter().any(|a| below(&m, a))
    }

    /// Refuses a thin package whose source names a repository not listed: the one-line
    /// reason.
    pub fn check(&self, mirrors: &[String]) -> Result<(), String> {
        for m in mirrors {
            if !self.permits(m) {
                return Err(format!(
                    "it is thin and names repository {m}, which {} does not list: a \
                     package in a layer not owned by root may only fetch from the \
                     repositories the admin allows",
                    self.source
                        .as_ref()
                        .map_or("the allow-list".to_string(), |p| p.display().to_string())
                ));
            }
        }
        Ok(())
    }
}

/// An address parsed, with a lowercase host and a path of clean segments (no `.`, `..`,
/// empty segment, `%` escape or `\`) without its trailing `/`.
fn canonical(s: &str) -> Result<Base, String> {
    let mut b = Base::parse(s)?;
    let (host, path) = match &mut b {
        Base::Http(u) => (&mut u.host, &mut u.path),
        Base::Oci { registry, name } => (&mut registry.host, name),
    };
    *host = host.to_ascii_lowercase();
    let trimmed = path.trim_end_matches('/').to_owned();
    if trimmed
        .split('/')
        .skip(usize::from(trimmed.starts_with('/')))
        .any(|c| c.is_empty() || c == "." || c == ".." || c.contains(['%', '\\', '?', '#']))
        && !trimmed.is_empty()
    {
        return Err(format!(
            "{s}: an address with ., .., an empty segment or an escape"
        ));
    }
    *path = trimmed;
    Ok(b)
}

/// True if `m` is `a` or below it.
fn below(m: &Base, a: &Base) -> bool {
    let under = |p: &str, q: &str| p == q || (p.starts_with(q) && p[q.len()..].starts_with('/'));
    match (m, a) {
        (Base::Http(m), Base::Http(a)) => {
            m.host == a.host && m.port == a.port && under(&m.path, &a.path)
        }
        (
            Base::Oci {
                registry: mr,
                name: mn,
            },
            Base::Oci {
                registry: ar,
                name: an,
            },
        ) => mr.host == ar.host && mr.port == ar.port && under(mn, an),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_repositories_and_below_them_only() {
        let l = AllowList::parse(
            "# the fleet's\nhttp://Repo.lan:8080/main/\n\noci://registry.lan:5000/packagefs # oci\n",
        )
        .unwrap();
        for ok in [
            "http://repo.lan:8080/main",
            "http://REPO.lan:8080/main/",
            "http://repo.lan:8080/main/sub",
            "oci://registry.lan:5000/packagefs",
            "oci://registry.lan:5000/packagefs/main",
        ] {
            assert!(l.permits(ok), "{ok}");
        }
        for bad in [
            "http://repo.lan:8080/mainly",
            "http://repo.lan:8080/",
            "http://repo.lan:8081/main",
            "http://repo.lan/main",
            "http://127.0.0.1:8080/main",
            "http://repo.lan:8080/main/../admin",
            "http://repo.lan:8080/main/%2e%2e/admin",
            "http://repo.lan:8080/main//x",
            "oci://registry.lan:5000/packagefsx",
            "oci://registry.lan:5000/other",
            "http://registry.lan:5000/packagefs",
            "ftp://repo.lan:8080/main",
        ] {
            assert!(!l.permits(bad), "{bad}");
        }
        assert!(AllowList::none().check(&["http://a:1/x".into()]).is_err());
        assert!(l.check(&["http://repo.lan:8080/main".into()]).is_ok());
        let e = l
            .check(&[
                "http://repo.lan:8080/main".into(),
                "http://evil:80/x".into(),
            ])
            .unwrap_err();
        assert!(e.contains("http://evil:80/x"), "{e}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = AllowList::parse("http://a:1/ok\nnot an address\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(AllowList::parse("http://a:1/x/../y").is_err());
    }

    #[test]
    fn a_missing_file_allows_nothing() {
        let d = tempfile::tempdir().unwrap();
        let l = AllowList::load(&d.path().join("repositories")).unwrap();
        assert!(!l.permits("http://a:1/x"));
        std::fs::write(d.path().join("r"), "http://a:1/x\n").unwrap();
        assert!(AllowList::load(&d.path().join("r"))
            .unwrap()
            .permits("http://a:1/x/y"));
    }
}
