//! The trailer: the package id and its Ed25519 signature.

use super::PackageId;
use crate::error::{Error, Result};
use crate::keys::{KeyId, PublicKey, SecretKey, TrustedKeys};

/// Magic bytes that start the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"HPKGSIG1";
/// Length of the trailer.
pub const TRAILER_LEN: usize = 136;

/// The parsed trailer.
#[derive(Debug, Clone)]
pub(crate) struct Trailer {
    pub id: PackageId,
    /// Signer key and signature; `None` for an unsigned archive.
    pub signature: Option<(PublicKey, [u8; 64])>,
}

impl Trailer {
    pub(crate) fn new(id: PackageId, key: Option<&SecretKey>) -> Trailer {
        Trailer {
            id,
            signature: key.map(|k| (k.public(), k.sign(&id.0))),
        }
    }

    pub(crate) fn to_bytes(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[..8].copy_from_slice(&TRAILER_MAGIC);
        if let Some((key, sig)) = &self.signature {
            b[8..40].copy_from_slice(&key.to_bytes());
            b[72..136].copy_from_slice(sig);
        }
        b[40..72].copy_from_slice(&self.id.0);
        b
    }

    /// Parses the trailer; `signed` is the header's flag. The signature itself is checked
    /// here against the embedded key (so a flipped bit anywhere in the trailer is caught at
    /// open); whether that key is *trusted* is [`Trailer::check_trust`]'s business.
    pub(crate) fn parse(b: &[u8], signed: bool) -> Result<Trailer> {
        let bad = |reason: &str| Error::corrupt("trailer", reason);
        if b[..8] != TRAILER_MAGIC {
            return Err(bad("bad trailer magic"));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[40..72]);
        let id = PackageId(id);
        if !signed {
            if b[8..40].iter().chain(&b[72..136]).any(|&x| x != 0) {
                return Err(bad("unsigned archive has non-zero key or signature bytes"));
            }
            return Ok(Trailer {
                id,
                signature: None,
            });
        }
        let mut kb = [0u8; 32];
        kb.copy_from_slice(&b[8..40]);
        let key = PublicKey::from_bytes(&kb)
            .ok_or_else(|| bad("embedded public key is not a valid Ed25519 key"))?;
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&b[72..136]);
        if !key.verify(&id.0, &sig) {
            return Err(Error::BadSignature {
                key: key.id().to_string(),
            });
        }
        Ok(Trailer {
            id,
            signature: Some((key, sig)),
        })
    }

    /// Checks that the (already verified) signature is by a trusted key.
    pub(crate) fn check_trust(&self, keys: &TrustedKeys) -> Result<KeyId> {
        let (key, _) = self.signature.as_ref().ok_or(Error::Unsigned)?;
        match keys.get(&key.id()) {
            Some(trusted) if trusted == key => Ok(key.id()),
            _ => Err(Error::UnknownKey {
                key: key.id().to_string(),
            }),
        }
    }
}
