//! The clinical review schedule: after a completed therapeutic intervention, a review falls due
//! every quarter for twelve months; each is held, due (within two weeks) or overdue.

use hru_domain::CaseEvent;
use hru_wire::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{Applied, Projection, Reader, Store, Write, put_json, read_json};

/// One scheduled review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledReview {
    /// Case id.
    pub case_id: String,
    /// Review number, 1 to 4.
    pub review_number: u32,
    /// When it falls due, Unix ms.
    pub due_at_ms: i64,
    /// When it was held, if it was.
    pub held_at_ms: Option<i64>,
}

/// Where a review stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReviewStatus {
    /// Held.
    Held,
    /// Past its due date and not held.
    Overdue,
    /// Due within the next two weeks.
    Due,
    /// Later.
    Scheduled,
}

/// Reviews per completed therapeutic intervention: quarterly for twelve months.
pub const REVIEWS: u32 = 4;
const DAY_MS: i64 = 86_400_000;
/// How far ahead a review counts as due.
pub const DUE_WINDOW_MS: i64 = 14 * DAY_MS;

/// The clinical review schedule projection.
pub struct ReviewSchedule;

fn key(case: &str, n: u32) -> Vec<u8> {
    format!("review/{case}/{n}").into_bytes()
}

/// The date `months` calendar months after `ms` (UTC), as Unix ms.
fn months_after(ms: i64, months: i64) -> i64 {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .and_then(|t| {
            t.to_zoned(jiff::tz::TimeZone::UTC)
                .checked_add(jiff::Span::new().months(months))
                .ok()
        })
        .map_or(ms + months * 30 * DAY_MS, |z| z.timestamp().as_millisecond())
}

/// When review `n` (1 to [`REVIEWS`]) falls due after a therapeutic intervention completed at
/// `completed_ms`: every quarter, Unix ms.
pub fn review_due_at_ms(completed_ms: i64, n: u32) -> i64 {
    months_after(completed_ms, 3 * i64::from(n))
}

impl Projection for ReviewSchedule {
    fn name(&self) -> &'static str {
        "clinical-review-schedule"
    }

    fn version(&self) -> u32 {
        1
    }

    fn apply(&self, state: &dyn Reader, e: &Applied<'_>) -> Vec<Write> {
        let Some(case) = e.header.case_id else {
            return Vec::new();
        };
        let case = case.to_string();
        match e.event {
            CaseEvent::InterventionCompleted { core: Some(i) } if i.kind == pb::InterventionKind::Therapeutic => (1
                ..=REVIEWS)
                .map(|n| {
                    let review = ScheduledReview {
                        case_id: case.clone(),
                        review_number: n,
                        due_at_ms: review_due_at_ms(i.at_ms, n),
                        held_at_ms: None,
                    };
                    put_json(key(&case, n), &review)
                })
                .collect(),
            CaseEvent::ReviewRecorded { summary: Some(r), .. } => {
                let k = key(&case, r.review_number);
                let Some(mut review) = read_json::<ScheduledReview>(state, &k) else {
                    return Vec::new();
                };
                review.held_at_ms = Some(r.held_at_ms);
                vec![put_json(k, &review)]
            }
            _ => Vec::new(),
        }
    }
}

impl ScheduledReview {
    /// Where the review stands at `now_ms`.
    pub fn status(&self, now_ms: i64) -> ReviewStatus {
        match self.held_at_ms {
            Some(_) => ReviewStatus::Held,
            None if self.due_at_ms < now_ms => ReviewStatus::Overdue,
            None if self.due_at_ms <= now_ms + DUE_WINDOW_MS => ReviewStatus::Due,
            None => ReviewStatus::Scheduled,
        }
    }
}

/// Every scheduled review, soonest first.
pub fn review_schedule(store: &Store) -> Result<Vec<ScheduledReview>, crate::ProjectionError> {
    let mut reviews: Vec<ScheduledReview> = store
        .scan(&ReviewSchedule, b"review/")?
        .iter()
        .filter_map(|(_, v)| serde_json::from_slice(v).ok())
        .collect();
    reviews.sort_by_key(|r| (r.due_at_ms, r.case_id.clone(), r.review_number));
    Ok(reviews)
}

#[cfg(test)]
mod tests {
    use hru_domain::{CaseId, EventHeader, EventType, Intervention, Review};

    use super::*;

    fn header(case: CaseId, t: EventType) -> EventHeader {
        crate::given::header(case, t, 1)
    }

    fn fold(events: &[(EventHeader, CaseEvent)]) -> Vec<ScheduledReview> {
        crate::given::fold(&ReviewSchedule, events)
            .0
            .values()
            .filter_map(|v| serde_json::from_slice(v).ok())
            .collect()
    }

    const JAN_15_2027: i64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z

    fn completed(kind: pb::InterventionKind) -> CaseEvent {
        CaseEvent::InterventionCompleted {
            core: Some(Intervention {
                intervention_id: uuid::Uuid::nil(),
                kind,
                at_ms: JAN_15_2027,
                outcome: Some("completed".into()),
            }),
        }
    }

    #[test]
    fn a_completed_therapeutic_intervention_schedules_four_quarterly_reviews() {
        let case = CaseId::random();
        let reviews = fold(&[(
            header(case, EventType::InterventionCompleted),
            completed(pb::InterventionKind::Therapeutic),
        )]);
        assert_eq!(reviews.len(), 4);
        let months: Vec<String> = reviews
            .iter()
            .map(|r| {
                jiff::Timestamp::from_millisecond(r.due_at_ms)
                    .map(|t| t.strftime("%Y-%m-%d").to_string())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(months, ["2027-04-15", "2027-07-15", "2027-10-15", "2028-01-15"]);
        assert_eq!(reviews[0].status(JAN_15_2027), ReviewStatus::Scheduled);
        assert_eq!(reviews[0].status(reviews[0].due_at_ms - DAY_MS), ReviewStatus::Due);
        assert_eq!(reviews[0].status(reviews[0].due_at_ms + DAY_MS), ReviewStatus::Overdue);
    }

    #[test]
    fn a_recorded_review_is_held_and_other_interventions_schedule_nothing() {
        let case = CaseId::random();
        let held = CaseEvent::ReviewRecorded {
            summary: Some(Review {
                review_number: 1,
                due_at_ms: 1,
                held_at_ms: JAN_15_2027 + 90 * DAY_MS,
                outcome: "stable".into(),
            }),
            clinical: None,
            figures: None,
        };
        let reviews = fold(&[
            (
                header(case, EventType::InterventionCompleted),
                completed(pb::InterventionKind::Therapeutic),
            ),
            (header(case, EventType::ReviewRecorded), held),
        ]);
        let first = reviews
            .iter()
            .find(|r| r.review_number == 1)
            .unwrap_or_else(|| unreachable!());
        assert_eq!(first.status(JAN_15_2027 + 400 * DAY_MS), ReviewStatus::Held);
        assert!(
            fold(&[(
                header(case, EventType::InterventionCompleted),
                completed(pb::InterventionKind::Legal)
            )])
            .is_empty()
        );
    }
}
