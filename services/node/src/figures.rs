//! What the node writes into an event itself, never the caller: whether a referral arrived out
//! of the unit's hours (from the agreement's `[hours]`), and the `figures` sections an
//! evaluation counts — numbers only, no text, no identity — where the agreement in force
//! shares them.

use hru_domain::{CaseId, EventType, PartyId};
use hru_envelope::AudiencePolicy as _;
use hru_policy::CompiledIsa;
use hru_wire::v1 as pb;
use pb::event_draft::Event;
use tonic::Status;

/// Refuse a draft that carries a section only the node writes.
pub(crate) fn refuse_supplied(event: &Event) -> Result<(), Status> {
    let supplied = match event {
        Event::ScreeningCompleted(e) => e.figures.is_some().then_some("ScreeningCompleted"),
        Event::ReviewRecorded(e) => e.figures.is_some().then_some("ReviewRecorded"),
        Event::SafetyPlanUpdated(e) => e.figures.is_some().then_some("SafetyPlanUpdated"),
        Event::BreachAcknowledged(e) => e.figures.is_some().then_some("BreachAcknowledged"),
        _ => None,
    };
    match supplied {
        Some(t) => Err(Status::invalid_argument(format!(
            "field `draft.{t}.figures` is written by the node from the event's other sections; leave it unset"
        ))),
        None => Ok(()),
    }
}

/// The Victims' Code contacts a contact at `at_ms` discharges on `case`, from the node's
/// advocacy view: (discharged, late).
pub(crate) fn contacts_discharged(store: &hru_projection::Store, case: CaseId, at_ms: i64) -> (u32, u32) {
    let Ok(Some(row)) = hru_projection::advocacy_row(store, &case.to_string()) else {
        return (0, 0);
    };
    let owed: Vec<_> = row.contacts_due.iter().filter(|c| c.raised_at_ms <= at_ms).collect();
    let late = owed.iter().filter(|c| c.due_at_ms < at_ms).count();
    (
        u32::try_from(owed.len()).unwrap_or(u32::MAX),
        u32::try_from(late).unwrap_or(u32::MAX),
    )
}

/// Write what the node derives into `event`, recorded by `party` at `occurred_ms` under `isa`;
/// `contacts` counts the contacts a safety-plan update discharges (only asked for those).
pub(crate) fn derive(
    isa: &CompiledIsa,
    party: &PartyId,
    event: &mut Event,
    occurred_ms: i64,
    contacts: impl FnOnce() -> (u32, u32),
) {
    let shares = |t: EventType| isa.audience(party, t, "figures").is_ok();
    match event {
        Event::ReferralReceived(e) => {
            if let (Some(hours), Some(core)) = (&isa.hours, e.core.as_mut()) {
                core.out_of_hours = hours.out_of_hours(core.received_at_ms);
            }
        }
        Event::ScreeningCompleted(e) if shares(EventType::ScreeningCompleted) => {
            e.figures = e.core.as_ref().map(|c| pb::ScreeningFigures {
                primacy_taken: c.primacy_taken,
                criteria_met: u32::try_from(c.criteria.len()).unwrap_or(u32::MAX),
                screened_at_ms: occurred_ms,
            });
        }
        Event::ReviewRecorded(e) if shares(EventType::ReviewRecorded) => {
            e.figures = e.summary.as_ref().map(|s| pb::ReviewFigures {
                review_number: s.review_number,
                due_at_ms: s.due_at_ms,
                held_at_ms: s.held_at_ms,
            });
        }
        Event::SafetyPlanUpdated(e) if shares(EventType::SafetyPlanUpdated) => {
            let (discharged, late) = contacts();
            e.figures = Some(pb::ContactFigures {
                contacted_at_ms: occurred_ms,
                discharged,
                late,
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const V1: &str = include_str!("../../../policies/cheshire-hru.toml");
    const V2: &str = include_str!("../../../policies/cheshire-hru-v2.toml");

    fn referral(received_at_ms: i64, out_of_hours: bool) -> Event {
        Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                subject_ref: vec![1; 32],
                behaviours: vec![pb::Behaviour::Stalking as i32],
                area: "Crewe".into(),
                received_at_ms,
                out_of_hours,
                crime_reference: String::new(),
            }),
            identity: None,
            narrative: None,
        })
    }

    fn screening() -> Event {
        Event::ScreeningCompleted(pb::ScreeningCompleted {
            core: Some(pb::ScreeningCore {
                primacy_taken: true,
                criteria: vec!["fixated".into(), "repeated".into()],
                rationale: "names the victim".into(),
            }),
            figures: None,
        })
    }

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn the_node_decides_out_of_hours_by_the_agreements_hours_whatever_the_caller_says() {
        let v2 = CompiledIsa::compile(V2, "v2", None).unwrap();
        let police: PartyId = "police-hru".parse().unwrap();
        let out_of_hours = |at: &str, said: bool| {
            let mut e = referral(ms(at), said);
            derive(&v2, &police, &mut e, ms(at), || (0, 0));
            match e {
                Event::ReferralReceived(r) => r.core.unwrap().out_of_hours,
                _ => unreachable!(),
            }
        };
        // Thursday 10:00 in London, said out of hours: in hours.
        assert!(!out_of_hours("2026-12-03T10:00:00Z", true));
        // Saturday, Christmas Day 2025, a weekday evening, said in hours: out of hours.
        assert!(out_of_hours("2026-12-05T10:00:00Z", false));
        assert!(out_of_hours("2025-12-25T10:00:00Z", false));
        assert!(out_of_hours("2026-12-03T17:30:00Z", false));
        // Version 1 states no hours: what the caller says is kept.
        let v1 = CompiledIsa::compile(V1, "v1", None).unwrap();
        let mut e = referral(ms("2026-12-05T10:00:00Z"), false);
        derive(&v1, &police, &mut e, 0, || (0, 0));
        assert!(matches!(e, Event::ReferralReceived(r) if r.core.as_ref().is_some_and(|c| !c.out_of_hours)));
    }

    #[test]
    fn figures_are_written_only_where_the_agreement_shares_them_and_never_taken_from_the_caller() {
        let police: PartyId = "police-hru".parse().unwrap();
        let v2 = CompiledIsa::compile(V2, "v2", None).unwrap();
        let mut e = screening();
        derive(&v2, &police, &mut e, 1_800_000_000_000, || (0, 0));
        let Event::ScreeningCompleted(s) = &e else {
            unreachable!()
        };
        assert_eq!(
            s.figures,
            Some(pb::ScreeningFigures {
                primacy_taken: true,
                criteria_met: 2,
                screened_at_ms: 1_800_000_000_000
            })
        );
        let v1 = CompiledIsa::compile(V1, "v1", None).unwrap();
        let mut e = screening();
        derive(&v1, &police, &mut e, 1_800_000_000_000, || (0, 0));
        assert!(
            matches!(e, Event::ScreeningCompleted(s) if s.figures.is_none()),
            "v1 cannot seal figures"
        );
        // A caller's own figures are refused, naming the field.
        let mut forged = screening();
        if let Event::ScreeningCompleted(s) = &mut forged {
            s.figures = Some(pb::ScreeningFigures::default());
        }
        let refused = refuse_supplied(&forged).unwrap_err();
        assert!(
            refused.message().contains("draft.ScreeningCompleted.figures"),
            "{}",
            refused.message()
        );
        assert!(refuse_supplied(&screening()).is_ok());
    }
}
