//! The directory as the log amends it: a `KeyRotated` ends the old signing key and adds the
//! new one, a `KeyRevoked` ends a key from the time it names. Readers and the audit apply the
//! same rules.

use std::collections::HashMap;

use hru_domain::{EventHeader, EventType, KeyId, PartyId};
use hru_envelope::Directory;
use hru_wire::v1 as pb;
use prost::Message as _;

/// Why a key event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyEventError(pub String);

/// The public directory with the key events read so far applied.
#[derive(Debug, Clone)]
pub struct KeyHistory {
    directory: Directory,
    /// (party, key) → when its revocation took effect.
    revoked: HashMap<(PartyId, KeyId), i64>,
}

impl KeyHistory {
    /// The directory as deployed, before any key event.
    pub fn new(directory: Directory) -> Self {
        Self {
            directory,
            revoked: HashMap::new(),
        }
    }

    /// The directory with every applied key event.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// When `party`'s key `key_id` was revoked, if it was.
    pub fn revoked_at(&self, party: &PartyId, key_id: KeyId) -> Option<i64> {
        self.revoked.get(&(party.clone(), key_id)).copied()
    }

    /// Apply a verified `KeyRotated` or `KeyRevoked` event (`body` is its signed body); other
    /// event types are ignored.
    pub fn apply(&mut self, h: &EventHeader, body: &[u8]) -> Result<(), KeyEventError> {
        let fail = |m: String| Err(KeyEventError(m));
        if !matches!(h.event_type, EventType::KeyRotated | EventType::KeyRevoked) {
            return Ok(());
        }
        let party = &h.producer.party;
        let Some(mut entry) = self.directory.party(party).cloned() else {
            return fail(format!("{party} is not in the directory"));
        };
        let at = h.recorded_at_ms;
        let key_of = |bytes: &[u8], field: &str| -> Result<KeyId, KeyEventError> {
            let raw: [u8; 8] = bytes
                .try_into()
                .map_err(|_| KeyEventError(format!("{field} must be 8 bytes")))?;
            Ok(KeyId(raw))
        };
        if h.event_type == EventType::KeyRotated {
            let r = pb::KeyRotated::decode(body).map_err(|e| KeyEventError(format!("KeyRotated body: {e}")))?;
            if r.party != party.as_str() {
                return fail(format!("{party} may not rotate a key of {}", r.party));
            }
            if r.purpose != "signing" {
                return Ok(()); // encryption keys are the grants' business, not the signature's
            }
            let old = key_of(&r.old_key_id, "old_key_id")?;
            if old != h.key_id {
                return fail(format!(
                    "a rotation of key {old} must be signed by it, not by {}",
                    h.key_id
                ));
            }
            let public: [u8; 32] = r
                .new_public_key
                .as_slice()
                .try_into()
                .map_err(|_| KeyEventError("new_public_key must be 32 bytes".into()))?;
            let Some(key) = hru_envelope::public_key(&public) else {
                return fail("new_public_key is not a prime-order ed25519 point".into());
            };
            let new_id = hru_envelope::key_id(&public);
            if key_of(&r.new_key_id, "new_key_id")? != new_id {
                return fail("new_key_id is not the id of new_public_key".into());
            }
            for k in entry.signing.iter_mut().filter(|k| k.key_id == old) {
                k.valid_until_ms = Some(k.valid_until_ms.map_or(at, |u| u.min(at)));
            }
            if !entry.signing.iter().any(|k| k.key_id == new_id) {
                entry.signing.push(hru_envelope::SigningKeyEntry {
                    key_id: new_id,
                    key,
                    valid_from_ms: Some(at),
                    valid_until_ms: None,
                });
            }
        } else {
            let r = pb::KeyRevoked::decode(body).map_err(|e| KeyEventError(format!("KeyRevoked body: {e}")))?;
            if r.party != party.as_str() {
                return fail(format!("{party} may not revoke a key of {}", r.party));
            }
            let id = key_of(&r.key_id, "key_id")?;
            let from = if r.revoked_at_ms > 0 {
                r.revoked_at_ms.min(at)
            } else {
                at
            };
            let Some(k) = entry.signing.iter_mut().find(|k| k.key_id == id) else {
                return fail(format!("{party} has no key {id} to revoke"));
            };
            k.valid_until_ms = Some(k.valid_until_ms.map_or(from, |u| u.min(from)));
            self.revoked.insert((party.clone(), id), from);
        }
        self.directory.insert(party.clone(), entry);
        Ok(())
    }
}
