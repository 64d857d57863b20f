//! The one read path (DESIGN §8a). Every reader — projections, node queries and streams, the
//! geofence, the CLI — takes a message of the log through [`ReadPath::read`], which checks in
//! this order: the signature verifies strictly under a key the directory (as the log's key
//! events amend it) lists as valid at the event's time; the subject the message arrived on is
//! the one its header gives; the agreement version the header names exists and was in force
//! when the event was recorded; the producer may produce that event type under it; each
//! section's audience is exactly the one that version gives. Only then are grants taken in,
//! key events applied and sections opened. A refusal is a typed [`Refusal`] naming its kind;
//! nothing refused is folded or served.

mod keys;

use std::fmt;
use std::sync::Arc;

use hru_broker::Subject;
use hru_domain::{AudienceId, EventHeader, EventType, ProducerId};
use hru_envelope::{
    AudiencePolicy, Directory, GrantOutcome, KeyRing, OpenError, OpenedEvent, StaticAudiences, VerifiedEnvelope, verify,
};
use hru_policy::PolicySet;
use hru_wire::v1 as pb;
use prost::Message as _;

pub use hru_broker::StoredAt;
pub use keys::{KeyEventError, KeyHistory, KeyVerdict, STORED_SKEW_MS};

/// Why a message was refused: the audit reports the same kinds by the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalKind {
    /// Bytes, header or a section are malformed.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// Signed by a key the directory does not list.
    UnknownSigningKey,
    /// Signed by a key not valid at the event's time.
    KeyNotValid,
    /// Signed by a key after its revocation (recorded in the log) took effect.
    SignedAfterRevocation,
    /// The subject the message arrived on is not the one its header gives.
    SubjectMismatch,
    /// The header names an agreement version the reader does not have.
    UnknownAgreement,
    /// The agreement named does not let the producer produce this, or share this section, or
    /// was not in force when the event was recorded.
    NotPermitted,
    /// A section reached parties the agreement did not name.
    OverShared,
    /// A section did not reach parties the agreement named.
    UnderShared,
    /// A section is sealed to an audience other than the agreement's, whose members this
    /// reader was never told (it saw no grant for it).
    AudienceMismatch,
    /// A KeyGranted is inconsistent (another producer, an audience id that is not its members).
    BadGrant,
    /// A KeyRotated or KeyRevoked that is inconsistent.
    BadKeyEvent,
}

impl RefusalKind {
    /// Every kind, for metrics.
    pub const ALL: &'static [RefusalKind] = &[
        Self::Malformed,
        Self::BadSignature,
        Self::UnknownSigningKey,
        Self::KeyNotValid,
        Self::SignedAfterRevocation,
        Self::SubjectMismatch,
        Self::UnknownAgreement,
        Self::NotPermitted,
        Self::OverShared,
        Self::UnderShared,
        Self::AudienceMismatch,
        Self::BadGrant,
        Self::BadKeyEvent,
    ];

    /// Stable kebab-case name (the audit's finding kind of the same name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad-signature",
            Self::UnknownSigningKey => "unknown-signing-key",
            Self::KeyNotValid => "key-not-valid",
            Self::SignedAfterRevocation => "signed-after-revocation",
            Self::SubjectMismatch => "subject-mismatch",
            Self::UnknownAgreement => "unknown-agreement",
            Self::NotPermitted => "not-permitted",
            Self::OverShared => "over-shared",
            Self::UnderShared => "under-shared",
            Self::AudienceMismatch => "audience-mismatch",
            Self::BadGrant => "bad-grant",
            Self::BadKeyEvent => "bad-key-event",
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused message: where it is in the log, who the header says sealed it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log sequence {sequence}{}: {kind}: {detail}", producer.as_ref().map(|p| format!(" from {p}")).unwrap_or_default())]
pub struct Refusal {
    /// Log sequence.
    pub sequence: u64,
    /// The producer the header names, when it could be read.
    pub producer: Option<ProducerId>,
    /// Kind.
    pub kind: RefusalKind,
    /// What was expected and what was found.
    pub detail: String,
}

/// A refusal of the message at `sequence` whose header names `producer`.
fn refusal(sequence: u64, producer: &ProducerId, kind: RefusalKind, detail: String) -> Refusal {
    Refusal {
        sequence,
        producer: Some(producer.clone()),
        kind,
        detail,
    }
}

/// One message of the log as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Log sequence (`HRU_EVENTS`'s, also when read from a view; the position stream's for
    /// position batches).
    pub sequence: u64,
    /// The subject it arrived on.
    pub subject: &'a str,
    /// The envelope bytes.
    pub bytes: &'a [u8],
    /// When the broker stored it, as far as the reader can tell.
    pub stored: StoredAt,
    /// Whether `sequence` is an `HRU_EVENTS` sequence (key events end keys in that order).
    pub in_log_order: bool,
}

impl<'a> Incoming<'a> {
    /// A message of `HRU_EVENTS` (read from the log itself or from a view).
    pub fn logged(sequence: u64, subject: &'a str, bytes: &'a [u8], stored: StoredAt) -> Self {
        Self {
            sequence,
            subject,
            bytes,
            stored,
            in_log_order: true,
        }
    }
}

/// What a message that passed every check gave the reader.
#[derive(Debug, Clone)]
pub enum Read {
    /// A key grant, taken into the key ring.
    Grant {
        /// The grant.
        envelope: VerifiedEnvelope,
        /// Whether the reader now holds its epoch key.
        outcome: GrantOutcome,
    },
    /// A public event (key events are applied to the directory before this is returned).
    Public(VerifiedEnvelope),
    /// A sectioned event, opened as far as the reader's keys allow.
    Event {
        /// The checked envelope.
        envelope: VerifiedEnvelope,
        /// Its sections, opened or refused.
        opened: Box<OpenedEvent>,
    },
}

/// What the agreement version a header names says about that header.
pub struct Named<'a> {
    /// The version's audiences.
    pub policy: &'a dyn AudiencePolicy,
    /// Whether it was in force when the event was recorded.
    pub in_force: bool,
    /// Whether it lets the producer produce the event's type.
    pub produces: bool,
}

/// Agreement versions a reader checks headers against.
pub trait Agreements: Send + Sync {
    /// The version the header names, if the reader has it, and what it says about the header.
    fn named(&self, header: &EventHeader) -> Option<Named<'_>>;
}

impl Agreements for PolicySet {
    fn named(&self, h: &EventHeader) -> Option<Named<'_>> {
        self.version(&h.policy_id, h.policy_version).map(|isa| Named {
            policy: isa,
            in_force: isa.in_force_at(h.recorded_at_ms),
            produces: isa.may_produce(&h.producer.party, h.event_type),
        })
    }
}

/// A fixed audience table (benchmarks and tests): always in force, its shares are its rules.
impl Agreements for StaticAudiences {
    fn named(&self, h: &EventHeader) -> Option<Named<'_>> {
        (self.policy_id() == h.policy_id && self.policy_version() == h.policy_version).then_some(Named {
            policy: self,
            in_force: true,
            produces: true,
        })
    }
}

/// The read path of one party: its key ring, the directory as the log amends it, and every
/// agreement version.
pub struct ReadPath {
    keys: KeyHistory,
    agreements: Arc<dyn Agreements>,
    ring: KeyRing,
}

impl ReadPath {
    /// A read path over the deployed `directory` and `agreements`, opening with `ring`.
    pub fn new(directory: Directory, agreements: Arc<dyn Agreements>, ring: KeyRing) -> Self {
        Self {
            keys: KeyHistory::new(directory),
            agreements,
            ring,
        }
    }

    /// The key ring, to change (period secrets, destruction under retention).
    pub fn ring_mut(&mut self) -> &mut KeyRing {
        &mut self.ring
    }

    /// The key ring (every grant read so far).
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Take the revocations and key ends of a first pass over the log's key events, so what a
    /// revoked key signed before its revocation reached the log is refused too.
    pub fn foresee(&mut self, keys: &KeyHistory) {
        self.keys.foresee(keys);
    }

    /// The directory as deployed (before the log's key events), for a first pass.
    pub fn key_history(&self) -> &KeyHistory {
        &self.keys
    }

    /// The directory with the log's key events applied.
    pub fn directory(&self) -> &Directory {
        self.keys.directory()
    }

    /// Check `m` without changing what the reader holds: the verified envelope, or the refusal.
    pub fn check(&self, m: &Incoming<'_>) -> Result<VerifiedEnvelope, Refusal> {
        let v = self.verified(m)?;
        let h = &v.header;
        if let Err(verdict) = self.keys.judge(h, m.sequence, m.in_log_order, m.stored) {
            let (kind, detail) = match verdict {
                KeyVerdict::AfterRevocation(d) => (RefusalKind::SignedAfterRevocation, d),
                KeyVerdict::AfterRotation(d) => (RefusalKind::KeyNotValid, d),
            };
            return Err(refusal(m.sequence, &h.producer, kind, detail));
        }
        let grant_audience = if h.event_type == EventType::KeyGranted {
            let audience = pb::KeyGranted::decode(v.body.as_slice())
                .ok()
                .and_then(|g| AudienceId::parse(&g.audience, "audience").ok())
                .ok_or_else(|| {
                    refusal(
                        m.sequence,
                        &h.producer,
                        RefusalKind::BadGrant,
                        "the grant's body names no audience".into(),
                    )
                })?;
            Some(audience)
        } else {
            None
        };
        let expected = Subject::of_header(h, grant_audience.as_ref());
        // A gateway publishes its batches, and its grants with them, on its own position
        // subjects, one per partition: the partition token is routing only (the geofence
        // judges just its own partition's tags in whatever batch it reads).
        let on_positions = matches!(h.event_type, EventType::PositionBatch | EventType::KeyGranted)
            && Subject::from_wire(m.subject)
                .position_partition(&h.producer.party, &h.producer.instance)
                .is_some();
        let expected = if h.event_type == EventType::PositionBatch {
            Subject::positions(&h.producer.party, &h.producer.instance, 0)
        } else {
            expected
        };
        if m.subject != expected.as_str() && !on_positions {
            return Err(refusal(
                m.sequence,
                &h.producer,
                RefusalKind::SubjectMismatch,
                format!("arrived on {}, the header gives {expected}", m.subject),
            ));
        }
        if h.event_type.is_public() {
            return Ok(v);
        }
        self.check_audiences(h, &v, m.sequence)?;
        Ok(v)
    }

    /// Check `m`, then take in what it carries: a grant into the key ring, a key event into the
    /// directory; a sectioned event is opened.
    pub fn read(&mut self, m: &Incoming<'_>) -> Result<Read, Refusal> {
        let v = self.check(m)?;
        match v.header.event_type {
            EventType::KeyGranted => match self.ring.ingest_grant(&v) {
                Ok(outcome) => Ok(Read::Grant { envelope: v, outcome }),
                Err(e) => Err(refusal(
                    m.sequence,
                    &v.header.producer,
                    RefusalKind::BadGrant,
                    e.to_string(),
                )),
            },
            EventType::KeyRotated | EventType::KeyRevoked => match self.keys.apply(&v.header, &v.body, m.sequence) {
                Ok(()) => Ok(Read::Public(v)),
                Err(e) => Err(refusal(m.sequence, &v.header.producer, RefusalKind::BadKeyEvent, e.0)),
            },
            t if t.is_public() => Ok(Read::Public(v)),
            _ => {
                let opened = Box::new(self.ring.open(&v));
                Ok(Read::Event { envelope: v, opened })
            }
        }
    }

    /// Take in an envelope this reader checked and kept earlier (a grant or key event kept by
    /// a projection store): its signature is verified again, the rest is not.
    pub fn restore(&mut self, sequence: u64, bytes: &[u8]) -> Result<(), Refusal> {
        let v = self.verified(&Incoming::logged(sequence, "", bytes, StoredAt::Unknown))?;
        match v.header.event_type {
            EventType::KeyGranted => self
                .ring
                .ingest_grant(&v)
                .map(|_| ())
                .map_err(|e| refusal(sequence, &v.header.producer, RefusalKind::BadGrant, e.to_string())),
            EventType::KeyRotated | EventType::KeyRevoked => self
                .keys
                .apply(&v.header, &v.body, sequence)
                .map_err(|e| refusal(sequence, &v.header.producer, RefusalKind::BadKeyEvent, e.0)),
            _ => Ok(()),
        }
    }

    /// Open a checked envelope with the key ring.
    pub fn open(&self, v: &VerifiedEnvelope) -> OpenedEvent {
        self.ring.open(v)
    }

    fn verified(&self, m: &Incoming<'_>) -> Result<VerifiedEnvelope, Refusal> {
        verify(m.bytes, self.keys.directory()).map_err(|e| {
            let producer = hru_envelope::decode_header(m.bytes).ok().map(|h| h.producer);
            let kind = match &e {
                OpenError::BadSignature { .. } => RefusalKind::BadSignature,
                OpenError::UnknownSigningKey { .. } => RefusalKind::UnknownSigningKey,
                OpenError::KeyNotValid { party, key_id, at_ms }
                    if self.keys.revoked_at(party, *key_id).is_some_and(|r| *at_ms >= r) =>
                {
                    RefusalKind::SignedAfterRevocation
                }
                OpenError::KeyNotValid { .. } => RefusalKind::KeyNotValid,
                _ => RefusalKind::Malformed,
            };
            Refusal {
                sequence: m.sequence,
                producer,
                kind,
                detail: e.to_string(),
            }
        })
    }

    fn check_audiences(&self, h: &EventHeader, v: &VerifiedEnvelope, sequence: u64) -> Result<(), Refusal> {
        let Some(Named {
            policy: isa,
            in_force,
            produces,
        }) = self.agreements.named(h)
        else {
            return Err(refusal(
                sequence,
                &h.producer,
                RefusalKind::UnknownAgreement,
                format!("{} v{}", h.policy_id, h.policy_version),
            ));
        };
        if !in_force {
            return Err(refusal(
                sequence,
                &h.producer,
                RefusalKind::NotPermitted,
                format!(
                    "{} v{} was not in force when the event was recorded ({} ms)",
                    h.policy_id, h.policy_version, h.recorded_at_ms
                ),
            ));
        }
        if !produces {
            return Err(refusal(
                sequence,
                &h.producer,
                RefusalKind::NotPermitted,
                format!(
                    "{} v{} has no [[produce]] rule letting {} produce {}",
                    h.policy_id, h.policy_version, h.producer.party, h.event_type
                ),
            ));
        }
        for s in &v.sections {
            let expected = isa.audience(&h.producer.party, h.event_type, &s.name).map_err(|r| {
                refusal(
                    sequence,
                    &h.producer,
                    RefusalKind::NotPermitted,
                    format!("{}.{}: {}", h.event_type, s.name, r.0),
                )
            })?;
            if expected.id().as_str() == s.audience {
                continue;
            }
            let sealed_to = AudienceId::parse(&s.audience, "audience")
                .ok()
                .and_then(|a| self.ring.audience_members(&h.producer, &a));
            let (kind, detail) = match sealed_to {
                Some(members) => {
                    let extra: Vec<String> = members
                        .difference(expected.members())
                        .map(ToString::to_string)
                        .collect();
                    let missing: Vec<String> = expected
                        .members()
                        .difference(members)
                        .map(ToString::to_string)
                        .collect();
                    if extra.is_empty() {
                        (
                            RefusalKind::UnderShared,
                            format!(
                                "{}.{} did not reach {} required by {} v{}",
                                h.event_type,
                                s.name,
                                missing.join(", "),
                                h.policy_id,
                                h.policy_version
                            ),
                        )
                    } else {
                        (
                            RefusalKind::OverShared,
                            format!(
                                "{}.{} reached {} beyond {} v{}",
                                h.event_type,
                                s.name,
                                extra.join(", "),
                                h.policy_id,
                                h.policy_version
                            ),
                        )
                    }
                }
                None => (
                    RefusalKind::AudienceMismatch,
                    format!(
                        "{}.{} is sealed to audience {}, {} v{} gives {}",
                        h.event_type,
                        s.name,
                        s.audience,
                        h.policy_id,
                        h.policy_version,
                        expected.id()
                    ),
                ),
            };
            return Err(refusal(sequence, &h.producer, kind, detail));
        }
        Ok(())
    }
}
