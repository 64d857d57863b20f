//! Access questions (DPA 2018 s62): who consulted or disclosed a case, when, under which clause
//! and purpose, read back from the AccessLogged events with the keys of a party they are shared
//! with.

use hru_domain::{Access, CaseId, EventType, ProducerId};
use hru_reader::{Incoming, Read, ReadPath};
use hru_wire::v1 as pb;
use prost::Message as _;

/// One access record about a case.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// Stream sequence of the AccessLogged event.
    pub sequence: u64,
    /// When it was recorded, Unix ms.
    pub recorded_at_ms: i64,
    /// The node that logged it.
    pub logged_by: ProducerId,
    /// The record, validated.
    pub access: Access,
    /// The record as it travels.
    pub wire: pb::AccessCore,
}

/// Reads the log in order (grants and access records) through the read path and keeps the
/// records about one case.
pub struct AccessReader {
    read: ReadPath,
    policies: std::sync::Arc<hru_policy::PolicySet>,
    case: CaseId,
    /// Records about the case, in log order.
    pub records: Vec<AccessRecord>,
    /// Access records that may cover the case but are not shared with the reader.
    pub unreadable: u64,
    /// Messages the read path refused (forged, mis-filed or over-shared): never counted as
    /// access records.
    pub refused: Vec<hru_reader::Refusal>,
    /// Access records that name a calling party the logging node could not have answered: no
    /// `[[call]]` rule of the record's agreement version lets that party call that method on
    /// the logging party's node. Never counted as access records.
    pub forged: Vec<(u64, ProducerId, String)>,
}

impl AccessReader {
    /// A reader for `case` reading through `read` (the reader's key ring and the agreements),
    /// judging who may be named in a record by `policies`.
    pub fn new(read: ReadPath, policies: std::sync::Arc<hru_policy::PolicySet>, case: CaseId) -> Self {
        Self {
            read,
            policies,
            case,
            records: Vec::new(),
            unreadable: 0,
            refused: Vec::new(),
            forged: Vec::new(),
        }
    }

    /// The subjects worth reading: grants, key events and access records.
    pub fn subjects() -> [hru_broker::Filter; 3] {
        [
            hru_broker::Filter::all_key_grants(),
            hru_broker::Filter::all_control(),
            hru_broker::Filter::all_access(),
        ]
    }

    /// Take the next log entry, as it arrived on `subject`.
    pub fn observe(&mut self, sequence: u64, subject: &str, bytes: &[u8], stored: hru_reader::StoredAt) {
        let (v, opened) = match self.read.read(&Incoming::logged(sequence, subject, bytes, stored)) {
            Ok(Read::Event { envelope, opened }) if envelope.header.event_type == EventType::AccessLogged => {
                (envelope, opened)
            }
            Ok(_) => return,
            Err(refusal) => {
                self.refused.push(refusal);
                return;
            }
        };
        let Some(core) = opened
            .sections
            .iter()
            .find(|s| s.name == "core")
            .and_then(|s| s.plaintext.as_ref().ok())
        else {
            if v.header.case_id == Some(self.case) || v.header.case_id.is_none_or(|c| c.0.is_nil()) {
                self.unreadable += 1;
            }
            return;
        };
        let Ok(wire) = pb::AccessCore::decode(core.as_slice()) else {
            return;
        };
        let Ok(access) = Access::try_from(wire.clone()) else {
            return;
        };
        // A node logs its own party's people, and another party's only for a call the
        // agreement lets that party make on this node.
        let logged_by = &v.header.producer.party;
        if wire.party != logged_by.as_str() {
            let admitted = self
                .policies
                .version(&v.header.policy_id, v.header.policy_version)
                .zip(wire.party.parse::<hru_domain::PartyId>().ok())
                .is_some_and(|(isa, caller)| isa.may_call(&caller, logged_by, &wire.method, &wire.purpose).is_ok());
            if !admitted {
                self.forged.push((
                    sequence,
                    v.header.producer.clone(),
                    format!(
                        "names {} calling {} on {logged_by}'s node, which no [[call]] rule of {} v{} allows",
                        wire.party, wire.method, v.header.policy_id, v.header.policy_version
                    ),
                ));
                return;
            }
        }
        if v.header.case_id == Some(self.case) || access.case_ids.contains(&self.case.0) {
            self.records.push(AccessRecord {
                sequence,
                recorded_at_ms: v.header.recorded_at_ms,
                logged_by: v.header.producer.clone(),
                access,
                wire,
            });
        }
    }
}
