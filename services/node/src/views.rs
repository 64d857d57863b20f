//! The views a node serves through `CaseService.ListCases`, by the role of its party, and the
//! projections behind them.

use hru_domain::CaseId;
use hru_policy::Role;
use hru_projection::{
    Advocacy, BreachBoard, CaseBoard, Evaluation, ProbationCaseload, Projection, ProjectionError, ReviewSchedule, Store,
};
use serde::Serialize;

/// A queryable view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The police case board.
    CaseBoard,
    /// Stalking referrals awaiting screening, those past 24 h overdue and first.
    ScreeningQueue,
    /// The clinical review schedule.
    ReviewSchedule,
    /// Victim advocacy: victims, safety plans, alerts, contacts due.
    Advocacy,
    /// Cases whose subject is on probation, with risk changes.
    ProbationCaseload,
    /// Pseudonymous evaluation outcomes.
    Outcomes,
    /// Breach episodes and their acknowledgements.
    BreachBoard,
    /// Each fitted tag: monitored, degraded or blind, and since when.
    Coverage,
}

impl View {
    /// Every view, with its name and the roles that hold it.
    pub const ALL: [(View, &'static str, &'static [Role]); 8] = [
        (View::CaseBoard, "case-board", &[Role::Police]),
        (View::ScreeningQueue, "screening-queue", &[Role::Police]),
        (
            View::ReviewSchedule,
            "review-schedule",
            &[Role::Police, Role::Probation, Role::Health],
        ),
        (View::Advocacy, "advocacy", &[Role::Advocacy]),
        (View::ProbationCaseload, "probation-caseload", &[Role::Probation]),
        (View::Outcomes, "outcomes", &[Role::Evaluation]),
        (View::BreachBoard, "breach-board", &[Role::Police, Role::ControlRoom]),
        (View::Coverage, "coverage", &[Role::Police, Role::ControlRoom]),
    ];

    /// The view's name in `ListCasesRequest.view`.
    pub fn name(self) -> &'static str {
        View::ALL.iter().find(|(v, ..)| *v == self).map_or("?", |(_, n, _)| n)
    }

    /// The views a party of `role` holds.
    pub fn for_role(role: Role) -> Vec<View> {
        View::ALL
            .iter()
            .filter(|(_, _, roles)| roles.contains(&role))
            .map(|(v, ..)| *v)
            .collect()
    }

    /// The view called `name` among `held`, or an error listing what is held.
    pub fn find(name: &str, held: &[View]) -> Result<View, String> {
        held.iter().copied().find(|v| v.name() == name).ok_or_else(|| {
            let names: Vec<&str> = held.iter().map(|v| v.name()).collect();
            format!("field `view`: {name:?} is not a view of this node; use one of {names:?}")
        })
    }

    fn projection(self) -> Box<dyn Projection> {
        match self {
            View::CaseBoard | View::ScreeningQueue => Box::new(CaseBoard),
            View::ReviewSchedule => Box::new(ReviewSchedule),
            View::Advocacy => Box::new(Advocacy),
            View::ProbationCaseload => Box::new(ProbationCaseload),
            View::Outcomes => Box::new(Evaluation),
            View::BreachBoard | View::Coverage => Box::new(BreachBoard),
        }
    }

    /// The projections behind `views`, each once.
    pub fn projections(views: &[View]) -> Vec<Box<dyn Projection>> {
        let mut out: Vec<Box<dyn Projection>> = Vec::new();
        for v in views {
            let p = v.projection();
            if !out.iter().any(|q| q.name() == p.name()) {
                out.push(p);
            }
        }
        out
    }

    /// The view's rows at `now_ms`: (case, JSON).
    pub fn rows(self, store: &Store, now_ms: i64) -> Result<Vec<(CaseId, String)>, ProjectionError> {
        fn rows<T: Serialize>(items: Vec<T>, case: impl Fn(&T) -> &str) -> Vec<(CaseId, String)> {
            items
                .iter()
                .filter_map(|r| Some((case(r).parse().ok()?, serde_json::to_string(r).ok()?)))
                .collect()
        }
        Ok(match self {
            View::CaseBoard => rows(CaseBoard::rows(store)?, |r| &r.case_id),
            View::ScreeningQueue => rows(hru_projection::screening_queue(store, now_ms)?, |r| &r.case_id),
            View::ReviewSchedule => {
                let with_status: Vec<serde_json::Value> = hru_projection::review_schedule(store)?
                    .into_iter()
                    .map(
                        |r| serde_json::json!({"case_id": r.case_id.clone(), "review": &r, "status": r.status(now_ms)}),
                    )
                    .collect();
                rows(with_status, |v| v["case_id"].as_str().unwrap_or_default())
            }
            View::Advocacy => {
                let with_overdue: Vec<serde_json::Value> = hru_projection::advocacy_rows(store)?
                    .into_iter()
                    .map(|r| {
                        let overdue: Vec<_> = r.overdue(now_ms).cloned().collect();
                        serde_json::json!({"case_id": r.case_id.clone(), "row": &r, "overdue": overdue})
                    })
                    .collect();
                rows(with_overdue, |v| v["case_id"].as_str().unwrap_or_default())
            }
            View::ProbationCaseload => rows(hru_projection::probation_caseload(store)?, |r| &r.case_id),
            View::Outcomes => rows(hru_projection::outcome_rows(store, now_ms)?, |r| &r.case_id),
            View::BreachBoard => rows(hru_projection::breach_board(store)?, |r| &r.case_id),
            View::Coverage => rows(hru_projection::coverage_rows(store)?, |r| &r.case_id),
        })
    }
}
