//! Victim advocacy: per case, the victim, the safety plan, the alerts sent to the victim and the
//! contacts the Victims' Code makes due.
//!
//! Victims of stalking and domestic abuse have the Code's enhanced entitlements: they are told of
//! a charging decision, an order or the closing of the case within one working day, and are
//! contacted for a needs assessment within two working days of the referral. A safety-plan
//! update by the advocate is a contact: it discharges every obligation raised before it.
//! Working days are those of the agreement's `[hours]` (Monday to Friday in Europe/London, less
//! the England and Wales bank holidays it lists); under an agreement without `[hours]`, Monday to
//! Friday in Europe/London.

use hru_domain::{Breach, CaseEvent};
use hru_wire::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{Applied, Projection, Reader, Store, Write, put_json, read_json};

/// A victim alert: a proximity or exclusion breach the victim was warned of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VictimAlert {
    /// Breach episode id (hex).
    pub breach_id: String,
    /// Breach kind.
    pub kind: String,
    /// When the breach opened, Unix ms.
    pub at_ms: i64,
    /// Whether the control room acknowledged it.
    pub acknowledged: bool,
}

/// A contact the Victims' Code makes due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDue {
    /// What the victim must be told or offered.
    pub reason: String,
    /// The event that raised it, Unix ms.
    pub raised_at_ms: i64,
    /// When it falls due, Unix ms.
    pub due_at_ms: i64,
}

/// The victim's current safety plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// The plan.
    pub plan: String,
    /// Measures in place.
    pub measures: Vec<String>,
    /// When it was last updated, Unix ms.
    pub updated_at_ms: i64,
}

/// One case as victim advocacy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvocacyRow {
    /// Case id.
    pub case_id: String,
    /// The victim's name, from the referral or the advocate's own record.
    pub victim_name: Option<String>,
    /// The victim's paired device, if any.
    pub victim_device_id: Option<String>,
    /// Overall risk level of the latest assessment.
    pub risk_level: Option<String>,
    /// The current safety plan.
    pub safety_plan: Option<PlanSummary>,
    /// Alerts sent to the victim.
    pub alerts: Vec<VictimAlert>,
    /// Contacts still owed under the Victims' Code, soonest first.
    pub contacts_due: Vec<ContactDue>,
    /// The last contact (safety-plan update), Unix ms.
    pub last_contact_ms: Option<i64>,
}

impl AdvocacyRow {
    /// The contacts past their due date at `now_ms`.
    pub fn overdue(&self, now_ms: i64) -> impl Iterator<Item = &ContactDue> {
        self.contacts_due.iter().filter(move |c| c.due_at_ms < now_ms)
    }
}

/// The victim advocacy projection, counting working days by a calendar.
#[derive(Debug, Clone, Default)]
pub struct Advocacy {
    calendar: Option<std::sync::Arc<hru_policy::Hours>>,
}

impl Advocacy {
    /// Count working days by the agreement's `hours` (its days and bank holidays), or Monday to
    /// Friday in Europe/London without them.
    pub fn with_calendar(hours: Option<&hru_policy::Hours>) -> Self {
        Self {
            calendar: hours.cloned().map(std::sync::Arc::new),
        }
    }

    /// `n` working days after `ms` by this projection's calendar, at the same wall-clock time.
    pub fn working_days_after(&self, ms: i64, n: u32) -> i64 {
        match &self.calendar {
            Some(hours) => hours.working_days_after(ms, n),
            None => working_days_after(ms, n),
        }
    }
}

const PREFIX: &[u8] = b"advocacy/";

/// `n` working days (Monday to Friday, Europe/London) after `ms`, at the same wall-clock time.
pub fn working_days_after(ms: i64, n: u32) -> i64 {
    let Ok(tz) = jiff::tz::TimeZone::get("Europe/London") else {
        return ms + i64::from(n) * 86_400_000;
    };
    let Ok(start) = jiff::Timestamp::from_millisecond(ms) else {
        return ms;
    };
    let mut at = start.to_zoned(tz);
    let mut left = n;
    while left > 0 {
        let Ok(next) = at.checked_add(jiff::Span::new().days(1)) else {
            break;
        };
        at = next;
        if !matches!(
            at.weekday(),
            jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday
        ) {
            left -= 1;
        }
    }
    at.timestamp().as_millisecond()
}

fn owe(calendar: &Advocacy, row: &mut AdvocacyRow, reason: &str, raised_at_ms: i64, working_days: u32) {
    row.contacts_due.push(ContactDue {
        reason: reason.to_owned(),
        raised_at_ms,
        due_at_ms: calendar.working_days_after(raised_at_ms, working_days),
    });
}

impl Projection for Advocacy {
    fn name(&self) -> &'static str {
        "victim-advocacy"
    }

    fn version(&self) -> u32 {
        2
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        let Some(case) = e.header.case_id else {
            return Vec::new();
        };
        let case = case.to_string();
        let key = [PREFIX, case.as_bytes()].concat();
        let mut row: AdvocacyRow = read_json(state, &key).unwrap_or_else(|| AdvocacyRow {
            case_id: case.clone(),
            ..AdvocacyRow::default()
        });
        let at = e.header.occurred_at_ms;
        match e.event {
            CaseEvent::ReferralReceived { core, identity, .. } => {
                if let Some(victim) = identity.as_ref().and_then(|i| i.victim.as_ref()) {
                    row.victim_name = Some(victim.full_name.clone());
                }
                let received = core.as_ref().map_or(at, |c| c.received_at_ms);
                owe(self, &mut row, "needs assessment and referral to support", received, 2);
            }
            CaseEvent::RiskAssessed { summary: Some(r), .. } => {
                row.risk_level = Some(r.overall.as_str_name().to_owned())
            }
            CaseEvent::OrderIssued { core: Some(o) } => owe(
                self,
                &mut row,
                &format!("tell the victim of the order ({})", o.kind.as_str_name()),
                o.issued_at_ms,
                1,
            ),
            CaseEvent::ChargeDecided { core: Some(c) } => owe(
                self,
                &mut row,
                &format!(
                    "tell the victim of the charging decision ({})",
                    c.decision.as_str_name()
                ),
                c.decided_at_ms,
                1,
            ),
            CaseEvent::CaseClosed { core: Some(c) } => {
                owe(self, &mut row, "tell the victim the case is closed", c.closed_at_ms, 1)
            }
            CaseEvent::SafetyPlanUpdated { victim, identity, .. } => {
                if let Some(id) = identity {
                    row.victim_name = Some(id.victim.full_name.clone());
                    if let Some(device) = &id.victim_device_id {
                        row.victim_device_id = Some(device.to_string());
                    }
                }
                row.last_contact_ms = Some(row.last_contact_ms.map_or(at, |c| c.max(at)));
                row.contacts_due.retain(|c| c.raised_at_ms > at);
                if let Some(p) = victim {
                    row.safety_plan = Some(PlanSummary {
                        plan: p.plan.clone(),
                        measures: p.measures.clone(),
                        updated_at_ms: at,
                    });
                    if p.next_contact_due_ms > 0 {
                        row.contacts_due.push(ContactDue {
                            reason: "safety plan review".into(),
                            raised_at_ms: at,
                            due_at_ms: p.next_contact_due_ms,
                        });
                    }
                }
            }
            CaseEvent::TagBreach {
                core:
                    Some(Breach {
                        breach_id,
                        kind,
                        state,
                        opened_at_ms,
                        ..
                    }),
            } if matches!(kind, pb::BreachKind::Proximity | pb::BreachKind::Exclusion)
                && *state == pb::BreachState::Opened =>
            {
                let id = hex::encode(breach_id.as_bytes());
                if !row.alerts.iter().any(|a| a.breach_id == id) {
                    row.alerts.push(VictimAlert {
                        breach_id: id,
                        kind: kind.as_str_name().to_owned(),
                        at_ms: *opened_at_ms,
                        acknowledged: false,
                    });
                }
            }
            CaseEvent::BreachAcknowledged { core: Some(a), .. } => {
                let id = hex::encode(a.breach_id.as_bytes());
                for alert in row.alerts.iter_mut().filter(|x| x.breach_id == id) {
                    alert.acknowledged = true;
                }
            }
            _ => return Vec::new(),
        }
        row.contacts_due.sort_by_key(|c| (c.due_at_ms, c.reason.clone()));
        vec![put_json(key, &row)]
    }
}

/// One case as advocacy holds it, if it holds it.
pub fn advocacy_row(store: &Store, case: &str) -> Result<Option<AdvocacyRow>, crate::ProjectionError> {
    let key = [PREFIX, case.as_bytes()].concat();
    Ok(store
        .scan(&Advocacy::default(), &key)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| serde_json::from_slice(&v).ok()))
}

/// Every case advocacy holds, the soonest contact due first.
pub fn advocacy_rows(store: &Store) -> Result<Vec<AdvocacyRow>, crate::ProjectionError> {
    let mut rows: Vec<AdvocacyRow> = store
        .scan(&Advocacy::default(), PREFIX)?
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice(v).ok())
        .collect();
    rows.sort_by_key(|r| {
        (
            r.contacts_due.first().map_or(i64::MAX, |c| c.due_at_ms),
            r.case_id.clone(),
        )
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hru_domain::{Acknowledgement, CaseId, Charge, EventType, Referral, ReferralIdentity, SafetyPlan};

    use super::*;
    use crate::given::{fold, header};

    const FRI_2027_01_15_0800: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn row(events: &[(hru_domain::EventHeader, CaseEvent)]) -> AdvocacyRow {
        let mem = fold(&Advocacy::default(), events);
        let (_, v) = mem.0.iter().next().expect("a row");
        serde_json::from_slice(v).expect("json")
    }

    fn referral(at: i64) -> CaseEvent {
        CaseEvent::ReferralReceived {
            core: Some(Referral {
                subject_ref: [7; 32],
                behaviours: vec![pb::Behaviour::Stalking],
                area: "Warrington".into(),
                received_at_ms: at,
                out_of_hours: false,
                crime_reference: None,
            }),
            identity: Some(ReferralIdentity {
                subject: pb::PersonIdentity {
                    full_name: "Sam Subject".into(),
                    ..Default::default()
                },
                victim: Some(pb::PersonIdentity {
                    full_name: "Vic Tim".into(),
                    ..Default::default()
                }),
            }),
            narrative: None,
        }
    }

    #[test]
    fn working_days_skip_the_weekend_in_london() {
        // Friday 08:00 + 1 working day = Monday 08:00; + 2 = Tuesday.
        assert_eq!(
            working_days_after(FRI_2027_01_15_0800, 1),
            FRI_2027_01_15_0800 + 3 * DAY
        );
        assert_eq!(
            working_days_after(FRI_2027_01_15_0800, 2),
            FRI_2027_01_15_0800 + 4 * DAY
        );
        // Across the March change the wall-clock time holds: Fri 26 Mar 2027 09:00 GMT ->
        // Mon 29 Mar 09:00 BST, one hour less than three days.
        let fri = jiff::civil::date(2027, 3, 26)
            .at(9, 0, 0, 0)
            .in_tz("Europe/London")
            .expect("tz")
            .timestamp()
            .as_millisecond();
        assert_eq!(working_days_after(fri, 1), fri + 3 * DAY - 3_600_000);
    }

    /// Under the agreement's calendar the Code's working days skip the bank holidays it lists:
    /// a referral on Christmas Eve 2026 owes its needs assessment by Wednesday 30 December
    /// (Christmas Day, the weekend and Monday 28th, the substitute for Boxing Day, are not
    /// working days), not by Monday 28th as weekends alone would have it.
    #[test]
    fn working_days_skip_the_bank_holidays_the_agreement_lists() {
        let isa = hru_policy::CompiledIsa::compile(
            include_str!("../../../policies/cheshire-hru-v2.toml"),
            "cheshire-hru-v2.toml",
            None,
        )
        .expect("version 2 compiles");
        let london = |d: i8, h: i8| {
            jiff::civil::date(2026, 12, d)
                .at(h, 0, 0, 0)
                .in_tz("Europe/London")
                .expect("tz")
                .timestamp()
                .as_millisecond()
        };
        let case = CaseId::random();
        let given = [(
            header(case, EventType::ReferralReceived, london(24, 10)),
            referral(london(24, 10)),
        )];
        let due = |projection: &Advocacy| -> i64 {
            let mem = fold(projection, &given);
            let row: AdvocacyRow = serde_json::from_slice(mem.0.values().next().expect("a row")).expect("json");
            row.contacts_due[0].due_at_ms
        };
        assert_eq!(due(&Advocacy::with_calendar(isa.hours.as_ref())), london(30, 10));
        assert_eq!(due(&Advocacy::default()), london(28, 10), "weekends alone");
    }

    #[test]
    fn a_referral_owes_a_needs_assessment_and_a_safety_plan_discharges_it() {
        let case = CaseId::random();
        let r = row(&[(
            header(case, EventType::ReferralReceived, FRI_2027_01_15_0800),
            referral(FRI_2027_01_15_0800),
        )]);
        assert_eq!(r.victim_name.as_deref(), Some("Vic Tim"));
        assert_eq!(r.contacts_due.len(), 1);
        assert_eq!(r.contacts_due[0].due_at_ms, FRI_2027_01_15_0800 + 4 * DAY);
        assert_eq!(r.overdue(FRI_2027_01_15_0800 + 5 * DAY).count(), 1);

        let plan = CaseEvent::SafetyPlanUpdated {
            victim: Some(SafetyPlan {
                plan: "panic alarm, route changes".into(),
                measures: vec!["alarm".into()],
                next_contact_due_ms: FRI_2027_01_15_0800 + 14 * DAY,
            }),
            identity: None,
            figures: None,
        };
        let r = row(&[
            (
                header(case, EventType::ReferralReceived, FRI_2027_01_15_0800),
                referral(FRI_2027_01_15_0800),
            ),
            (
                header(case, EventType::SafetyPlanUpdated, FRI_2027_01_15_0800 + DAY),
                plan,
            ),
        ]);
        assert_eq!(r.last_contact_ms, Some(FRI_2027_01_15_0800 + DAY));
        let reasons: Vec<&str> = r.contacts_due.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(reasons, ["safety plan review"]);
        assert!(r.safety_plan.is_some());
    }

    #[test]
    fn a_charge_decision_is_owed_within_one_working_day_and_alerts_are_counted_once() {
        let case = CaseId::random();
        let breach_id = uuid::Uuid::from_u128(9);
        let breach = |state| CaseEvent::TagBreach {
            core: Some(Breach {
                breach_id,
                tag_id: "t1".parse().unwrap(),
                kind: pb::BreachKind::Proximity,
                state,
                rule_id: uuid::Uuid::from_u128(1),
                opened_at_ms: FRI_2027_01_15_0800,
                observed_at_ms: FRI_2027_01_15_0800,
                position: None,
                accuracy_m: 5.0,
                distance_m: 90.0,
                late: false,
                evidence: None,
            }),
        };
        let r = row(&[
            (
                header(case, EventType::ChargeDecided, FRI_2027_01_15_0800),
                CaseEvent::ChargeDecided {
                    core: Some(Charge {
                        decision: pb::ChargeDecision::Charged,
                        offence: "stalking".into(),
                        decided_at_ms: FRI_2027_01_15_0800,
                    }),
                },
            ),
            (
                header(case, EventType::TagBreach, FRI_2027_01_15_0800),
                breach(pb::BreachState::Opened),
            ),
            (
                header(case, EventType::TagBreach, FRI_2027_01_15_0800),
                breach(pb::BreachState::Opened),
            ),
            (
                header(case, EventType::TagBreach, FRI_2027_01_15_0800),
                breach(pb::BreachState::Closed),
            ),
            (
                header(case, EventType::BreachAcknowledged, FRI_2027_01_15_0800),
                CaseEvent::BreachAcknowledged {
                    core: Some(Acknowledgement {
                        breach_id,
                        operator: "op".into(),
                        action: "units sent".into(),
                        response_time_ms: 40_000,
                    }),
                    figures: None,
                },
            ),
        ]);
        assert_eq!(r.contacts_due[0].due_at_ms, FRI_2027_01_15_0800 + 3 * DAY);
        assert!(r.contacts_due[0].reason.contains("CHARGE_DECISION_CHARGED"));
        assert_eq!(r.alerts.len(), 1);
        assert!(r.alerts[0].acknowledged);
    }
}
