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
