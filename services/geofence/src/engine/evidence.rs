//! A breach update's evidence to and from its wire form (`hru.v1.BreachEvidence`), and its
//! replay: a fresh engine under the recorded thresholds, told the zone or rule and the tag as
//! logged, put in the tag's recorded state before the deciding input, then given that input.
//! A breach whose replay does not give back the same update was not decided as recorded.

use hru_domain::{CaseId, TagId};
use hru_wire::v1 as pb;

use super::snapshot::ENGINE_LOGIC;
use super::snapshot::{batch_bytes, batch_id};
use super::{
    Action, BreachUpdate, Cause, Config, Episode, Evidence, Fix, Input, OpenEpisode, Prior, RuleKey, Seen, State,
    episode_id,
};

/// Why recorded evidence cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("breach evidence: {at}: {problem}")]
pub struct EvidenceError {
    /// Where in the evidence (e.g. `tag_fix.batch_event_id`).
    pub at: String,
    /// What is wrong.
    pub problem: String,
}

fn fail(at: impl Into<String>, problem: impl Into<String>) -> EvidenceError {
    EvidenceError {
        at: at.into(),
        problem: problem.into(),
    }
}

fn thresholds_to_wire(c: &Config) -> pb::GeofenceThresholds {
    pb::GeofenceThresholds {
        exit_fixes: c.exit_fixes,
        exit_seconds: c.exit_seconds,
        late_after_ms: c.late_after_ms,
        battery_low_percent: c.battery_low_percent,
        no_fix_after_ms: c.no_fix_after_ms,
        no_comm_after_ms: c.no_comm_after_ms,
        update_every_ms: c.update_every_ms,
        proximity_exit_m: c.proximity_exit_m,
    }
}

fn thresholds_from_wire(t: &pb::GeofenceThresholds) -> Config {
    Config {
        exit_fixes: t.exit_fixes,
        exit_seconds: t.exit_seconds,
        late_after_ms: t.late_after_ms,
        battery_low_percent: t.battery_low_percent,
        no_fix_after_ms: t.no_fix_after_ms,
        no_comm_after_ms: t.no_comm_after_ms,
        update_every_ms: t.update_every_ms,
        proximity_exit_m: t.proximity_exit_m,
    }
}

fn fix_to_wire(f: &Fix) -> pb::EvidenceFix {
    pb::EvidenceFix {
        fix_seq: f.seq,
        device_time_ms: f.device_ms,
        received_at_ms: f.received_ms,
        position: f.position.map(|(lat, lon)| pb::LatLon { lat, lon }),
        accuracy_m: f.accuracy_m,
        battery_percent: f.battery,
        tampered: f.tampered,
        batch_event_id: batch_bytes(f.batch),
    }
}

fn fix_from_wire(f: &pb::EvidenceFix, at: &str) -> Result<Fix, EvidenceError> {
    Ok(Fix {
        seq: f.fix_seq,
        device_ms: f.device_time_ms,
        received_ms: f.received_at_ms,
        position: f.position.as_ref().map(|p| (p.lat, p.lon)),
        accuracy_m: f.accuracy_m,
        battery: f.battery_percent,
        tampered: f.tampered,
        batch: batch_id(&f.batch_event_id, &format!("{at}.batch_event_id")).map_err(|e| fail(e.at, e.problem))?,
    })
}

fn seen_to_wire(s: &Seen) -> pb::EvidenceFix {
    pb::EvidenceFix {
        fix_seq: s.seq,
        device_time_ms: s.device_ms,
        position: Some(pb::LatLon {
            lat: s.position.0,
            lon: s.position.1,
        }),
        accuracy_m: s.accuracy_m,
        batch_event_id: batch_bytes(s.batch),
        ..Default::default()
    }
}

fn seen_from_wire(f: &pb::EvidenceFix, at: &str) -> Result<Seen, EvidenceError> {
    let fix = fix_from_wire(f, at)?;
    fix.seen().ok_or_else(|| fail(format!("{at}.position"), "is missing"))
}

impl Evidence {
    /// The wire form.
    pub fn to_wire(&self) -> pb::BreachEvidence {
        let p = &self.prior;
        pb::BreachEvidence {
            thresholds: self.thresholds.as_ref().map(thresholds_to_wire),
            rule_version: self.rule_version,
            hysteresis: self.hysteresis.clone(),
            last_device_ms: p.last_device_ms,
            last_comm_ms: p.last_comm_ms,
            last_gps_ms: p.last_gps_ms,
            tag_last_fix: p.tag_fix.as_ref().map(seen_to_wire),
            victim_last_fix: p.victim_fix.as_ref().map(seen_to_wire),
            episode: p.episode.map(|e| pb::EvidenceEpisode {
                opened_at_ms: e.opened_ms,
                first_fix_seq: e.first_fix,
                last_report_ms: e.last_report_ms,
                clear_fixes: e.clear_fixes,
                clear: e.clear_since_ms.is_some(),
                clear_since_ms: e.clear_since_ms.unwrap_or_default(),
                late: e.late,
                rule_version: e.rule_version,
            }),
            cause: Some(match &self.cause {
                Cause::TagFix(f) => pb::breach_evidence::Cause::TagFix(fix_to_wire(f)),
                Cause::VictimFix(f) => pb::breach_evidence::Cause::VictimFix(fix_to_wire(f)),
                Cause::Watermark(at) => pb::breach_evidence::Cause::WatermarkMs(*at),
                Cause::ZoneRevoked(at) => pb::breach_evidence::Cause::ZoneRevokedMs(*at),
                Cause::Clock(at) => pb::breach_evidence::Cause::ClockMs(*at),
            }),
            rule_digest: self.rule_digest.map(|d| d.to_vec()).unwrap_or_default(),
            engine_logic: self.engine_logic,
        }
    }

    /// Evidence read back from its wire form; an error names the first field that cannot be used.
    pub fn from_wire(w: &pb::BreachEvidence) -> Result<Self, EvidenceError> {
        let cause = match w.cause.as_ref().ok_or_else(|| fail("cause", "is missing"))? {
            pb::breach_evidence::Cause::TagFix(f) => Cause::TagFix(fix_from_wire(f, "tag_fix")?),
            pb::breach_evidence::Cause::VictimFix(f) => Cause::VictimFix(fix_from_wire(f, "victim_fix")?),
            pb::breach_evidence::Cause::WatermarkMs(at) => Cause::Watermark(*at),
            pb::breach_evidence::Cause::ZoneRevokedMs(at) => Cause::ZoneRevoked(*at),
            pb::breach_evidence::Cause::ClockMs(at) => Cause::Clock(*at),
        };
        Ok(Self {
            thresholds: w.thresholds.as_ref().map(thresholds_from_wire),
            rule_version: w.rule_version,
            hysteresis: w.hysteresis.clone(),
            prior: Prior {
                last_device_ms: w.last_device_ms,
                last_comm_ms: w.last_comm_ms,
                last_gps_ms: w.last_gps_ms,
                tag_fix: w
                    .tag_last_fix
                    .as_ref()
                    .map(|f| seen_from_wire(f, "tag_last_fix"))
                    .transpose()?,
                victim_fix: w
                    .victim_last_fix
                    .as_ref()
                    .map(|f| seen_from_wire(f, "victim_last_fix"))
                    .transpose()?,
                episode: w.episode.as_ref().map(|e| OpenEpisode {
                    opened_ms: e.opened_at_ms,
                    first_fix: e.first_fix_seq,
                    last_report_ms: e.last_report_ms,
                    clear_fixes: e.clear_fixes,
                    clear_since_ms: e.clear.then_some(e.clear_since_ms),
                    late: e.late,
                    rule_version: e.rule_version,
                }),
            },
            cause,
            rule_digest: match w.rule_digest.len() {
                0 => None,
                32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&w.rule_digest);
                    Some(d)
                }
                n => return Err(fail("rule_digest", format!("is {n} bytes; a SHA-256 is 32"))),
            },
            engine_logic: w.engine_logic,
        })
    }
}

/// The rule a breach kind of a zone, proximity rule or device condition is kept under.
fn rule_key(kind: pb::BreachKind, rule_id: uuid::Uuid) -> RuleKey {
    match kind {
        pb::BreachKind::Exclusion | pb::BreachKind::Curfew => RuleKey::Zone(rule_id),
        pb::BreachKind::ProximityWarning => RuleKey::ProximityWarning(rule_id),
        pb::BreachKind::Proximity => RuleKey::Proximity(rule_id),
        other => RuleKey::Device(other),
    }
}

/// A recorded breach update to replay: which episode, and what it rests on.
#[derive(Debug, Clone)]
pub struct Recorded<'a> {
    /// The tag.
    pub tag: &'a TagId,
    /// Its case.
    pub case: Option<CaseId>,
    /// Episode id.
    pub breach_id: uuid::Uuid,
    /// Kind.
    pub kind: pb::BreachKind,
    /// Zone or rule id.
    pub rule_id: uuid::Uuid,
    /// The evidence it carries.
    pub evidence: &'a Evidence,
}

/// Why a recorded update cannot be replayed at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    /// A coverage decision, taken by the geofence's clock rather than the engine.
    #[error("not an engine decision: coverage by the geofence's own clock at {0} ms")]
    NotEngine(i64),
    /// Evidence without thresholds.
    #[error("the evidence names no engine thresholds")]
    NoThresholds,
    /// Decided under other decision logic than this engine's.
    #[error("decided under engine logic {recorded}; this engine's is {current}: replay it with a build of that logic")]
    OtherLogic {
        /// The logic recorded.
        recorded: u32,
        /// This engine's.
        current: u32,
    },
    /// A victim's fix, but no proximity rule in the setup names its device.
    #[error("a victim device's fix decided it, but the setup holds no proximity rule {0}")]
    NoRule(uuid::Uuid),
}

/// Replay one recorded update: a fresh engine under the recorded thresholds, told `setup`
/// (the zone or proximity rule, at the recorded version, and the tag's fitting, as logged),
/// put in the tag's recorded state before the deciding input, then given that input. What
/// the engine does.
pub fn replay(setup: &[Input], r: &Recorded<'_>) -> Result<Vec<Action>, ReplayError> {
    let thresholds = match (&r.evidence.cause, r.evidence.thresholds) {
        (Cause::Clock(at), _) => return Err(ReplayError::NotEngine(*at)),
        (_, None) => return Err(ReplayError::NoThresholds),
        (_, Some(t)) => t,
    };
    if r.evidence.engine_logic != ENGINE_LOGIC {
        return Err(ReplayError::OtherLogic {
            recorded: r.evidence.engine_logic,
            current: ENGINE_LOGIC,
        });
    }
    let mut state = State::new(thresholds);
    for input in setup {
        state.apply(input);
    }
    let prior = &r.evidence.prior;
    // The tag as the decision found it: fitted (a watermark decides only for fitted tags), in
    // the update's case. Its fitting event is not needed, so a breach outlives it.
    let t = state.tags.entry(r.tag.clone()).or_default();
    t.fitted = true;
    t.case = t.case.or(r.case);
    t.last_device_ms = prior.last_device_ms;
    t.last_comm_ms = prior.last_comm_ms;
    t.last_gps_ms = prior.last_gps_ms;
    t.last_fix = prior.tag_fix;
    if let Some(e) = prior.episode {
        let key = rule_key(r.kind, r.rule_id);
        t.open.insert(
            key,
            Episode {
                // Derived afresh, never taken from the record: an update claiming another
                // episode's id does not match what the replay decides.
                breach_id: episode_id(r.tag.as_str(), key, e.first_fix, e.opened_ms),
                kind: r.kind,
                rule_id: r.rule_id,
                rule_version: e.rule_version,
                opened_ms: e.opened_ms,
                first_fix: e.first_fix,
                last_report_ms: e.last_report_ms,
                clear_fixes: e.clear_fixes,
                clear_since_ms: e.clear_since_ms,
                late: e.late,
            },
        );
    }
    if let Some(v) = prior.victim_fix
        && let Some(rule) = state.rules.get(&r.rule_id)
    {
        state.victims.insert(rule.rule.victim_device_id.clone(), v);
    }
    let input = match r.evidence.cause {
        Cause::TagFix(f) => Input::Fixes {
            device: super::Device::Tag(r.tag.clone()),
            fixes: vec![f],
        },
        Cause::VictimFix(f) => {
            let device = state
                .rules
                .get(&r.rule_id)
                .map(|p| p.rule.victim_device_id.clone())
                .or_else(|| state.tags.get(r.tag).and_then(|t| t.victim_device.clone()));
            match device {
                Some(device) => Input::Fixes {
                    device: super::Device::Victim(device),
                    fixes: vec![f],
                },
                None => return Err(ReplayError::NoRule(r.rule_id)),
            }
        }
        Cause::Watermark(at_ms) => Input::Watermark { at_ms },
        Cause::ZoneRevoked(at_ms) => Input::ZoneRevoked { zone: r.rule_id, at_ms },
        Cause::Clock(at) => return Err(ReplayError::NotEngine(at)),
    };
    Ok(state.apply(&input))
}

/// The update among `actions` that is `recorded` (same message id), if any.
pub fn find<'a>(actions: &'a [Action], recorded: &BreachUpdate) -> Option<&'a BreachUpdate> {
    let id = recorded.message_id();
    actions.iter().find_map(|a| match a {
        Action::Breach(u) if u.message_id() == id => Some(u),
        _ => None,
    })
}

impl BreachUpdate {
    /// A logged update read back from its wire section, in `case`; an error names the first
    /// field that cannot be used (evidence included: an update without it cannot be replayed).
    pub fn from_core(case: Option<CaseId>, core: &pb::BreachCore) -> Result<Self, EvidenceError> {
        let b = hru_domain::Breach::try_from(core.clone()).map_err(|e| fail(e.field, e.problem))?;
        let evidence = core.evidence.as_ref().ok_or_else(|| {
            fail(
                "evidence",
                "is missing (recorded before breaches carried their evidence)",
            )
        })?;
        Ok(Self {
            breach_id: b.breach_id,
            case,
            tag: b.tag_id,
            kind: b.kind,
            state: b.state,
            rule_id: b.rule_id,
            opened_at_ms: b.opened_at_ms,
            observed_at_ms: b.observed_at_ms,
            position: b.position,
            accuracy_m: b.accuracy_m,
            distance_m: b.distance_m,
            late: b.late,
            evidence: Box::new(
                Evidence::from_wire(evidence).map_err(|e| fail(format!("evidence.{}", e.at), e.problem))?,
            ),
        })
    }
}
