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
    directory: &'a Directory,
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
            directory,
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
        let v = match verify(bytes, self.directory) {
            Ok(v) => v,
            Err(e) => {
                let producer = hru_envelope::decode_header(bytes).ok().map(|h| h.producer);
                let kind = match e {
                    OpenError::BadSignature { .. } => FindingKind::BadSignature,
                    OpenError::UnknownSigningKey { .. } => FindingKind::UnknownSigningKey,
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

    /// The report so far.
    pub fn finish(self) -> Report {
        self.report
    }
}
