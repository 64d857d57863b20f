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

    fn projection(self, calendar: Option<&hru_policy::Hours>) -> Box<dyn Projection> {
        match self {
            View::CaseBoard | View::ScreeningQueue => Box::new(CaseBoard),
            View::ReviewSchedule => Box::new(ReviewSchedule),
            View::Advocacy => Box::new(Advocacy::with_calendar(calendar)),
            View::ProbationCaseload => Box::new(ProbationCaseload),
            View::Outcomes => Box::new(Evaluation),
            View::BreachBoard | View::Coverage => Box::new(BreachBoard),
        }
    }

    /// The projections behind `views`, each once; working days (the Victims' Code's) counted by
    /// `calendar`, the agreement's `[hours]`.
    pub fn projections(views: &[View], calendar: Option<&hru_policy::Hours>) -> Vec<Box<dyn Projection>> {
        let mut out: Vec<Box<dyn Projection>> = Vec::new();
        for v in views {
            let p = v.projection(calendar);
            if !out.iter().any(|q| q.name() == p.name()) {
                out.push(p);
            }
        }
        out
    }

    /// The view's rows at `now_ms`: (case, JSON); `delivery_units` groups probation's caseload.
    pub fn rows(
        self,
        store: &Store,
        now_ms: i64,
        delivery_units: &std::collections::BTreeMap<String, Vec<String>>,
    ) -> Result<Vec<(CaseId, String)>, ProjectionError> {
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
            View::ProbationCaseload => {
                let by_unit: Vec<serde_json::Value> = grouped_by_unit(
                    hru_projection::probation_caseload(store)?,
                    delivery_units,
                )
                .into_iter()
                .map(|(unit, r)| serde_json::json!({"case_id": r.case_id.clone(), "delivery_unit": unit, "row": &r}))
                .collect();
                rows(by_unit, |v| v["case_id"].as_str().unwrap_or_default())
            }
            View::Outcomes => rows(hru_projection::outcome_rows(store, now_ms)?, |r| &r.case_id),
            View::BreachBoard => rows(hru_projection::breach_board(store)?, |r| &r.case_id),
            View::Coverage => rows(hru_projection::coverage_rows(store)?, |r| &r.case_id),
        })
    }
}

/// Probation's caseload by delivery unit: each row with the unit its referral's area belongs to
/// (`unassigned` when no unit lists the area), units in name order and unassigned last, the
/// caseload's own order within each.
pub fn grouped_by_unit(
    caseload: Vec<hru_projection::ProbationRow>,
    delivery_units: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<(String, hru_projection::ProbationRow)> {
    let unit_of = |area: Option<&str>| {
        let area = area?.trim().to_lowercase();
        delivery_units
            .iter()
            .find(|(_, areas)| areas.iter().any(|a| a.trim().to_lowercase() == area))
            .map(|(unit, _)| unit.clone())
    };
    let mut rows: Vec<(Option<String>, usize, hru_projection::ProbationRow)> = caseload
        .into_iter()
        .enumerate()
        .map(|(i, r)| (unit_of(r.area.as_deref()), i, r))
        .collect();
    rows.sort_by(|a, b| (a.0.is_none(), &a.0, a.1).cmp(&(b.0.is_none(), &b.0, b.1)));
    rows.into_iter()
        .map(|(unit, _, r)| (unit.unwrap_or_else(|| "unassigned".into()), r))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn probations_caseload_is_grouped_by_delivery_unit() {
        let row = |case: &str, area: Option<&str>| hru_projection::ProbationRow {
            case_id: case.into(),
            area: area.map(Into::into),
            ..Default::default()
        };
        let units = std::collections::BTreeMap::from([
            ("North".to_owned(), vec!["Warrington".to_owned(), "Halton".to_owned()]),
            ("East".to_owned(), vec!["Cheshire East".to_owned()]),
            ("West".to_owned(), vec!["Cheshire West and Chester".to_owned()]),
        ]);
        let caseload = vec![
            row("c1", Some("Halton")),
            row("c2", Some("Chester Zoo")),
            row("c3", Some("cheshire east")),
            row("c4", Some("Warrington")),
            row("c5", None),
            row("c6", Some("Cheshire West and Chester")),
        ];
        let grouped: Vec<(String, String)> = grouped_by_unit(caseload, &units)
            .into_iter()
            .map(|(u, r)| (u, r.case_id))
            .collect();
        let expected = [
            ("East", "c3"),
            ("North", "c1"),
            ("North", "c4"),
            ("West", "c6"),
            ("unassigned", "c2"),
            ("unassigned", "c5"),
        ];
        assert_eq!(
            grouped,
            expected.map(|(u, c)| (u.to_owned(), c.to_owned())),
            "units in order, the caseload's order within each, unknown areas last"
        );
    }
}
