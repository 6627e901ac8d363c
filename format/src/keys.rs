//! Signing keys: Ed25519 key pairs in small text files, key ids, and trusted key sets.
//!
//! File formats (one line each, documented in `FORMAT.md`):
//! - secret key `NAME.key`: `packagefs-secret-key-v1 <64 hex digits of the 32-byte seed> <name>`
//! - public key `NAME.pub`: `packagefs-public-key-v1 <64 hex digits of the 32-byte key> <name>`
//!
//! A key id is the first 16 hex digits of the BLAKE3 hash of the 32 public key bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::{Error, Result};

const SECRET_TAG: &str = "packagefs-secret-key-v1";
const PUBLIC_TAG: &str = "packagefs-public-key-v1";
/// Longest key file read.
const KEY_FILE_MAX: u64 = 4096;

/// The short, printable id of a public key: the first 8 bytes of BLAKE3(public key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// Parses 32 raw key bytes; fails for bytes that are not a valid curve point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<PublicKey> {
        VerifyingKey::from_bytes(bytes).ok().map(PublicKey)
    }

    /// The 32 raw key bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        key_id(&self.0.to_bytes())
    }

    /// Verifies `sig` over `msg` (strict verification: no malleable signatures, no weak keys).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(msg, &sig).is_ok()
    }

    /// Reads a `.pub` file.
    pub fn load(path: &Path) -> Result<(PublicKey, String)> {
        let (bytes, name) = read_key_file(path, PUBLIC_TAG)?;
        let key = PublicKey::from_bytes(&bytes).ok_or_else(|| Error::Key {
            path: path.to_owned(),
            reason: "not a valid Ed25519 public key".into(),
        })?;
        Ok((key, name))
    }

    /// The text of a `.pub` file for this key.
    pub fn to_file_text(&self, name: &str) -> String {
        format!("{PUBLIC_TAG} {} {name}\n", hex(&self.to_bytes()))
    }
}

/// An Ed25519 signing key.
pub struct SecretKey {
    key: SigningKey,
    name: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} {})", self.name, self.public().id())
    }
}

impl SecretKey {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate(name: &str) -> Result<SecretKey> {
        check_key_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Key {
            path: PathBuf::from(name),
            reason: format!("no randomness from the operating system: {e}"),
        })?;
        Ok(SecretKey::from_seed(&seed, name))
    }

    /// A key from a 32-byte seed (deterministic; for tests and key import).
    pub fn from_seed(seed: &[u8; 32], name: &str) -> SecretKey {
        SecretKey {
            key: SigningKey::from_bytes(seed),
            name: name.to_owned(),
        }
    }

    /// The key's name (as written in its file).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Reads a `.key` file.
    pub fn load(path: &Path) -> Result<SecretKey> {
        let (seed, name) = read_key_file(path, SECRET_TAG)?;
        Ok(SecretKey::from_seed(&seed, &name))
    }

    /// Writes `DIR/NAME.key` (mode 0600) and `DIR/NAME.pub`, refusing to overwrite either.
    /// Returns the two paths.
    pub fn save(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let secret_path = dir.join(format!("{}.key", self.name));
        let public_path = dir.join(format!("{}.pub", self.name));
        for p in [&secret_path, &public_path] {
            if p.symlink_metadata().is_ok() {
                return Err(Error::Key {
                    path: p.clone(),
                    reason: "already exists; refusing to overwrite a key".into(),
                });
            }
        }
        let secret_text = format!("{SECRET_TAG} {} {}\n", hex(&self.key.to_bytes()), self.name);
        write_new(&secret_path, secret_text.as_bytes(), 0o600)?;
        let public_text = self.public().to_file_text(&self.name);
        if let Err(e) = write_new(&public_path, public_text.as_bytes(), 0o644) {
            let _ = fs::remove_file(&secret_path);
            return Err(e);
        }
        Ok((secret_path, public_path))
    }
}

/// A set of trusted public keys, by key id.
#[derive(Debug, Default, Clone)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, (PublicKey, String)>,
}

impl TrustedKeys {
    /// An empty set.
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    /// Adds a key under a display name.
    pub fn insert(&mut self, key: PublicKey, name: &str) {
        self.keys.insert(key.id(), (key, name.to_owned()));
    }

    /// Loads one `.pub` file.
    pub fn load_file(path: &Path) -> Result<TrustedKeys> {
        let mut keys = TrustedKeys::new();
        let (key, name) = PublicKey::load(path)?;
        keys.insert(key, &name);
        Ok(keys)
    }

    /// Loads every `*.pub` file in `dir` (other files are ignored). A malformed `.pub` file
    /// is an error: a trust anchor is never silently skipped. So is a `.pub` name that is
    /// not a regular file (or a symlink to one): a FIFO, a socket, a device or a directory
    /// is refused without being opened in a way that could block.
    pub fn load_dir(dir: &Path) -> Result<TrustedKeys> {
        let mut keys = TrustedKeys::new();
        let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut paths = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io(dir, e))?;
            let p = ent.path();
            if p.extension().is_some_and(|x| x == "pub") {
                paths.push(p);
            }
        }
        paths.sort();
        for p in paths {
            let (key, name) = PublicKey::load(&p)?;
            keys.insert(key, &name);
        }
        Ok(keys)
    }

    /// The key with this id, if trusted.
    pub fn get(&self, id: &KeyId) -> Option<&PublicKey> {
        self.keys.get(id).map(|(k, _)| k)
    }

    /// The display name of a trusted key.
    pub fn name(&self, id: &KeyId) -> Option<&str> {
        self.keys.get(id).map(|(_, n)| n.as_str())
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key id of raw public key bytes.
pub fn key_id(public: &[u8; 32]) -> KeyId {
    let h = blake3::hash(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&h.as_bytes()[..8]);
    KeyId(id)
}

fn check_key_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Key {
            path: PathBuf::from(name),
            reason: "key name must be 1-64 characters of letters, digits, '.', '-', '_' and not start with '.'".into(),
        })
    }
}

fn read_key_file(path: &Path, tag: &str) -> Result<([u8; 32], String)> {
    let bad = |reason: &str| Error::Key {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    // Opened like a package file: a FIFO (or a device) among the keys must not block the
    // reader until someone writes to it, which would hang a daemon before it mounts.
    let file = crate::archive::open_regular(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput {
            bad("not a regular file")
        } else {
            Error::io(path, e)
        }
    })?;
    let mut bytes = Vec::new();
    file.take(KEY_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > KEY_FILE_MAX {
        return Err(bad("too large to be a key file"));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_ascii_whitespace();
    let found_tag = parts.next().unwrap_or("");
    if found_tag != tag {
        let other = if tag == SECRET_TAG {
            PUBLIC_TAG
        } else {
            SECRET_TAG
        };
        if found_tag == other {
            return Err(bad(if tag == SECRET_TAG {
                "this is a public key; a secret key (.key) is needed"
            } else {
                "this is a secret key; a public key (.pub) is needed"
            }));
        }
        return Err(bad(&format!("does not start with `{tag}`")));
    }
    let hexpart = parts.next().ok_or_else(|| bad("missing key bytes"))?;
    let bytes = unhex32(hexpart).ok_or_else(|| bad("key bytes are not 64 hex digits"))?;
    let name = parts.next().unwrap_or("").to_owned();
    Ok((bytes, name))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i])? << 4) | nib(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_sign_verify() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::generate("alice").unwrap();
        let (sp, pp) = k.save(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&sp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k2 = SecretKey::load(&sp).unwrap();
        let (p, name) = PublicKey::load(&pp).unwrap();
        assert_eq!(name, "alice");
        assert_eq!(p, k.public());
        assert_eq!(k2.public(), p);
        let sig = k2.sign(b"hello");
        assert!(p.verify(b"hello", &sig));
        assert!(!p.verify(b"hellp", &sig));
        assert_eq!(p.id().to_string().len(), 16);
        // refuses to overwrite
        assert!(k.save(dir.path()).is_err());
        // a public key where a secret key is needed is named as such
        let e = SecretKey::load(&pp).unwrap_err().to_string();
        assert!(e.contains("public key"), "{e}");
        let keys = TrustedKeys::load_dir(dir.path()).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.get(&p.id()).is_some());
    }

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
            0,
            "mkfifo {p:?}"
        );
    }

    /// Runs `f` on another thread and fails the test if it has not returned within 10 s
    /// (a blocked open of a FIFO is released afterwards by opening it for writing, so the
    /// thread does not outlive the test).
    fn within_deadline<T: Send + 'static>(
        fifo: &Path,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(v) => v,
            Err(_) => {
                let _ = fs::OpenOptions::new().write(true).open(fifo);
                panic!("blocked on the FIFO {}", fifo.display());
            }
        }
    }

    #[test]
    fn a_fifo_or_directory_named_like_a_key_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::from_seed(&[1; 32], "good");
        k.save(dir.path()).unwrap();
        let fifo = dir.path().join("trap.pub");
        mkfifo(&fifo);
        let d = dir.path().to_owned();
        let e = within_deadline(&fifo, move || TrustedKeys::load_dir(&d).unwrap_err());
        assert!(
            matches!(&e, Error::Key { path, .. } if *path == fifo),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("bad key file {}: not a regular file", fifo.display())
        );
        let f = fifo.clone();
        let e = within_deadline(&fifo, move || PublicKey::load(&f).unwrap_err());
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let f = fifo.clone();
        let e = within_deadline(&fifo, move || SecretKey::load(&f).unwrap_err());
        assert!(e.to_string().contains("not a regular file"), "{e}");
        fs::remove_file(&fifo).unwrap();
        // A FIFO not named `*.pub` is never opened; a directory named `*.pub` is refused.
        mkfifo(&dir.path().join("README"));
        let d = dir.path().to_owned();
        let keys = within_deadline(&dir.path().join("README"), move || {
            TrustedKeys::load_dir(&d).unwrap()
        });
        assert_eq!(keys.len(), 1);
        fs::create_dir(dir.path().join("sub.pub")).unwrap();
        let e = TrustedKeys::load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("sub.pub: not a regular file"), "{e}");
    }

    #[test]
    fn rejects_bad_names_and_files() {
        assert!(SecretKey::generate("../x").is_err());
        assert!(SecretKey::generate("").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.pub");
        fs::write(&p, "packagefs-public-key-v1 zz\n").unwrap();
        assert!(matches!(PublicKey::load(&p), Err(Error::Key { .. })));
        assert!(TrustedKeys::load_dir(dir.path()).is_err());
    }
}
