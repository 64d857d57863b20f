//! Projections (DESIGN §9): a projection is a named, versioned fold of the log. `apply` is pure:
//! it reads the projection's state and returns writes; the store commits those writes together
//! with the stream sequence they reach in one sled transaction, so a crash never applies an
//! event twice or skips one. A digest over keys and values proves a rebuild equals the live
//! state.

mod advocacy;
mod breaches;
mod case_board;
mod evaluation;
#[cfg(test)]
mod given;
mod probation;
mod reviews;
mod store;

pub use advocacy::{
    Advocacy, AdvocacyRow, ContactDue, PlanSummary, VictimAlert, advocacy_row, advocacy_rows, working_days_after,
};
pub use breaches::{BreachBoard, BreachRow, CoverageRow, Watch, breach, breach_board, coverage_rows};
pub use case_board::{CaseBoard, CaseRow, ScreeningItem, screening_queue};
pub use evaluation::{Acknowledged, Evaluation, OutcomeRow, ReviewHeld, Screened, outcome_rows};
pub use probation::{ProbationCaseload, ProbationRow, RiskChange, probation_caseload};
pub use reviews::{
    DUE_WINDOW_MS, REVIEWS, ReviewSchedule, ReviewStatus, ScheduledReview, review_due_at_ms, review_schedule,
};
pub use store::{
    Applied, LogItem, Projection, ProjectionError, Projector, Reader, Store, Write, open_typed, put_json, read_json,
};
