//! The control room's breach board: every breach episode with its latest state and whether and
//! how fast it was acknowledged.

use hru_domain::{Breach, CaseEvent};
use hru_wire::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{Applied, Projection, Reader, Store, Write, put_json, read_json};

/// One breach episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreachRow {
    /// Episode id (hex).
    pub breach_id: String,
    /// Case id.
    pub case_id: String,
    /// Tag.
    pub tag_id: String,
    /// Kind.
    pub kind: String,
    /// Latest state.
    pub state: String,
    /// First fix of the episode, Unix ms.
    pub opened_at_ms: i64,
    /// When the opening event was recorded, Unix ms (the clock response time runs from).
    pub raised_at_ms: i64,
    /// Latest fix, Unix ms.
    pub observed_at_ms: i64,
    /// Found late (store-and-forward).
    pub late: bool,
    /// Operator who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Response time, ms.
    pub response_time_ms: Option<i64>,
}

/// The breach board projection.
pub struct BreachBoard;

const PREFIX: &[u8] = b"breach/";

fn key(id: &uuid::Uuid) -> Vec<u8> {
    [PREFIX, hex::encode(id.as_bytes()).as_bytes()].concat()
}

impl Projection for BreachBoard {
    fn name(&self) -> &'static str {
        "breach-board"
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        let get = |id: &uuid::Uuid| read_json::<BreachRow>(state, &key(id));
        let row = match e.event {
            CaseEvent::TagBreach {
                core:
                    Some(Breach {
                        breach_id,
                        tag_id,
                        kind,
                        state: breach_state,
                        opened_at_ms,
                        observed_at_ms,
                        late,
                        ..
                    }),
            } => {
                let mut row = get(breach_id).unwrap_or_else(|| BreachRow {
                    breach_id: hex::encode(breach_id.as_bytes()),
                    case_id: e.header.case_id.map(|c| c.to_string()).unwrap_or_default(),
                    tag_id: tag_id.to_string(),
                    kind: kind.as_str_name().to_owned(),
                    state: String::new(),
                    opened_at_ms: *opened_at_ms,
                    raised_at_ms: e.header.recorded_at_ms,
                    observed_at_ms: *observed_at_ms,
                    late: *late,
                    acknowledged_by: None,
                    response_time_ms: None,
                });
                // A closed episode stays closed if an older update arrives after it.
                if row.state != pb::BreachState::Closed.as_str_name() {
                    row.state = breach_state.as_str_name().to_owned();
                }
                row.observed_at_ms = row.observed_at_ms.max(*observed_at_ms);
                row.late |= *late;
                row
            }
            CaseEvent::BreachAcknowledged { core: Some(a) } => {
                let Some(mut row) = get(&a.breach_id) else {
                    return Vec::new();
                };
                row.acknowledged_by = Some(a.operator.clone());
                row.response_time_ms = Some(a.response_time_ms);
                row
            }
            _ => return Vec::new(),
        };
        let id = uuid::Uuid::from_slice(&hex::decode(&row.breach_id).unwrap_or_default()).unwrap_or_default();
        vec![put_json(key(&id), &row)]
    }
}

/// One breach episode by id.
pub fn breach(store: &Store, id: &uuid::Uuid) -> Result<Option<BreachRow>, crate::ProjectionError> {
    Ok(store
        .scan(&BreachBoard, &key(id))?
        .first()
        .and_then(|(_, v)| serde_json::from_slice(v).ok()))
}

/// Every breach episode, the unacknowledged open ones first, then the latest.
pub fn breach_board(store: &Store) -> Result<Vec<BreachRow>, crate::ProjectionError> {
    let mut rows: Vec<BreachRow> = store
        .scan(&BreachBoard, PREFIX)?
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice(v).ok())
        .collect();
    rows.sort_by_key(|r| {
        (
            r.acknowledged_by.is_some() || r.state == pb::BreachState::Closed.as_str_name(),
            std::cmp::Reverse(r.observed_at_ms),
        )
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hru_domain::{Acknowledgement, CaseId, EventType};

    use super::*;
    use crate::given::{fold, header};

    #[test]
    fn an_episode_keeps_its_first_fix_and_records_its_acknowledgement() {
        let case = CaseId::random();
        let id = uuid::Uuid::from_u128(42);
        let breach = |state, observed| CaseEvent::TagBreach {
            core: Some(Breach {
                breach_id: id,
                tag_id: "t9".parse().unwrap(),
                kind: pb::BreachKind::Exclusion,
                state,
                rule_id: uuid::Uuid::from_u128(1),
                opened_at_ms: 100,
                observed_at_ms: observed,
                position: Some((53.2, -2.9)),
                accuracy_m: 8.0,
                distance_m: 30.0,
                late: false,
                evidence: None,
            }),
        };
        let mem = fold(
            &BreachBoard,
            &[
                (
                    header(case, EventType::TagBreach, 100),
                    breach(pb::BreachState::Opened, 100),
                ),
                (
                    header(case, EventType::TagBreach, 200),
                    breach(pb::BreachState::Updated, 200),
                ),
                (
                    header(case, EventType::BreachAcknowledged, 250),
                    CaseEvent::BreachAcknowledged {
                        core: Some(Acknowledgement {
                            breach_id: id,
                            operator: "PC 101".into(),
                            action: "unit dispatched".into(),
                            response_time_ms: 150,
                        }),
                    },
                ),
                (
                    header(case, EventType::TagBreach, 300),
                    breach(pb::BreachState::Closed, 300),
                ),
            ],
        );
        let row: BreachRow = serde_json::from_slice(mem.0.values().next().expect("row")).expect("json");
        assert_eq!(row.opened_at_ms, 100);
        assert_eq!(row.observed_at_ms, 300);
        assert_eq!(row.state, "BREACH_STATE_CLOSED");
        assert_eq!(row.acknowledged_by.as_deref(), Some("PC 101"));
        assert_eq!(row.response_time_ms, Some(150));
    }
}
