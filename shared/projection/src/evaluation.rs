//! Evaluation outcomes: one pseudonymous row per case (referral, charging decision, time to
//! resolve, interventions completed, reoffending within 6 and 12 months of the completed
//! therapeutic intervention — the unit's evaluation question — or, for a case without one, of
//! the referral).
//!
//! Rows are keyed by the random case id and the keyed subject reference; no identity, narrative,
//! clinical or location fact ever reaches this projection (the agreement does not grant them).
//! Reoffences are recorded per subject, whichever case they were recorded in. When the linkage
//! key is rotated, each case's re-keying gives its reference under the new generation and keeps
//! the old reference as an alias of it, so a reoffence recorded under the old reference still
//! counts for the subject. Under version 2
//! of the agreement the rows also carry the `figures` the nodes write: screening, reviews held,
//! Victims' Code contacts and breach acknowledgement times.

use hru_domain::CaseEvent;
use serde::{Deserialize, Serialize};

use crate::{Applied, Projection, Reader, Store, Write, put_json, read_json};

/// What the fold keeps per case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct CaseFacts {
    case_id: String,
    subject_ref: Option<String>,
    /// The linkage key generation of `subject_ref` (0 before any re-keying).
    #[serde(default)]
    generation: u32,
    referral_at_ms: Option<i64>,
    behaviours: Vec<String>,
    area: Option<String>,
    charge_decision: Option<String>,
    interventions_completed: Vec<String>,
    #[serde(default)]
    therapeutic_completed_at_ms: Option<i64>,
    closed_at_ms: Option<i64>,
    #[serde(default)]
    out_of_hours: bool,
    #[serde(default)]
    screening: Option<Screened>,
    #[serde(default)]
    charge_decided_at_ms: Option<i64>,
    #[serde(default)]
    reviews_held: Vec<ReviewHeld>,
    #[serde(default)]
    contacts_discharged: u32,
    #[serde(default)]
    contacts_late: u32,
    #[serde(default)]
    acknowledgements: Vec<Acknowledged>,
}

/// A screening as its figures give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screened {
    /// When screened, Unix ms.
    pub at_ms: i64,
    /// Whether the HRU took primacy.
    pub primacy_taken: bool,
}

/// A review held, as its figures give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewHeld {
    /// Review number.
    pub number: u32,
    /// When it was due, Unix ms.
    pub due_at_ms: i64,
    /// When it was held, Unix ms.
    pub held_at_ms: i64,
}

/// A breach acknowledgement, as its figures give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledged {
    /// Breach kind.
    pub kind: String,
    /// Breach to acknowledgement, ms.
    pub response_time_ms: i64,
}

/// One pseudonymous outcome row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRow {
    /// Case id (random, carries no identity).
    pub case_id: String,
    /// Keyed subject reference (hex).
    pub subject_ref: Option<String>,
    /// When the referral arrived, Unix ms.
    pub referral_at_ms: Option<i64>,
    /// Reported behaviours.
    pub behaviours: Vec<String>,
    /// Policing area.
    pub area: Option<String>,
    /// The charging decision, if made.
    pub charge_decision: Option<String>,
    /// Referral to closure, ms, once closed.
    pub time_to_resolve_ms: Option<i64>,
    /// Kinds of intervention completed.
    pub interventions_completed: Vec<String>,
    /// When the first therapeutic (health) intervention was completed.
    pub therapeutic_completed_at_ms: Option<i64>,
    /// Reoffended within 6 months of the completed therapeutic intervention, or of the referral
    /// when there was none (none until known: the window has not closed and nothing happened).
    pub reoffence_within_6m: Option<bool>,
    /// The same within 12 months.
    pub reoffence_within_12m: Option<bool>,
    /// Whether the referral arrived out of the unit's hours.
    #[serde(default)]
    pub out_of_hours: bool,
    /// The screening, when its figures were shared.
    #[serde(default)]
    pub screening: Option<Screened>,
    /// When the charging decision was made, Unix ms.
    #[serde(default)]
    pub charge_decided_at_ms: Option<i64>,
    /// When the case closed, Unix ms.
    #[serde(default)]
    pub closed_at_ms: Option<i64>,
    /// Reviews held.
    #[serde(default)]
    pub reviews_held: Vec<ReviewHeld>,
    /// Victims' Code contacts discharged.
    #[serde(default)]
    pub contacts_discharged: u32,
    /// Of those, how many late.
    #[serde(default)]
    pub contacts_late: u32,
    /// Breach acknowledgements.
    #[serde(default)]
    pub acknowledgements: Vec<Acknowledged>,
}

/// The evaluation projection.
pub struct Evaluation;

const CASE_PREFIX: &[u8] = b"case/";
const REOFFENCE_PREFIX: &[u8] = b"reoffence/";
/// An older reference → the reference a re-keying gave in its place.
const ALIAS_PREFIX: &[u8] = b"alias/";

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    [prefix, id.as_bytes()].concat()
}

impl Projection for Evaluation {
    fn name(&self) -> &'static str {
        "evaluation-outcomes"
    }

    fn version(&self) -> u32 {
        4
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        let Some(case) = e.header.case_id else {
            return Vec::new();
        };
        if let CaseEvent::ReoffenceRecorded { core: Some(r) } = e.event {
            let subject = hex::encode(r.subject_ref);
            let k = key(REOFFENCE_PREFIX, &subject);
            let mut times: Vec<i64> = read_json(state, &k).unwrap_or_default();
            if !times.contains(&r.occurred_at_ms) {
                times.push(r.occurred_at_ms);
                times.sort_unstable();
            }
            return vec![put_json(k, &times)];
        }
        let case = case.to_string();
        let k = key(CASE_PREFIX, &case);
        let mut facts: CaseFacts = read_json(state, &k).unwrap_or_else(|| CaseFacts {
            case_id: case.clone(),
            ..CaseFacts::default()
        });
        match e.event {
            // A case has one referral; another (only an operator's `hru append` can make one) is
            // not taken, so the case cannot be pointed at another subject.
            CaseEvent::ReferralReceived { core: Some(_), .. } if facts.referral_at_ms.is_some() => return Vec::new(),
            CaseEvent::ReferralReceived { core: Some(r), .. } => {
                facts.subject_ref = Some(hex::encode(r.subject_ref));
                facts.referral_at_ms = Some(r.received_at_ms);
                facts.behaviours = r.behaviours.iter().map(|b| b.as_str_name().to_owned()).collect();
                facts.area = Some(r.area.clone());
                facts.out_of_hours = r.out_of_hours;
            }
            CaseEvent::ChargeDecided { core: Some(c) } => {
                facts.charge_decision = Some(c.decision.as_str_name().to_owned());
                facts.charge_decided_at_ms = Some(c.decided_at_ms);
            }
            CaseEvent::ScreeningCompleted { figures: Some(f), .. } => {
                facts.screening.get_or_insert(Screened {
                    at_ms: f.screened_at_ms,
                    primacy_taken: f.primacy_taken,
                });
            }
            CaseEvent::ReviewRecorded { figures: Some(f), .. } => {
                if !facts.reviews_held.iter().any(|r| r.number == f.review_number) {
                    facts.reviews_held.push(ReviewHeld {
                        number: f.review_number,
                        due_at_ms: f.due_at_ms,
                        held_at_ms: f.held_at_ms,
                    });
                    facts.reviews_held.sort_by_key(|r| r.number);
                }
            }
            CaseEvent::SafetyPlanUpdated { figures: Some(f), .. } => {
                facts.contacts_discharged = facts.contacts_discharged.saturating_add(f.discharged);
                facts.contacts_late = facts.contacts_late.saturating_add(f.late);
            }
            CaseEvent::BreachAcknowledged { figures: Some(f), .. } => facts.acknowledgements.push(Acknowledged {
                kind: f.kind.as_str_name().to_owned(),
                response_time_ms: f.response_time_ms,
            }),
            CaseEvent::InterventionCompleted { core: Some(i) } => {
                facts.interventions_completed.push(i.kind.as_str_name().to_owned());
                if i.kind == hru_wire::v1::InterventionKind::Therapeutic {
                    facts.therapeutic_completed_at_ms =
                        Some(facts.therapeutic_completed_at_ms.map_or(i.at_ms, |t| t.min(i.at_ms)));
                }
            }
            CaseEvent::CaseClosed { core: Some(c) } => facts.closed_at_ms = Some(c.closed_at_ms),
            // A re-keying continues the reference the case carries, to a newer generation.
            CaseEvent::SubjectRekeyed { core: Some(r) }
                if facts.subject_ref == Some(hex::encode(r.previous_ref)) && r.generation > facts.generation =>
            {
                let (previous, next) = (hex::encode(r.previous_ref), hex::encode(r.subject_ref));
                facts.subject_ref = Some(next.clone());
                facts.generation = r.generation;
                // The first re-keying of a reference stands: another for the same reference
                // re-points no other case.
                let alias = key(ALIAS_PREFIX, &previous);
                if state.get(&alias).is_some() {
                    return vec![put_json(k, &facts)];
                }
                return vec![put_json(alias, &next), put_json(k, &facts)];
            }
            _ => return Vec::new(),
        }
        vec![put_json(k, &facts)]
    }
}

fn months_after(ms: i64, months: i64) -> Option<i64> {
    let t = jiff::Timestamp::from_millisecond(ms).ok()?;
    let z = t
        .to_zoned(jiff::tz::TimeZone::UTC)
        .checked_add(jiff::Span::new().months(months))
        .ok()?;
    Some(z.timestamp().as_millisecond())
}

/// Whether a reoffence fell within `months` of `from`: none while the window is still open and
/// nothing has happened yet.
fn within(from: Option<i64>, months: i64, reoffences: &[i64], now_ms: i64) -> Option<bool> {
    let from = from?;
    let end = months_after(from, months)?;
    if reoffences.iter().any(|&t| t > from && t <= end) {
        Some(true)
    } else if now_ms > end {
        Some(false)
    } else {
        None
    }
}

/// The reference `subject` is known by now: followed through its re-keyings.
fn current<'a>(aliases: &'a std::collections::BTreeMap<String, String>, mut subject: &'a str) -> &'a str {
    // Each re-keying is to a newer generation, so a chain ends; the bound guards a forged loop.
    for _ in 0..=aliases.len() {
        match aliases.get(subject) {
            Some(next) => subject = next,
            None => break,
        }
    }
    subject
}

/// Every outcome row as of `now_ms`, oldest referral first.
pub fn outcome_rows(store: &Store, now_ms: i64) -> Result<Vec<OutcomeRow>, crate::ProjectionError> {
    Ok(rows_of(
        store.scan(&Evaluation, CASE_PREFIX)?,
        store.scan(&Evaluation, REOFFENCE_PREFIX)?,
        store.scan(&Evaluation, ALIAS_PREFIX)?,
        now_ms,
    ))
}

/// The outcome rows the fold's case, reoffence and alias entries give at `now_ms`, oldest
/// referral first. A reference since re-keyed is shown, and its reoffences counted, under the
/// reference it is known by now.
fn rows_of(
    cases: Vec<(Vec<u8>, Vec<u8>)>,
    reoffence_entries: Vec<(Vec<u8>, Vec<u8>)>,
    alias_entries: Vec<(Vec<u8>, Vec<u8>)>,
    now_ms: i64,
) -> Vec<OutcomeRow> {
    let suffix = |k: &[u8], prefix: &[u8]| String::from_utf8(k.get(prefix.len()..)?.to_vec()).ok();
    let aliases: std::collections::BTreeMap<String, String> = alias_entries
        .into_iter()
        .filter_map(|(k, v)| Some((suffix(&k, ALIAS_PREFIX)?, serde_json::from_slice(&v).ok()?)))
        .collect();
    let mut reoffences: std::collections::BTreeMap<String, Vec<i64>> = std::collections::BTreeMap::new();
    for (k, v) in reoffence_entries {
        let (Some(subject), Ok(times)) = (suffix(&k, REOFFENCE_PREFIX), serde_json::from_slice::<Vec<i64>>(&v)) else {
            continue;
        };
        let all = reoffences.entry(current(&aliases, &subject).to_owned()).or_default();
        all.extend(times);
        all.sort_unstable();
        all.dedup();
    }
    let mut rows: Vec<OutcomeRow> = cases
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<CaseFacts>(v).ok())
        .map(|mut f| {
            f.subject_ref = f.subject_ref.map(|s| current(&aliases, &s).to_owned());
            outcome(f, &reoffences, now_ms)
        })
        .collect();
    rows.sort_by_key(|r| (r.referral_at_ms, r.case_id.clone()));
    rows
}

fn outcome(f: CaseFacts, reoffences: &std::collections::BTreeMap<String, Vec<i64>>, now_ms: i64) -> OutcomeRow {
    let times = f
        .subject_ref
        .as_ref()
        .and_then(|s| reoffences.get(s))
        .map_or(&[][..], Vec::as_slice);
    OutcomeRow {
        therapeutic_completed_at_ms: f.therapeutic_completed_at_ms,
        reoffence_within_6m: within(f.therapeutic_completed_at_ms.or(f.referral_at_ms), 6, times, now_ms),
        reoffence_within_12m: within(f.therapeutic_completed_at_ms.or(f.referral_at_ms), 12, times, now_ms),
        time_to_resolve_ms: f.closed_at_ms.zip(f.referral_at_ms).map(|(c, r)| c - r),
        out_of_hours: f.out_of_hours,
        screening: f.screening,
        charge_decided_at_ms: f.charge_decided_at_ms,
        closed_at_ms: f.closed_at_ms,
        reviews_held: f.reviews_held,
        contacts_discharged: f.contacts_discharged,
        contacts_late: f.contacts_late,
        acknowledgements: f.acknowledgements,
        case_id: f.case_id,
        subject_ref: f.subject_ref,
        referral_at_ms: f.referral_at_ms,
        behaviours: f.behaviours,
        area: f.area,
        charge_decision: f.charge_decision,
        interventions_completed: f.interventions_completed,
    }
}

#[cfg(test)]
mod tests {
    use hru_domain::{CaseId, Charge, Closure, EventType, Referral, Reoffence};
    use hru_wire::v1 as pb;

    use super::*;
    use crate::given::{fold, header};

    const JAN_2027: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn referral(subject: u8, at: i64) -> CaseEvent {
        CaseEvent::ReferralReceived {
            core: Some(Referral {
                subject_ref: [subject; 32],
                behaviours: vec![pb::Behaviour::Stalking],
                area: "Crewe".into(),
                received_at_ms: at,
                out_of_hours: true,
                crime_reference: None,
            }),
            identity: None,
            narrative: None,
        }
    }

    fn rows(events: &[(hru_domain::EventHeader, CaseEvent)], now: i64) -> Vec<OutcomeRow> {
        let mem = fold(&Evaluation, events);
        let under = |prefix: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
            mem.0
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        rows_of(under(CASE_PREFIX), under(REOFFENCE_PREFIX), under(ALIAS_PREFIX), now)
    }

    #[test]
    fn outcomes_count_reoffending_by_subject_across_cases() {
        let (first, second) = (CaseId::random(), CaseId::random());
        let events = [
            (
                header(first, EventType::ReferralReceived, JAN_2027),
                referral(5, JAN_2027),
            ),
            (
                header(first, EventType::ChargeDecided, JAN_2027 + 20 * DAY),
                CaseEvent::ChargeDecided {
                    core: Some(Charge {
                        decision: pb::ChargeDecision::Charged,
                        offence: "s2A".into(),
                        decided_at_ms: JAN_2027 + 20 * DAY,
                    }),
                },
            ),
            (
                header(first, EventType::CaseClosed, JAN_2027 + 40 * DAY),
                CaseEvent::CaseClosed {
                    core: Some(Closure {
                        reason: "order in place".into(),
                        closed_at_ms: JAN_2027 + 40 * DAY,
                    }),
                },
            ),
            // Eight months later, a new case for the same subject records a reoffence.
            (
                header(second, EventType::ReoffenceRecorded, JAN_2027 + 240 * DAY),
                CaseEvent::ReoffenceRecorded {
                    core: Some(Reoffence {
                        subject_ref: [5; 32],
                        offence: "breach of SPO".into(),
                        occurred_at_ms: JAN_2027 + 240 * DAY,
                    }),
                },
            ),
        ];
        let now = JAN_2027 + 400 * DAY;
        let row = &rows(&events, now)[0];
        assert_eq!(row.charge_decision.as_deref(), Some("CHARGE_DECISION_CHARGED"));
        assert_eq!(row.time_to_resolve_ms, Some(40 * DAY));
        assert_eq!(row.reoffence_within_6m, Some(false));
        assert_eq!(row.reoffence_within_12m, Some(true));
        // Before the 12-month window ends and before the reoffence, nothing is known yet.
        let early = &rows(&events[..3], JAN_2027 + 200 * DAY)[0];
        assert_eq!(early.reoffence_within_6m, Some(false));
        assert_eq!(early.reoffence_within_12m, None);
    }

    fn completed(case: CaseId, kind: pb::InterventionKind, at: i64) -> (hru_domain::EventHeader, CaseEvent) {
        (
            header(case, EventType::InterventionCompleted, at),
            CaseEvent::InterventionCompleted {
                core: Some(hru_domain::Intervention {
                    intervention_id: uuid::Uuid::from_u128(at as u128),
                    kind,
                    at_ms: at,
                    outcome: Some("completed".into()),
                }),
            },
        )
    }

    fn reoffence(case: CaseId, subject: u8, at: i64) -> (hru_domain::EventHeader, CaseEvent) {
        (
            header(case, EventType::ReoffenceRecorded, at),
            CaseEvent::ReoffenceRecorded {
                core: Some(Reoffence {
                    subject_ref: [subject; 32],
                    offence: "stalking".into(),
                    occurred_at_ms: at,
                }),
            },
        )
    }

    fn rekeyed(case: CaseId, from: u8, to: u8, generation: u32, at: i64) -> (hru_domain::EventHeader, CaseEvent) {
        (
            header(case, EventType::SubjectRekeyed, at),
            CaseEvent::SubjectRekeyed {
                core: Some(hru_domain::Rekeying {
                    previous_ref: [from; 32],
                    subject_ref: [to; 32],
                    generation,
                }),
            },
        )
    }

    /// A rotation of the linkage key re-keys each case: rows show the reference under the
    /// newest generation, and a reoffence recorded under the old one still counts, whether
    /// its own case was re-keyed or not; a re-keying that does not continue the case's
    /// reference, or goes back a generation, is not taken.
    #[test]
    fn a_rekeyed_subject_keeps_its_reoffences_and_links_with_cases_after_the_rotation() {
        let (before, other, after) = (CaseId::random(), CaseId::random(), CaseId::random());
        let events = [
            (
                header(before, EventType::ReferralReceived, JAN_2027),
                referral(1, JAN_2027),
            ),
            (
                header(other, EventType::ReferralReceived, JAN_2027),
                referral(1, JAN_2027),
            ),
            // Reoffence recorded under generation 1 on a case never re-keyed afterwards.
            reoffence(other, 1, JAN_2027 + 100 * DAY),
            rekeyed(before, 1, 2, 2, JAN_2027 + 120 * DAY),
            // Not this case's reference, and an older generation: neither taken.
            rekeyed(before, 9, 8, 3, JAN_2027 + 121 * DAY),
            rekeyed(before, 2, 7, 1, JAN_2027 + 122 * DAY),
            // The same person referred again after the rotation: the new reference.
            (
                header(after, EventType::ReferralReceived, JAN_2027 + 130 * DAY),
                referral(2, JAN_2027 + 130 * DAY),
            ),
            reoffence(after, 2, JAN_2027 + 150 * DAY),
        ];
        let now = JAN_2027 + 800 * DAY;
        let rows = rows(&events, now);
        let row = |c: CaseId| rows.iter().find(|r| r.case_id == c.to_string()).expect("row");
        let two = Some(hex::encode([2u8; 32]));
        assert_eq!(row(before).subject_ref, two, "re-keyed");
        assert_eq!(row(other).subject_ref, two, "its old reference is an alias of the new");
        assert_eq!(row(after).subject_ref, two);
        // Both reoffences count for the subject, from each case's referral.
        assert_eq!(row(before).reoffence_within_6m, Some(true));
        assert_eq!(row(other).reoffence_within_6m, Some(true));
        assert_eq!(row(after).reoffence_within_6m, Some(true));
    }

    /// A second re-keying of one reference (only a forged one can say otherwise than the first)
    /// re-points its own case, never the subject's other cases.
    #[test]
    fn the_first_rekeying_of_a_reference_stands_for_the_other_cases() {
        let (first, second) = (CaseId::random(), CaseId::random());
        let events = [
            (
                header(first, EventType::ReferralReceived, JAN_2027),
                referral(1, JAN_2027),
            ),
            (
                header(second, EventType::ReferralReceived, JAN_2027),
                referral(1, JAN_2027),
            ),
            rekeyed(first, 1, 2, 2, JAN_2027 + DAY),
            rekeyed(second, 1, 9, 2, JAN_2027 + 2 * DAY),
        ];
        let rows = rows(&events, JAN_2027 + 10 * DAY);
        let row = |c: CaseId| rows.iter().find(|r| r.case_id == c.to_string()).expect("row");
        assert_eq!(row(first).subject_ref, Some(hex::encode([2u8; 32])));
        assert_eq!(row(second).subject_ref, Some(hex::encode([9u8; 32])));
    }

    /// The evaluation's headline figure is reoffending after a *completed health intervention*:
    /// the windows run from its completion, not from the referral.
    #[test]
    fn reoffending_is_followed_from_a_completed_therapeutic_intervention_when_there_is_one() {
        let (treated, untreated, legal) = (CaseId::random(), CaseId::random(), CaseId::random());
        let events = [
            (
                header(treated, EventType::ReferralReceived, JAN_2027),
                referral(1, JAN_2027),
            ),
            completed(treated, pb::InterventionKind::Therapeutic, JAN_2027 + 90 * DAY),
            // Eight months after the referral, five after the intervention.
            reoffence(treated, 1, JAN_2027 + 240 * DAY),
            (
                header(untreated, EventType::ReferralReceived, JAN_2027),
                referral(2, JAN_2027),
            ),
            reoffence(untreated, 2, JAN_2027 + 240 * DAY),
            // A legal intervention is not a health intervention: followed from the referral.
            (
                header(legal, EventType::ReferralReceived, JAN_2027),
                referral(3, JAN_2027),
            ),
            completed(legal, pb::InterventionKind::Legal, JAN_2027 + 90 * DAY),
            reoffence(legal, 3, JAN_2027 + 240 * DAY),
        ];
        let now = JAN_2027 + 600 * DAY;
        let all = rows(&events, now);
        let row = |case: CaseId| all.iter().find(|r| r.case_id == case.to_string()).unwrap();
        let t = row(treated);
        assert_eq!(
            (t.reoffence_within_6m, t.reoffence_within_12m),
            (Some(true), Some(true)),
            "a reoffence five months after the completed intervention is within its 6 months"
        );
        assert_eq!(t.therapeutic_completed_at_ms, Some(JAN_2027 + 90 * DAY));
        for r in [row(untreated), row(legal)] {
            assert_eq!(r.therapeutic_completed_at_ms, None);
            assert_eq!(
                (r.reoffence_within_6m, r.reoffence_within_12m),
                (Some(false), Some(true))
            );
        }
        // Four months after the intervention, nothing yet: its 6-month window is still open.
        let early = rows(&events[..2], JAN_2027 + 210 * DAY);
        assert_eq!(early[0].reoffence_within_6m, None);
    }
}
