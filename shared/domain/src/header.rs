//! The event header: what every envelope says about itself, in the clear and signed.

use hru_wire::v1 as pb;

use crate::ids::check_token as check_subject_token;
use crate::{CaseId, Digest, EventId, EventType, FieldError, KeyId, PartyId};

/// A producer: a party and one running instance of it; each has its own gap-free chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerId {
    /// The party.
    pub party: PartyId,
    /// The instance within the party, e.g. `node-1`.
    pub instance: String,
}

impl std::fmt::Display for ProducerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.party, self.instance)
    }
}

impl TryFrom<pb::Producer> for ProducerId {
    type Error = FieldError;
    fn try_from(wire: pb::Producer) -> Result<Self, FieldError> {
        let pb::Producer { party, instance } = wire;
        let party = PartyId::parse(&party, "party")?;
        check_subject_token(&instance, "instance")?;
        Ok(Self { party, instance })
    }
}

impl From<&ProducerId> for pb::Producer {
    fn from(p: &ProducerId) -> Self {
        pb::Producer {
            party: p.party.to_string(),
            instance: p.instance.clone(),
        }
    }
}

/// A validated event header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    /// Event id (UUIDv7).
    pub event_id: EventId,
    /// Event type.
    pub event_type: EventType,
    /// The case, for case events; `None` for public and position events.
    pub case_id: Option<CaseId>,
    /// Producer.
    pub producer: ProducerId,
    /// Signing key id.
    pub key_id: KeyId,
    /// Position in the producer's chain, from 1.
    pub producer_seq: u64,
    /// Digest of the producer's previous envelope.
    pub prev_digest: Digest,
    /// When the fact happened, Unix ms.
    pub occurred_at_ms: i64,
    /// When it was sealed, Unix ms.
    pub recorded_at_ms: i64,
    /// Agreement id.
    pub policy_id: String,
    /// Agreement version.
    pub policy_version: u32,
    /// Section schema version.
    pub schema: u32,
}

impl TryFrom<pb::EventHeader> for EventHeader {
    type Error = FieldError;
    fn try_from(wire: pb::EventHeader) -> Result<Self, FieldError> {
        let pb::EventHeader {
            event_id,
            event_type,
            case_id,
            producer,
            key_id,
            producer_seq,
            prev_digest,
            occurred_at_ms,
            recorded_at_ms,
            policy_id,
            policy_version,
            schema,
        } = wire;
        let event_type: EventType = event_type.parse()?;
        let case_id = match (event_type.has_case(), case_id.is_empty()) {
            (true, true) => {
                return Err(FieldError::new("case_id", format!("is required for {event_type}")));
            }
            (true, false) => Some(CaseId::from_wire(&case_id, "case_id")?),
            (false, true) => None,
            (false, false) => {
                return Err(FieldError::new("case_id", format!("must be empty for {event_type}")));
            }
        };
        if producer_seq == 0 {
            return Err(FieldError::new("producer_seq", "must be 1 or more"));
        }
        let prev_digest = Digest::from_wire(&prev_digest, "prev_digest")?;
        if (producer_seq == 1) != (prev_digest == Digest::ZERO) {
            return Err(FieldError::new(
                "prev_digest",
                "must be all zeros exactly when producer_seq is 1",
            ));
        }
        if occurred_at_ms <= 0 {
            return Err(FieldError::new("occurred_at_ms", "must be a positive Unix time in ms"));
        }
        if recorded_at_ms <= 0 {
            return Err(FieldError::new("recorded_at_ms", "must be a positive Unix time in ms"));
        }
        if policy_id.is_empty() {
            return Err(FieldError::missing("policy_id"));
        }
        if policy_version == 0 {
            return Err(FieldError::new("policy_version", "must be 1 or more"));
        }
        if schema == 0 {
            return Err(FieldError::new("schema", "must be 1 or more"));
        }
        Ok(Self {
            event_id: EventId::from_wire(&event_id, "event_id")?,
            event_type,
            case_id,
            producer: producer
                .ok_or_else(|| FieldError::missing("producer"))?
                .try_into()
                .map_err(|e: FieldError| e.within("producer"))?,
            key_id: KeyId::from_wire(&key_id, "key_id")?,
            producer_seq,
            prev_digest,
            occurred_at_ms,
            recorded_at_ms,
            policy_id,
            policy_version,
            schema,
        })
    }
}

impl From<&EventHeader> for pb::EventHeader {
    fn from(h: &EventHeader) -> Self {
        pb::EventHeader {
            event_id: h.event_id.0.as_bytes().to_vec(),
            event_type: h.event_type.name().to_owned(),
            case_id: h.case_id.map(|c| c.0.as_bytes().to_vec()).unwrap_or_default(),
            producer: Some((&h.producer).into()),
            key_id: h.key_id.0.to_vec(),
            producer_seq: h.producer_seq,
            prev_digest: h.prev_digest.0.to_vec(),
            occurred_at_ms: h.occurred_at_ms,
            recorded_at_ms: h.recorded_at_ms,
            policy_id: h.policy_id.clone(),
            policy_version: h.policy_version,
            schema: h.schema,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::EventHeader {
        pb::EventHeader {
            event_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
            event_type: "ReferralReceived".into(),
            case_id: uuid::Uuid::new_v4().as_bytes().to_vec(),
            producer: Some(pb::Producer {
                party: "police-hru".into(),
                instance: "node-1".into(),
            }),
            key_id: vec![1; 8],
            producer_seq: 1,
            prev_digest: vec![0; 32],
            occurred_at_ms: 1_700_000_000_000,
            recorded_at_ms: 1_700_000_000_001,
            policy_id: "cheshire-hru".into(),
            policy_version: 1,
            schema: 1,
        }
    }

    #[test]
    fn a_good_header_round_trips() {
        let wire = good();
        let h = EventHeader::try_from(wire.clone()).expect("valid");
        assert_eq!(pb::EventHeader::from(&h), wire);
    }

    #[test]
    fn each_bad_field_is_named() {
        type Breakage = fn(&mut pb::EventHeader);
        let cases: Vec<(Breakage, &str)> = vec![
            (|h| h.event_id.truncate(3), "event_id"),
            (|h| h.event_id = uuid::Uuid::new_v4().as_bytes().to_vec(), "event_id"),
            (|h| h.event_type = "Gossip".into(), "event_type"),
            (|h| h.case_id.clear(), "case_id"),
            (|h| h.producer = None, "producer"),
            (
                |h| h.producer.as_mut().map(|p| p.party = "Police HRU".into()).unwrap_or(()),
                "producer.party",
            ),
            (
                |h| h.producer.as_mut().map(|p| p.instance.clear()).unwrap_or(()),
                "producer.instance",
            ),
            (|h| h.key_id.push(0), "key_id"),
            (|h| h.producer_seq = 0, "producer_seq"),
            (|h| h.producer_seq = 2, "prev_digest"),
            (|h| h.prev_digest.pop().map(|_| ()).unwrap_or(()), "prev_digest"),
            (|h| h.occurred_at_ms = 0, "occurred_at_ms"),
            (|h| h.recorded_at_ms = -5, "recorded_at_ms"),
            (|h| h.policy_id.clear(), "policy_id"),
            (|h| h.policy_version = 0, "policy_version"),
            (|h| h.schema = 0, "schema"),
        ];
        for (breakit, field) in cases {
            let mut h = good();
            breakit(&mut h);
            let err = EventHeader::try_from(h).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }
}
