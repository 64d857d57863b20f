//! `hru geofence explain`: one breach's decisions, each replayed from the evidence it carries
//! through the pure engine and told in plain words. The zone or proximity rule and the tag's
//! fitting come from the case's log as the party reads it; the fixes come from the evidence,
//! so a breach stays explainable after its positions have expired. Exit 1 if any update's
//! replay does not give back the update logged.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventType};
use hru_geofence::engine::{Cause, OpenEpisode, Recorded, Seen, find, replay, rule_digest, zone_digest};
use hru_geofence::{BreachUpdate, Fix, Input, Inputs, Proximity};
use hru_log::SharedLog as _;
use hru_reader::{Incoming, Read};
use hru_wire::v1 as pb;
use prost::Message as _;
use serde_json::json;

use crate::Format;
use crate::replay::{Reader, case_filters};

/// What the case's log says that a breach's replay needs, in log order.
#[derive(Default)]
struct CaseLog {
    /// Zone and proximity-rule definitions by the digest of their definition: the first
    /// logged, (sequence, the input).
    definitions: BTreeMap<[u8; 32], (u64, Input)>,
    /// Each zone's or rule's definitions in log order: (sequence, digest, version).
    history: BTreeMap<uuid::Uuid, Vec<(u64, [u8; 32], u32)>>,
    /// The breach's updates: (sequence, the core as logged).
    updates: Vec<(u64, pb::BreachCore)>,
    /// The case's TagBreach events the read path refused (an update of the breach among them
    /// cannot be explained).
    refused: u64,
}

impl CaseLog {
    fn define(&mut self, sequence: u64, id: uuid::Uuid, digest: [u8; 32], version: u32, input: Input) {
        self.definitions.entry(digest).or_insert((sequence, input));
        self.history.entry(id).or_default().push((sequence, digest, version));
    }
}

/// `hru geofence explain --party P --keys DIR --case C --breach ID`.
pub(crate) async fn run(
    nats: &crate::Broker,
    policies_dir: &Path,
    party: &str,
    keys_dir: &Path,
    case: &str,
    breach: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let case: CaseId = case.parse().context("--case")?;
    let breach: uuid::Uuid = breach.parse().with_context(|| {
        format!("--breach {breach:?}: a breach id is a UUID, as the breach board and replay show it")
    })?;
    let now = jiff::Timestamp::now().as_millisecond();
    let Reader { log, mut read, .. } = Reader::open(nats, policies_dir, party, keys_dir, now).await?;
    let mut found = CaseLog::default();
    let mut inputs = Inputs::new();
    let mut entries = log.reader().replay(1, &case_filters(case)).await?;
    while let Some(entry) = entries.try_next().await? {
        let incoming = Incoming::logged(entry.sequence, entry.subject.as_str(), &entry.payload, entry.stored);
        let (envelope, opened) = match read.read(&incoming) {
            Ok(Read::Event { envelope, opened }) => (envelope, opened),
            Ok(_) => continue,
            Err(_) => {
                if entry
                    .subject
                    .matches(&hru_broker::Filter::case_events_of_type(case, EventType::TagBreach))
                {
                    found.refused += 1;
                }
                continue;
            }
        };
        if envelope.header.case_id != Some(case) {
            continue;
        }
        if envelope.header.event_type == EventType::TagBreach {
            let core = opened
                .sections
                .iter()
                .find(|s| s.name == "core")
                .and_then(|s| s.plaintext.as_ref().ok())
                .and_then(|p| pb::BreachCore::decode(p.as_slice()).ok());
            if let Some(core) = core.filter(|c| c.breach_id.as_slice() == breach.as_bytes()) {
                found.updates.push((entry.sequence, core));
            }
            continue;
        }
        for input in inputs.of(&opened) {
            match &input {
                Input::Zone(z) => {
                    let (id, digest, version) = (z.id, zone_digest(z), z.version);
                    found.define(entry.sequence, id, digest, version, input);
                }
                Input::Proximity(p) => {
                    let (id, digest) = (p.rule.rule_id, rule_digest(&p.rule));
                    let version = found.history.get(&id).map_or(0, Vec::len) as u32 + 1;
                    found.define(entry.sequence, id, digest, version, input);
                }
                _ => {}
            }
        }
    }
    if found.refused > 0 {
        eprintln!(
            "warning: {} of case {case}'s breach updates could not be read by {party} (refused by the read path); any of this breach among them is not explained",
            found.refused
        );
    }
    if found.updates.is_empty() {
        anyhow::bail!(
            "--breach {breach}: no TagBreach of case {case} with this id is readable by {party} (check the case and breach ids, and that {party} receives breaches)"
        );
    }
    let mut disagreements = 0usize;
    for (sequence, core) in &found.updates {
        let verdict = explain_one(&found, *sequence, Some(case), core);
        if !matches!(verdict.outcome, Outcome::Agrees | Outcome::NotEngine) {
            disagreements += 1;
        }
        match format {
            Format::Json => println!(
                "{}",
                json!({
                    "sequence": sequence,
                    "breach_id": breach.to_string(),
                    "state": pb::BreachState::try_from(core.state).map(|s| s.as_str_name()).unwrap_or("?"),
                    "kind": pb::BreachKind::try_from(core.kind).map(|k| k.as_str_name()).unwrap_or("?"),
                    "explanation": verdict.lines,
                    "replay": verdict.outcome.word(),
                    "detail": verdict.outcome.detail(),
                })
            ),
            Format::Human => {
                for line in &verdict.lines {
                    println!("{line}");
                }
                println!("  replay: {}", verdict.outcome.human());
            }
        }
    }
    if disagreements > 0 {
        eprintln!(
            "{disagreements} of {} updates of breach {breach} are not what their evidence gives",
            found.updates.len()
        );
        return Ok(ExitCode::from(crate::EXIT_FINDINGS));
    }
    Ok(ExitCode::SUCCESS)
}

/// How an update's replay came out.
enum Outcome {
    /// The engine, given the evidence, decides exactly the update logged.
    Agrees,
    /// A coverage decision by the geofence's clock: nothing for the engine to replay.
    NotEngine,
    /// The replay could not be set up (what is missing).
    Unreplayable(String),
    /// The engine decides something else (what differs).
    Disagrees(String),
}

impl Outcome {
    fn word(&self) -> &'static str {
        match self {
            Outcome::Agrees => "agrees",
            Outcome::NotEngine => "not-engine",
            Outcome::Unreplayable(_) => "unreplayable",
            Outcome::Disagrees(_) => "disagrees",
        }
    }

    fn detail(&self) -> String {
        match self {
            Outcome::Agrees => String::new(),
            Outcome::NotEngine => "a coverage decision by the geofence's own clock; no engine input to replay".into(),
            Outcome::Unreplayable(why) | Outcome::Disagrees(why) => why.clone(),
        }
    }

    fn human(&self) -> String {
        match self {
            Outcome::Agrees => "agrees (the engine, given this evidence, decides exactly this update)".into(),
            Outcome::NotEngine => format!("not replayed: {}", self.detail()),
            Outcome::Unreplayable(why) => format!("CANNOT REPLAY: {why}"),
            Outcome::Disagrees(why) => format!("DISAGREES: {why}"),
        }
    }
}

struct Verdict {
    lines: Vec<String>,
    outcome: Outcome,
}

fn explain_one(found: &CaseLog, sequence: u64, case: Option<CaseId>, core: &pb::BreachCore) -> Verdict {
    let recorded = match BreachUpdate::from_core(case, core) {
        Ok(u) => u,
        Err(e) => {
            return Verdict {
                lines: vec![format!("#{sequence} breach update")],
                outcome: Outcome::Unreplayable(e.to_string()),
            };
        }
    };
    let e = &recorded.evidence;
    // The definition the evidence names, logged before the update, of the update's rule.
    let definition = e
        .rule_digest
        .and_then(|d| found.definitions.get(&d))
        .filter(|(seq, _)| *seq < sequence)
        .map(|(_, input)| input)
        .filter(|input| match input {
            Input::Zone(z) => z.id == recorded.rule_id,
            Input::Proximity(p) => p.rule.rule_id == recorded.rule_id,
            _ => false,
        });
    let zone = definition.filter(|i| matches!(i, Input::Zone(_)));
    let rule = definition.and_then(|i| match i {
        Input::Proximity(p) => Some(Proximity {
            version: e.rule_version,
            ..(**p).clone()
        }),
        _ => None,
    });
    let mut lines = vec![format!(
        "#{sequence} {} {} of tag {}{}: {}",
        recorded.state.as_str_name().trim_start_matches("BREACH_STATE_"),
        recorded
            .kind
            .as_str_name()
            .trim_start_matches("BREACH_KIND_")
            .to_lowercase(),
        recorded.tag,
        if recorded.late { " (late)" } else { "" },
        rule_words(&recorded, zone, rule.as_ref()),
    )];
    // A newer definition logged before the update: the geofence may not have read it yet.
    if let Some(d) = e.rule_digest
        && let Some((used, _)) = found.definitions.get(&d)
        && let Some((seq, _, version)) = found
            .history
            .get(&recorded.rule_id)
            .and_then(|h| h.iter().rev().find(|(seq, digest, _)| *seq < sequence && *digest != d))
        && used < seq
    {
        lines.push(format!(
            "  note: a newer definition (v{version}, #{seq}) was logged before this update; the geofence decided under the one above"
        ));
    }
    lines.extend(prior_words(&recorded));
    lines.push(format!("  {}", cause_words(&recorded)));
    lines.push(format!("  → {}", e.hysteresis));
    let outcome = match decide(&recorded, definition.is_some(), zone, rule) {
        Ok(o) => o,
        Err(why) => Outcome::Unreplayable(why),
    };
    Verdict { lines, outcome }
}

/// Replay the update and compare.
fn decide(
    recorded: &BreachUpdate,
    found_definition: bool,
    zone: Option<&Input>,
    rule: Option<Proximity>,
) -> Result<Outcome, String> {
    // Only a coverage lapse is decided by the clock; anything else claiming it is not believed.
    let lapse = recorded.kind == pb::BreachKind::MonitoringLapsed;
    match (lapse, &recorded.evidence.cause) {
        (true, Cause::Clock(_)) => return Ok(Outcome::NotEngine),
        (true, _) => {
            return Ok(Outcome::Disagrees(
                "a monitoring lapse is decided by the geofence's clock, not by an engine input".into(),
            ));
        }
        (false, Cause::Clock(_)) => {
            return Ok(Outcome::Disagrees(format!(
                "a {} breach is decided by the engine, but its evidence names the clock",
                recorded.kind.as_str_name()
            )));
        }
        (false, _) => {}
    }
    let missing = || match recorded.evidence.rule_digest {
        None => format!("the evidence names no definition of {}", recorded.rule_id),
        Some(d) if !found_definition => format!(
            "the definition of {} with digest {} is not in the case's log before this update as the party reads it (expired, or the party does not receive zones and rules)",
            recorded.rule_id,
            hex::encode(&d[..8])
        ),
        Some(_) => format!("{} is not a definition of this kind", recorded.rule_id),
    };
    let mut setup = Vec::new();
    match recorded.kind {
        pb::BreachKind::Exclusion | pb::BreachKind::Curfew => setup.push(zone.cloned().ok_or_else(missing)?),
        pb::BreachKind::Proximity | pb::BreachKind::ProximityWarning => {
            setup.push(Input::Proximity(Box::new(rule.ok_or_else(missing)?)))
        }
        _ => {}
    }
    let actions = replay(
        &setup,
        &Recorded {
            tag: &recorded.tag,
            case: recorded.case,
            breach_id: recorded.breach_id,
            kind: recorded.kind,
            rule_id: recorded.rule_id,
            evidence: &recorded.evidence,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(match find(&actions, recorded) {
        Some(u) if u == recorded => Outcome::Agrees,
        Some(u) => Outcome::Disagrees(differences(recorded, u)),
        None => Outcome::Disagrees(format!(
            "the engine does not decide this update from its evidence (it decides: {})",
            decided(&actions)
        )),
    })
}

fn decided(actions: &[hru_geofence::Action]) -> String {
    let words: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            hru_geofence::Action::Breach(u) => Some(format!(
                "{} {}",
                u.state.as_str_name().trim_start_matches("BREACH_STATE_"),
                u.kind.as_str_name().trim_start_matches("BREACH_KIND_").to_lowercase()
            )),
            _ => None,
        })
        .collect();
    if words.is_empty() {
        "nothing".into()
    } else {
        words.join(", ")
    }
}

/// The fields in which the replay differs from the record.
fn differences(recorded: &BreachUpdate, replayed: &BreachUpdate) -> String {
    let mut out = Vec::new();
    let mut differ = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: logged {a}, replay {b}"));
        }
    };
    differ(
        "opened_at_ms",
        recorded.opened_at_ms.to_string(),
        replayed.opened_at_ms.to_string(),
    );
    differ(
        "position",
        format!("{:?}", recorded.position),
        format!("{:?}", replayed.position),
    );
    differ(
        "accuracy_m",
        recorded.accuracy_m.to_string(),
        replayed.accuracy_m.to_string(),
    );
    differ(
        "distance_m",
        recorded.distance_m.to_string(),
        replayed.distance_m.to_string(),
    );
    differ("late", recorded.late.to_string(), replayed.late.to_string());
    differ("case", format!("{:?}", recorded.case), format!("{:?}", replayed.case));
    differ(
        "evidence",
        format!("{:?}", recorded.evidence),
        format!("{:?}", replayed.evidence),
    );
    out.join("; ")
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| format!("{ms} ms"), |t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn rule_words(u: &BreachUpdate, zone: Option<&Input>, rule: Option<&Proximity>) -> String {
    let v = u.evidence.rule_version;
    match (zone, rule) {
        (Some(Input::Zone(z)), _) => format!(
            "{} zone '{}' v{v} ({})",
            if z.kind == pb::ZoneKind::Inclusion {
                "curfew"
            } else {
                "exclusion"
            },
            z.definition.label,
            z.id
        ),
        (_, Some(p)) => format!(
            "proximity rule {} v{v}: warning within {} m, breach within {} m, victim fix fresh for {} s",
            p.rule.rule_id, p.rule.warning_m, p.rule.breach_m, p.rule.max_victim_fix_age_s
        ),
        _ => match u.kind {
            pb::BreachKind::Exclusion | pb::BreachKind::Curfew => {
                format!("zone {} v{v} (not found in the log)", u.rule_id)
            }
            pb::BreachKind::Proximity | pb::BreachKind::ProximityWarning => {
                format!("proximity rule {} v{v} (not found in the log)", u.rule_id)
            }
            _ => "a device condition".into(),
        },
    }
}

fn seen_words(s: &Seen) -> String {
    format!(
        "fix {} at {}, accuracy {:.0} m, at {:.5},{:.5}",
        s.seq,
        time(s.device_ms),
        s.accuracy_m,
        s.position.0,
        s.position.1
    )
}

fn fix_words(f: &Fix, late_after_ms: Option<i64>) -> String {
    let at = match f.position {
        Some((lat, lon)) => format!("accuracy {:.0} m, at {lat:.5},{lon:.5}", f.accuracy_m),
        None => "without a GPS position".into(),
    };
    let delay = f.received_ms - f.device_ms;
    let late = match late_after_ms {
        Some(limit) if delay > limit => format!(", received {} s after it was taken (late)", delay / 1000),
        _ => String::new(),
    };
    let batch = if f.batch.is_nil() {
        String::new()
    } else {
        format!(", batch {}", f.batch)
    };
    format!(
        "fix {} at {}, {at}, battery {}%{}{late}{batch}",
        f.seq,
        time(f.device_ms),
        f.battery,
        if f.tampered { ", strap TAMPERED" } else { "" }
    )
}

fn episode_words(e: &OpenEpisode) -> String {
    let clear = match e.clear_since_ms {
        Some(since) => format!("clear for {} fixes since {}", e.clear_fixes, time(since)),
        None => "not clear".into(),
    };
    format!(
        "  episode open since {} (fix {}), last reported {}, {clear}",
        time(e.opened_ms),
        e.first_fix,
        time(e.last_report_ms)
    )
}

fn prior_words(u: &BreachUpdate) -> Vec<String> {
    let p = &u.evidence.prior;
    let mut out = Vec::new();
    if let Some(e) = &p.episode {
        out.push(episode_words(e));
    }
    if let Some(v) = &p.victim_fix {
        out.push(format!("  the victim's device: latest {}", seen_words(v)));
    }
    if let (Cause::VictimFix(_), Some(t)) = (&u.evidence.cause, &p.tag_fix) {
        out.push(format!("  the tag: latest {}", seen_words(t)));
    }
    if matches!(u.evidence.cause, Cause::Watermark(_)) {
        out.push(format!(
            "  the tag's last message {}, last GPS fix {}",
            time(p.last_comm_ms),
            time(p.last_gps_ms)
        ));
    }
    out
}

fn cause_words(u: &BreachUpdate) -> String {
    let late_after = u.evidence.thresholds.map(|t| t.late_after_ms);
    let distance = match (u.kind, u.state) {
        (pb::BreachKind::Exclusion, pb::BreachState::Closed) => format!(", {:.0} m from the zone's edge", u.distance_m),
        (pb::BreachKind::Exclusion, _) => format!(", inside the zone by {:.0} m", u.distance_m),
        (pb::BreachKind::Curfew, pb::BreachState::Closed) => {
            format!(", {:.0} m from the curfew zone's edge", u.distance_m)
        }
        (pb::BreachKind::Curfew, _) => format!(", outside the curfew zone by {:.0} m", u.distance_m),
        (pb::BreachKind::Proximity | pb::BreachKind::ProximityWarning, _) => {
            let victim_accuracy = match u.evidence.cause {
                Cause::VictimFix(f) => f.accuracy_m,
                _ => u.evidence.prior.victim_fix.map_or(0.0, |v| v.accuracy_m),
            };
            let slack = u.accuracy_m + victim_accuracy;
            format!(
                ", {:.0} m from the victim's device (between {:.0} and {:.0} m allowing for both accuracies)",
                u.distance_m,
                (u.distance_m - slack).max(0.0),
                u.distance_m + slack
            )
        }
        _ => String::new(),
    };
    match &u.evidence.cause {
        Cause::TagFix(f) => format!("{}{distance}", fix_words(f, late_after)),
        Cause::VictimFix(f) => format!("the victim's device {}{distance}", fix_words(f, late_after)),
        Cause::Watermark(at) => format!("event time (the gateways' heartbeats) reached {}", time(*at)),
        Cause::ZoneRevoked(at) => format!("the zone was revoked at {}", time(*at)),
        Cause::Clock(at) => format!("the geofence's own clock read {}", time(*at)),
    }
}
