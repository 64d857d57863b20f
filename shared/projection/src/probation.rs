//! Probation's caseload: the cases whose subject is on probation, with each change of risk.
//!
//! A subject is on probation once Probation has recorded anything in one of the subject's
//! cases; the subject reference (pseudonymous, from the referral) then carries that to every
//! other case of the same subject, so a new referral by police shows up on the caseload.

use hru_domain::CaseEvent;
use serde::{Deserialize, Serialize};

use crate::{Applied, Projection, Reader, Store, Write, put_json, read_json};

/// A change in a case's overall risk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskChange {
    /// When the assessment was made, Unix ms.
    pub at_ms: i64,
    /// The level before (none for the first assessment).
    pub from: Option<String>,
    /// The new level.
    pub to: String,
    /// The assessment tool.
    pub tool: String,
    /// The assessing party.
    pub by: String,
}

/// One case as Probation sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbationRow {
    /// Case id.
    pub case_id: String,
    /// Pseudonymous subject reference (hex).
    pub subject_ref: Option<String>,
    /// The area the referral named (probation's delivery unit follows from it).
    #[serde(default)]
    pub area: Option<String>,
    /// Whether Probation has recorded anything in this case.
    pub recorded_here: bool,
    /// Current overall risk.
    pub risk_level: Option<String>,
    /// Every change of overall risk, oldest first.
    pub risk_changes: Vec<RiskChange>,
    /// Orders issued, by kind.
    pub orders: Vec<String>,
    /// Tags fitted and not removed.
    pub tags: Vec<String>,
    /// Reoffences recorded, Unix ms.
    pub reoffences: Vec<i64>,
    /// Whether the case is closed.
    pub closed: bool,
    /// Time of the latest event.
    pub last_activity_ms: i64,
}

/// The probation caseload projection.
pub struct ProbationCaseload;

const CASE_PREFIX: &[u8] = b"case/";
const SUBJECT_PREFIX: &[u8] = b"subject/";

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    [prefix, id.as_bytes()].concat()
}

impl Projection for ProbationCaseload {
    fn name(&self) -> &'static str {
        "probation-caseload"
    }

    fn version(&self) -> u32 {
        3
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        if e.header.event_type == hru_domain::EventType::AccessLogged {
            return Vec::new();
        }
        let Some(case) = e.header.case_id else {
            return Vec::new();
        };
        let case = case.to_string();
        let row_key = key(CASE_PREFIX, &case);
        let mut row: ProbationRow = read_json(state, &row_key).unwrap_or_else(|| ProbationRow {
            case_id: case.clone(),
            ..ProbationRow::default()
        });
        let mut writes = Vec::new();
        match e.event {
            CaseEvent::ReferralReceived { core: Some(r), .. } => {
                row.subject_ref = Some(hex::encode(r.subject_ref));
                row.area = Some(r.area.clone());
            }
            CaseEvent::RiskAssessed { summary: Some(r), .. } => {
                let to = r.overall.as_str_name().to_owned();
                if row.risk_level.as_ref() != Some(&to) {
                    row.risk_changes.push(RiskChange {
                        at_ms: r.assessed_at_ms,
                        from: row.risk_level.clone(),
                        to: to.clone(),
                        tool: r.tool.clone(),
                        by: e.header.producer.party.to_string(),
                    });
                    row.risk_level = Some(to);
                }
            }
            CaseEvent::OrderIssued { core: Some(o) } => row.orders.push(o.kind.as_str_name().to_owned()),
            CaseEvent::TagFitted { core: Some(t) } if !row.tags.iter().any(|x| x == t.tag_id.as_str()) => {
                row.tags.push(t.tag_id.to_string())
            }
            CaseEvent::TagRemoved { core: Some(t) } => row.tags.retain(|x| x != t.tag_id.as_str()),
            CaseEvent::ReoffenceRecorded { core: Some(r) } => row.reoffences.push(r.occurred_at_ms),
            // The case's reference under a rotated linkage key; a subject under supervision
            // stays so under its new reference.
            CaseEvent::SubjectRekeyed { core: Some(k) } if row.subject_ref == Some(hex::encode(k.previous_ref)) => {
                let (previous, next) = (hex::encode(k.previous_ref), hex::encode(k.subject_ref));
                if state.get(&key(SUBJECT_PREFIX, &previous)).is_some() {
                    writes.push(Write::Put(key(SUBJECT_PREFIX, &next), b"supervised".to_vec()));
                }
                row.subject_ref = Some(next);
            }
            CaseEvent::CaseClosed { core: Some(_) } => row.closed = true,
            _ => {}
        }
        if e.header.producer.party.as_str() == "probation" {
            row.recorded_here = true;
        }
        if let (true, Some(subject)) = (row.recorded_here, &row.subject_ref) {
            writes.push(Write::Put(key(SUBJECT_PREFIX, subject), b"supervised".to_vec()));
        }
        row.last_activity_ms = row.last_activity_ms.max(e.header.occurred_at_ms);
        writes.push(put_json(row_key, &row));
        writes
    }
}

/// The cases whose subject is on probation, the most recently active first.
pub fn probation_caseload(store: &Store) -> Result<Vec<ProbationRow>, crate::ProjectionError> {
    let supervised: std::collections::BTreeSet<Vec<u8>> = store
        .scan(&ProbationCaseload, SUBJECT_PREFIX)?
        .into_iter()
        .map(|(k, _)| k[SUBJECT_PREFIX.len()..].to_vec())
        .collect();
    let mut rows: Vec<ProbationRow> = store
        .scan(&ProbationCaseload, CASE_PREFIX)?
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice::<ProbationRow>(v).ok())
        .filter(|r| {
            r.recorded_here
                || r.subject_ref
                    .as_ref()
                    .is_some_and(|s| supervised.contains(s.as_bytes()))
        })
        .collect();
    rows.sort_by_key(|r| (std::cmp::Reverse(r.last_activity_ms), r.case_id.clone()));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use hru_domain::{CaseId, EventHeader, EventType, Referral, RiskSummary};
    use hru_wire::v1 as pb;

    use super::*;
    use crate::given::{fold, header};

    fn by(party: &str, mut h: EventHeader) -> EventHeader {
        h.producer.party = party.parse().expect("party");
        h
    }

    fn referral(subject: u8) -> CaseEvent {
        CaseEvent::ReferralReceived {
            core: Some(Referral {
                subject_ref: [subject; 32],
                behaviours: vec![pb::Behaviour::Stalking],
                area: "Chester".into(),
                received_at_ms: 1,
                out_of_hours: false,
                crime_reference: None,
            }),
            identity: None,
            narrative: None,
        }
    }

    fn risk(level: pb::RiskLevel, at: i64) -> CaseEvent {
        CaseEvent::RiskAssessed {
            summary: Some(RiskSummary {
                tool: "SRP".into(),
                violence: level,
                persistence: level,
                recurrence: level,
                psychosocial_harm: level,
                escalation: level,
                overall: level,
                assessed_at_ms: at,
            }),
            clinical: None,
        }
    }

    fn caseload(events: &[(EventHeader, CaseEvent)]) -> Vec<ProbationRow> {
        let mem = fold(&ProbationCaseload, events);
        let supervised: Vec<&[u8]> = mem
            .0
            .keys()
            .filter(|k| k.starts_with(SUBJECT_PREFIX))
            .map(|k| &k[SUBJECT_PREFIX.len()..])
            .collect();
        mem.0
            .iter()
            .filter(|(k, _)| k.starts_with(CASE_PREFIX))
            .filter_map(|(_, v)| serde_json::from_slice::<ProbationRow>(v).ok())
            .filter(|r| {
                r.recorded_here
                    || r.subject_ref
                        .as_ref()
                        .is_some_and(|s| supervised.contains(&s.as_bytes()))
            })
            .collect()
    }

    fn rekeyed(from: u8, to: u8) -> CaseEvent {
        CaseEvent::SubjectRekeyed {
            core: Some(hru_domain::Rekeying {
                previous_ref: [from; 32],
                subject_ref: [to; 32],
                generation: 2,
            }),
        }
    }

    /// A rotation of the linkage key re-keys the police's case before probation's: the subject
    /// stays under supervision, under the new reference, whichever case is re-keyed first.
    #[test]
    fn a_supervised_subject_stays_supervised_across_a_rotation_of_the_linkage_key() {
        let (supervised, other, later) = (CaseId::random(), CaseId::random(), CaseId::random());
        let rows = caseload(&[
            (
                by("probation", header(supervised, EventType::ReferralReceived, 1)),
                referral(1),
            ),
            (
                by("police-hru", header(other, EventType::ReferralReceived, 2)),
                referral(1),
            ),
            (
                by("police-hru", header(other, EventType::SubjectRekeyed, 3)),
                rekeyed(1, 5),
            ),
            (
                by("police-hru", header(supervised, EventType::SubjectRekeyed, 4)),
                rekeyed(1, 5),
            ),
            (
                by("police-hru", header(later, EventType::ReferralReceived, 5)),
                referral(5),
            ),
        ]);
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().all(|r| r.subject_ref == Some(hex::encode([5u8; 32]))));
    }

    #[test]
    fn a_subject_on_probation_brings_a_new_police_case_onto_the_caseload() {
        let (supervised, other, unrelated) = (CaseId::random(), CaseId::random(), CaseId::random());
        let rows = caseload(&[
            (
                by("probation", header(supervised, EventType::ReferralReceived, 1)),
                referral(1),
            ),
            (
                by("police-hru", header(other, EventType::ReferralReceived, 2)),
                referral(1),
            ),
            (
                by("police-hru", header(unrelated, EventType::ReferralReceived, 3)),
                referral(2),
            ),
        ]);
        let mut cases: Vec<&str> = rows.iter().map(|r| r.case_id.as_str()).collect();
        cases.sort_unstable();
        let mut want = [supervised.to_string(), other.to_string()];
        want.sort();
        assert_eq!(cases, want);
    }

    #[test]
    fn only_changes_of_overall_risk_are_listed() {
        let case = CaseId::random();
        let rows = caseload(&[
            (
                by("probation", header(case, EventType::ReferralReceived, 1)),
                referral(3),
            ),
            (
                by("cwp", header(case, EventType::RiskAssessed, 2)),
                risk(pb::RiskLevel::Medium, 2),
            ),
            (
                by("cwp", header(case, EventType::RiskAssessed, 3)),
                risk(pb::RiskLevel::Medium, 3),
            ),
            (
                by("probation", header(case, EventType::RiskAssessed, 4)),
                risk(pb::RiskLevel::High, 4),
            ),
        ]);
        let changes: Vec<(Option<&str>, &str, &str)> = rows[0]
            .risk_changes
            .iter()
            .map(|c| (c.from.as_deref(), c.to.as_str(), c.by.as_str()))
            .collect();
        assert_eq!(
            changes,
            [
                (None, "RISK_LEVEL_MEDIUM", "cwp"),
                (Some("RISK_LEVEL_MEDIUM"), "RISK_LEVEL_HIGH", "probation")
            ]
        );
    }
}
