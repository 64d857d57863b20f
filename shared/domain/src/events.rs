//! Typed case events: each section of each event type as a validated domain value, converted
//! from its wire message with errors that name the field. A reader holds `Some` for the
//! sections it could open and `None` for the rest.

use hru_wire::v1 as pb;

use crate::ids::{DeviceId, TagId};
use crate::{FieldError, Referral, ReferralIdentity};

fn id16(bytes: &[u8], field: &str) -> Result<uuid::Uuid, FieldError> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| FieldError::new(field, format!("must be 16 bytes, got {}", bytes.len())))?;
    Ok(uuid::Uuid::from_bytes(raw))
}

fn time(ms: i64, field: &str) -> Result<i64, FieldError> {
    if ms <= 0 {
        return Err(FieldError::new(field, "must be a positive Unix time in ms"));
    }
    Ok(ms)
}

fn text(s: String, field: &str) -> Result<String, FieldError> {
    if s.trim().is_empty() {
        return Err(FieldError::missing(field));
    }
    Ok(s)
}

fn optional(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

fn tag(s: String, field: &str) -> Result<TagId, FieldError> {
    TagId::parse(&s, field)
}

fn victim_device(s: String, field: &str) -> Result<DeviceId, FieldError> {
    DeviceId::parse(&s, field)
}

fn metres(m: f64, field: &str) -> Result<f64, FieldError> {
    if !m.is_finite() || m < 0.0 {
        return Err(FieldError::new(
            field,
            format!("must be a finite, non-negative distance in metres, got {m}"),
        ));
    }
    Ok(m)
}

/// Decode a proto enum field, refusing unknown values and the `UNSPECIFIED` zero.
fn known<E: TryFrom<i32> + Default + PartialEq>(value: i32, field: &str) -> Result<E, FieldError> {
    match E::try_from(value) {
        Ok(e) if e != E::default() => Ok(e),
        _ => Err(FieldError::new(
            field,
            format!("{value} is not a known value (set one of the named values)"),
        )),
    }
}

/// A screening decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Screening {
    /// Whether the HRU takes primacy.
    pub primacy_taken: bool,
    /// Criteria met.
    pub criteria: Vec<String>,
    /// Rationale.
    pub rationale: String,
}

impl TryFrom<pb::ScreeningCore> for Screening {
    type Error = FieldError;
    fn try_from(w: pb::ScreeningCore) -> Result<Self, FieldError> {
        let pb::ScreeningCore {
            primacy_taken,
            criteria,
            rationale,
        } = w;
        Ok(Self {
            primacy_taken,
            criteria,
            rationale: text(rationale, "rationale")?,
        })
    }
}

/// A screening decision as numbers (section `figures`, written by the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScreeningFigures {
    /// Whether the HRU takes primacy.
    pub primacy_taken: bool,
    /// How many criteria were met.
    pub criteria_met: u32,
    /// When it was recorded, Unix ms.
    pub screened_at_ms: i64,
}

impl TryFrom<pb::ScreeningFigures> for ScreeningFigures {
    type Error = FieldError;
    fn try_from(w: pb::ScreeningFigures) -> Result<Self, FieldError> {
        let pb::ScreeningFigures {
            primacy_taken,
            criteria_met,
            screened_at_ms,
        } = w;
        Ok(Self {
            primacy_taken,
            criteria_met,
            screened_at_ms: time(screened_at_ms, "screened_at_ms")?,
        })
    }
}

impl From<ScreeningFigures> for pb::ScreeningFigures {
    fn from(f: ScreeningFigures) -> Self {
        Self {
            primacy_taken: f.primacy_taken,
            criteria_met: f.criteria_met,
            screened_at_ms: f.screened_at_ms,
        }
    }
}

/// A review's number and dates (section `figures`, written by the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewFigures {
    /// Review number after intervention.
    pub review_number: u32,
    /// When it was due, Unix ms.
    pub due_at_ms: i64,
    /// When it was held, Unix ms.
    pub held_at_ms: i64,
}

impl TryFrom<pb::ReviewFigures> for ReviewFigures {
    type Error = FieldError;
    fn try_from(w: pb::ReviewFigures) -> Result<Self, FieldError> {
        let pb::ReviewFigures {
            review_number,
            due_at_ms,
            held_at_ms,
        } = w;
        Ok(Self {
            review_number,
            due_at_ms: time(due_at_ms, "due_at_ms")?,
            held_at_ms: time(held_at_ms, "held_at_ms")?,
        })
    }
}

impl From<ReviewFigures> for pb::ReviewFigures {
    fn from(f: ReviewFigures) -> Self {
        Self {
            review_number: f.review_number,
            due_at_ms: f.due_at_ms,
            held_at_ms: f.held_at_ms,
        }
    }
}

/// How fast a breach was acknowledged (section `figures`, written by the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcknowledgementFigures {
    /// Kind of the breach.
    pub kind: pb::BreachKind,
    /// Breach to acknowledgement, ms.
    pub response_time_ms: i64,
}

impl TryFrom<pb::AcknowledgementFigures> for AcknowledgementFigures {
    type Error = FieldError;
    fn try_from(w: pb::AcknowledgementFigures) -> Result<Self, FieldError> {
        let pb::AcknowledgementFigures { kind, response_time_ms } = w;
        if response_time_ms < 0 {
            return Err(FieldError::new("response_time_ms", "must not be negative"));
        }
        Ok(Self {
            kind: known(kind, "kind")?,
            response_time_ms,
        })
    }
}

impl From<AcknowledgementFigures> for pb::AcknowledgementFigures {
    fn from(f: AcknowledgementFigures) -> Self {
        Self {
            kind: f.kind.into(),
            response_time_ms: f.response_time_ms,
        }
    }
}

/// The Victims' Code contacts one contact discharged (section `figures`, written by the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactFigures {
    /// When the victim was contacted, Unix ms.
    pub contacted_at_ms: i64,
    /// Contacts due that it discharged.
    pub discharged: u32,
    /// Of those, how many were late.
    pub late: u32,
}

impl TryFrom<pb::ContactFigures> for ContactFigures {
    type Error = FieldError;
    fn try_from(w: pb::ContactFigures) -> Result<Self, FieldError> {
        let pb::ContactFigures {
            contacted_at_ms,
            discharged,
            late,
        } = w;
        if late > discharged {
            return Err(FieldError::new(
                "late",
                format!("{late} is more than the {discharged} discharged"),
            ));
        }
        Ok(Self {
            contacted_at_ms: time(contacted_at_ms, "contacted_at_ms")?,
            discharged,
            late,
        })
    }
}

impl From<ContactFigures> for pb::ContactFigures {
    fn from(f: ContactFigures) -> Self {
        Self {
            contacted_at_ms: f.contacted_at_ms,
            discharged: f.discharged,
            late: f.late,
        }
    }
}

/// Risk levels of a structured assessment.
#[derive(Debug, Clone, PartialEq)]
pub struct RiskSummary {
    /// Tool used.
    pub tool: String,
    /// Violence.
    pub violence: pb::RiskLevel,
    /// Persistence.
    pub persistence: pb::RiskLevel,
    /// Recurrence.
    pub recurrence: pb::RiskLevel,
    /// Psychosocial harm.
    pub psychosocial_harm: pb::RiskLevel,
    /// Escalation.
    pub escalation: pb::RiskLevel,
    /// Overall.
    pub overall: pb::RiskLevel,
    /// When assessed.
    pub assessed_at_ms: i64,
}

impl TryFrom<pb::RiskSummary> for RiskSummary {
    type Error = FieldError;
    fn try_from(w: pb::RiskSummary) -> Result<Self, FieldError> {
        let pb::RiskSummary {
            tool,
            violence,
            persistence,
            recurrence,
            psychosocial_harm,
            escalation,
            overall,
            assessed_at_ms,
        } = w;
        Ok(Self {
            tool: text(tool, "tool")?,
            violence: known(violence, "violence")?,
            persistence: known(persistence, "persistence")?,
            recurrence: known(recurrence, "recurrence")?,
            psychosocial_harm: known(psychosocial_harm, "psychosocial_harm")?,
            escalation: known(escalation, "escalation")?,
            overall: known(overall, "overall")?,
            assessed_at_ms: time(assessed_at_ms, "assessed_at_ms")?,
        })
    }
}

/// An intervention's start or completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Intervention {
    /// Intervention id.
    pub intervention_id: uuid::Uuid,
    /// Kind.
    pub kind: pb::InterventionKind,
    /// When.
    pub at_ms: i64,
    /// Outcome, on completion.
    pub outcome: Option<String>,
}

impl TryFrom<pb::InterventionCore> for Intervention {
    type Error = FieldError;
    fn try_from(w: pb::InterventionCore) -> Result<Self, FieldError> {
        let pb::InterventionCore {
            intervention_id,
            kind,
            at_ms,
            outcome,
        } = w;
        Ok(Self {
            intervention_id: id16(&intervention_id, "intervention_id")?,
            kind: known(kind, "kind")?,
            at_ms: time(at_ms, "at_ms")?,
            outcome: optional(outcome),
        })
    }
}

/// A protective order.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Order id.
    pub order_id: uuid::Uuid,
    /// Kind.
    pub kind: pb::OrderKind,
    /// Conditions.
    pub conditions: Vec<String>,
    /// Whether a tag is required.
    pub tag_required: bool,
    /// Issued.
    pub issued_at_ms: i64,
    /// Expires (after issue).
    pub expires_at_ms: i64,
}

impl TryFrom<pb::OrderCore> for Order {
    type Error = FieldError;
    fn try_from(w: pb::OrderCore) -> Result<Self, FieldError> {
        let pb::OrderCore {
            order_id,
            kind,
            conditions,
            tag_required,
            issued_at_ms,
            expires_at_ms,
        } = w;
        let issued_at_ms = time(issued_at_ms, "issued_at_ms")?;
        if expires_at_ms <= issued_at_ms {
            return Err(FieldError::new("expires_at_ms", "must be after issued_at_ms"));
        }
        Ok(Self {
            order_id: id16(&order_id, "order_id")?,
            kind: known(kind, "kind")?,
            conditions,
            tag_required,
            issued_at_ms,
            expires_at_ms,
        })
    }
}

/// A tag fitted or removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    /// Tag id (a subject token).
    pub tag_id: TagId,
    /// The order it enforces.
    pub order_id: uuid::Uuid,
    /// The victim's paired device.
    pub victim_device_id: Option<DeviceId>,
    /// When.
    pub at_ms: i64,
    /// Reason (removal).
    pub reason: Option<String>,
}

impl TryFrom<pb::TagCore> for Tag {
    type Error = FieldError;
    fn try_from(w: pb::TagCore) -> Result<Self, FieldError> {
        let pb::TagCore {
            tag_id,
            order_id,
            victim_device_id,
            at_ms,
            reason,
        } = w;
        Ok(Self {
            tag_id: tag(tag_id, "tag_id")?,
            order_id: id16(&order_id, "order_id")?,
            victim_device_id: optional(victim_device_id)
                .map(|d| victim_device(d, "victim_device_id"))
                .transpose()?,
            at_ms: time(at_ms, "at_ms")?,
            reason: optional(reason),
        })
    }
}

/// A weekly window in Europe/London local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeeklyWindow {
    /// Day it starts.
    pub day: pb::Weekday,
    /// Start, minutes after local midnight (0..1440).
    pub start_minute: u32,
    /// Length in minutes (1..=10080).
    pub duration_minutes: u32,
}

/// A zone definition (geometry is checked by the geofence that indexes it).
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Zone id.
    pub zone_id: uuid::Uuid,
    /// Version.
    pub version: u32,
    /// Exclusion or inclusion.
    pub kind: pb::ZoneKind,
    /// Tag.
    pub tag_id: TagId,
    /// GeoJSON geometry.
    pub geojson: String,
    /// Circle radius for a Point geometry.
    pub radius_m: f64,
    /// Active windows; empty is always.
    pub schedule: Vec<WeeklyWindow>,
    /// Exit buffer.
    pub exit_buffer_m: f64,
    /// Label.
    pub label: String,
}

impl TryFrom<pb::ZoneCore> for Zone {
    type Error = FieldError;
    fn try_from(w: pb::ZoneCore) -> Result<Self, FieldError> {
        let pb::ZoneCore {
            zone_id,
            version,
            kind,
            tag_id,
            geojson,
            radius_m,
            schedule,
            exit_buffer_m,
            label,
        } = w;
        if version == 0 {
            return Err(FieldError::new("version", "must be 1 or more"));
        }
        let schedule = schedule
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                let pb::WeeklyWindow {
                    day,
                    start_minute,
                    duration_minutes,
                } = w;
                let at = |f: &str| format!("schedule[{i}].{f}");
                if start_minute >= 24 * 60 {
                    return Err(FieldError::new(at("start_minute"), "must be below 1440"));
                }
                if duration_minutes == 0 || duration_minutes > 7 * 24 * 60 {
                    return Err(FieldError::new(at("duration_minutes"), "must be 1 to 10080"));
                }
                Ok(WeeklyWindow {
                    day: known(day, &at("day"))?,
                    start_minute,
                    duration_minutes,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            zone_id: id16(&zone_id, "zone_id")?,
            version,
            kind: known(kind, "kind")?,
            tag_id: tag(tag_id, "tag_id")?,
            geojson: text(geojson, "geojson")?,
            radius_m: metres(radius_m, "radius_m")?,
            schedule,
            exit_buffer_m: metres(exit_buffer_m, "exit_buffer_m")?,
            label,
        })
    }
}

/// A victim-proximity rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ProximityRule {
    /// Rule id.
    pub rule_id: uuid::Uuid,
    /// Subject's tag.
    pub tag_id: TagId,
    /// Victim's device.
    pub victim_device_id: DeviceId,
    /// Warning distance (> breach distance).
    pub warning_m: f64,
    /// Breach distance (> 0).
    pub breach_m: f64,
    /// Staleness limit of victim fixes, seconds.
    pub max_victim_fix_age_s: u32,
}

impl TryFrom<pb::ProximityCore> for ProximityRule {
    type Error = FieldError;
    fn try_from(w: pb::ProximityCore) -> Result<Self, FieldError> {
        let pb::ProximityCore {
            rule_id,
            tag_id,
            victim_device_id,
            warning_m,
            breach_m,
            max_victim_fix_age_s,
        } = w;
        let breach_m = metres(breach_m, "breach_m")?;
        if breach_m == 0.0 {
            return Err(FieldError::new("breach_m", "must be more than 0"));
        }
        let warning_m = metres(warning_m, "warning_m")?;
        if warning_m <= breach_m {
            return Err(FieldError::new("warning_m", "must be more than breach_m"));
        }
        if max_victim_fix_age_s == 0 {
            return Err(FieldError::new("max_victim_fix_age_s", "must be 1 or more"));
        }
        Ok(Self {
            rule_id: id16(&rule_id, "rule_id")?,
            tag_id: tag(tag_id, "tag_id")?,
            victim_device_id: victim_device(victim_device_id, "victim_device_id")?,
            warning_m,
            breach_m,
            max_victim_fix_age_s,
        })
    }
}

/// A breach episode update from the geofence.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// Episode id.
    pub breach_id: uuid::Uuid,
    /// Tag.
    pub tag_id: TagId,
    /// Kind.
    pub kind: pb::BreachKind,
    /// State.
    pub state: pb::BreachState,
    /// Zone or rule id.
    pub rule_id: uuid::Uuid,
    /// First fix of the episode.
    pub opened_at_ms: i64,
    /// This fix.
    pub observed_at_ms: i64,
    /// Position, when the fix had one.
    pub position: Option<(f64, f64)>,
    /// Accuracy radius.
    pub accuracy_m: f64,
    /// Distance to boundary or victim.
    pub distance_m: f64,
    /// Found late.
    pub late: bool,
    /// What the decision rests on (the geofence reads and replays it; boxed: it is large).
    pub evidence: Option<Box<pb::BreachEvidence>>,
}

impl TryFrom<pb::BreachCore> for Breach {
    type Error = FieldError;
    fn try_from(w: pb::BreachCore) -> Result<Self, FieldError> {
        let pb::BreachCore {
            breach_id,
            tag_id,
            kind,
            state,
            rule_id,
            opened_at_ms,
            observed_at_ms,
            position,
            accuracy_m,
            distance_m,
            late,
            evidence,
        } = w;
        let opened_at_ms = time(opened_at_ms, "opened_at_ms")?;
        if observed_at_ms < opened_at_ms {
            return Err(FieldError::new("observed_at_ms", "must not be before opened_at_ms"));
        }
        let position = position
            .map(|pb::LatLon { lat, lon }| {
                if !(-90.0..=90.0).contains(&lat) {
                    return Err(FieldError::new("position.lat", format!("{lat} is outside -90..90")));
                }
                if !(-180.0..=180.0).contains(&lon) {
                    return Err(FieldError::new("position.lon", format!("{lon} is outside -180..180")));
                }
                Ok((lat, lon))
            })
            .transpose()?;
        Ok(Self {
            breach_id: id16(&breach_id, "breach_id")?,
            tag_id: tag(tag_id, "tag_id")?,
            kind: known(kind, "kind")?,
            state: known(state, "state")?,
            rule_id: id16(&rule_id, "rule_id")?,
            opened_at_ms,
            observed_at_ms,
            position,
            accuracy_m: metres(accuracy_m, "accuracy_m")?,
            distance_m: if distance_m.is_finite() {
                distance_m
            } else {
                return Err(FieldError::new("distance_m", "must be finite"));
            },
            late,
            evidence: evidence.map(Box::new),
        })
    }
}

/// The control room's acknowledgement of a breach.
#[derive(Debug, Clone, PartialEq)]
pub struct Acknowledgement {
    /// Breach id.
    pub breach_id: uuid::Uuid,
    /// Operator.
    pub operator: String,
    /// Action.
    pub action: String,
    /// Response time.
    pub response_time_ms: i64,
}

impl TryFrom<pb::AcknowledgementCore> for Acknowledgement {
    type Error = FieldError;
    fn try_from(w: pb::AcknowledgementCore) -> Result<Self, FieldError> {
        let pb::AcknowledgementCore {
            breach_id,
            operator,
            action,
            response_time_ms,
        } = w;
        if response_time_ms < 0 {
            return Err(FieldError::new("response_time_ms", "must not be negative"));
        }
        Ok(Self {
            breach_id: id16(&breach_id, "breach_id")?,
            operator: text(operator, "operator")?,
            action: text(action, "action")?,
            response_time_ms,
        })
    }
}

/// A victim's safety plan.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyPlan {
    /// Plan text.
    pub plan: String,
    /// Measures.
    pub measures: Vec<String>,
    /// Next Victims' Code contact due.
    pub next_contact_due_ms: i64,
}

impl TryFrom<pb::SafetyPlan> for SafetyPlan {
    type Error = FieldError;
    fn try_from(w: pb::SafetyPlan) -> Result<Self, FieldError> {
        let pb::SafetyPlan {
            plan,
            measures,
            next_contact_due_ms,
        } = w;
        Ok(Self {
            plan: text(plan, "plan")?,
            measures,
            next_contact_due_ms: time(next_contact_due_ms, "next_contact_due_ms")?,
        })
    }
}

/// A clinical review.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    /// Review number (1..=4).
    pub review_number: u32,
    /// Due.
    pub due_at_ms: i64,
    /// Held.
    pub held_at_ms: i64,
    /// Outcome.
    pub outcome: String,
}

impl TryFrom<pb::ReviewSummary> for Review {
    type Error = FieldError;
    fn try_from(w: pb::ReviewSummary) -> Result<Self, FieldError> {
        let pb::ReviewSummary {
            review_number,
            due_at_ms,
            held_at_ms,
            outcome,
        } = w;
        if !(1..=4).contains(&review_number) {
            return Err(FieldError::new(
                "review_number",
                "must be 1 to 4 (quarterly for 12 months)",
            ));
        }
        Ok(Self {
            review_number,
            due_at_ms: time(due_at_ms, "due_at_ms")?,
            held_at_ms: time(held_at_ms, "held_at_ms")?,
            outcome: text(outcome, "outcome")?,
        })
    }
}

/// A charging decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    /// Decision.
    pub decision: pb::ChargeDecision,
    /// Offence.
    pub offence: String,
    /// When.
    pub decided_at_ms: i64,
}

impl TryFrom<pb::ChargeCore> for Charge {
    type Error = FieldError;
    fn try_from(w: pb::ChargeCore) -> Result<Self, FieldError> {
        let pb::ChargeCore {
            decision,
            offence,
            decided_at_ms,
        } = w;
        Ok(Self {
            decision: known(decision, "decision")?,
            offence: text(offence, "offence")?,
            decided_at_ms: time(decided_at_ms, "decided_at_ms")?,
        })
    }
}

/// A recorded reoffence.
#[derive(Debug, Clone, PartialEq)]
pub struct Reoffence {
    /// Subject reference.
    pub subject_ref: [u8; 32],
    /// Offence.
    pub offence: String,
    /// When.
    pub occurred_at_ms: i64,
}

impl TryFrom<pb::ReoffenceCore> for Reoffence {
    type Error = FieldError;
    fn try_from(w: pb::ReoffenceCore) -> Result<Self, FieldError> {
        let pb::ReoffenceCore {
            subject_ref,
            offence,
            occurred_at_ms,
        } = w;
        let subject_ref = subject_ref
            .as_slice()
            .try_into()
            .map_err(|_| FieldError::new("subject_ref", format!("must be 32 bytes, got {}", subject_ref.len())))?;
        Ok(Self {
            subject_ref,
            offence: text(offence, "offence")?,
            occurred_at_ms: time(occurred_at_ms, "occurred_at_ms")?,
        })
    }
}

/// A case's subject reference derived again under a newer linkage key generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rekeying {
    /// The reference the case carried until now.
    pub previous_ref: [u8; 32],
    /// The reference under `generation`.
    pub subject_ref: [u8; 32],
    /// The linkage key generation (2 or later: the first is granted, not re-keyed to).
    pub generation: u32,
}

impl TryFrom<pb::SubjectRekeyedCore> for Rekeying {
    type Error = FieldError;
    fn try_from(w: pb::SubjectRekeyedCore) -> Result<Self, FieldError> {
        let pb::SubjectRekeyedCore {
            previous_ref,
            subject_ref,
            generation,
        } = w;
        let reference = |bytes: Vec<u8>, field: &str| -> Result<[u8; 32], FieldError> {
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| FieldError::new(field, format!("must be 32 bytes, got {}", bytes.len())))
        };
        if generation < 2 {
            return Err(FieldError::new(
                "generation",
                format!("is {generation}: a re-keying is to generation 2 or later"),
            ));
        }
        Ok(Self {
            previous_ref: reference(previous_ref, "previous_ref")?,
            subject_ref: reference(subject_ref, "subject_ref")?,
            generation,
        })
    }
}

/// The subject reference a case carries after `event`, given what it carried before (the
/// reference and its linkage key generation; a referral's counts as generation 1): the case's
/// first referral sets it; a re-keying that continues it, to a newer generation, replaces it.
pub fn carried_reference(before: Option<([u8; 32], u32)>, event: &CaseEvent) -> Option<([u8; 32], u32)> {
    match event {
        CaseEvent::ReferralReceived { core: Some(r), .. } if before.is_none() => Some((r.subject_ref, 1)),
        CaseEvent::SubjectRekeyed { core: Some(k) }
            if before.is_some_and(|(r, g)| r == k.previous_ref && k.generation > g) =>
        {
            Some((k.subject_ref, k.generation))
        }
        _ => before,
    }
}

/// A case closure.
#[derive(Debug, Clone, PartialEq)]
pub struct Closure {
    /// Reason.
    pub reason: String,
    /// When.
    pub closed_at_ms: i64,
}

impl TryFrom<pb::CaseClosedCore> for Closure {
    type Error = FieldError;
    fn try_from(w: pb::CaseClosedCore) -> Result<Self, FieldError> {
        let pb::CaseClosedCore { reason, closed_at_ms } = w;
        Ok(Self {
            reason: text(reason, "reason")?,
            closed_at_ms: time(closed_at_ms, "closed_at_ms")?,
        })
    }
}

/// An access-log entry (DPA 2018 s62).
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    /// Party that consulted or disclosed.
    pub party: crate::PartyId,
    /// Person acting.
    pub person: String,
    /// Method or action.
    pub method: String,
    /// Sections.
    pub sections: Vec<String>,
    /// Purpose.
    pub purpose: String,
    /// ISA clause.
    pub clause: String,
    /// Recipient of a disclosure.
    pub disclosed_to: Option<crate::PartyId>,
    /// Every case the answer covered.
    pub case_ids: Vec<uuid::Uuid>,
}

impl TryFrom<pb::AccessCore> for Access {
    type Error = FieldError;
    fn try_from(w: pb::AccessCore) -> Result<Self, FieldError> {
        let pb::AccessCore {
            party,
            person,
            method,
            sections,
            purpose,
            clause,
            disclosed_to,
            case_ids,
        } = w;
        Ok(Self {
            party: crate::PartyId::parse(&party, "party")?,
            person: text(person, "person")?,
            method: text(method, "method")?,
            sections,
            purpose: text(purpose, "purpose")?,
            clause: text(clause, "clause")?,
            disclosed_to: optional(disclosed_to)
                .map(|p| crate::PartyId::parse(&p, "disclosed_to"))
                .transpose()?,
            case_ids: case_ids
                .iter()
                .enumerate()
                .map(|(i, c)| id16(c, &format!("case_ids[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }
}

macro_rules! case_events {
    ( $( $variant:ident { $( $section:ident : $wire:ty => $domain:ty ),+ $(,)? } ),+ $(,)? ) => {
        /// A case event with each section validated; `None` where a section is absent or unread.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(missing_docs)]
        pub enum CaseEvent {
            $( $variant { $( $section: Option<$domain> ),+ }, )+
        }

        impl TryFrom<pb::event_draft::Event> for CaseEvent {
            type Error = FieldError;
            fn try_from(w: pb::event_draft::Event) -> Result<Self, FieldError> {
                use pb::event_draft::Event as E;
                Ok(match w {
                    $( E::$variant(pb::$variant { $( $section ),+ }) => {
                        let prefix = crate::EventType::$variant.name();
                        CaseEvent::$variant { $(
                            $section: $section
                                .map(<$domain>::try_from)
                                .transpose()
                                .map_err(|e| e.within(stringify!($section)).within(prefix))?,
                        )+ }
                    } )+
                })
            }
        }
    };
}

/// Free text (narratives, clinical notes) must not be empty when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrative(pub String);

impl TryFrom<pb::ReferralNarrative> for Narrative {
    type Error = FieldError;
    fn try_from(w: pb::ReferralNarrative) -> Result<Self, FieldError> {
        let pb::ReferralNarrative { text: t } = w;
        text(t, "text").map(Self)
    }
}

impl TryFrom<pb::ClinicalNotes> for Narrative {
    type Error = FieldError;
    fn try_from(w: pb::ClinicalNotes) -> Result<Self, FieldError> {
        let pb::ClinicalNotes { formulation } = w;
        text(formulation, "formulation").map(Self)
    }
}

/// The victim named in a safety-plan update.
#[derive(Debug, Clone, PartialEq)]
pub struct VictimIdentity {
    /// The victim.
    pub victim: pb::PersonIdentity,
    /// Their alert device.
    pub victim_device_id: Option<DeviceId>,
}

impl TryFrom<pb::VictimIdentity> for VictimIdentity {
    type Error = FieldError;
    fn try_from(w: pb::VictimIdentity) -> Result<Self, FieldError> {
        let pb::VictimIdentity {
            victim,
            victim_device_id,
        } = w;
        let victim = victim.ok_or_else(|| FieldError::missing("victim"))?;
        text(victim.full_name.clone(), "victim.full_name")?;
        Ok(Self {
            victim,
            victim_device_id: optional(victim_device_id)
                .map(|d| victim_device(d, "victim_device_id"))
                .transpose()?,
        })
    }
}

impl From<&Zone> for pb::ZoneCore {
    fn from(z: &Zone) -> Self {
        Self {
            zone_id: z.zone_id.as_bytes().to_vec(),
            version: z.version,
            kind: z.kind as i32,
            tag_id: z.tag_id.to_string(),
            geojson: z.geojson.clone(),
            radius_m: z.radius_m,
            schedule: z
                .schedule
                .iter()
                .map(|w| pb::WeeklyWindow {
                    day: w.day as i32,
                    start_minute: w.start_minute,
                    duration_minutes: w.duration_minutes,
                })
                .collect(),
            exit_buffer_m: z.exit_buffer_m,
            label: z.label.clone(),
        }
    }
}

impl From<&ProximityRule> for pb::ProximityCore {
    fn from(r: &ProximityRule) -> Self {
        Self {
            rule_id: r.rule_id.as_bytes().to_vec(),
            tag_id: r.tag_id.to_string(),
            victim_device_id: r.victim_device_id.to_string(),
            warning_m: r.warning_m,
            breach_m: r.breach_m,
            max_victim_fix_age_s: r.max_victim_fix_age_s,
        }
    }
}

/// A zone's revocation.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneRevocation {
    /// Zone id.
    pub zone_id: uuid::Uuid,
    /// Reason.
    pub reason: String,
}

impl TryFrom<pb::ZoneRevokedCore> for ZoneRevocation {
    type Error = FieldError;
    fn try_from(w: pb::ZoneRevokedCore) -> Result<Self, FieldError> {
        let pb::ZoneRevokedCore { zone_id, reason } = w;
        Ok(Self {
            zone_id: id16(&zone_id, "zone_id")?,
            reason: text(reason, "reason")?,
        })
    }
}

case_events! {
    ReferralReceived {
        core: pb::ReferralCore => Referral,
        identity: pb::ReferralIdentity => ReferralIdentity,
        narrative: pb::ReferralNarrative => Narrative,
    },
    ScreeningCompleted { core: pb::ScreeningCore => Screening, figures: pb::ScreeningFigures => ScreeningFigures },
    RiskAssessed { summary: pb::RiskSummary => RiskSummary, clinical: pb::ClinicalNotes => Narrative },
    InterventionStarted { core: pb::InterventionCore => Intervention },
    InterventionCompleted { core: pb::InterventionCore => Intervention },
    OrderIssued { core: pb::OrderCore => Order },
    TagFitted { core: pb::TagCore => Tag },
    TagRemoved { core: pb::TagCore => Tag },
    ZoneDefined { core: pb::ZoneCore => Zone },
    ZoneRevoked { core: pb::ZoneRevokedCore => ZoneRevocation },
    ProximityRuleSet { core: pb::ProximityCore => ProximityRule },
    TagBreach { core: pb::BreachCore => Breach },
    BreachAcknowledged { core: pb::AcknowledgementCore => Acknowledgement, figures: pb::AcknowledgementFigures => AcknowledgementFigures },
    SafetyPlanUpdated { victim: pb::SafetyPlan => SafetyPlan, identity: pb::VictimIdentity => VictimIdentity, figures: pb::ContactFigures => ContactFigures },
    ReviewRecorded { summary: pb::ReviewSummary => Review, clinical: pb::ClinicalNotes => Narrative, figures: pb::ReviewFigures => ReviewFigures },
    ChargeDecided { core: pb::ChargeCore => Charge },
    ReoffenceRecorded { core: pb::ReoffenceCore => Reoffence },
    CaseClosed { core: pb::CaseClosedCore => Closure },
    AccessLogged { core: pb::AccessCore => Access },
    SubjectRekeyed { core: pb::SubjectRekeyedCore => Rekeying },
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::event_draft::Event as E;

    fn field_of(e: E) -> String {
        CaseEvent::try_from(e).expect_err("invalid").field
    }

    #[test]
    fn errors_name_event_section_and_field() {
        let order = pb::OrderCore {
            order_id: vec![1; 16],
            kind: pb::OrderKind::SpoInterim as i32,
            issued_at_ms: 10,
            expires_at_ms: 5,
            ..Default::default()
        };
        assert_eq!(
            field_of(E::OrderIssued(pb::OrderIssued { core: Some(order) })),
            "OrderIssued.core.expires_at_ms"
        );
        let rule = pb::ProximityCore {
            rule_id: vec![1; 16],
            tag_id: "tag-1".into(),
            victim_device_id: "vd-1".into(),
            warning_m: 100.0,
            breach_m: 200.0,
            max_victim_fix_age_s: 60,
        };
        assert_eq!(
            field_of(E::ProximityRuleSet(pb::ProximityRuleSet { core: Some(rule) })),
            "ProximityRuleSet.core.warning_m"
        );
        let summary = pb::RiskSummary {
            tool: "SRP".into(),
            violence: 42,
            ..Default::default()
        };
        assert_eq!(
            field_of(E::RiskAssessed(pb::RiskAssessed {
                summary: Some(summary),
                clinical: None
            })),
            "RiskAssessed.summary.violence"
        );
        let zone = pb::ZoneCore {
            zone_id: vec![2; 16],
            version: 1,
            kind: pb::ZoneKind::Inclusion as i32,
            tag_id: "tag-1".into(),
            geojson: "{}".into(),
            schedule: vec![pb::WeeklyWindow {
                day: pb::Weekday::Monday as i32,
                start_minute: 1440,
                duration_minutes: 60,
            }],
            ..Default::default()
        };
        assert_eq!(
            field_of(E::ZoneDefined(pb::ZoneDefined { core: Some(zone) })),
            "ZoneDefined.core.schedule[0].start_minute"
        );
        let breach = pb::BreachCore {
            breach_id: vec![3; 15],
            ..Default::default()
        };
        assert!(field_of(E::TagBreach(pb::TagBreach { core: Some(breach) })).starts_with("TagBreach.core."));
    }

    #[test]
    fn absent_sections_stay_none() {
        let e = CaseEvent::try_from(E::RiskAssessed(pb::RiskAssessed {
            summary: None,
            clinical: None,
        }))
        .expect("valid");
        assert_eq!(
            e,
            CaseEvent::RiskAssessed {
                summary: None,
                clinical: None
            }
        );
    }
}
