//! The control room's breach board: every breach episode with its latest state and whether and
//! how fast it was acknowledged; and each fitted tag's coverage — monitored, degraded or blind,
//! and since when — so a quiet board is never mistaken for a watched one.

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
    /// The action the operator recorded with the acknowledgement.
    #[serde(default)]
    pub action: Option<String>,
    /// The zone or proximity rule (hex; all zeros for device conditions).
    #[serde(default)]
    pub rule_id: String,
    /// The latest fix's position `(lat, lon)`, when it had one.
    #[serde(default)]
    pub position: Option<(f64, f64)>,
    /// The latest fix's accuracy radius, metres.
    #[serde(default)]
    pub accuracy_m: f64,
    /// The latest distance to the boundary or the victim, metres.
    #[serde(default)]
    pub distance_m: f64,
}

/// How well a fitted tag is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Watch {
    /// Heard, with positions to judge.
    Monitored,
    /// Heard, but its positions cannot be fully relied on: no GPS fix for the no-fix time, the
    /// strap tampered with, or the battery low.
    Degraded,
    /// Not heard: the geofence has read nothing from it for the lapse time (monitoring
    /// lapsed) or event time has passed the no-communication time without a message.
    Blind,
}

impl Watch {
    /// What an open condition of `kind` makes of a tag's coverage (none: not a coverage matter).
    pub fn of(kind: pb::BreachKind) -> Option<Watch> {
        match kind {
            pb::BreachKind::MonitoringLapsed | pb::BreachKind::NoCommunication => Some(Watch::Blind),
            pb::BreachKind::NoFix | pb::BreachKind::Tamper | pb::BreachKind::BatteryLow => Some(Watch::Degraded),
            _ => None,
        }
    }
}

/// One fitted tag's coverage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageRow {
    /// Tag.
    pub tag_id: String,
    /// The case it is fitted for.
    pub case_id: String,
    /// Monitored, degraded or blind.
    pub watch: Watch,
    /// Since when, Unix ms: the earliest open condition of that level, or when the last one
    /// closed (or the tag was fitted).
    pub since_ms: i64,
    /// The open conditions: kind, episode id (hex) and when it opened, Unix ms.
    pub conditions: Vec<(String, String, i64)>,
    /// Fitted now (a removed tag's row keeps its open conditions, as the geofence keeps them,
    /// for when it is fitted again; it is not listed).
    pub fitted: bool,
}

impl CoverageRow {
    /// Recompute `watch` and `since_ms` after the conditions changed at `at_ms`.
    fn settle(&mut self, at_ms: i64) {
        let level = |kind: &str| pb::BreachKind::from_str_name(kind).and_then(Watch::of);
        let watch = self
            .conditions
            .iter()
            .filter_map(|(kind, ..)| level(kind))
            .max()
            .unwrap_or(Watch::Monitored);
        let since = self
            .conditions
            .iter()
            .filter(|(kind, ..)| level(kind) == Some(watch))
            .map(|(.., opened)| *opened)
            .min();
        match since {
            Some(since) => self.since_ms = since,
            None if watch != self.watch => self.since_ms = at_ms,
            None => {}
        }
        self.watch = watch;
    }
}

/// The breach board projection.
pub struct BreachBoard;

const PREFIX: &[u8] = b"breach/";
const COVER: &[u8] = b"cover/";

fn cover_key(tag: &str) -> Vec<u8> {
    [COVER, tag.as_bytes()].concat()
}

fn key(id: &uuid::Uuid) -> Vec<u8> {
    [PREFIX, hex::encode(id.as_bytes()).as_bytes()].concat()
}

impl Projection for BreachBoard {
    fn name(&self) -> &'static str {
        "breach-board"
    }

    fn version(&self) -> u32 {
        3
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        let mut writes = coverage(state, e);
        writes.extend(self.episode(state, e));
        writes
    }
}

/// A tag's coverage after `e`: fitted → monitored; a coverage condition opened or closed →
/// re-judged; removed → gone.
fn coverage(state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
    let at = e.header.recorded_at_ms;
    match e.event {
        CaseEvent::TagFitted { core: Some(t) } => {
            let slot = cover_key(t.tag_id.as_str());
            let mut row = read_json::<CoverageRow>(state, &slot).unwrap_or_else(|| CoverageRow {
                tag_id: t.tag_id.to_string(),
                case_id: String::new(),
                watch: Watch::Monitored,
                since_ms: t.at_ms,
                conditions: Vec::new(),
                fitted: true,
            });
            if !row.fitted {
                row.fitted = true;
                row.since_ms = row.since_ms.max(t.at_ms);
            }
            row.case_id = e.header.case_id.map(|c| c.to_string()).unwrap_or_default();
            vec![put_json(slot, &row)]
        }
        CaseEvent::TagRemoved { core: Some(t) } => {
            let slot = cover_key(t.tag_id.as_str());
            match read_json::<CoverageRow>(state, &slot) {
                Some(mut row) => {
                    row.fitted = false;
                    vec![put_json(slot, &row)]
                }
                None => Vec::new(),
            }
        }
        CaseEvent::TagBreach { core: Some(b) } if Watch::of(b.kind).is_some() => {
            let slot = cover_key(b.tag_id.as_str());
            // Conditions of a tag not fitted (or already removed) are not coverage.
            let Some(mut row) = read_json::<CoverageRow>(state, &slot) else {
                return Vec::new();
            };
            let id = hex::encode(b.breach_id.as_bytes());
            // A closed episode stays closed if an older update arrives after it.
            let closed = read_json::<BreachRow>(state, &key(&b.breach_id))
                .is_some_and(|r| r.state == pb::BreachState::Closed.as_str_name());
            row.conditions.retain(|(_, c, _)| *c != id);
            if b.state != pb::BreachState::Closed && !closed {
                row.conditions
                    .push((b.kind.as_str_name().to_owned(), id, b.opened_at_ms));
            }
            row.settle(if b.state == pb::BreachState::Closed {
                b.observed_at_ms
            } else {
                at
            });
            vec![put_json(slot, &row)]
        }
        _ => Vec::new(),
    }
}

impl BreachBoard {
    /// The episode row after `e`.
    fn episode(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
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
                        rule_id,
                        position,
                        accuracy_m,
                        distance_m,
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
                    action: None,
                    rule_id: hex::encode(rule_id.as_bytes()),
                    position: *position,
                    accuracy_m: *accuracy_m,
                    distance_m: *distance_m,
                });
                // A closed episode stays closed if an older update arrives after it.
                if row.state != pb::BreachState::Closed.as_str_name() {
                    row.state = breach_state.as_str_name().to_owned();
                }
                // Where the tag is: the latest fix's, never an older update's arriving late.
                if *observed_at_ms >= row.observed_at_ms {
                    if position.is_some() {
                        row.position = *position;
                        row.accuracy_m = *accuracy_m;
                    }
                    row.distance_m = *distance_m;
                }
                row.observed_at_ms = row.observed_at_ms.max(*observed_at_ms);
                row.late |= *late;
                row
            }
            CaseEvent::BreachAcknowledged { core: Some(a), .. } => {
                let Some(mut row) = get(&a.breach_id) else {
                    return Vec::new();
                };
                row.acknowledged_by = Some(a.operator.clone());
                row.response_time_ms = Some(a.response_time_ms);
                row.action = Some(a.action.clone());
                row
            }
            _ => return Vec::new(),
        };
        let id = uuid::Uuid::from_slice(&hex::decode(&row.breach_id).unwrap_or_default()).unwrap_or_default();
        vec![put_json(key(&id), &row)]
    }
}

/// Each fitted tag's coverage, blind first, then degraded, then monitored; the longest
/// standing first within each.
pub fn coverage_rows(store: &Store) -> Result<Vec<CoverageRow>, crate::ProjectionError> {
    let mut rows: Vec<CoverageRow> = store
        .scan(&BreachBoard, COVER)?
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<CoverageRow>(v).ok())
        .filter(|r| r.fitted)
        .collect();
    rows.sort_by(|a, b| {
        (std::cmp::Reverse(a.watch), a.since_ms, &a.tag_id).cmp(&(std::cmp::Reverse(b.watch), b.since_ms, &b.tag_id))
    });
    Ok(rows)
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
                        figures: None,
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
        assert_eq!(row.action.as_deref(), Some("unit dispatched"));
        assert_eq!(row.position, Some((53.2, -2.9)));
        assert_eq!((row.accuracy_m, row.distance_m), (8.0, 30.0));
    }

    #[test]
    fn an_episode_shows_its_latest_fix_and_an_older_update_arriving_late_does_not_move_it() {
        let case = CaseId::random();
        let id = uuid::Uuid::from_u128(43);
        let update = |observed, lat, distance| {
            (
                header(case, EventType::TagBreach, observed),
                CaseEvent::TagBreach {
                    core: Some(Breach {
                        breach_id: id,
                        tag_id: "t9".parse().unwrap(),
                        kind: pb::BreachKind::Exclusion,
                        state: pb::BreachState::Updated,
                        rule_id: uuid::Uuid::from_u128(7),
                        opened_at_ms: 100,
                        observed_at_ms: observed,
                        position: Some((lat, -2.9)),
                        accuracy_m: 5.0,
                        distance_m: distance,
                        late: false,
                        evidence: None,
                    }),
                },
            )
        };
        let mem = fold(
            &BreachBoard,
            &[
                update(100, 53.1, 10.0),
                update(300, 53.3, 40.0),
                update(200, 53.2, 20.0),
            ],
        );
        let row: BreachRow = serde_json::from_slice(mem.0.values().next().expect("row")).expect("json");
        assert_eq!(row.position, Some((53.3, -2.9)));
        assert_eq!(row.distance_m, 40.0);
        assert_eq!(row.rule_id, hex::encode(uuid::Uuid::from_u128(7).as_bytes()));
    }

    #[test]
    fn a_tags_coverage_is_monitored_degraded_or_blind_and_says_since_when() {
        let case = CaseId::random();
        let tag = || hru_domain::Tag {
            tag_id: "t9".parse().unwrap(),
            order_id: uuid::Uuid::from_u128(3),
            victim_device_id: None,
            at_ms: 50,
            reason: None,
        };
        let condition = |id: u128, kind, state, opened, observed| {
            (
                header(case, EventType::TagBreach, observed + 5),
                CaseEvent::TagBreach {
                    core: Some(Breach {
                        breach_id: uuid::Uuid::from_u128(id),
                        tag_id: "t9".parse().unwrap(),
                        kind,
                        state,
                        rule_id: uuid::Uuid::from_u128(1),
                        opened_at_ms: opened,
                        observed_at_ms: observed,
                        position: None,
                        accuracy_m: 0.0,
                        distance_m: 0.0,
                        late: false,
                        evidence: None,
                    }),
                },
            )
        };
        let fitted = (
            header(case, EventType::TagFitted, 50),
            CaseEvent::TagFitted { core: Some(tag()) },
        );
        let (open, closed) = (pb::BreachState::Opened, pb::BreachState::Closed);
        let watch = |events: &[(hru_domain::EventHeader, CaseEvent)]| {
            let mem = fold(&BreachBoard, events);
            let rows: Vec<CoverageRow> = mem
                .0
                .iter()
                .filter(|(k, _)| k.starts_with(COVER))
                .filter_map(|(_, v)| serde_json::from_slice(v).ok())
                .collect();
            rows.first()
                .map(|r| (r.watch, r.since_ms, r.conditions.len(), r.case_id == case.to_string()))
        };
        let listed = |events: &[(hru_domain::EventHeader, CaseEvent)]| {
            let mem = fold(&BreachBoard, events);
            mem.0
                .iter()
                .filter(|(k, _)| k.starts_with(COVER))
                .filter_map(|(_, v)| serde_json::from_slice::<CoverageRow>(v).ok())
                .filter(|r| r.fitted)
                .count()
        };
        let fitted_again = || {
            (
                header(case, EventType::TagFitted, 600),
                CaseEvent::TagFitted { core: Some(tag()) },
            )
        };
        let mut events = vec![fitted];
        assert_eq!(watch(&events), Some((Watch::Monitored, 50, 0, true)));
        events.push(condition(1, pb::BreachKind::NoFix, open, 100, 100));
        assert_eq!(
            watch(&events),
            Some((Watch::Degraded, 100, 1, true)),
            "no GPS: degraded"
        );
        events.push(condition(2, pb::BreachKind::MonitoringLapsed, open, 200, 200));
        assert_eq!(watch(&events), Some((Watch::Blind, 200, 2, true)), "not heard: blind");
        events.push(condition(9, pb::BreachKind::Exclusion, open, 250, 250));
        assert_eq!(
            watch(&events),
            Some((Watch::Blind, 200, 2, true)),
            "a breach is not coverage"
        );
        events.push(condition(2, pb::BreachKind::MonitoringLapsed, closed, 200, 300));
        assert_eq!(
            watch(&events),
            Some((Watch::Degraded, 100, 1, true)),
            "heard again, still no GPS"
        );
        events.push(condition(1, pb::BreachKind::NoFix, closed, 100, 400));
        assert_eq!(
            watch(&events),
            Some((Watch::Monitored, 400, 0, true)),
            "monitored since the fix"
        );
        events.push(condition(1, pb::BreachKind::NoFix, open, 100, 450));
        assert_eq!(
            watch(&events),
            Some((Watch::Monitored, 400, 0, true)),
            "a closed condition stays closed when an older update arrives after it"
        );
        events.push(condition(4, pb::BreachKind::Tamper, open, 480, 480));
        events.push((
            header(case, EventType::TagRemoved, 500),
            CaseEvent::TagRemoved { core: Some(tag()) },
        ));
        assert_eq!(listed(&events), 0, "a removed tag is not listed");
        events.push(fitted_again());
        assert_eq!(
            watch(&events),
            Some((Watch::Degraded, 480, 1, true)),
            "fitted again, the condition the geofence still holds open still shows"
        );
    }
}
