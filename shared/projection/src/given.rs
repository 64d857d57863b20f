//! Given/when/then helpers for projection tests: fold events into memory and look.

use std::collections::BTreeMap;

use hru_domain::{CaseEvent, CaseId, Digest, EventHeader, EventId, EventType, KeyId, ProducerId};

use crate::{Applied, Projection, Reader, Write};

/// A projection's state in memory.
pub(crate) struct Mem(pub(crate) BTreeMap<Vec<u8>, Vec<u8>>);

impl Reader for Mem {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).cloned()
    }
}

/// A header for an event of `case` at `at_ms`.
pub(crate) fn header(case: CaseId, event_type: EventType, at_ms: i64) -> EventHeader {
    EventHeader {
        event_id: EventId::new_v7(),
        event_type,
        case_id: Some(case),
        producer: ProducerId {
            party: "police-hru".parse().unwrap_or_else(|_| unreachable!()),
            instance: "n".into(),
        },
        key_id: KeyId([0; 8]),
        producer_seq: 1,
        prev_digest: Digest::ZERO,
        occurred_at_ms: at_ms,
        recorded_at_ms: at_ms,
        policy_id: "p".into(),
        policy_version: 1,
        schema: 1,
    }
}

/// Given these events, the state after folding them.
pub(crate) fn fold(projection: &dyn Projection, events: &[(EventHeader, CaseEvent)]) -> Mem {
    let mut mem = Mem(BTreeMap::new());
    for (i, (h, e)) in events.iter().enumerate() {
        for w in projection.apply(
            &mem,
            &Applied {
                sequence: i as u64 + 1,
                header: h,
                event: e,
            },
        ) {
            match w {
                Write::Put(k, v) => mem.0.insert(k, v),
                Write::Delete(k) => mem.0.remove(&k),
            };
        }
    }
    mem
}
