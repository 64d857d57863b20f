//! Audit (DESIGN §12): read the log without any secret key and check every envelope's
//! signature under a key valid at its time, every producer chain, subject tokens against the
//! header, and each section's audience — the members its KeyGranted sealed the epoch key to —
//! against what the agreement version in force required. Over- and under-sharing are both
//! findings. Pure: feed it the log in order, read the report.

mod access;

pub use access::{AccessReader, AccessRecord};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hru_domain::{AudienceId, EventType, PartyId, ProducerId};
use hru_envelope::{AudiencePolicy as _, ChainBreak, ChainChecker, Directory, OpenError, subject_for, verify};
use hru_policy::PolicySet;
use hru_wire::v1 as pb;
use prost::Message as _;
use serde::Serialize;

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// Bytes, header or a section are malformed.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// Signed by a key the directory does not list.
    UnknownSigningKey,
    /// Signed by a key not valid at the event's time.
    KeyNotValid,
    /// The subject does not match the header.
    SubjectMismatch,
    /// A producer's chain skips sequence numbers.
    ChainGap,
    /// An envelope appears twice.
    ChainDuplicate,
    /// A producer's envelopes are out of order.
    ChainOutOfOrder,
    /// Two different envelopes claim one position of a chain.
    ChainFork,
    /// An envelope does not name its predecessor.
    ChainUnlinked,
    /// A section reached parties the agreement did not name.
    OverShared,
    /// A section did not reach parties the agreement named.
    UnderShared,
    /// A section names an epoch no KeyGranted before it granted.
    MissingGrant,
    /// A KeyGranted is inconsistent (wrong producer, audience id not its members).
    BadGrant,
    /// The header names an agreement version the auditor does not have.
    UnknownAgreement,
    /// The agreement in force shares this section with nobody, or forbids the producer.
    NotPermitted,
    /// Signed by a key after its revocation took effect.
    SignedAfterRevocation,
    /// A KeyRotated or KeyRevoked event that is inconsistent (another party's key, a rotation
    /// not signed by the old key, a new key that is not a prime-order point).
    BadKeyEvent,
}

impl FindingKind {
    /// Stable name.
    pub fn name(self) -> String {
        serde_json_name(self)
    }
}

fn serde_json_name(kind: FindingKind) -> String {
    format!("{kind:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            if c.is_uppercase() && i > 0 {
                vec!['-', c.to_ascii_lowercase()]
            } else {
                vec![c.to_ascii_lowercase()]
            }
        })
        .collect()
}

/// One finding, with where it is and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stream sequence.
    pub sequence: u64,
    /// Producer, when the header could be read.
    pub producer: Option<String>,
    /// Kind.
    pub kind: FindingKind,
    /// What was expected and what was found.
    pub detail: String,
}

/// The audit's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Envelopes checked.
    pub checked: u64,
    /// Every finding, in log order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Findings counted by kind.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for f in &self.findings {
            *counts.entry(f.kind.name()).or_default() += 1;
        }
        counts
    }
}

/// Walks the log in order and collects findings.
pub struct Auditor<'a> {
    /// The directory as the log has amended it (rotations add keys, revocations end them).
    directory: Directory,
    /// (party, key) → when its revocation took effect.
    revoked: HashMap<(PartyId, hru_domain::KeyId), i64>,
    policies: &'a PolicySet,
    chains: ChainChecker,
    /// (producer instance, audience, epoch) → members the grant sealed to.
    grants: HashMap<(ProducerId, AudienceId, u32), BTreeSet<PartyId>>,
    report: Report,
}

impl<'a> Auditor<'a> {
    /// An auditor with the public directory and every agreement version.
    pub fn new(directory: &'a Directory, policies: &'a PolicySet) -> Self {
        Self {
            directory: directory.clone(),
            revoked: HashMap::new(),
            policies,
            chains: ChainChecker::new(),
            grants: HashMap::new(),
            report: Report::default(),
        }
    }

    fn find(&mut self, sequence: u64, producer: Option<&ProducerId>, kind: FindingKind, detail: String) {
        self.report.findings.push(Finding {
            sequence,
            producer: producer.map(ToString::to_string),
            kind,
            detail,
        });
    }

    /// Check the next envelope of the log (`subject` as stored).
    pub fn observe(&mut self, sequence: u64, subject: &str, bytes: &[u8]) {
        self.report.checked += 1;
        let v = match verify(bytes, &self.directory) {
            Ok(v) => v,
            Err(e) => {
                let producer = hru_envelope::decode_header(bytes).ok().map(|h| h.producer);
                let kind = match &e {
                    OpenError::BadSignature { .. } => FindingKind::BadSignature,
                    OpenError::UnknownSigningKey { .. } => FindingKind::UnknownSigningKey,
                    OpenError::KeyNotValid { party, key_id, at_ms }
                        if self.revoked.get(&(party.clone(), *key_id)).is_some_and(|r| at_ms >= r) =>
                    {
                        FindingKind::SignedAfterRevocation
                    }
                    OpenError::KeyNotValid { .. } => FindingKind::KeyNotValid,
                    _ => FindingKind::Malformed,
                };
                self.find(sequence, producer.as_ref(), kind, e.to_string());
                return;
            }
        };
        let h = &v.header;
        if let Err(b) = self.chains.observe(h, &v.digest) {
            let kind = match b {
                ChainBreak::Gap { .. } => FindingKind::ChainGap,
                ChainBreak::Duplicate { .. } => FindingKind::ChainDuplicate,
                ChainBreak::OutOfOrder { .. } => FindingKind::ChainOutOfOrder,
                ChainBreak::Forked { .. } => FindingKind::ChainFork,
                ChainBreak::Unlinked { .. } => FindingKind::ChainUnlinked,
            };
            self.find(sequence, Some(&h.producer), kind, b.to_string());
        }
        if matches!(h.event_type, EventType::KeyRotated | EventType::KeyRevoked)
            && let Err(problem) = self.key_event(h, &v.body)
        {
            self.find(sequence, Some(&h.producer), FindingKind::BadKeyEvent, problem);
        }
        let mut grant_audience = None;
        if h.event_type == EventType::KeyGranted {
            match pb::KeyGranted::decode(v.body.as_slice()) {
                Ok(g) => {
                    let members: Option<BTreeSet<PartyId>> = g.members.iter().map(|m| m.party.parse().ok()).collect();
                    let audience = AudienceId::parse(&g.audience, "audience").ok();
                    let consistent = g.producer == h.producer.party.as_str()
                        && members
                            .as_ref()
                            .and_then(|m| hru_envelope::Audience::new(m.iter().cloned()))
                            .is_some_and(|a| Some(a.id()) == audience.as_ref());
                    match (consistent, audience, members) {
                        (true, Some(a), Some(m)) => {
                            grant_audience = Some(a.clone());
                            self.grants.insert((h.producer.clone(), a, g.epoch), m);
                        }
                        _ => self.find(
                            sequence,
                            Some(&h.producer),
                            FindingKind::BadGrant,
                            format!("grant of audience {} epoch {}", g.audience, g.epoch),
                        ),
                    }
                }
                Err(e) => self.find(
                    sequence,
                    Some(&h.producer),
                    FindingKind::Malformed,
                    format!("KeyGranted body: {e}"),
                ),
            }
        }
        let expected_subject = subject_for(h, grant_audience.as_ref());
        // A grant whose body is bad has already been reported; its subject cannot be derived.
        let derivable = h.event_type != EventType::KeyGranted || grant_audience.is_some();
        if derivable && subject != expected_subject {
            self.find(
                sequence,
                Some(&h.producer),
                FindingKind::SubjectMismatch,
                format!("stored under {subject}, header says {expected_subject}"),
            );
        }
        if h.event_type.is_public() {
            return;
        }
        let Some(isa) = self.policies.version(&h.policy_id, h.policy_version) else {
            self.find(
                sequence,
                Some(&h.producer),
                FindingKind::UnknownAgreement,
                format!("{} v{}", h.policy_id, h.policy_version),
            );
            return;
        };
        for s in &v.sections {
            let Ok(audience) = AudienceId::parse(&s.audience, "audience") else {
                continue;
            };
            let Some(granted) = self.grants.get(&(h.producer.clone(), audience, s.epoch)).cloned() else {
                self.find(
                    sequence,
                    Some(&h.producer),
                    FindingKind::MissingGrant,
                    format!(
                        "section {} names audience {} epoch {} with no grant before it",
                        s.name, s.audience, s.epoch
                    ),
                );
                continue;
            };
            let expected = match isa.audience(&h.producer.party, h.event_type, &s.name) {
                Ok(a) => a.members().clone(),
                Err(refusal) => {
                    self.find(
                        sequence,
                        Some(&h.producer),
                        FindingKind::NotPermitted,
                        format!("{}.{}: {}", h.event_type, s.name, refusal.0),
                    );
                    continue;
                }
            };
            let extra: Vec<String> = granted.difference(&expected).map(ToString::to_string).collect();
            let missing: Vec<String> = expected.difference(&granted).map(ToString::to_string).collect();
            if !extra.is_empty() {
                self.find(
                    sequence,
                    Some(&h.producer),
                    FindingKind::OverShared,
                    format!(
                        "{}.{} reached {} beyond {} v{}",
                        h.event_type,
                        s.name,
                        extra.join(", "),
                        isa.id,
                        isa.version
                    ),
                );
            }
            if !missing.is_empty() {
                self.find(
                    sequence,
                    Some(&h.producer),
                    FindingKind::UnderShared,
                    format!(
                        "{}.{} did not reach {} required by {} v{}",
                        h.event_type,
                        s.name,
                        missing.join(", "),
                        isa.id,
                        isa.version
                    ),
                );
            }
        }
    }

    /// Amend the directory with a verified KeyRotated or KeyRevoked event.
    fn key_event(&mut self, h: &hru_domain::EventHeader, body: &[u8]) -> Result<(), String> {
        let party = &h.producer.party;
        let mut entry = self
            .directory
            .party(party)
            .cloned()
            .ok_or_else(|| format!("{party} is not in the directory"))?;
        let at = h.recorded_at_ms;
        let key_of = |bytes: &[u8], field: &str| -> Result<hru_domain::KeyId, String> {
            let raw: [u8; 8] = bytes.try_into().map_err(|_| format!("{field} must be 8 bytes"))?;
            Ok(hru_domain::KeyId(raw))
        };
        if h.event_type == EventType::KeyRotated {
            let r = pb::KeyRotated::decode(body).map_err(|e| format!("KeyRotated body: {e}"))?;
            if r.party != party.as_str() {
                return Err(format!("{party} may not rotate a key of {}", r.party));
            }
            if r.purpose != "signing" {
                return Ok(()); // encryption keys are the grants' business, not the signature's
            }
            let old = key_of(&r.old_key_id, "old_key_id")?;
            if old != h.key_id {
                return Err(format!(
                    "a rotation of key {old} must be signed by it, not by {}",
                    h.key_id
                ));
            }
            let public: [u8; 32] = r
                .new_public_key
                .as_slice()
                .try_into()
                .map_err(|_| "new_public_key must be 32 bytes".to_owned())?;
            let key = hru_envelope::public_key(&public).ok_or("new_public_key is not a prime-order ed25519 point")?;
            let new_id = hru_envelope::key_id(&public);
            if key_of(&r.new_key_id, "new_key_id")? != new_id {
                return Err("new_key_id is not the id of new_public_key".into());
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
            let r = pb::KeyRevoked::decode(body).map_err(|e| format!("KeyRevoked body: {e}"))?;
            if r.party != party.as_str() {
                return Err(format!("{party} may not revoke a key of {}", r.party));
            }
            let id = key_of(&r.key_id, "key_id")?;
            let from = if r.revoked_at_ms > 0 {
                r.revoked_at_ms.min(at)
            } else {
                at
            };
            let k = entry
                .signing
                .iter_mut()
                .find(|k| k.key_id == id)
                .ok_or_else(|| format!("{party} has no key {id} to revoke"))?;
            k.valid_until_ms = Some(k.valid_until_ms.map_or(from, |u| u.min(from)));
            self.revoked.insert((party.clone(), id), from);
        }
        self.directory.insert(party.clone(), entry);
        Ok(())
    }

    /// The report so far.
    pub fn finish(self) -> Report {
        self.report
    }
}
