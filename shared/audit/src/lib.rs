//! Audit (DESIGN §12): read the log without any secret key and check every envelope's
//! signature under a key valid at its time, every producer chain, subject tokens against the
//! header, and each section's audience — the members its KeyGranted sealed the epoch key to —
//! against what the agreement version in force required. Over- and under-sharing are both
//! findings. Pure: feed it the log in order, read the report.

mod access;

pub use access::{AccessReader, AccessRecord};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hru_domain::{AudienceId, EventType, PartyId, ProducerId};
use hru_envelope::{AudiencePolicy as _, ChainBreak, ChainChecker, Directory, OpenError, verify};
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
    /// A checkpoint that does not state its own producer's chain head.
    BadCheckpoint,
    /// A witnessed checkpoint names a chain position the log no longer holds: its tail was cut.
    TruncatedTail,
    /// A witnessed checkpoint names a chain position the log holds with different content: the
    /// log was rolled back and rewritten, or the producer forked its history.
    RolledBack,
    /// A producer's latest checkpoint is older than allowed: the log may be frozen.
    FrozenLog,
    /// An epoch key's retention ended more than the grace period ago and not every holder
    /// (its producer and each member) has signed its destruction.
    DestructionUnconfirmed,
    /// The recorded time its signer wrote is far from the time the broker stored it: later
    /// than the store by more than the skew bound, or earlier by more than [`LATE_STORE_MS`]
    /// (an outbox published late after an outage, or a backdated envelope).
    RecordedAtSkew,
    /// A grant keeps section keys past their retention for a legal hold that is not standing
    /// (never placed, or released before the grant), or for parties the epoch was not granted
    /// to, or a hold event that is inconsistent (a release by another party than the placer).
    BadHold,
    /// A legal hold still stands past its review date: whoever placed it must review it (and
    /// release it, or place it again with a new date).
    HoldReviewOverdue,
}

/// How much earlier than the broker's store time a recorded time may be before it is a
/// finding (an outbox held through an outage publishes late; a backdated envelope also does).
pub const LATE_STORE_MS: i64 = 3_600_000;

/// How long after an epoch's retention ends every holder has to sign its destruction before
/// the audit reports it.
pub const DESTRUCTION_GRACE_MS: i64 = 30 * 86_400_000;

/// What a grant said of its epoch, for the retention check.
#[derive(Debug, Clone)]
struct GrantedEpoch {
    sequence: u64,
    members: BTreeSet<PartyId>,
    /// Members whose copy is sealed to their long-term key: no destruction of theirs erases it.
    long_term: BTreeSet<PartyId>,
    /// When its sections' retention ends; None for a grant naming no class.
    expires_at: Option<i64>,
}

/// An epoch as the audit keys it: producer party, instance, audience, epoch number.
type EpochAt = (PartyId, String, AudienceId, u32);

/// A chain position a witness vouched for: the log must hold exactly this envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedCheckpoint {
    /// The producer.
    pub producer: ProducerId,
    /// Its chain sequence.
    pub head_seq: u64,
    /// The envelope's digest there.
    pub head_digest: [u8; 32],
    /// Who vouched (a witnessing party, or a file).
    pub witness: String,
    /// Stream sequence of the witness's own event (0: from outside the log).
    pub sequence: u64,
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
    /// Sections erased under retention (not findings): their epoch's retention has ended and
    /// its producer and every member signed its destruction. Counted when
    /// [`Auditor::require_destruction`] is set.
    pub erased_sections: u64,
    /// Epochs those sections belong to.
    pub erased_epochs: u64,
    /// Sections of those epochs kept readable past their retention by a standing legal hold's
    /// grant (not counted as erased, not findings).
    pub held_sections: u64,
    /// Legal holds standing at the end of the log.
    pub holds_standing: u64,
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
    keys: hru_reader::KeyHistory,
    /// The key events learned in a first pass, before any envelope is observed.
    foresight: Option<hru_reader::KeyHistory>,
    /// Every verified chain position: producer → sequence → digest.
    positions: HashMap<ProducerId, HashMap<u64, [u8; 32]>>,
    /// The latest checkpoint time of each producer that checkpoints.
    checkpoints: HashMap<ProducerId, i64>,
    /// Chain positions witnesses vouched for.
    witnessed: Vec<WitnessedCheckpoint>,
    /// `(now, max age)`: checkpoints older than this are findings.
    freshness: Option<(i64, i64)>,
    /// `(now, grace)`: epochs whose retention ended more than `grace` before `now` must have
    /// every holder's destruction on the log.
    destruction: Option<(i64, i64)>,
    /// (producer party, instance, audience, epoch) → its grant's sequence, members, class and
    /// month (epoch numbers are per producer instance).
    epochs: BTreeMap<EpochAt, GrantedEpoch>,
    /// (producer party, instance, audience, epoch) → parties that signed its destruction.
    destroyed: HashMap<EpochAt, BTreeSet<PartyId>>,
    /// (producer party, instance, audience, epoch) → sections sealed under it.
    sections: HashMap<EpochAt, u64>,
    policies: &'a PolicySet,
    chains: ChainChecker,
    /// (producer instance, audience, epoch) → members the grant sealed to.
    grants: HashMap<(ProducerId, AudienceId, u32), BTreeSet<PartyId>>,
    /// Hold id → (placing party, standing, review date, placement sequence).
    holds: HashMap<String, (PartyId, bool, String, u64)>,
    /// Epoch → held sections (event id, name) → when the last hold key granting it expires.
    held: HashMap<EpochAt, HashMap<(Vec<u8>, String), i64>>,
    /// The party whose view is audited, when it is not the whole log.
    viewer: Option<PartyId>,
    /// An extract of the log (an evidence bundle): chains have gaps where other envelopes
    /// were left out, and witnessed checkpoints of chains it does not hold are not findings.
    extract: bool,
    report: Report,
}

impl<'a> Auditor<'a> {
    /// An auditor with the public directory and every agreement version.
    pub fn new(directory: &'a Directory, policies: &'a PolicySet) -> Self {
        Self {
            keys: hru_reader::KeyHistory::new(directory.clone()),
            foresight: None,
            positions: HashMap::new(),
            checkpoints: HashMap::new(),
            witnessed: Vec::new(),
            freshness: None,
            destruction: None,
            epochs: BTreeMap::new(),
            destroyed: HashMap::new(),
            sections: HashMap::new(),
            policies,
            chains: ChainChecker::new(),
            grants: HashMap::new(),
            holds: HashMap::new(),
            held: HashMap::new(),
            viewer: None,
            extract: false,
            report: Report::default(),
        }
    }

    /// An auditor of an extract of the whole log (an evidence bundle): everything is checked
    /// as for the whole log, except that chains may skip what the extract left out and a
    /// witnessed checkpoint of a chain position it does not hold is not a finding (one it
    /// holds with a different envelope still is).
    pub fn for_extract(directory: &'a Directory, policies: &'a PolicySet) -> Self {
        Self {
            extract: true,
            ..Self::new(directory, policies)
        }
    }

    /// The digest of the envelope verified at `producer`'s chain position `seq`, if observed.
    pub fn position(&self, producer: &ProducerId, seq: u64) -> Option<[u8; 32]> {
        self.positions.get(producer)?.get(&seq).copied()
    }

    /// The chain positions witnesses vouched for, so far (from the log and from files).
    pub fn witnessed(&self) -> &[WitnessedCheckpoint] {
        &self.witnessed
    }

    /// An auditor of one party's view of the log: what the agreement lets `party` read. Chains
    /// are checked for forks, duplicates and order but not for gaps (the view omits what is not
    /// shared with it), and a section's grant is required only where `party` is in its audience.
    pub fn for_party(directory: &'a Directory, policies: &'a PolicySet, party: PartyId) -> Self {
        Self {
            viewer: Some(party),
            ..Self::new(directory, policies)
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

    /// Take in the key events of the log before auditing it (feed every `KeyRotated` and
    /// `KeyRevoked` in log order; anything else is ignored): a revocation then also reaches
    /// the envelopes the broker stored between its effective time and the revocation event,
    /// whatever recorded time they claim.
    pub fn learn_key_event(&mut self, sequence: u64, bytes: &[u8]) {
        self.foresight
            .get_or_insert_with(|| self.keys.clone())
            .learn(sequence, bytes);
    }

    /// Check the next envelope of the log (`subject` as stored; `stored`, when the broker
    /// stored it).
    pub fn observe(&mut self, sequence: u64, subject: &str, bytes: &[u8], stored: hru_reader::StoredAt) {
        if let Some(foresight) = self.foresight.take() {
            self.keys.foresee(&foresight);
        }
        self.report.checked += 1;
        let v = match verify(bytes, self.keys.directory()) {
            Ok(v) => v,
            Err(e) => {
                let producer = hru_envelope::decode_header(bytes).ok().map(|h| h.producer);
                let kind = match &e {
                    OpenError::BadSignature { .. } => FindingKind::BadSignature,
                    OpenError::UnknownSigningKey { .. } => FindingKind::UnknownSigningKey,
                    OpenError::KeyNotValid { party, key_id, at_ms }
                        if self.keys.revoked_at(party, *key_id).is_some_and(|r| *at_ms >= r) =>
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
        if let Err(verdict) = self.keys.judge(h, sequence, true, stored) {
            let (kind, detail) = match verdict {
                hru_reader::KeyVerdict::AfterRevocation(d) => (FindingKind::SignedAfterRevocation, d),
                hru_reader::KeyVerdict::AfterRotation(d) => (FindingKind::KeyNotValid, d),
            };
            self.find(sequence, Some(&h.producer), kind, detail);
            return;
        }
        if let hru_reader::StoredAt::Exactly(t) = stored {
            let ahead = h.recorded_at_ms - t;
            if ahead > hru_reader::STORED_SKEW_MS || -ahead > LATE_STORE_MS {
                self.find(
                    sequence,
                    Some(&h.producer),
                    FindingKind::RecordedAtSkew,
                    format!(
                        "recorded at {} ms, stored by the broker at {t} ms ({} s {})",
                        h.recorded_at_ms,
                        ahead.abs() / 1000,
                        if ahead > 0 { "in the future" } else { "earlier" }
                    ),
                );
            }
        }
        if let Err(b) = self.chains.observe(h, &v.digest)
            && !((self.viewer.is_some() || self.extract) && matches!(b, ChainBreak::Gap { .. }))
        {
            let kind = match b {
                ChainBreak::Gap { .. } => FindingKind::ChainGap,
                ChainBreak::Duplicate { .. } => FindingKind::ChainDuplicate,
                ChainBreak::OutOfOrder { .. } => FindingKind::ChainOutOfOrder,
                ChainBreak::Forked { .. } => FindingKind::ChainFork,
                ChainBreak::Unlinked { .. } => FindingKind::ChainUnlinked,
            };
            self.find(sequence, Some(&h.producer), kind, b.to_string());
        }
        self.positions
            .entry(h.producer.clone())
            .or_default()
            .insert(h.producer_seq, v.digest.0);
        if matches!(
            h.event_type,
            EventType::ChainCheckpoint | EventType::CheckpointWitnessed
        ) && let Err(problem) = self.checkpoint_event(sequence, h, &v.body)
        {
            self.find(sequence, Some(&h.producer), FindingKind::BadCheckpoint, problem);
        }
        if h.event_type == EventType::EpochKeyDestroyed
            && let Ok(d) = pb::EpochKeyDestroyed::decode(v.body.as_slice())
            && let (Ok(producer), Ok(audience)) = (
                d.producer.parse::<PartyId>(),
                AudienceId::parse(&d.audience, "audience"),
            )
        {
            self.destroyed
                .entry((producer, d.instance, audience, d.epoch))
                .or_default()
                .insert(h.producer.party.clone());
        }
        if matches!(h.event_type, EventType::KeyRotated | EventType::KeyRevoked)
            && let Err(problem) = self.key_event(h, &v.body, sequence)
        {
            self.find(sequence, Some(&h.producer), FindingKind::BadKeyEvent, problem);
        }
        if matches!(h.event_type, EventType::LegalHoldPlaced | EventType::LegalHoldReleased) {
            self.hold_event(sequence, h, &v.body);
        }
        let mut grant_audience = None;
        if h.event_type == EventType::KeyGranted {
            match pb::KeyGranted::decode(v.body.as_slice()) {
                Ok(g) if g.held.is_some() => grant_audience = self.held_grant(sequence, h, &g),
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
                            self.epochs.insert(
                                (
                                    h.producer.party.clone(),
                                    h.producer.instance.clone(),
                                    a.clone(),
                                    g.epoch,
                                ),
                                GrantedEpoch {
                                    sequence,
                                    members: m.clone(),
                                    long_term: g
                                        .members
                                        .iter()
                                        .filter_map(|gm| {
                                            let p: PartyId = gm.party.parse().ok()?;
                                            let listed = self.keys.directory().party(&p)?.encryption.key_id;
                                            (listed.0.as_slice() == gm.key_id.as_slice()).then_some(p)
                                        })
                                        .collect(),
                                    expires_at: hru_domain::Retention::parse(&g.retention)
                                        .and_then(|r| r.expires(&g.month)),
                                },
                            );
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
        let expected_subject = hru_broker::Subject::of_header(h, grant_audience.as_ref());
        // A grant whose body is bad has already been reported; its subject cannot be derived.
        let derivable = h.event_type != EventType::KeyGranted || grant_audience.is_some();
        if derivable && subject != expected_subject.as_str() {
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
            *self
                .sections
                .entry((
                    h.producer.party.clone(),
                    h.producer.instance.clone(),
                    audience.clone(),
                    s.epoch,
                ))
                .or_default() += 1;
            let Some(granted) = self.grants.get(&(h.producer.clone(), audience, s.epoch)).cloned() else {
                let outside_view = self.viewer.as_ref().is_some_and(|viewer| {
                    isa.audience(&h.producer.party, h.event_type, &s.name)
                        .is_ok_and(|a| !a.contains(viewer))
                });
                if outside_view {
                    continue;
                }
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

    /// Chain positions a witness saved outside this log: the log must still hold each exactly.
    pub fn expect(&mut self, checkpoint: WitnessedCheckpoint) {
        self.witnessed.push(checkpoint);
    }

    /// Make an epoch whose retention ended more than `grace_ms` before `now_ms` a finding
    /// unless its producer and every member have signed its destruction.
    pub fn require_destruction(&mut self, now_ms: i64, grace_ms: i64) {
        self.destruction = Some((now_ms, grace_ms));
    }

    /// Make a producer's latest checkpoint older than `max_age_ms` at `now_ms` a finding.
    pub fn require_fresh_checkpoints(&mut self, now_ms: i64, max_age_ms: i64) {
        self.freshness = Some((now_ms, max_age_ms));
    }

    fn checkpoint_event(&mut self, sequence: u64, h: &hru_domain::EventHeader, body: &[u8]) -> Result<(), String> {
        let (cp, witness) = if h.event_type == EventType::ChainCheckpoint {
            (
                pb::ChainCheckpoint::decode(body).map_err(|e| format!("ChainCheckpoint body: {e}"))?,
                false,
            )
        } else {
            let w = pb::CheckpointWitnessed::decode(body).map_err(|e| format!("CheckpointWitnessed body: {e}"))?;
            (w.checkpoint.ok_or("CheckpointWitnessed names no checkpoint")?, true)
        };
        let producer = ProducerId::try_from(pb::Producer {
            party: cp.party.clone(),
            instance: cp.instance.clone(),
        })
        .map_err(|e| format!("checkpoint producer: {e}"))?;
        let digest: [u8; 32] = cp
            .head_digest
            .as_slice()
            .try_into()
            .map_err(|_| "head_digest must be 32 bytes".to_owned())?;
        if witness {
            if producer.party == h.producer.party {
                return Err(format!(
                    "{} witnesses its own party's chain ({producer}): a witness must be another party",
                    h.producer
                ));
            }
            self.witnessed.push(WitnessedCheckpoint {
                producer,
                head_seq: cp.head_seq,
                head_digest: digest,
                witness: h.producer.to_string(),
                sequence,
            });
            return Ok(());
        }
        if producer != h.producer || cp.head_seq + 1 != h.producer_seq || digest != h.prev_digest.0 {
            return Err(format!(
                "checkpoint of {producer} at {} is not the head its own envelope links ({} at {})",
                cp.head_seq,
                h.producer,
                h.producer_seq.saturating_sub(1)
            ));
        }
        let at = self.checkpoints.entry(producer).or_insert(cp.at_ms);
        *at = (*at).max(cp.at_ms);
        Ok(())
    }

    /// Amend the directory with a verified KeyRotated or KeyRevoked event (the read path's rules).
    fn key_event(&mut self, h: &hru_domain::EventHeader, body: &[u8], sequence: u64) -> Result<(), String> {
        self.keys.apply(h, body, sequence).map_err(|e| e.0)
    }

    /// A hold placed or released: recorded, or a finding when inconsistent.
    fn hold_event(&mut self, sequence: u64, h: &hru_domain::EventHeader, body: &[u8]) {
        let signer = h.producer.party.clone();
        if h.event_type == EventType::LegalHoldPlaced {
            match pb::LegalHoldPlaced::decode(body) {
                Ok(p)
                    if p.case_id.parse::<hru_domain::CaseId>().is_ok()
                        && uuid::Uuid::parse_str(&p.hold).is_ok_and(|u| u.to_string() == p.hold)
                        && !self.holds.contains_key(&p.hold) =>
                {
                    self.holds.insert(p.hold, (signer, true, p.review_date, sequence));
                }
                _ => self.find(
                    sequence,
                    Some(&h.producer),
                    FindingKind::BadHold,
                    "a LegalHoldPlaced that does not decode, names no case, has no canonical id, or reuses one".into(),
                ),
            }
            return;
        }
        let Ok(r) = pb::LegalHoldReleased::decode(body) else {
            self.find(
                sequence,
                Some(&h.producer),
                FindingKind::BadHold,
                "a LegalHoldReleased that does not decode".into(),
            );
            return;
        };
        match self.holds.get_mut(&r.hold) {
            Some((placer, standing, ..)) if *placer == signer => *standing = false,
            Some((placer, ..)) => {
                let detail = format!("{signer} released hold {}, placed by {placer}", r.hold);
                self.find(sequence, Some(&h.producer), FindingKind::BadHold, detail);
            }
            None => self.find(
                sequence,
                Some(&h.producer),
                FindingKind::BadHold,
                format!("release of hold {}, never placed", r.hold),
            ),
        }
    }

    /// A legal hold's grant: its sections recorded as held until its hold key expires, when the
    /// hold stands and its members were given the epoch; the audience it is published under.
    fn held_grant(&mut self, sequence: u64, h: &hru_domain::EventHeader, g: &pb::KeyGranted) -> Option<AudienceId> {
        let held = g.held.as_ref()?;
        let audience = AudienceId::parse(&g.audience, "audience").ok();
        let Some(audience) = audience.filter(|_| g.producer == h.producer.party.as_str()) else {
            let detail = format!(
                "hold {}'s grant names audience {} of {}",
                held.hold, g.audience, g.producer
            );
            self.find(sequence, Some(&h.producer), FindingKind::BadGrant, detail);
            return None;
        };
        let standing = self.holds.get(&held.hold).is_some_and(|(_, s, ..)| *s);
        // A hold's key is of the one-month class and for the month it is granted in.
        let month_ok = g.retention == hru_envelope::HOLD_CLASS
            && jiff::Timestamp::from_millisecond(h.recorded_at_ms)
                .is_ok_and(|t| t.strftime("%Y-%m").to_string() == g.month);
        if !month_ok {
            let detail = format!(
                "hold {}'s grant is of class {:?} for {:?}, not {} for the month it is recorded in",
                held.hold,
                g.retention,
                g.month,
                hru_envelope::HOLD_CLASS
            );
            self.find(sequence, Some(&h.producer), FindingKind::BadHold, detail);
        }
        let given = self.grants.get(&(h.producer.clone(), audience.clone(), g.epoch));
        let outside: Vec<&str> = g
            .members
            .iter()
            .filter(|m| given.is_none_or(|given| !given.iter().any(|p| p.as_str() == m.party)))
            .map(|m| m.party.as_str())
            .collect();
        if !standing || !outside.is_empty() {
            let detail = if standing {
                format!(
                    "hold {}'s grant of epoch {} of audience {audience} reaches {}, not given that epoch",
                    held.hold,
                    g.epoch,
                    outside.join(", ")
                )
            } else {
                format!(
                    "a grant keeps epoch {} of audience {audience} for hold {}, which does not stand",
                    g.epoch, held.hold
                )
            };
            self.find(sequence, Some(&h.producer), FindingKind::BadHold, detail);
            return Some(audience);
        }
        let expires = hru_domain::Retention::parse(&g.retention)
            .and_then(|r| r.expires(&g.month))
            .unwrap_or(i64::MAX);
        let at = (
            h.producer.party.clone(),
            h.producer.instance.clone(),
            audience.clone(),
            g.epoch,
        );
        let sections = self.held.entry(at).or_default();
        for s in &held.sections {
            let until = sections.entry((s.event_id.clone(), s.name.clone())).or_insert(expires);
            *until = (*until).max(expires);
        }
        Some(audience)
    }

    /// The report: every finding, witnessed checkpoints and checkpoint freshness checked last.
    pub fn finish(mut self) -> Report {
        for w in std::mem::take(&mut self.witnessed) {
            let chain = self.positions.get(&w.producer);
            match chain.and_then(|c| c.get(&w.head_seq)) {
                Some(d) if *d == w.head_digest => {}
                Some(_) => self.find(
                    w.sequence,
                    Some(&w.producer),
                    FindingKind::RolledBack,
                    format!(
                        "{} vouched for {} at {}, but the log holds a different envelope there",
                        w.witness, w.producer, w.head_seq
                    ),
                ),
                None if self.extract => {}
                None => {
                    let held = chain.and_then(|c| c.keys().max().copied()).unwrap_or(0);
                    self.find(
                        w.sequence,
                        Some(&w.producer),
                        FindingKind::TruncatedTail,
                        format!(
                            "{} vouched for {} at {}, but the log holds its chain only to {held}",
                            w.witness, w.producer, w.head_seq
                        ),
                    );
                }
            }
        }
        if let Some((now, max_age)) = self.freshness {
            let mut stale: Vec<(ProducerId, i64)> = self
                .checkpoints
                .iter()
                .filter(|(_, at)| now - **at > max_age)
                .map(|(p, at)| (p.clone(), *at))
                .collect();
            stale.sort();
            for (producer, at) in stale {
                self.find(
                    0,
                    Some(&producer),
                    FindingKind::FrozenLog,
                    format!(
                        "its latest checkpoint is {} s old (at most {} s allowed)",
                        (now - at) / 1000,
                        max_age / 1000
                    ),
                );
            }
        }
        if let Some((now, grace)) = self.destruction {
            let mut unconfirmed = Vec::new();
            for ((producer, instance, audience, epoch), e) in &self.epochs {
                let key = (producer.clone(), instance.clone(), audience.clone(), *epoch);
                let Some(expired) = e.expires_at.filter(|t| *t <= now) else {
                    continue;
                };
                // A confirmation of the producer's own epoch names its instance; one signed
                // before instances were named counts for any.
                let any = (producer.clone(), String::new(), audience.clone(), *epoch);
                let confirmed: BTreeSet<&PartyId> = self
                    .destroyed
                    .get(&key)
                    .into_iter()
                    .chain(self.destroyed.get(&any))
                    .flatten()
                    .collect();
                let awaiting: Vec<&str> = e
                    .members
                    .iter()
                    .chain(std::iter::once(producer))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|p| !confirmed.contains(*p) || e.long_term.contains(*p))
                    .map(PartyId::as_str)
                    .collect();
                let long_term: Vec<&str> = e.long_term.iter().map(PartyId::as_str).collect();
                if awaiting.is_empty() {
                    let held = self
                        .held
                        .get(&key)
                        .map_or(0, |s| s.values().filter(|until| **until > now).count() as u64);
                    self.report.erased_epochs += 1;
                    self.report.held_sections += held;
                    self.report.erased_sections += self.sections.get(&key).copied().unwrap_or(0).saturating_sub(held);
                } else if now - expired > grace {
                    unconfirmed.push((
                        e.sequence,
                        format!(
                            "{producer}/{instance}'s epoch {epoch} of audience {audience}: retention ended {} days ago; no destruction from {}{}",
                            (now - expired) / 86_400_000,
                            awaiting.join(", "),
                            if long_term.is_empty() {
                                String::new()
                            } else {
                                format!(" (sealed to the long-term key of {}: not erasable)", long_term.join(", "))
                            }
                        ),
                    ));
                }
            }
            for (sequence, detail) in unconfirmed {
                self.find(sequence, None, FindingKind::DestructionUnconfirmed, detail);
            }
            let today = jiff::Timestamp::from_millisecond(now)
                .map(|t| t.strftime("%Y-%m-%d").to_string())
                .unwrap_or_default();
            let mut overdue: Vec<(u64, String)> = self
                .holds
                .iter()
                .filter(|(_, (_, standing, review, _))| *standing && review.as_str() < today.as_str())
                .map(|(id, (placer, _, review, sequence))| {
                    (
                        *sequence,
                        format!("hold {id} placed by {placer} was due for review on {review}"),
                    )
                })
                .collect();
            overdue.sort();
            for (sequence, detail) in overdue {
                self.find(sequence, None, FindingKind::HoldReviewOverdue, detail);
            }
        }
        self.finish_report()
    }

    fn finish_report(mut self) -> Report {
        self.report.holds_standing = self.holds.values().filter(|(_, standing, ..)| *standing).count() as u64;
        self.report
    }
}
