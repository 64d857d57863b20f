//! The producer side: audiences from the policy, epoch keys and their grants, sections sealed
//! and the envelope signed, the producer chain advanced.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer as _, SigningKey};
use hru_domain::{
    AudienceId, CaseId, Digest, EventHeader, EventId, EventType, FieldError, KeyId, PartyId, PlainSection, ProducerId,
};
use hru_wire::v1 as pb;
use prost::Message as _;
use rand_core::{CryptoRng, RngCore};

use crate::primitives::{
    EPOCH_KEY_LEN, GrantSlot, SealedHeader, envelope_digest, header_digest, seal_epoch_key, seal_section,
};
use crate::{Audience, Directory, EpochKey, SCHEMA_VERSION, SealError, key_id};

/// Why a policy shares a section with nobody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// What the agreement in force says about audiences; the policy engine implements this.
pub trait AudiencePolicy {
    /// Agreement id written into headers.
    fn policy_id(&self) -> &str;
    /// Agreement version written into headers.
    fn policy_version(&self) -> u32;
    /// The exact audience of `section` of `event_type` sealed by `producer`, or why there is none.
    fn audience(&self, producer: &PartyId, event_type: EventType, section: &str) -> Result<&Audience, Refusal>;
    /// The retention class `event_type` is kept for (e.g. "7y", "90d"): sections of two classes
    /// never share an epoch key, so one class's keys can be destroyed without the other's.
    fn retention_class(&self, event_type: EventType) -> String;
}

/// Where a producer keeps an epoch: its audience and the retention class its sections are
/// kept for.
pub type EpochSlot = (AudienceId, String);

/// Where a producer's chain stands: the next sequence number and the digest it must name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the next envelope.
    pub next_seq: u64,
    /// Digest of the last envelope (zeros before the first).
    pub prev_digest: Digest,
}

impl ChainHead {
    /// A chain with no envelopes yet.
    pub const GENESIS: ChainHead = ChainHead {
        next_seq: 1,
        prev_digest: Digest::ZERO,
    };
}

/// The producer's current epoch of one audience.
#[derive(Clone, PartialEq, Eq)]
pub struct EpochState {
    /// Epoch number.
    pub epoch: u32,
    /// Month (YYYY-MM, UTC) of the epoch.
    pub month: String,
    /// The retention class its sections are kept for.
    pub retention: String,
    /// Agreement version it was made under.
    pub policy_version: u32,
    /// Members and the encryption key ids the key was sealed to.
    pub members: Vec<(PartyId, KeyId)>,
    /// The epoch key.
    pub key: EpochKey,
}

impl std::fmt::Debug for EpochState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochState")
            .field("epoch", &self.epoch)
            .field("month", &self.month)
            .field("retention", &self.retention)
            .field("policy_version", &self.policy_version)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// What committing one envelope of a batch changes in its producer.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) chain_after: ChainHead,
    pub(crate) epoch: Option<(AudienceId, EpochState)>,
}

/// Envelopes sealed together (grants, then the event), not yet committed to the producer.
#[derive(Debug, Clone)]
pub struct SealedBatch {
    /// The envelopes, in publishing order.
    pub envelopes: Vec<SealedEnvelope>,
    pub(crate) steps: Vec<Step>,
}

impl SealedBatch {
    /// What committing envelope `i` does: the chain head after it and the epoch it grants.
    pub fn effect(&self, i: usize) -> (ChainHead, Option<(&AudienceId, &EpochState)>) {
        let step = &self.steps[i];
        (step.chain_after, step.epoch.as_ref().map(|(a, e)| (a, e)))
    }
}

/// One sealed, signed envelope ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// Its header.
    pub header: EventHeader,
    /// The subject it is published under.
    pub subject: hru_broker::Subject,
    /// The encoded envelope: exactly the bytes that travel.
    pub bytes: Vec<u8>,
    /// Its digest (what the next envelope names as `prev_digest`).
    pub digest: Digest,
}

/// A producer: signs with its key, keeps its chain and its epoch keys.
#[derive(Clone)]
pub struct Sealer {
    producer: ProducerId,
    signing: SigningKey,
    key_id: KeyId,
    chain: ChainHead,
    epochs: BTreeMap<EpochSlot, EpochState>,
    used_epochs: BTreeMap<AudienceId, u32>,
}

/// What is being sealed, before its sections.
struct EventDraftRef {
    event_id: Option<EventId>,
    case_id: CaseId,
    event_type: EventType,
    occurred_at_ms: i64,
    now_ms: i64,
}

pub(crate) struct Draft<'a> {
    pub(crate) event_id: Option<EventId>,
    pub(crate) event_type: EventType,
    pub(crate) case_id: Option<CaseId>,
    pub(crate) occurred_at_ms: i64,
    pub(crate) recorded_at_ms: i64,
    pub(crate) policy_id: &'a str,
    pub(crate) policy_version: u32,
}

impl<'a> Draft<'a> {
    /// An envelope of no case (a grant or a public control event) recorded at `now_ms`.
    pub(crate) fn control(event_type: EventType, now_ms: i64, policy: &'a dyn AudiencePolicy) -> Self {
        Self {
            event_id: None,
            event_type,
            case_id: None,
            occurred_at_ms: now_ms,
            recorded_at_ms: now_ms,
            policy_id: policy.policy_id(),
            policy_version: policy.policy_version(),
        }
    }
}

impl Sealer {
    /// A producer with an empty chain and no epochs.
    pub fn new(producer: ProducerId, signing: SigningKey) -> Self {
        Self::resume(producer, signing, ChainHead::GENESIS, BTreeMap::new())
    }

    /// A producer continuing from a saved chain head and epochs.
    pub fn resume(
        producer: ProducerId,
        signing: SigningKey,
        chain: ChainHead,
        epochs: BTreeMap<EpochSlot, EpochState>,
    ) -> Self {
        let key_id = key_id(signing.verifying_key().as_bytes());
        Self {
            producer,
            signing,
            key_id,
            chain,
            epochs,
            used_epochs: BTreeMap::new(),
        }
    }

    /// Record that `epoch` of `audience` was already used by this producer (its key lost), so
    /// the next epoch of that audience is numbered above it.
    pub fn note_used_epoch(&mut self, audience: AudienceId, epoch: u32) {
        let used = self.used_epochs.entry(audience).or_default();
        *used = (*used).max(epoch);
    }

    /// The producer.
    pub fn producer(&self) -> &ProducerId {
        &self.producer
    }

    /// Where the chain stands.
    pub fn chain(&self) -> ChainHead {
        self.chain
    }

    /// Current epoch per audience and retention class.
    pub fn epochs(&self) -> &BTreeMap<EpochSlot, EpochState> {
        &self.epochs
    }

    /// The highest epoch number used per audience among epochs no longer kept (destroyed, or
    /// lost with an earlier store), so new epochs are numbered above them.
    pub fn used_epochs(&self) -> &BTreeMap<AudienceId, u32> {
        &self.used_epochs
    }

    /// The kept epochs whose sections' retention has ended by `at_ms`: their retention class
    /// counted from the end of their month. Epochs that name no class the agreement notation
    /// reads (made before classes, or under a table stating none) never expire here.
    pub fn expired(&self, at_ms: i64) -> Vec<EpochSlot> {
        self.epochs
            .iter()
            .filter(|(_, e)| {
                hru_domain::Retention::parse(&e.retention)
                    .and_then(|r| r.expires(&e.month))
                    .is_some_and(|t| t <= at_ms)
            })
            .map(|(slot, _)| slot.clone())
            .collect()
    }

    /// Destroy the producer's copy of an epoch key: it is no longer kept, and its number is
    /// never used again for its audience. The caller persists the producer afterwards.
    pub fn forget(&mut self, slot: &EpochSlot) -> Option<u32> {
        let state = self.epochs.remove(slot)?;
        self.note_used_epoch(slot.0.clone(), state.epoch);
        Some(state.epoch)
    }

    /// Seal one case event and commit it at once: any KeyGranted envelopes its audiences need
    /// first, then the event. On error nothing is sealed and the producer is unchanged.
    #[allow(clippy::too_many_arguments)]
    pub fn seal_event(
        &mut self,
        case_id: CaseId,
        event_type: EventType,
        sections: Vec<PlainSection>,
        occurred_at_ms: i64,
        now_ms: i64,
        policy: &dyn AudiencePolicy,
        directory: &Directory,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<Vec<SealedEnvelope>, SealError> {
        let batch = self.prepare_event(
            case_id,
            event_type,
            sections,
            occurred_at_ms,
            now_ms,
            policy,
            directory,
            rng,
        )?;
        self.commit(&batch, batch.envelopes.len());
        Ok(batch.envelopes)
    }

    /// Seal one case event without changing the producer: the batch (grants, then the event)
    /// is committed with [`Sealer::commit`] once the log has acknowledged it.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_event(
        &self,
        case_id: CaseId,
        event_type: EventType,
        sections: Vec<PlainSection>,
        occurred_at_ms: i64,
        now_ms: i64,
        policy: &dyn AudiencePolicy,
        directory: &Directory,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<SealedBatch, SealError> {
        let draft = EventDraftRef {
            event_id: None,
            case_id,
            event_type,
            occurred_at_ms,
            now_ms,
        };
        self.prepare(draft, sections, policy, directory, rng)
    }

    /// As `prepare_event`, with the event id given when there is one (a UUIDv7 derived from what
    /// the event is, so a retried append carries the same `Nats-Msg-Id` and is stored once);
    /// none, a fresh one.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_event_with_id(
        &self,
        event_id: Option<EventId>,
        case_id: CaseId,
        event_type: EventType,
        sections: Vec<PlainSection>,
        occurred_at_ms: i64,
        now_ms: i64,
        policy: &dyn AudiencePolicy,
        directory: &Directory,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<SealedBatch, SealError> {
        let draft = EventDraftRef {
            event_id,
            case_id,
            event_type,
            occurred_at_ms,
            now_ms,
        };
        self.prepare(draft, sections, policy, directory, rng)
    }

    fn prepare(
        &self,
        what: EventDraftRef,
        sections: Vec<PlainSection>,
        policy: &dyn AudiencePolicy,
        directory: &Directory,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<SealedBatch, SealError> {
        let EventDraftRef {
            event_id,
            case_id,
            event_type,
            occurred_at_ms,
            now_ms,
        } = what;
        check_sections(event_type, &sections)?;
        let month = month_of(now_ms)?;
        let retention = policy.retention_class(event_type);
        let mut audiences = Vec::with_capacity(sections.len());
        for section in &sections {
            let audience = policy
                .audience(&self.producer.party, event_type, section.name)
                .map_err(|Refusal(reason)| SealError::NoRule {
                    event_type,
                    section: section.name.to_owned(),
                    producer: self.producer.party.clone(),
                    reason,
                })?;
            // Each member's key for this class and month: its period key once it publishes
            // them, so the grant dies with the period (decision 010).
            for member in audience.members() {
                directory.member_key(member, &retention, &month)?;
            }
            audiences.push(audience);
        }
        let mut chain = self.chain;
        let mut batch = SealedBatch {
            envelopes: Vec::new(),
            steps: Vec::new(),
        };
        let mut turned: BTreeMap<EpochSlot, EpochState> = BTreeMap::new();
        for audience in &audiences {
            let id = audience.id();
            let slot = (id.clone(), retention.clone());
            let current = turned.get(&slot).or_else(|| self.epochs.get(&slot));
            let Some(reason) = turn_reason(
                current,
                audience,
                &month,
                &retention,
                policy.policy_version(),
                directory,
            ) else {
                continue;
            };
            let mut key = [0u8; EPOCH_KEY_LEN];
            rng.fill_bytes(&mut key);
            // Epoch numbers are unique per audience across its classes: a section names only
            // (audience, epoch).
            let used = self.used_epochs.get(id).copied().unwrap_or(0);
            let latest = self
                .epochs
                .iter()
                .chain(turned.iter())
                .filter(|((a, _), _)| a == id)
                .map(|(_, e)| e.epoch)
                .max()
                .unwrap_or(0);
            let state = EpochState {
                epoch: latest.max(used) + 1,
                month: month.clone(),
                retention: retention.clone(),
                policy_version: policy.policy_version(),
                members: audience
                    .members()
                    .iter()
                    .filter_map(|p| {
                        directory
                            .member_key(p, &retention, &month)
                            .ok()
                            .map(|k| (p.clone(), k.key_id))
                    })
                    .collect(),
                key: EpochKey::new(key),
            };
            let grant = self.grant(id, &state, reason, directory, rng);
            let draft = Draft::control(EventType::KeyGranted, now_ms, policy);
            batch
                .envelopes
                .push(self.finish(&mut chain, &draft, grant.encode_to_vec(), |_, _| Vec::new(), Some(id)));
            batch.steps.push(Step {
                chain_after: chain,
                epoch: Some((id.clone(), state.clone())),
            });
            turned.insert(slot, state);
        }
        let draft = Draft {
            event_id,
            event_type,
            // Position batches cover many devices and no case.
            case_id: event_type.has_case().then_some(case_id),
            occurred_at_ms,
            recorded_at_ms: now_ms,
            policy_id: policy.policy_id(),
            policy_version: policy.policy_version(),
        };
        let event = self.finish(
            &mut chain,
            &draft,
            Vec::new(),
            |event_id, hd| {
                sections
                    .iter()
                    .zip(&audiences)
                    .map(|(s, audience)| {
                        let id = audience.id();
                        let slot = (id.clone(), retention.clone());
                        let e = turned
                            .get(&slot)
                            .or_else(|| self.epochs.get(&slot))
                            .unwrap_or_else(|| unreachable!("every audience has an epoch: kept or turned above"));
                        let event = SealedHeader {
                            event_id,
                            header_digest: hd,
                        };
                        seal_section(&e.key, &event, s.name, id, e.epoch, &s.bytes, rng)
                    })
                    .collect()
            },
            None,
        );
        batch.envelopes.push(event);
        batch.steps.push(Step {
            chain_after: chain,
            epoch: None,
        });
        Ok(batch)
    }

    /// Apply the effect of one acknowledged envelope recorded elsewhere (a producer's outbox):
    /// the chain head after it and, for a grant, the epoch it made current.
    pub fn apply(&mut self, chain_after: ChainHead, epoch: Option<(AudienceId, EpochState)>) {
        self.chain = chain_after;
        if let Some((id, state)) = epoch {
            self.epochs.insert((id, state.retention.clone()), state);
        }
    }

    /// Commit the first `upto` envelopes of a prepared batch (those the log acknowledged):
    /// the chain advances past them and the epochs they granted become current.
    pub fn commit(&mut self, batch: &SealedBatch, upto: usize) {
        for step in batch.steps.iter().take(upto) {
            self.chain = step.chain_after;
            if let Some((id, state)) = &step.epoch {
                self.epochs.insert((id.clone(), state.retention.clone()), state.clone());
            }
        }
    }

    /// Seal a public (cleartext, signed) event such as PolicyAdopted.
    pub fn seal_public(
        &mut self,
        event_type: EventType,
        body: Vec<u8>,
        now_ms: i64,
        policy: &dyn AudiencePolicy,
    ) -> Result<SealedEnvelope, SealError> {
        let mut batch = self.prepare_public(event_type, body, now_ms, policy)?;
        self.commit(&batch, 1);
        Ok(batch.envelopes.remove(0))
    }

    /// Seal a public event without changing the producer; commit it once acknowledged.
    pub fn prepare_public(
        &self,
        event_type: EventType,
        body: Vec<u8>,
        now_ms: i64,
        policy: &dyn AudiencePolicy,
    ) -> Result<SealedBatch, SealError> {
        if !event_type.is_public() || event_type == EventType::KeyGranted {
            return Err(SealError::Field(FieldError::new(
                "event_type",
                format!("{event_type} is not a public event sealed on its own"),
            )));
        }
        let draft = Draft::control(event_type, now_ms, policy);
        let mut chain = self.chain;
        let sealed = self.finish(&mut chain, &draft, body, |_, _| Vec::new(), None);
        Ok(SealedBatch {
            envelopes: vec![sealed],
            steps: vec![Step {
                chain_after: chain,
                epoch: None,
            }],
        })
    }

    fn grant(
        &self,
        audience: &AudienceId,
        state: &EpochState,
        reason: pb::EpochReason,
        directory: &Directory,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> pb::KeyGranted {
        let producer = &self.producer;
        let members = state
            .members
            .iter()
            .map(|(party, kid)| {
                let key = directory
                    .member_key(party, &state.retention, &state.month)
                    .map(|k| &k.key)
                    .unwrap_or_else(|_| unreachable!("prepare checked every member's key"));
                let slot = GrantSlot {
                    producer,
                    audience,
                    epoch: state.epoch,
                    member: party,
                    member_key_id: kid,
                    hold: None,
                };
                let (enc, sealed) = seal_epoch_key(state.key.bytes(), &slot, key, rng);
                pb::GrantMember {
                    party: party.to_string(),
                    key_id: kid.0.to_vec(),
                    enc,
                    sealed_epoch_key: sealed,
                }
            })
            .collect();
        pb::KeyGranted {
            producer: producer.party.to_string(),
            audience: audience.to_string(),
            epoch: state.epoch,
            reason: reason as i32,
            month: state.month.clone(),
            members,
            retention: state.retention.clone(),
            held: None,
        }
    }

    pub(crate) fn finish(
        &self,
        chain: &mut ChainHead,
        draft: &Draft<'_>,
        body: Vec<u8>,
        sections: impl FnOnce(&EventId, &Digest) -> Vec<pb::Section>,
        grant_audience: Option<&AudienceId>,
    ) -> SealedEnvelope {
        let header = EventHeader {
            event_id: draft.event_id.unwrap_or_else(EventId::new_v7),
            event_type: draft.event_type,
            case_id: draft.case_id,
            producer: self.producer.clone(),
            key_id: self.key_id,
            producer_seq: chain.next_seq,
            prev_digest: chain.prev_digest,
            occurred_at_ms: draft.occurred_at_ms,
            recorded_at_ms: draft.recorded_at_ms,
            policy_id: draft.policy_id.to_owned(),
            policy_version: draft.policy_version,
            schema: SCHEMA_VERSION,
        };
        let header_bytes = pb::EventHeader::from(&header).encode_to_vec();
        let sections = sections(&header.event_id, &header_digest(&header_bytes));
        let digest = envelope_digest(&header_bytes, &body, &sections);
        let signature = self.signing.sign(&digest.0).to_bytes().to_vec();
        let bytes = pb::Envelope {
            header: header_bytes,
            body,
            sections,
            signature,
        }
        .encode_to_vec();
        chain.next_seq += 1;
        chain.prev_digest = digest;
        SealedEnvelope {
            subject: hru_broker::Subject::of_header(&header, grant_audience),
            header,
            bytes,
            digest,
        }
    }
}

/// Why the epoch of `audience` must turn before sealing, if it must.
fn turn_reason(
    current: Option<&EpochState>,
    audience: &Audience,
    month: &str,
    retention: &str,
    policy_version: u32,
    directory: &Directory,
) -> Option<pb::EpochReason> {
    let Some(e) = current else {
        return Some(pb::EpochReason::First);
    };
    let same_keys = e.members.len() == audience.members().len()
        && e.members.iter().zip(audience.members()).all(|((party, kid), member)| {
            party == member
                && directory
                    .member_key(member, retention, month)
                    .is_ok_and(|k| k.key_id == *kid)
        });
    if e.policy_version != policy_version {
        Some(pb::EpochReason::Policy)
    } else if !same_keys {
        Some(pb::EpochReason::KeyChange)
    } else if e.month != month {
        Some(pb::EpochReason::Month)
    } else {
        None
    }
}

/// Each section must be one of the type's, at most once.
fn check_sections(event_type: EventType, sections: &[PlainSection]) -> Result<(), SealError> {
    if sections.is_empty() {
        return Err(SealError::Field(FieldError::new(
            "sections",
            format!("{event_type} needs at least one section"),
        )));
    }
    for (i, s) in sections.iter().enumerate() {
        if !event_type.sections().contains(&s.name) {
            return Err(SealError::Field(FieldError::new(
                format!("sections[{i}]"),
                format!(
                    "{event_type} has no section {:?}; it has {:?}",
                    s.name,
                    event_type.sections()
                ),
            )));
        }
        if sections[..i].iter().any(|p| p.name == s.name) {
            return Err(SealError::Field(FieldError::new(
                format!("sections[{i}]"),
                format!("section {:?} given twice", s.name),
            )));
        }
    }
    Ok(())
}

/// The UTC month (YYYY-MM) of a Unix time in ms: the retention bucket of an epoch.
fn month_of(ms: i64) -> Result<String, SealError> {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m").to_string())
        .map_err(|e| SealError::Field(FieldError::new("recorded_at_ms", format!("is out of range ({e})"))))
}
