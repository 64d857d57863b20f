//! Detached signatures over a message outside the log (a disclosure answer, a victim alert):
//! ed25519 over a domain-separation tag and the exact bytes, verified strictly under a key the
//! directory lists for the signer and that was valid when the message was made.

use ed25519_dalek::Signer as _;
use hru_domain::PartyId;

use crate::{Directory, PartySecrets};

/// A detached signature: the signing key's id and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// Key id of the signing key.
    pub key_id: Vec<u8>,
    /// The ed25519 signature.
    pub signature: Vec<u8>,
}

/// Why a detached signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetachedError {
    /// The signer is not in the directory.
    #[error("{0} is not in the directory")]
    UnknownSigner(PartyId),
    /// The key id names no signing key of the signer.
    #[error("key {key} is not a key of {signer}")]
    UnknownKey {
        /// The claimed signer.
        signer: PartyId,
        /// The key id (hex).
        key: String,
    },
    /// The key was not valid when the message was made.
    #[error("key {key} of {signer} was not valid when it signed")]
    KeyNotValid {
        /// The signer.
        signer: PartyId,
        /// The key id (hex).
        key: String,
    },
    /// The signature is not 64 bytes.
    #[error("the signature is {0} bytes, not 64")]
    Length(usize),
    /// The signature does not verify (strictly) under the key.
    #[error("the signature is not {0}'s")]
    Forged(PartyId),
}

/// Sign `message` under `domain` (a NUL-terminated tag naming what is signed) as `secrets`.
pub fn sign_detached(secrets: &PartySecrets, domain: &[u8], message: &[u8]) -> Detached {
    let signature = secrets.signing.sign(&[domain, message].concat());
    Detached {
        key_id: secrets.signing_key_id().0.to_vec(),
        signature: signature.to_bytes().to_vec(),
    }
}

/// Check that `signed` is `signer`'s signature of `message` under `domain`, by a key the
/// directory lists for `signer` that was valid at `made_at_ms`. The error says which part failed.
pub fn verify_detached(
    directory: &Directory,
    signer: &PartyId,
    made_at_ms: i64,
    domain: &[u8],
    message: &[u8],
    signed: &Detached,
) -> Result<(), DetachedError> {
    let entry = directory
        .party(signer)
        .ok_or_else(|| DetachedError::UnknownSigner(signer.clone()))?;
    let key = entry
        .signing
        .iter()
        .find(|k| k.key_id.0.as_slice() == signed.key_id.as_slice())
        .ok_or_else(|| DetachedError::UnknownKey {
            signer: signer.clone(),
            key: hex::encode(&signed.key_id),
        })?;
    if !key.valid_at(made_at_ms) {
        return Err(DetachedError::KeyNotValid {
            signer: signer.clone(),
            key: key.key_id.to_string(),
        });
    }
    let signature: [u8; 64] = signed
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| DetachedError::Length(signed.signature.len()))?;
    if !crate::verify_strict(&key.key, &[domain, message].concat(), &signature) {
        return Err(DetachedError::Forged(signer.clone()));
    }
    Ok(())
}
