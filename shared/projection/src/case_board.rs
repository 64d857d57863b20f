//! The police case board and the 24-hour screening queue: a row per case (subject reference,
//! risk level, orders, open breaches, last activity) and the stalking referrals of the last
//! day that still await screening, out-of-hours ones first.

use hru_domain::{Breach, CaseEvent};
use hru_wire::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{Applied, Projection, Reader, Store, Write, put_json, read_json};

/// One case as the police HRU sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRow {
    /// Case id.
    pub case_id: String,
    /// Pseudonymous subject reference (hex).
    pub subject_ref: Option<String>,
    /// Reported behaviours.
    pub behaviours: Vec<String>,
    /// Policing area.
    pub area: Option<String>,
    /// When the referral arrived.
    pub received_at_ms: Option<i64>,
    /// Whether it arrived out of hours.
    pub out_of_hours: bool,
    /// Whether screening is complete.
    pub screened: bool,
    /// Whether the HRU took primacy.
    pub primacy_taken: Option<bool>,
    /// Overall risk level of the latest assessment.
    pub risk_level: Option<String>,
    /// Orders issued, by kind.
    pub orders: Vec<String>,
    /// Breach episodes open now (ids, hex).
    pub open_breaches: Vec<String>,
    /// Whether the case is closed.
    pub closed: bool,
    /// Time of the latest event.
    pub last_activity_ms: i64,
}

/// A stalking referral awaiting screening.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScreeningItem {
    /// Case id.
    pub case_id: String,
    /// When the referral arrived.
    pub received_at_ms: i64,
    /// Out of hours: screened first.
    pub out_of_hours: bool,
    /// Not screened within 24 hours of arriving (judged when the queue is read).
    #[serde(default)]
    pub overdue: bool,
}

/// The police case board projection (case rows and the screening queue).
pub struct CaseBoard;

const CASE_PREFIX: &[u8] = b"case/";
const QUEUE_PREFIX: &[u8] = b"queue/";
const DAY_MS: i64 = 86_400_000;

fn key(prefix: &[u8], case: &str) -> Vec<u8> {
    [prefix, case.as_bytes()].concat()
}

impl Projection for CaseBoard {
    fn name(&self) -> &'static str {
        "police-case-board"
    }

    fn version(&self) -> u32 {
        3
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        // Access records are not case activity (and a list query's record names no single case).
        if e.header.event_type == hru_domain::EventType::AccessLogged {
            return Vec::new();
        }
        let Some(case) = e.header.case_id else {
            return Vec::new();
        };
        let case = case.to_string();
        let row_key = key(CASE_PREFIX, &case);
        let mut row: CaseRow = read_json(state, &row_key).unwrap_or_else(|| CaseRow {
            case_id: case.clone(),
            ..CaseRow::default()
        });
        let mut writes = Vec::new();
        match e.event {
            CaseEvent::ReferralReceived { core: Some(r), .. } => {
                row.subject_ref = Some(hex::encode(r.subject_ref));
                row.behaviours = r.behaviours.iter().map(|b| b.as_str_name().to_owned()).collect();
                row.area = Some(r.area.clone());
                row.received_at_ms = Some(r.received_at_ms);
                row.out_of_hours = r.out_of_hours;
                if r.behaviours.contains(&pb::Behaviour::Stalking) && !row.screened {
                    let item = ScreeningItem {
                        case_id: case.clone(),
                        received_at_ms: r.received_at_ms,
                        out_of_hours: r.out_of_hours,
                        overdue: false,
                    };
                    writes.push(put_json(key(QUEUE_PREFIX, &case), &item));
                }
            }
            CaseEvent::ScreeningCompleted { core: Some(s), .. } => {
                row.screened = true;
                row.primacy_taken = Some(s.primacy_taken);
                writes.push(Write::Delete(key(QUEUE_PREFIX, &case)));
            }
            CaseEvent::RiskAssessed { summary: Some(r), .. } => {
                row.risk_level = Some(r.overall.as_str_name().to_owned())
            }
            CaseEvent::OrderIssued { core: Some(o) } => row.orders.push(o.kind.as_str_name().to_owned()),
            CaseEvent::TagBreach {
                core: Some(Breach { breach_id, state, .. }),
            } => {
                let id = hex::encode(breach_id.as_bytes());
                row.open_breaches.retain(|b| b != &id);
                if *state != pb::BreachState::Closed {
                    row.open_breaches.push(id);
                }
            }
            CaseEvent::CaseClosed { core: Some(_) } => {
                row.closed = true;
                writes.push(Write::Delete(key(QUEUE_PREFIX, &case)));
            }
            // The case's reference under a rotated linkage key.
            CaseEvent::SubjectRekeyed { core: Some(k) } if row.subject_ref == Some(hex::encode(k.previous_ref)) => {
                row.subject_ref = Some(hex::encode(k.subject_ref));
            }
            _ => {}
        }
        row.last_activity_ms = row.last_activity_ms.max(e.header.occurred_at_ms);
        writes.push(put_json(row_key, &row));
        writes
    }
}

impl CaseBoard {
    /// Every case row.
    pub fn rows(store: &Store) -> Result<Vec<CaseRow>, crate::ProjectionError> {
        Ok(store
            .scan(&CaseBoard, CASE_PREFIX)?
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }
}

/// The screening queue at `now_ms`: stalking referrals awaiting screening (the unit screens
/// every recorded stalking crime within 24 hours), overdue ones first, then out-of-hours ones,
/// then oldest first.
pub fn screening_queue(store: &Store, now_ms: i64) -> Result<Vec<ScreeningItem>, crate::ProjectionError> {
    let items: Vec<ScreeningItem> = store
        .scan(&CaseBoard, QUEUE_PREFIX)?
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<ScreeningItem>(v).ok())
        .collect();
    Ok(queue_at(items, now_ms))
}

/// The queue of `items` as it stands at `now_ms`: a referral not screened within 24 hours
/// stays, marked overdue, ahead of the rest until it is screened; then out-of-hours ones; then
/// oldest first.
fn queue_at(items: Vec<ScreeningItem>, now_ms: i64) -> Vec<ScreeningItem> {
    let mut items: Vec<ScreeningItem> = items
        .into_iter()
        .map(|mut i| {
            i.overdue = now_ms - i.received_at_ms >= DAY_MS;
            i
        })
        .collect();
    items.sort_by_key(|i| (!i.overdue, !i.out_of_hours, i.received_at_ms));
    items
}

#[cfg(test)]
mod tests {
    use hru_domain::{CaseId, EventType, Referral, Screening};

    use super::*;
    use crate::given::{Mem, header};

    fn fold(events: &[(hru_domain::EventHeader, CaseEvent)]) -> Mem {
        crate::given::fold(&CaseBoard, events)
    }

    fn referral(stalking: bool, out_of_hours: bool, at: i64) -> CaseEvent {
        let behaviour = if stalking {
            pb::Behaviour::Stalking
        } else {
            pb::Behaviour::DomesticAbuse
        };
        CaseEvent::ReferralReceived {
            core: Some(Referral {
                subject_ref: [7; 32],
                behaviours: vec![behaviour],
                area: "Crewe".into(),
                received_at_ms: at,
                out_of_hours,
                crime_reference: None,
            }),
            identity: None,
            narrative: None,
        }
    }

    #[test]
    fn a_stalking_referral_queues_until_screened() {
        let case = CaseId::random();
        let given = vec![(
            header(case, EventType::ReferralReceived, 1_000),
            referral(true, true, 1_000),
        )];
        let state = fold(&given);
        assert!(state.0.contains_key(&key(QUEUE_PREFIX, &case.to_string())));
        let screened = CaseEvent::ScreeningCompleted {
            core: Some(Screening {
                primacy_taken: true,
                criteria: vec![],
                rationale: "FOUR".into(),
            }),
            figures: None,
        };
        let mut events = given;
        events.push((header(case, EventType::ScreeningCompleted, 2_000), screened));
        let state = fold(&events);
        assert!(
            !state.0.contains_key(&key(QUEUE_PREFIX, &case.to_string())),
            "screened cases leave the queue"
        );
        let row: CaseRow = serde_json::from_slice(&state.0[&key(CASE_PREFIX, &case.to_string())]).unwrap_or_default();
        assert!(row.screened && row.primacy_taken == Some(true));
        assert_eq!(row.last_activity_ms, 2_000);
    }

    #[test]
    fn an_unscreened_referral_stays_on_the_queue_past_a_day_as_overdue_and_first_until_screened() {
        let (late, recent) = (CaseId::random(), CaseId::random());
        let mut events = vec![
            (
                header(late, EventType::ReferralReceived, 1_000),
                referral(true, false, 1_000),
            ),
            (
                header(recent, EventType::ReferralReceived, 20 * 3_600_000),
                referral(true, true, 20 * 3_600_000),
            ),
        ];
        let queue = |events: &[(hru_domain::EventHeader, CaseEvent)], now: i64| {
            let items = fold(events)
                .0
                .iter()
                .filter(|(k, _)| k.starts_with(QUEUE_PREFIX))
                .filter_map(|(_, v)| serde_json::from_slice::<ScreeningItem>(v).ok())
                .collect();
            queue_at(items, now)
                .into_iter()
                .map(|i| (i.case_id, i.overdue))
                .collect::<Vec<_>>()
        };
        // A day and a bit after the first arrived: it is overdue, and ahead of the out-of-hours one.
        let now = 1_000 + DAY_MS + 3_600_000;
        assert_eq!(
            queue(&events, now),
            [(late.to_string(), true), (recent.to_string(), false)],
            "an unscreened referral does not leave the queue when its 24 hours are up"
        );
        // Screened: off the queue, however late.
        events.push((
            header(late, EventType::ScreeningCompleted, now),
            CaseEvent::ScreeningCompleted {
                core: Some(Screening {
                    primacy_taken: false,
                    criteria: vec![],
                    rationale: "screened late".into(),
                }),
                figures: None,
            },
        ));
        assert_eq!(queue(&events, now), [(recent.to_string(), false)]);
    }

    #[test]
    fn domestic_abuse_referrals_are_not_stalking_screening_work() {
        let case = CaseId::random();
        let state = fold(&[(header(case, EventType::ReferralReceived, 1), referral(false, false, 1))]);
        assert!(!state.0.keys().any(|k| k.starts_with(QUEUE_PREFIX)));
    }
}
