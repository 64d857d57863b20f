//! The engine's state to and from its wire form (`hru.v1.EngineState`): what a geofence
//! snapshot seals. Everything the state holds goes in; ids are written in a fixed order, so
//! the same state always gives the same bytes, and a state read back decides every later
//! input exactly as the one written.

use hru_domain::zone::Zone;
use hru_domain::{CaseId, DeviceId, FieldError, TagId};
use hru_wire::v1 as pb;
use sha2::{Digest as _, Sha256};

use super::{Config, Episode, Proximity, RuleKey, Seen, State, TagState};

/// Why a snapshot's engine state cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("snapshot engine state: {at}: {problem}")]
pub struct StateError {
    /// Where in the state (e.g. `tags[3].open[0].breach_id`).
    pub at: String,
    /// What is wrong.
    pub problem: String,
}

fn fail(at: impl Into<String>, problem: impl std::fmt::Display) -> StateError {
    StateError {
        at: at.into(),
        problem: problem.to_string(),
    }
}

fn id(bytes: &[u8], at: &str) -> Result<uuid::Uuid, StateError> {
    uuid::Uuid::from_slice(bytes).map_err(|_| fail(at, "must be 16 bytes"))
}

fn case(bytes: &[u8], at: &str) -> Result<Option<CaseId>, StateError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    id(bytes, at).map(|u| Some(CaseId(u)))
}

fn case_bytes(case: Option<CaseId>) -> Vec<u8> {
    case.map(|c| c.0.as_bytes().to_vec()).unwrap_or_default()
}

fn field(at: &str) -> impl Fn(FieldError) -> StateError + '_ {
    move |e| fail(format!("{at}.{}", e.field), e.problem)
}

fn kind(value: i32, at: &str) -> Result<pb::BreachKind, StateError> {
    pb::BreachKind::try_from(value).map_err(|_| fail(at, format!("{value} is not a breach kind")))
}

fn key_to_wire(key: RuleKey) -> pb::SnapshotRuleKey {
    let (rule, id, device_kind) = match key {
        RuleKey::Zone(id) => (1, id.as_bytes().to_vec(), 0),
        RuleKey::ProximityWarning(id) => (2, id.as_bytes().to_vec(), 0),
        RuleKey::Proximity(id) => (3, id.as_bytes().to_vec(), 0),
        RuleKey::Device(kind) => (4, Vec::new(), kind as i32),
    };
    pb::SnapshotRuleKey { rule, id, device_kind }
}

fn key_from_wire(key: Option<&pb::SnapshotRuleKey>, at: &str) -> Result<RuleKey, StateError> {
    let key = key.ok_or_else(|| fail(at, "is missing"))?;
    let rule_id = || id(&key.id, &format!("{at}.id"));
    Ok(match key.rule {
        1 => RuleKey::Zone(rule_id()?),
        2 => RuleKey::ProximityWarning(rule_id()?),
        3 => RuleKey::Proximity(rule_id()?),
        4 => RuleKey::Device(kind(key.device_kind, &format!("{at}.device_kind"))?),
        other => return Err(fail(format!("{at}.rule"), format!("{other} is not 1 to 4"))),
    })
}

fn fix_to_wire(f: &Seen) -> pb::SnapshotFix {
    pb::SnapshotFix {
        seq: f.seq,
        device_ms: f.device_ms,
        lat: f.position.0,
        lon: f.position.1,
        accuracy_m: f.accuracy_m,
        batch_event_id: batch_bytes(f.batch),
    }
}

fn fix_from_wire(f: &pb::SnapshotFix, at: &str) -> Result<Seen, StateError> {
    Ok(Seen {
        seq: f.seq,
        device_ms: f.device_ms,
        position: (f.lat, f.lon),
        accuracy_m: f.accuracy_m,
        batch: batch_id(&f.batch_event_id, &format!("{at}.batch_event_id"))?,
    })
}

/// A batch event id's bytes: empty when not known.
pub(crate) fn batch_bytes(batch: uuid::Uuid) -> Vec<u8> {
    if batch.is_nil() {
        Vec::new()
    } else {
        batch.as_bytes().to_vec()
    }
}

/// A batch event id from its bytes: nil when empty.
pub(crate) fn batch_id(bytes: &[u8], at: &str) -> Result<uuid::Uuid, StateError> {
    if bytes.is_empty() {
        Ok(uuid::Uuid::nil())
    } else {
        id(bytes, at)
    }
}

/// Lists keyed by a tag or device id, sorted by key.
fn id_lists<K: ToString>(map: &super::FastMap<K, Vec<uuid::Uuid>>) -> Vec<pb::IdList> {
    let mut lists: Vec<pb::IdList> = map
        .iter()
        .map(|(k, ids)| pb::IdList {
            key: k.to_string(),
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .collect();
    lists.sort_by(|a, b| a.key.cmp(&b.key));
    lists
}

/// Lists keyed by a tag or device id (`parse` reads the key), named `name` in errors.
fn read_id_lists<K: std::hash::Hash + Eq>(
    lists: &[pb::IdList],
    name: &str,
    parse: fn(&str, &str) -> Result<K, FieldError>,
) -> Result<super::FastMap<K, Vec<uuid::Uuid>>, StateError> {
    let mut out = super::FastMap::default();
    for (i, list) in lists.iter().enumerate() {
        let at = format!("{name}[{i}]");
        let key = parse(&list.key, "key").map_err(field(&at))?;
        let ids = list
            .ids
            .iter()
            .enumerate()
            .map(|(j, b)| id(b, &format!("{at}.ids[{j}]")))
            .collect::<Result<_, _>>()?;
        out.insert(key, ids);
    }
    Ok(out)
}

/// The engine's decision logic, as far as snapshots are concerned: raise it with any change
/// that would decide an input differently, so a state computed by the older logic is replayed
/// rather than continued.
pub const ENGINE_LOGIC: u32 = 2;

/// SHA-256 of the thresholds and the decision logic: a snapshot computed under others is not
/// used.
pub fn config_digest(config: &Config) -> [u8; 32] {
    Sha256::digest(format!("hru.geofence.config.v1\0{ENGINE_LOGIC}\0{config:?}")).into()
}

/// The digest of the thresholds and of the partition the state judges (`partition` of
/// `partitions`): a snapshot of another partition's tags, or taken under another number of
/// partitions, is not used. One partition is the whole stream: its digest is
/// [`config_digest`]'s.
pub fn partitioned_config_digest(config: &Config, partition: u32, partitions: u32) -> [u8; 32] {
    if partitions <= 1 {
        return config_digest(config);
    }
    Sha256::digest(format!(
        "hru.geofence.config.v1\0{ENGINE_LOGIC}\0{config:?}\0partition {partition} of {partitions}"
    ))
    .into()
}

impl State {
    /// The state's wire form.
    pub fn to_snapshot(&self) -> pb::EngineState {
        let mut zones: Vec<&Zone> = self.zones.values().collect();
        zones.sort_by_key(|z| z.id);
        let mut rules: Vec<&Proximity> = self.rules.values().collect();
        rules.sort_by_key(|r| r.rule.rule_id);
        let mut tags: Vec<(&TagId, &TagState)> = self.tags.iter().collect();
        tags.sort_by(|a, b| a.0.cmp(b.0));
        let mut victims: Vec<_> = self.victims.iter().collect();
        victims.sort_by(|a, b| a.0.cmp(b.0));
        pb::EngineState {
            zones: zones
                .into_iter()
                .map(|z| pb::SnapshotZone {
                    core: Some(pb::ZoneCore::from(&z.definition)),
                    case_id: case_bytes(z.case),
                })
                .collect(),
            inclusion_by_tag: id_lists(&self.inclusion_by_tag),
            proximity_by_tag: id_lists(&self.proximity_by_tag),
            proximity_by_victim: id_lists(&self.proximity_by_victim),
            rules: rules
                .into_iter()
                .map(|r| pb::SnapshotRule {
                    core: Some(pb::ProximityCore::from(&r.rule)),
                    case_id: case_bytes(r.case),
                    version: r.version,
                })
                .collect(),
            tags: tags.into_iter().map(|(tag, t)| tag_to_wire(tag, t)).collect(),
            victims: victims
                .into_iter()
                .map(|(device, fix)| pb::SnapshotVictim {
                    device: device.to_string(),
                    fix: Some(fix_to_wire(fix)),
                })
                .collect(),
            watermark_ms: self.watermark_ms,
        }
    }

    /// A state read back from its wire form, evaluated under `config`; an error names the
    /// first part that cannot be used.
    pub fn from_snapshot(config: Config, s: &pb::EngineState) -> Result<Self, StateError> {
        let mut state = Self::new(config);
        state.watermark_ms = s.watermark_ms;
        for (i, z) in s.zones.iter().enumerate() {
            let at = format!("zones[{i}]");
            let core = z.core.clone().ok_or_else(|| fail(format!("{at}.core"), "is missing"))?;
            let definition = hru_domain::Zone::try_from(core).map_err(field(&format!("{at}.core")))?;
            let zone = Zone::parse(&definition, case(&z.case_id, &format!("{at}.case_id"))?)
                .map_err(|e| fail(format!("{at}.core.{}", e.field), e.problem))?;
            if zone.kind != pb::ZoneKind::Inclusion {
                state.index_exclusion(&zone);
            }
            state.digests.insert(zone.id, super::zone_digest(&zone));
            state.zones.insert(zone.id, zone);
        }
        state.inclusion_by_tag = read_id_lists(&s.inclusion_by_tag, "inclusion_by_tag", TagId::parse)?;
        state.proximity_by_tag = read_id_lists(&s.proximity_by_tag, "proximity_by_tag", TagId::parse)?;
        state.proximity_by_victim = read_id_lists(&s.proximity_by_victim, "proximity_by_victim", DeviceId::parse)?;
        for (i, r) in s.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let core = r.core.clone().ok_or_else(|| fail(format!("{at}.core"), "is missing"))?;
            let rule = hru_domain::ProximityRule::try_from(core).map_err(field(&format!("{at}.core")))?;
            let case = case(&r.case_id, &format!("{at}.case_id"))?;
            state.digests.insert(rule.rule_id, super::rule_digest(&rule));
            state.rules.insert(
                rule.rule_id,
                Proximity {
                    rule,
                    case,
                    version: r.version,
                },
            );
        }
        for (i, t) in s.tags.iter().enumerate() {
            let at = format!("tags[{i}]");
            let tag = TagId::parse(&t.tag_id, "tag_id").map_err(field(&at))?;
            state.tags.insert(tag, tag_from_wire(t, &at)?);
        }
        for (i, v) in s.victims.iter().enumerate() {
            let at = format!("victims[{i}]");
            let device = DeviceId::parse(&v.device, "device").map_err(field(&at))?;
            let fix = v.fix.as_ref().ok_or_else(|| fail(format!("{at}.fix"), "is missing"))?;
            state.victims.insert(device, fix_from_wire(fix, &format!("{at}.fix"))?);
        }
        Ok(state)
    }

    /// Forget every position taken before `cutoff_ms` (device time): a tag's latest fix and a
    /// victim's, once their retention has ended. How many were forgotten.
    pub fn forget_positions_before(&mut self, cutoff_ms: i64) -> usize {
        let mut forgotten = 0;
        for t in self.tags.values_mut() {
            if t.last_fix.is_some_and(|f| f.device_ms < cutoff_ms) {
                t.last_fix = None;
                forgotten += 1;
            }
        }
        let before = self.victims.len();
        self.victims.retain(|_, f| f.device_ms >= cutoff_ms);
        forgotten + (before - self.victims.len())
    }
}

fn tag_to_wire(tag: &TagId, t: &TagState) -> pb::SnapshotTag {
    pb::SnapshotTag {
        tag_id: tag.to_string(),
        case_id: case_bytes(t.case),
        victim_device: t.victim_device.as_ref().map(ToString::to_string).unwrap_or_default(),
        fitted: t.fitted,
        last_device_ms: t.last_device_ms,
        last_comm_ms: t.last_comm_ms,
        last_gps_ms: t.last_gps_ms,
        last_fix: t.last_fix.as_ref().map(fix_to_wire),
        open: t
            .open
            .iter()
            .map(|(key, e)| pb::SnapshotEpisode {
                key: Some(key_to_wire(*key)),
                breach_id: e.breach_id.as_bytes().to_vec(),
                kind: e.kind as i32,
                rule_id: e.rule_id.as_bytes().to_vec(),
                rule_version: e.rule_version,
                opened_ms: e.opened_ms,
                first_fix: e.first_fix,
                last_report_ms: e.last_report_ms,
                clear_fixes: e.clear_fixes,
                clear: e.clear_since_ms.is_some(),
                clear_since_ms: e.clear_since_ms.unwrap_or_default(),
                late: e.late,
            })
            .collect(),
        possible: t
            .possible
            .iter()
            .map(|(key, seq)| pb::SnapshotPossible {
                key: Some(key_to_wire(*key)),
                fix_seq: *seq,
            })
            .collect(),
        history: t
            .history
            .iter()
            .map(|(key, opened, closed)| pb::SnapshotClosed {
                key: Some(key_to_wire(*key)),
                opened_ms: *opened,
                closed_ms: *closed,
            })
            .collect(),
        stale_reported: t
            .stale_reported
            .iter()
            .map(|(rule, reported)| pb::SnapshotStale {
                rule_id: rule.as_bytes().to_vec(),
                reported: *reported,
            })
            .collect(),
    }
}

fn tag_from_wire(t: &pb::SnapshotTag, at: &str) -> Result<TagState, StateError> {
    let mut state = TagState {
        case: case(&t.case_id, &format!("{at}.case_id"))?,
        victim_device: if t.victim_device.is_empty() {
            None
        } else {
            Some(DeviceId::parse(&t.victim_device, "victim_device").map_err(field(at))?)
        },
        fitted: t.fitted,
        last_device_ms: t.last_device_ms,
        last_comm_ms: t.last_comm_ms,
        last_gps_ms: t.last_gps_ms,
        last_fix: t
            .last_fix
            .as_ref()
            .map(|f| fix_from_wire(f, &format!("{at}.last_fix")))
            .transpose()?,
        ..TagState::default()
    };
    for (i, e) in t.open.iter().enumerate() {
        let at = format!("{at}.open[{i}]");
        let key = key_from_wire(e.key.as_ref(), &format!("{at}.key"))?;
        let episode = Episode {
            breach_id: id(&e.breach_id, &format!("{at}.breach_id"))?,
            kind: kind(e.kind, &format!("{at}.kind"))?,
            rule_id: id(&e.rule_id, &format!("{at}.rule_id"))?,
            rule_version: e.rule_version,
            opened_ms: e.opened_ms,
            first_fix: e.first_fix,
            last_report_ms: e.last_report_ms,
            clear_fixes: e.clear_fixes,
            clear_since_ms: e.clear.then_some(e.clear_since_ms),
            late: e.late,
        };
        state.open.insert(key, episode);
    }
    for (i, p) in t.possible.iter().enumerate() {
        let key = key_from_wire(p.key.as_ref(), &format!("{at}.possible[{i}].key"))?;
        state.possible.insert(key, p.fix_seq);
    }
    for (i, h) in t.history.iter().enumerate() {
        let key = key_from_wire(h.key.as_ref(), &format!("{at}.history[{i}].key"))?;
        state.history.push((key, h.opened_ms, h.closed_ms));
    }
    for (i, s) in t.stale_reported.iter().enumerate() {
        let rule = id(&s.rule_id, &format!("{at}.stale_reported[{i}].rule_id"))?;
        state.stale_reported.insert(rule, s.reported);
    }
    Ok(state)
}
