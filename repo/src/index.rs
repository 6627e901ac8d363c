//! The signed repository index (FORMAT.md §13): which packages and versions a repository
//! holds, their ids and objects, and a version number that only grows.
//!
//! ```text
//! packagefs-index-v1 <key id> <signature: 128 hex digits>\n
//! {"repository": "main", "version": 7, "packages": [ ... ]}      (JSON, the signed body)
//! ```
//!
//! The signature is Ed25519 over `packagefs-index-v1\n` followed by the body's bytes, by a
//! trusted key. A client keeps the version (and hash) of the last index it accepted per
//! repository in its layer's state and refuses an older one (a rollback or freeze attack,
//! as TUF names them) or another index of the same version.

use std::path::Path;

use format::archive::PackageId;
use format::keys::{SecretKey, TrustedKeys};
use serde::{Deserialize, Serialize};

/// The first word of an index file.
pub const INDEX_MAGIC: &str = "packagefs-index-v1";
/// Largest index file.
pub const INDEX_MAX: u64 = 16 << 20;

/// One package in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Package name.
    pub name: String,
    /// Its version (semver).
    pub version: String,
    /// The package id (64 hex digits).
    pub id: String,
    /// The whole package as an object: `sha256:<hex>` of its bytes.
    pub object: String,
    /// Size of the whole package.
    pub size: u64,
    /// Length of its metadata (the heap's offset).
    pub metadata: u64,
    /// Chunks fetched in the background after mount (a recorded first start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefetch: Vec<u32>,
    /// The API contracts it provides besides its own name (`api version`), so that `pull`
    /// can find what meets a requirement without fetching every package.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provides: Vec<String>,
    /// Deltas to this package from earlier versions (FORMAT.md §14), newest base first:
    /// `pull` uses one when the layer holds its base whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<DeltaRef>,
}

/// A delta the repository serves: from the package `from` to the entry's package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaRef {
    /// The id of the package the delta applies to (64 hex digits).
    pub from: String,
    /// The delta file as an object: `sha256:<hex>` of its bytes.
    pub object: String,
    /// Its size.
    pub size: u64,
}

/// Most deltas an entry lists.
pub const DELTAS_MAX: usize = 16;

impl IndexEntry {
    /// The id as a [`PackageId`].
    pub fn package_id(&self) -> Option<PackageId> {
        parse_id(&self.id)
    }

    /// True if the package provides `api` at a version `range` accepts (its own name at
    /// its own version included).
    pub fn meets(&self, api: &str, range: &semver::VersionReq) -> bool {
        let own = std::iter::once(format!("{} {}", self.name, self.version));
        own.chain(self.provides.iter().cloned()).any(|p| {
            p.split_once(' ').is_some_and(|(a, v)| {
                a == api && semver::Version::parse(v).is_ok_and(|v| range.matches(&v))
            })
        })
    }

    /// `name-version`.
    pub fn label(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

/// Parses 64 hex digits.
pub fn parse_id(s: &str) -> Option<PackageId> {
    if s.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(PackageId(id))
}

/// The signed body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// The repository's name (where a client records the last version it accepted).
    pub repository: String,
    /// Grows by at least one with every publication.
    pub version: u64,
    /// When the index stops being accepted (seconds since the epoch, UTC): a mirror that
    /// keeps serving an old index (a freeze attack, as TUF names it) is refused once it
    /// expires; the publisher re-signs before then (`pkgtool publish` with no package).
    /// Indexes without it (published before it existed) are refused by clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// The packages, sorted by name and version.
    pub packages: Vec<IndexEntry>,
}

/// An index as accepted: the body, and the hash of the whole file.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The body.
    pub index: Index,
    /// BLAKE3 of the file.
    pub hash: String,
    /// The signer's key id.
    pub key: String,
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = format!("{INDEX_MAGIC}\n").into_bytes();
    m.extend_from_slice(body);
    m
}

impl Index {
    /// The index file: the signature line, then the body.
    pub fn sign(&self, key: &SecretKey) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).unwrap_or_default();
        let sig = key.sign(&signed_message(&body));
        let mut out = format!(
            "{INDEX_MAGIC} {} {}\n",
            key.public().id(),
            format::keys::hex(&sig)
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Checks the rules a well-formed index keeps (names, versions, ids, objects).
    pub fn validate(&self) -> Result<(), String> {
        if !valid_name(&self.repository) {
            return Err(format!("bad repository name {:?}", self.repository));
        }
        for p in &self.packages {
            let bad = |w: &str| Err(format!("package {:?}: {w}", p.name));
            if p.name.is_empty() || p.name.len() > 255 || p.name.contains(['/', '\n', ' ']) {
                return bad("bad name");
            }
            if semver::Version::parse(&p.version).is_err() {
                return bad("bad version");
            }
            if p.package_id().is_none() {
                return bad("bad id");
            }
            if p.provides.len() > 1024 {
                return bad("too many provides");
            }
            if p.prefetch.len() > crate::heap::PREFETCH_MAX {
                return bad("prefetch list too long");
            }
            if !valid_digest(&p.object) {
                return bad("bad object digest");
            }
            if p.deltas.len() > DELTAS_MAX {
                return bad("too many deltas");
            }
            for d in &p.deltas {
                if parse_id(&d.from).is_none() || !valid_digest(&d.object) || d.size == 0 {
                    return bad("bad delta");
                }
            }
            // The metadata limit of FORMAT.md §10 (about 737 MiB), rounded up.
            if p.metadata < 128 || p.metadata > 1 << 30 || p.metadata.saturating_add(136) > p.size {
                return bad("bad sizes");
            }
        }
        Ok(())
    }
}

/// True for `sha256:` and 64 lowercase hex digits.
pub fn valid_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The rule for repository names: letters, digits, `-`, `_`, `.`; not starting with `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses an index file and checks its signature against `keys`.
pub fn verify(bytes: &[u8], keys: &TrustedKeys) -> Result<Verified, String> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .filter(|&i| i < 512)
        .ok_or("not a repository index")?;
    let line = std::str::from_utf8(&bytes[..nl]).map_err(|_| "not a repository index")?;
    let mut w = line.split(' ');
    if w.next() != Some(INDEX_MAGIC) {
        return Err("not a signed repository index (no signature line)".into());
    }
    let (Some(kid), Some(sig), None) = (w.next(), w.next(), w.next()) else {
        return Err("malformed signature line".into());
    };
    let key = decode_hex(kid)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .and_then(|id| keys.get(&format::keys::KeyId(id)))
        .ok_or_else(|| format!("signed by key {kid}, which is not a trusted key"))?;
    let sig: [u8; 64] = decode_hex(sig)
        .and_then(|v| v.try_into().ok())
        .ok_or("malformed signature")?;
    let body = &bytes[nl + 1..];
    if !key.verify(&signed_message(body), &sig) {
        return Err(format!("the signature by key {kid} is not valid"));
    }
    let index: Index =
        serde_json::from_slice(body).map_err(|e| format!("signed, but malformed: {e}"))?;
    index.validate()?;
    Ok(Verified {
        index,
        hash: blake3::hash(bytes).to_hex().to_string(),
        key: kid.to_owned(),
    })
}

/// A duration for messages: `3 days`, `5 h`, `42 s`.
fn ago(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3600 => format!("{} h", s / 3600),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// What a layer last accepted from a repository (`state/repos/<repository>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The index version.
    pub version: u64,
    /// The index file's hash.
    pub hash: String,
}

/// Refuses `v` if it has expired (or has no expiry), if it is older than what
/// `state_dir/repos/<repository>` records, or the same version with other contents;
/// otherwise records it (crash-safely) as accepted.
pub fn check_fresh(state_dir: &Path, v: &Verified) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    check_fresh_at(state_dir, v, now)
}

/// [`check_fresh`] at time `now` (seconds since the epoch).
pub fn check_fresh_at(state_dir: &Path, v: &Verified, now: u64) -> Result<(), String> {
    let repo = &v.index.repository;
    match v.index.expires {
        None => {
            return Err(format!(
                "repository {repo}: index version {} has no expiry date, so a frozen mirror \
                 could serve it for ever (the publisher re-signs it with `pkgtool publish \
                 --repo URL --key KEY`)",
                v.index.version
            ))
        }
        Some(t) if t <= now => {
            return Err(format!(
                "repository {repo}: index version {} expired at {} ({} ago): a mirror that \
                 stopped updating (a freeze attack, or a stale mirror), or a publisher that has \
                 not re-signed it (`pkgtool publish --repo URL --key KEY` with no package)",
                v.index.version,
                format::text::utc(t as i64),
                ago(now - t)
            ))
        }
        Some(_) => {}
    }
    let dir = state_dir.join("repos");
    let file = dir.join(&v.index.repository);
    if let Ok(text) = std::fs::read_to_string(&file) {
        let mut w = text.split_whitespace();
        let (Some(ver), Some(hash)) = (w.next().and_then(|x| x.parse::<u64>().ok()), w.next())
        else {
            return Err(format!("{}: malformed", file.display()));
        };
        if v.index.version < ver {
            return Err(format!(
                "repository {repo}: index version {} is older than version {ver}, which this layer accepted before (a rollback or freeze attack, or a stale mirror)",
                v.index.version
            ));
        }
        if v.index.version == ver && hash != v.hash {
            return Err(format!(
                "repository {repo}: index version {ver} differs from the version {ver} this layer accepted before"
            ));
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    use std::io::Write;
    tmp.write_all(format!("{} {}\n", v.index.version, v.hash).as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| format!("{}: {e}", file.display()))?;
    tmp.persist(&file)
        .map_err(|e| format!("{}: {}", file.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(version: u64) -> Index {
        Index {
            repository: "main".into(),
            version,
            expires: Some(NOW + 86_400),
            packages: vec![IndexEntry {
                name: "hello".into(),
                version: "1.0.0".into(),
                id: "ab".repeat(32),
                object: format!("sha256:{}", "cd".repeat(32)),
                size: 10000,
                metadata: 4096,
                prefetch: vec![],
                provides: vec![],
                deltas: vec![],
            }],
        }
    }

    const NOW: u64 = 1_796_000_000;

    fn keys(k: &SecretKey) -> TrustedKeys {
        let mut t = TrustedKeys::new();
        t.insert(k.public(), "test");
        t
    }

    #[test]
    fn accepts_only_a_valid_signature_by_a_trusted_key() {
        let k = SecretKey::from_seed(&[1; 32], "test");
        let file = index(1).sign(&k);
        assert_eq!(verify(&file, &keys(&k)).unwrap().index, index(1));
        let other = SecretKey::from_seed(&[2; 32], "other");
        assert!(verify(&file, &keys(&other))
            .unwrap_err()
            .contains("not a trusted key"));
        // Any changed byte of the body.
        let mut bad = file.clone();
        let at = bad.len() - 5;
        bad[at] ^= 1;
        assert!(verify(&bad, &keys(&k)).is_err());
        // Unsigned: the body alone.
        let body = serde_json::to_vec(&index(1)).unwrap();
        assert!(verify(&body, &keys(&k)).unwrap_err().contains("not a"));
    }

    #[test]
    fn refuses_an_older_index_and_another_of_the_same_version() {
        let k = SecretKey::from_seed(&[1; 32], "test");
        let d = tempfile::tempdir().unwrap();
        let v2 = verify(&index(2).sign(&k), &keys(&k)).unwrap();
        check_fresh_at(d.path(), &v2, NOW).unwrap();
        check_fresh_at(d.path(), &v2, NOW).unwrap();
        let v1 = verify(&index(1).sign(&k), &keys(&k)).unwrap();
        assert!(check_fresh_at(d.path(), &v1, NOW)
            .unwrap_err()
            .contains("older"));
        let mut other = index(2);
        other.packages.clear();
        let v2b = verify(&other.sign(&k), &keys(&k)).unwrap();
        assert!(check_fresh_at(d.path(), &v2b, NOW)
            .unwrap_err()
            .contains("differs"));
        check_fresh_at(
            d.path(),
            &verify(&index(3).sign(&k), &keys(&k)).unwrap(),
            NOW,
        )
        .unwrap();
    }

    #[test]
    fn refuses_an_expired_index_or_one_without_expiry_and_records_neither() {
        let k = SecretKey::from_seed(&[1; 32], "test");
        let d = tempfile::tempdir().unwrap();
        let mut old = index(5);
        old.expires = Some(NOW - 3 * 86_400);
        let v = verify(&old.sign(&k), &keys(&k)).unwrap();
        let e = check_fresh_at(d.path(), &v, NOW).unwrap_err();
        assert!(e.contains("expired at") && e.contains("3 days ago"), "{e}");
        let mut none = index(5);
        none.expires = None;
        let v = verify(&none.sign(&k), &keys(&k)).unwrap();
        let e = check_fresh_at(d.path(), &v, NOW).unwrap_err();
        assert!(e.contains("no expiry"), "{e}");
        // Neither was recorded: an older, unexpired index is still accepted.
        check_fresh_at(
            d.path(),
            &verify(&index(1).sign(&k), &keys(&k)).unwrap(),
            NOW,
        )
        .unwrap();
        // Expiry is at the second: one second before it, accepted.
        let mut edge = index(6);
        edge.expires = Some(NOW + 1);
        check_fresh_at(d.path(), &verify(&edge.sign(&k), &keys(&k)).unwrap(), NOW).unwrap();
    }

    #[test]
    fn a_delta_entry_must_name_an_id_and_an_object() {
        let k = SecretKey::from_seed(&[1; 32], "test");
        let mut i = index(1);
        i.packages[0].deltas.push(DeltaRef {
            from: "ef".repeat(32),
            object: format!("sha256:{}", "01".repeat(32)),
            size: 100,
        });
        verify(&i.sign(&k), &keys(&k)).unwrap();
        i.packages[0].deltas[0].from = "not an id".into();
        assert!(verify(&i.sign(&k), &keys(&k))
            .unwrap_err()
            .contains("bad delta"));
        let mut i = index(1);
        i.packages[0].deltas = (0..17)
            .map(|n| DeltaRef {
                from: "ef".repeat(32),
                object: format!("sha256:{:064x}", n),
                size: 1,
            })
            .collect();
        assert!(verify(&i.sign(&k), &keys(&k))
            .unwrap_err()
            .contains("too many deltas"));
    }
}
