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

/// The newest believed heartbeat among those stored: (store time, heartbeat).
async fn newest(
    stream: &hru_log::KeptStream,
    directory: &hru_envelope::Directory,
    geofences: &[hru_domain::PartyId],
    tolerance_ms: i64,
) -> Result<Option<(i64, pb::GeofenceHeartbeat)>, String> {
    let entries = stream
        .list(&hru_broker::Filter::all_heartbeats())
        .await
        .map_err(|e| e.to_string())?;
    let mut newest: Option<(i64, pb::GeofenceHeartbeat)> = None;
    for e in &entries {
        let stored = match e.stored {
            hru_broker::StoredAt::Exactly(ms) => ms,
            _ => continue,
        };
        match hru_log::heartbeats::verify(e, directory, tolerance_ms) {
            Ok(h) if geofences.iter().any(|g| g.as_str() == h.party) => {
                if newest.as_ref().is_none_or(|(at, _)| stored > *at) {
                    newest = Some((stored, h));
                }
            }
            Ok(h) => tracing::warn!(party = %h.party, "a heartbeat from a party that is not a geofence; ignored"),
            Err(why) => tracing::warn!(%why, subject = %e.subject, "a heartbeat not believed; ignored"),
        }
    }
    Ok(newest)
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
            Some(s) => match newest(s, &shared.deployment.directory, &geofences, limit).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(cause = %e, "heartbeats not read");
                    None
                }
            },
            None => None,
        };
        let now = jiff::Timestamp::now().as_millisecond();
        // Never heard is silent: nothing says the geofence is watching.
        let silent = heard.as_ref().is_none_or(|(at, _)| now - at > limit);
        let status = match heard {
            Some((at, h)) => pb::GeofenceStatus {
                silent,
                last_heartbeat_ms: at,
                instance: h.instance,
                pending: h.pending,
                event_time_ms: h.event_time_ms,
                tags_lapsed: h.tags_lapsed,
            },
            None => pb::GeofenceStatus {
                silent,
                ..Default::default()
            },
        };
        let watch = &shared.geofence;
        watch.silent.set(i64::from(silent));
        watch.heard_ms.set(status.last_heartbeat_ms);
        watch.status.send_if_modified(|old| {
            let flipped = old.silent != status.silent;
            if flipped {
                if silent {
                    tracing::warn!(
                        last_heartbeat_ms = status.last_heartbeat_ms,
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
