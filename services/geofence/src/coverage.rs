//! Coverage: whether each fitted tag is being watched at all, judged by the geofence's own
//! clock rather than by event time (which stands still when every gateway falls silent). A
//! tag none of whose messages has been read for the lapse time has lapsed monitoring: a
//! `MONITORING_LAPSED` breach opens, naming since when, and closes (restored) with the next
//! message read from the tag. Pure code: the clock comes in with each call.
//!
//! These decisions are the service's live observation, not the engine's judgement of logged
//! inputs, so a replay of the inputs does not reproduce them; each is still logged once (its
//! id derives from the tag and the time it was last heard).

use std::collections::HashMap;

use hru_domain::{CaseId, TagId};
use hru_wire::v1 as pb;
use sha2::{Digest as _, Sha256};

use crate::engine::{BreachUpdate, Evidence};

/// One watched tag.
#[derive(Debug, Clone)]
struct Watch {
    case: Option<CaseId>,
    /// When a message from it was last read (or watching began), geofence clock, Unix ms.
    heard_ms: i64,
    /// The open lapse: its breach id and since when.
    lapsed: Option<(uuid::Uuid, i64)>,
}

/// Each fitted tag's coverage.
#[derive(Debug, Clone)]
pub struct Coverage {
    lapse_after_ms: i64,
    tags: HashMap<TagId, Watch>,
}

fn lapse_id(tag: &TagId, since_ms: i64) -> uuid::Uuid {
    let digest = Sha256::digest(format!("hru.coverage.v1\0{tag}\0{since_ms}"));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl Coverage {
    /// Nothing watched; a tag lapses after `lapse_after_ms` unheard.
    pub fn new(lapse_after_ms: i64) -> Self {
        Self {
            lapse_after_ms,
            tags: HashMap::new(),
        }
    }

    /// Watch `tag` (of `case`) from `now_ms`, unless it is watched already; either way its
    /// lapses are of `case` from now on (a tag fitted again may be fitted for another case).
    pub fn watch(&mut self, tag: &TagId, case: Option<CaseId>, now_ms: i64) {
        self.tags
            .entry(tag.clone())
            .or_insert(Watch {
                case,
                heard_ms: now_ms,
                lapsed: None,
            })
            .case = case;
    }

    /// The tags watched that `fitted` does not name (removed while nobody watched): each
    /// stops being watched, and its open lapse closes.
    pub fn keep_only(&mut self, fitted: &std::collections::HashSet<TagId>, now_ms: i64) -> Vec<BreachUpdate> {
        let gone: Vec<TagId> = self.tags.keys().filter(|t| !fitted.contains(*t)).cloned().collect();
        gone.iter().filter_map(|t| self.unwatch(t, now_ms)).collect()
    }

    /// A lapse opened before a restart (read back from the log): it stays open, and closes when
    /// the tag is heard again.
    pub fn lapsed_before(
        &mut self,
        tag: &TagId,
        case: Option<CaseId>,
        breach_id: uuid::Uuid,
        since_ms: i64,
        now_ms: i64,
    ) {
        let w = self.tags.entry(tag.clone()).or_insert(Watch {
            case,
            heard_ms: now_ms,
            lapsed: None,
        });
        w.lapsed = Some((breach_id, since_ms));
    }

    /// A lapse read back from the log was closed: it is not open any more.
    pub fn restored_before(&mut self, tag: &TagId, breach_id: uuid::Uuid) {
        if let Some(w) = self.tags.get_mut(tag)
            && w.lapsed.is_some_and(|(id, _)| id == breach_id)
        {
            w.lapsed = None;
        }
    }

    /// Stop watching `tag` (removed); an open lapse closes.
    pub fn unwatch(&mut self, tag: &TagId, now_ms: i64) -> Option<BreachUpdate> {
        let w = self.tags.remove(tag)?;
        let (id, since) = w.lapsed?;
        Some(update(
            tag,
            w.case,
            id,
            since,
            now_ms,
            pb::BreachState::Closed,
            "closed: tag removed",
        ))
    }

    /// A message from `tag` was read at `now_ms`: an open lapse closes (monitoring restored).
    pub fn heard(&mut self, tag: &TagId, now_ms: i64) -> Option<BreachUpdate> {
        let w = self.tags.get_mut(tag)?;
        w.heard_ms = now_ms;
        let (id, since) = w.lapsed.take()?;
        Some(update(
            tag,
            w.case,
            id,
            since,
            now_ms,
            pb::BreachState::Closed,
            "closed: monitoring restored, the tag heard again",
        ))
    }

    /// The clock reads `now_ms`: every watched tag unheard for the lapse time lapses, once.
    /// `batch_ms` is when any position batch was last read, for the reason given.
    pub fn tick(&mut self, now_ms: i64, batch_ms: Option<i64>) -> Vec<BreachUpdate> {
        let mut out = Vec::new();
        let mut due: Vec<(&TagId, &mut Watch)> = self
            .tags
            .iter_mut()
            .filter(|(_, w)| w.lapsed.is_none() && now_ms - w.heard_ms >= self.lapse_after_ms)
            .collect();
        due.sort_by(|a, b| a.0.cmp(b.0));
        for (tag, w) in due {
            let id = lapse_id(tag, w.heard_ms);
            w.lapsed = Some((id, w.heard_ms));
            let why = match batch_ms {
                Some(b) if now_ms - b >= self.lapse_after_ms => format!(
                    "opened: nothing read from the tag for {} s, and no position batch from any gateway for {} s",
                    (now_ms - w.heard_ms) / 1000,
                    (now_ms - b) / 1000
                ),
                None => format!(
                    "opened: nothing read from the tag for {} s, and no position batch since the geofence started",
                    (now_ms - w.heard_ms) / 1000
                ),
                Some(_) => format!(
                    "opened: nothing read from the tag for {} s while its gateways send",
                    (now_ms - w.heard_ms) / 1000
                ),
            };
            out.push(update(
                tag,
                w.case,
                id,
                w.heard_ms,
                now_ms,
                pb::BreachState::Opened,
                &why,
            ));
        }
        out
    }

    /// Tags watched.
    pub fn watched(&self) -> usize {
        self.tags.len()
    }

    /// Tags whose monitoring has lapsed.
    pub fn lapsed(&self) -> usize {
        self.tags.values().filter(|w| w.lapsed.is_some()).count()
    }
}

fn update(
    tag: &TagId,
    case: Option<CaseId>,
    breach_id: uuid::Uuid,
    since_ms: i64,
    now_ms: i64,
    state: pb::BreachState,
    why: &str,
) -> BreachUpdate {
    BreachUpdate {
        breach_id,
        case,
        tag: tag.clone(),
        kind: pb::BreachKind::MonitoringLapsed,
        state,
        rule_id: crate::engine::device_rule_id(tag.as_str(), pb::BreachKind::MonitoringLapsed),
        opened_at_ms: since_ms,
        observed_at_ms: now_ms,
        position: None,
        accuracy_m: 0.0,
        distance_m: 0.0,
        late: false,
        evidence: Box::new(Evidence {
            thresholds: None,
            rule_version: 1,
            hysteresis: why.to_owned(),
            prior: crate::engine::Prior::default(),
            cause: crate::engine::Cause::Clock(now_ms),
            rule_digest: None,
            engine_logic: crate::engine::ENGINE_LOGIC,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_tag_lapses_once_and_is_restored_when_heard() {
        let tag: TagId = "tag-1".parse().unwrap_or_else(|_| unreachable!("a valid tag id"));
        let mut c = Coverage::new(10_000);
        c.watch(&tag, None, 0);
        assert!(c.tick(9_999, Some(0)).is_empty(), "not yet");
        let lapses = c.tick(10_000, Some(0));
        assert_eq!(lapses.len(), 1);
        assert_eq!(lapses[0].state, pb::BreachState::Opened);
        assert!(
            lapses[0].evidence.hysteresis.contains("no position batch"),
            "{:?}",
            lapses[0]
        );
        assert!(c.tick(20_000, Some(0)).is_empty(), "once");
        assert_eq!(c.lapsed(), 1);
        let restored = c.heard(&tag, 21_000).unwrap_or_else(|| unreachable!("a lapse closes"));
        assert_eq!(
            (restored.state, restored.breach_id),
            (pb::BreachState::Closed, lapses[0].breach_id)
        );
        assert!(c.tick(30_000, Some(30_000)).is_empty());
        let again = c.tick(31_000, Some(30_000));
        assert_eq!(again.len(), 1, "lapses again");
        assert_ne!(again[0].breach_id, lapses[0].breach_id, "a new episode");
        assert!(again[0].evidence.hysteresis.contains("while its gateways send"));
    }
}
