//! The directory as the log amends it: a `KeyRotated` ends the old key and adds the new one, a
//! `KeyRevoked` ends a key from the time it names. Readers and the audit apply the same rules,
//! and judge a signing key's validity against the broker, not only the signer's clock: a key
//! ended by a key event is refused for anything the log holds after that event, and a revoked
//! key for anything the broker stored after its revocation (within [`STORED_SKEW_MS`]).

use std::collections::HashMap;

use hru_broker::StoredAt;
use hru_domain::{EventHeader, EventType, KeyId, PartyId};
use hru_envelope::Directory;
use hru_wire::v1 as pb;
use prost::Message as _;

/// How far the broker's stored time and a producer's clock may disagree before it counts:
/// a revoked key's envelope stored later than this after the revocation is refused.
pub const STORED_SKEW_MS: i64 = 60_000;

/// Why a key event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyEventError(pub String);

/// Why a verified envelope's key was not valid where the broker stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// The key was revoked before the envelope was stored.
    AfterRevocation(String),
    /// The key was replaced by a rotation the log holds before the envelope.
    AfterRotation(String),
}

/// A revocation as the log holds it.
#[derive(Debug, Clone, Copy)]
struct Revocation {
    /// When it takes effect (Unix ms).
    from: i64,
    /// The log sequence of the `KeyRevoked` event.
    sequence: u64,
}

/// The public directory with the key events read so far applied.
#[derive(Debug, Clone)]
pub struct KeyHistory {
    directory: Directory,
    /// (party, key) → when its revocation took effect.
    revoked: HashMap<(PartyId, KeyId), Revocation>,
    /// (party, signing key) → the log sequence of the key event that ended it, and whether
    /// that was a revocation.
    ended: HashMap<(PartyId, KeyId), (u64, bool)>,
}

impl KeyHistory {
    /// The directory as deployed, before any key event.
    pub fn new(directory: Directory) -> Self {
        Self {
            directory,
            revoked: HashMap::new(),
            ended: HashMap::new(),
        }
    }

    /// Take in one message of a first pass over the log's key events (in log order; anything
    /// but a `KeyRotated` or `KeyRevoked` that verifies is ignored), for [`KeyHistory::foresee`].
    pub fn learn(&mut self, sequence: u64, bytes: &[u8]) {
        if let Ok(v) = hru_envelope::verify(bytes, &self.directory)
            && self.judge(&v.header, sequence, true, StoredAt::Unknown).is_ok()
        {
            let _ = self.apply(&v.header, &v.body, sequence);
        }
    }

    /// Take the revocations and key ends `other` learned from a pass over the log's key events
    /// (the directory is left as it is: it changes as this history reads the events).
    pub fn foresee(&mut self, other: &KeyHistory) {
        self.revoked.extend(other.revoked.iter().map(|(k, v)| (k.clone(), *v)));
        self.ended.extend(other.ended.iter().map(|(k, v)| (k.clone(), *v)));
    }

    /// Judge the key of an envelope (already verified against [`KeyHistory::directory`] at its
    /// recorded time) against the log: refused when a key event at a log sequence before
    /// `sequence` ended the key (`in_log_order`: `sequence` is an `HRU_EVENTS` sequence), or
    /// when the broker stored it after the key's revocation.
    pub fn judge(
        &self,
        h: &EventHeader,
        sequence: u64,
        in_log_order: bool,
        stored: StoredAt,
    ) -> Result<(), KeyVerdict> {
        // Most logs hold no key event: no key to build per envelope.
        if self.ended.is_empty() && self.revoked.is_empty() {
            return Ok(());
        }
        let key = (h.producer.party.clone(), h.key_id);
        if in_log_order
            && let Some(&(at, revoked)) = self.ended.get(&key)
            && sequence > at
        {
            let how = if revoked { "revoked" } else { "rotated out" };
            let detail = format!(
                "key {} of {} was {how} by the key event at log sequence {at}; this envelope is at {sequence}, whatever its recorded time",
                h.key_id, h.producer.party
            );
            return Err(if revoked {
                KeyVerdict::AfterRevocation(detail)
            } else {
                KeyVerdict::AfterRotation(detail)
            });
        }
        let Some(&Revocation {
            from,
            sequence: revoked_at,
        }) = self.revoked.get(&key)
        else {
            return Ok(());
        };
        // The party's key events the log holds before the revocation stand (read in order,
        // every reader applied them before the revocation existed): the owner's rotation is
        // signed by the key it revokes next, after the leak.
        if matches!(h.event_type, EventType::KeyRotated | EventType::KeyRevoked) && sequence <= revoked_at {
            return Ok(());
        }
        // A revocation foreseen (read ahead of this envelope) reaches what was signed since.
        if h.recorded_at_ms >= from {
            return Err(KeyVerdict::AfterRevocation(format!(
                "key {} of {} is revoked from {from} ms; this envelope was recorded at {} ms",
                h.key_id, h.producer.party, h.recorded_at_ms
            )));
        }
        if let StoredAt::Exactly(t) = stored
            && t > from.saturating_add(STORED_SKEW_MS)
        {
            return Err(KeyVerdict::AfterRevocation(format!(
                "key {} of {} is revoked from {from} ms; the broker stored this envelope at {t} ms (recorded time {} ms)",
                h.key_id, h.producer.party, h.recorded_at_ms
            )));
        }
        Ok(())
    }

    /// The directory with every applied key event.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// When `party`'s key `key_id` was revoked, if it was.
    pub fn revoked_at(&self, party: &PartyId, key_id: KeyId) -> Option<i64> {
        self.revoked.get(&(party.clone(), key_id)).map(|r| r.from)
    }

    /// Apply a verified `KeyRotated` or `KeyRevoked` event (`body` is its signed body) the log
    /// holds at `sequence`; other event types are ignored.
    pub fn apply(&mut self, h: &EventHeader, body: &[u8], sequence: u64) -> Result<(), KeyEventError> {
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
            if r.purpose == "encryption" {
                // New epochs are granted to the new X25519 key (the old one may have leaked).
                let public: [u8; 32] = r
                    .new_public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyEventError("new_public_key must be 32 bytes".into()))?;
                let new_id = hru_envelope::key_id(&public);
                if key_of(&r.new_key_id, "new_key_id")? != new_id {
                    return fail("new_key_id is not the id of new_public_key".into());
                }
                let old = key_of(&r.old_key_id, "old_key_id")?;
                if old != entry.encryption.key_id && entry.encryption.key_id != new_id {
                    return fail(format!(
                        "{party}'s encryption key is {}, not {old}",
                        entry.encryption.key_id
                    ));
                }
                entry.encryption = hru_envelope::EncryptionKey::from_bytes(&public)
                    .ok_or_else(|| KeyEventError("new_public_key is not an X25519 public key".into()))?;
                self.directory.insert(party.clone(), entry);
                return Ok(());
            }
            if r.purpose != "signing" {
                return fail(format!(
                    "purpose {:?} is neither \"signing\" nor \"encryption\"",
                    r.purpose
                ));
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
            self.ended.entry((party.clone(), old)).or_insert((sequence, false));
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
            let revocation = self
                .revoked
                .entry((party.clone(), id))
                .or_insert(Revocation { from, sequence });
            *revocation = Revocation {
                from: revocation.from.min(from),
                sequence: revocation.sequence.min(sequence),
            };
            let ended = self.ended.entry((party.clone(), id)).or_insert((sequence, true));
            *ended = (ended.0.min(sequence), true);
        }
        self.directory.insert(party.clone(), entry);
        Ok(())
    }
}
