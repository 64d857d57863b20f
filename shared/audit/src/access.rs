//! Access questions (DPA 2018 s62): who consulted or disclosed a case, when, under which clause
//! and purpose, read back from the AccessLogged events with the keys of a party they are shared
//! with.

use hru_domain::{Access, CaseId, EventType, ProducerId};
use hru_envelope::{Directory, KeyRing, verify};
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

/// Reads the log in order (grants and access records) and keeps the records about one case.
pub struct AccessReader<'a> {
    directory: &'a Directory,
    ring: KeyRing,
    case: CaseId,
    /// Records about the case, in log order.
    pub records: Vec<AccessRecord>,
    /// Access records that may cover the case but are not shared with the reader.
    pub unreadable: u64,
}

impl<'a> AccessReader<'a> {
    /// A reader for `case` with the reader's key ring.
    pub fn new(directory: &'a Directory, ring: KeyRing, case: CaseId) -> Self {
        Self {
            directory,
            ring,
            case,
            records: Vec::new(),
            unreadable: 0,
        }
    }

    /// The subjects worth reading: grants and access records.
    pub fn subjects() -> [hru_broker::Filter; 2] {
        [hru_broker::Filter::all_key_grants(), hru_broker::Filter::all_access()]
    }

    /// Take the next log entry.
    pub fn observe(&mut self, sequence: u64, bytes: &[u8]) {
        let Ok(v) = verify(bytes, self.directory) else {
            return;
        };
        if v.header.event_type == EventType::KeyGranted {
            let _ = self.ring.ingest_grant(&v);
            return;
        }
        if v.header.event_type != EventType::AccessLogged {
            return;
        }
        let opened = self.ring.open(&v);
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
