//! Typed domain of the HRU backbone: ids, event types and their sections, headers, and the
//! fallible conversions from wire messages that name the missing or bad field.
//!
//! No I/O and no async here: everything is data in, data (or a [`FieldError`]) out.

mod error;
mod event_type;
mod events;
mod header;
mod ids;
mod referral;
mod retention;

pub mod zone;

pub use error::FieldError;
pub use event_type::{EventType, PlainSection, join_sections, split_draft};
pub use events::{
    Access, Acknowledgement, AcknowledgementFigures, Breach, CaseEvent, Charge, Closure, ContactFigures, Intervention,
    Narrative, Order, ProximityRule, Rekeying, Reoffence, Review, ReviewFigures, RiskSummary, SafetyPlan, Screening,
    ScreeningFigures, Tag, VictimIdentity, WeeklyWindow, Zone, ZoneRevocation, carried_reference,
};
pub use header::{EventHeader, ProducerId};
pub use ids::{AudienceId, CaseId, DeviceId, Digest, EventId, KeyId, PartyId, TagId};
pub use referral::{Referral, ReferralIdentity};
pub use retention::Retention;
