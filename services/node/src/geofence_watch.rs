//! "Geofence silent": a node whose party receives breaches (the control room) watches the
//! geofence's signed heartbeats in `HRU_HEARTBEATS` and judges, by its own clock, whether the
//! geofence is still watching. No heartbeat stored for longer than the limit (or none at all)
//! is silence: `StreamBreaches` says so, and so do the
//! node's metrics, so a quiet breach board is never mistaken for a quiet night.

use std::sync::Arc;
use std::time::Duration;

use hru_wire::v1 as pb;
use prometheus_client::metrics::gauge::Gauge;

use crate::Shared;

/// The node's view of the geofence, published to its breach streams and metrics.
pub(crate) struct Watch {
    /// The latest status.
    pub(crate) status: tokio::sync::watch::Sender<pb::GeofenceStatus>,
    /// 1 while the geofence is silent.
    pub(crate) silent: Gauge,
    /// The latest heartbeat's store time, Unix ms (0: none heard).
    pub(crate) heard_ms: Gauge,
    /// Whether this node watches the geofence (its party receives breaches).
    pub(crate) watching: std::sync::atomic::AtomicBool,
}

impl Watch {
    /// Silent until a heartbeat is heard; `silent` and `heard_ms` are the node's metrics.
    pub(crate) fn new(silent: Gauge, heard_ms: Gauge) -> Self {
        let (status, _) = tokio::sync::watch::channel(pb::GeofenceStatus {
            silent: true,
            ..Default::default()
        });
        Self {
            status,
            silent,
            heard_ms,
            watching: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Every believed heartbeat among those stored: (store time, heartbeat).
async fn believed(
    stream: &hru_log::KeptStream,
    directory: &hru_envelope::Directory,
    geofences: &[hru_domain::PartyId],
    tolerance_ms: i64,
) -> Result<Vec<(i64, pb::GeofenceHeartbeat)>, String> {
    let entries = stream
        .list(&hru_broker::Filter::all_heartbeats())
        .await
        .map_err(|e| e.to_string())?;
    let mut believed = Vec::new();
    for e in &entries {
        let stored = match e.stored {
            hru_broker::StoredAt::Exactly(ms) => ms,
            _ => continue,
        };
        match hru_log::heartbeats::verify(e, directory, tolerance_ms) {
            Ok(h) if geofences.iter().any(|g| g.as_str() == h.party) => believed.push((stored, h)),
            Ok(h) => tracing::warn!(party = %h.party, "a heartbeat from a party that is not a geofence; ignored"),
            Err(why) => tracing::warn!(%why, subject = %e.subject, "a heartbeat not believed; ignored"),
        }
    }
    Ok(believed)
}

/// The geofence's status at `now_ms` from the believed heartbeats: each partition of the
/// position stream (as many as the newest heartbeat names) must have been beaten for within
/// `limit_ms` by whichever instance holds it; one never beaten for, or not lately, is silent.
fn judge(believed: &[(i64, pb::GeofenceHeartbeat)], now_ms: i64, limit_ms: i64) -> pb::GeofenceStatus {
    let Some((at, newest)) = believed.iter().max_by_key(|(at, _)| *at) else {
        return pb::GeofenceStatus {
            silent: true,
            silent_partitions: vec![0],
            partitions: 1,
            ..Default::default()
        };
    };
    let partitions = newest.partitions.max(1);
    let mut latest: Vec<Option<&(i64, pb::GeofenceHeartbeat)>> = vec![None; partitions as usize];
    for b in believed {
        // A heartbeat from before partitions speaks for the whole stream: partition 0 of 1.
        let (partition, of) = (b.1.partition, b.1.partitions.max(1));
        if of != partitions || partition >= partitions {
            continue;
        }
        let slot = &mut latest[partition as usize];
        if slot.is_none_or(|l| b.0 > l.0) {
            *slot = Some(b);
        }
    }
    let fresh = |l: &Option<&(i64, pb::GeofenceHeartbeat)>| l.is_some_and(|(at, _)| now_ms - at <= limit_ms);
    let silent_partitions: Vec<u32> = (0..partitions).filter(|p| !fresh(&latest[*p as usize])).collect();
    let held = latest.iter().filter(|l| fresh(l)).flatten();
    let (pending, tags_lapsed) = held.fold((0u64, 0u32), |(p, t), (_, h)| {
        (p.saturating_add(h.pending), t.saturating_add(h.tags_lapsed))
    });
    pb::GeofenceStatus {
        silent: !silent_partitions.is_empty(),
        last_heartbeat_ms: *at,
        instance: newest.instance.clone(),
        pending,
        event_time_ms: newest.event_time_ms,
        tags_lapsed,
        silent_partitions,
        partitions,
    }
}

/// Judge the geofence every second until `stop`: silent when no believed heartbeat was stored
/// within `silent_after`, or none at all.
pub(crate) async fn watch_loop(
    shared: Arc<Shared>,
    silent_after: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    shared.geofence.silent.set(1);
    let limit = i64::try_from(silent_after.as_millis()).unwrap_or(i64::MAX);
    let geofences: Vec<hru_domain::PartyId> = shared
        .deployment
        .in_force_now()
        .map(|isa| {
            isa.parties
                .iter()
                .filter(|(_, info)| info.role == hru_policy::Role::Geofence)
                .map(|(p, _)| p.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut stream: Option<hru_log::KeptStream> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        if stream.is_none() {
            match hru_log::KeptStream::on(shared.log.client(), hru_broker::stream::heartbeats_config(1)).await {
                Ok(s) => stream = Some(s),
                Err(e) => tracing::warn!(cause = %e, "HRU_HEARTBEATS not readable: the geofence counts as silent"),
            }
        }
        let heard = match &stream {
            Some(s) => match believed(s, &shared.deployment.directory, &geofences, limit).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(cause = %e, "heartbeats not read");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let now = jiff::Timestamp::now().as_millisecond();
        // Never heard is silent: nothing says the geofence is watching.
        let status = judge(&heard, now, limit);
        let silent = status.silent;
        let watch = &shared.geofence;
        watch.silent.set(i64::from(silent));
        watch.heard_ms.set(status.last_heartbeat_ms);
        watch.status.send_if_modified(|old| {
            let flipped = old.silent != status.silent || old.silent_partitions != status.silent_partitions;
            if flipped {
                if silent {
                    tracing::warn!(
                        last_heartbeat_ms = status.last_heartbeat_ms,
                        partitions = ?status.silent_partitions,
                        "the geofence is silent: breaches may go unseen"
                    );
                } else {
                    tracing::info!(instance = %status.instance, "the geofence is heard again");
                }
            }
            *old = status;
            flipped
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(partition: u32, partitions: u32, instance: &str) -> pb::GeofenceHeartbeat {
        pb::GeofenceHeartbeat {
            party: "geofence".into(),
            instance: instance.into(),
            partition,
            partitions,
            tags_lapsed: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_partition_nobody_beats_for_is_silent_though_others_are_heard() {
        let now = 1_000_000;
        let limit = 15_000;
        // Partitions 0 and 2 heard lately; partition 1's holder stopped 20 s ago.
        let heard = vec![
            (now - 1_000, beat(0, 3, "a")),
            (now - 20_000, beat(1, 3, "b")),
            (now - 2_000, beat(2, 3, "c")),
        ];
        let status = judge(&heard, now, limit);
        assert!(status.silent);
        assert_eq!(status.silent_partitions, vec![1]);
        assert_eq!(status.partitions, 3);
        assert_eq!(status.tags_lapsed, 2, "lapses as the partitions' holders said");
        // Another instance takes partition 1 and beats for it: heard again.
        let mut heard = heard;
        heard.push((now - 500, beat(1, 3, "a")));
        let status = judge(&heard, now, limit);
        assert!(!status.silent && status.silent_partitions.is_empty());
        // A heartbeat from before partitions speaks for the whole stream.
        let status = judge(&[(now - 100, beat(0, 0, "old"))], now, limit);
        assert!(!status.silent);
        assert_eq!(status.partitions, 1);
        // Nothing heard: silent.
        assert!(judge(&[], now, limit).silent);
    }
}
