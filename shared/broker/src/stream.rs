//! Stream names and configurations (DESIGN §8): the shared log `HRU_EVENTS`, the position
//! stream `HRU_POSITIONS` and each party's view `HRU_VIEW_<party>`; the safety check of an
//! existing log; provisioning.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use hru_domain::PartyId;

use crate::error::{BrokerError, request};
use crate::rights::Rights;
use crate::subject::Filter;

/// Name of the event stream.
pub const EVENTS_STREAM: &str = "HRU_EVENTS";
/// Name of the position stream.
pub const POSITIONS_STREAM: &str = "HRU_POSITIONS";
/// Name of the geofence's state-snapshot stream.
pub const SNAPSHOTS_STREAM: &str = "HRU_SNAPSHOTS";
/// Name of the geofence's heartbeat stream.
pub const HEARTBEATS_STREAM: &str = "HRU_HEARTBEATS";
/// Most bytes `HRU_SNAPSHOTS` holds (the oldest go first beyond it).
pub const SNAPSHOTS_MAX_BYTES: i64 = 2 << 30;
/// Largest message `HRU_SNAPSHOTS` takes (snapshots are written in 512 KiB chunks).
pub const SNAPSHOTS_MAX_MESSAGE: i32 = 1 << 20;
/// Prefix of each party's view stream.
pub const VIEW_STREAM_PREFIX: &str = "HRU_VIEW_";
/// Shortest duplicate window accepted for exactly-once publish on retry.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Header a sourcing stream stamps on each copy: `<source stream> <source sequence> …`.
pub const SOURCE_HEADER: &str = "Nats-Stream-Source";
/// Header naming the subject filter of `Nats-Expected-Last-Subject-Sequence`.
pub const EXPECTED_SUBJECT_HEADER: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

/// The API subject of a batched direct get on `stream` (answered by any current replica).
pub fn direct_get_api(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// The API subject of a direct get of the last message on `subject` in `stream`.
pub fn last_message_api(stream: &str, subject: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}.{subject}")
}

/// The API subject of a message get on `stream` (answered by the stream leader).
pub fn message_get_api(stream: &str) -> String {
    format!("$JS.API.STREAM.MSG.GET.{stream}")
}

/// The view stream of a party.
pub fn view_stream(party: &PartyId) -> String {
    format!("{VIEW_STREAM_PREFIX}{party}")
}

/// Subjects of the event stream: case events, access records, key grants, public control events.
pub fn event_filters() -> Vec<Filter> {
    vec![
        Filter::all_case_events(),
        Filter::all_access(),
        Filter::all_key_grants(),
        Filter::all_control(),
    ]
}

fn strings(filters: Vec<Filter>) -> Vec<String> {
    filters.into_iter().map(String::from).collect()
}

/// The stream of one paired victim device: its alerts and its receipts of them, which only
/// that device reads.
pub fn alert_stream(device: &str) -> String {
    format!("HRU_ALERTS_{device}")
}

/// The broker identity of a paired victim device (party ids have no `.`, so no party has it).
pub fn device_identity(device: &str) -> String {
    format!("device.{device}")
}

/// How long a device stream remembers an alert's id: a geofence restarted within this sends no
/// alert twice for one breach decision.
pub const ALERT_DUPLICATE_WINDOW: Duration = Duration::from_secs(86_400);

/// A device's stream: `hru.alert.<device>` and `hru.receipt.<device>`, kept `max_age` (the
/// agreement's retention of breaches), deduplicated by alert id.
pub fn alerts_config(device: &str, max_age: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: alert_stream(device),
        subjects: vec![
            crate::Subject::alert(device).into(),
            crate::Subject::receipt(device).into(),
        ],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: ALERT_DUPLICATE_WINDOW.min(max_age),
        max_age,
        deny_delete: true,
        deny_purge: true,
        // The device pages through it with batched direct gets.
        allow_direct: true,
        ..Default::default()
    }
}

/// Create or update the stream of each paired device (the provisioner's job).
pub async fn provision_devices(
    client: &async_nats::Client,
    devices: &[String],
    max_age: Duration,
    replicas: usize,
) -> Result<(), BrokerError> {
    let js = jetstream::new(client.clone());
    for device in devices {
        create_or_update(&js, alerts_config(device, max_age, replicas), "provision device stream").await?;
    }
    Ok(())
}

/// Create the stream of `config`, or update it to `config` when it exists.
async fn create_or_update(
    js: &jetstream::Context,
    config: stream::Config,
    operation: &'static str,
) -> Result<(), BrokerError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(_) => js.update_stream(config).await.map(|_| ()),
        Err(_) => js.create_stream(config).await.map(|_| ()),
    }
    .map_err(|e| BrokerError::Request {
        operation,
        source: format!("{name}: {e}").into(),
    })
}

/// The configuration the event log requires.
pub fn events_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: strings(event_filters()),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: MIN_DUPLICATE_WINDOW,
        deny_delete: true,
        deny_purge: true,
        // A producer resolves an ambiguous append by the last message on its own subject.
        allow_direct: true,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// The position stream, kept for `max_age` (the agreement's retention of position batches),
/// divided into `partitions` (named in its metadata, where gateways and geofences read it).
pub fn positions_config(max_age: Duration, replicas: usize, partitions: u32) -> stream::Config {
    stream::Config {
        name: POSITIONS_STREAM.to_owned(),
        subjects: vec![Filter::all_positions().into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: MIN_DUPLICATE_WINDOW,
        max_age,
        deny_delete: true,
        deny_purge: true,
        // Readers page through it with batched direct gets.
        allow_direct: true,
        metadata: [(PARTITIONS_METADATA.to_owned(), partitions.max(1).to_string())].into(),
        ..Default::default()
    }
}

/// Metadata key of `HRU_POSITIONS` naming how many partitions it is divided into (absent: 1).
pub const PARTITIONS_METADATA: &str = "hru.partitions";
/// Most partitions the position stream may be divided into.
pub const MAX_PARTITIONS: u32 = 16;
/// The priority group of every partition's consumer: the geofence instances pulling it.
pub const PARTITION_GROUP: &str = "geofence";
/// How long the instance holding a partition may go without pulling before a standby takes it.
pub const PARTITION_PIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The partitions a position stream's metadata names: 1 when it names none; an error when the
/// value is not a number from 1 to [`MAX_PARTITIONS`].
pub fn partitions_of(metadata: &std::collections::HashMap<String, String>) -> Result<u32, String> {
    match metadata.get(PARTITIONS_METADATA) {
        None => Ok(1),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=MAX_PARTITIONS).contains(&n) => Ok(n),
            _ => Err(format!(
                "{POSITIONS_STREAM} metadata `{PARTITIONS_METADATA}` is {v:?}, not a number from 1 to {MAX_PARTITIONS}"
            )),
        },
    }
}

/// The partition a tag's positions go to: FNV-1a (32 bits) of its id, modulo `partitions`
/// (the hash nats-server's `partition(n, …)` subject mapping uses). A victim device's fixes go
/// to every partition, so each tag's paired device is always beside it.
pub fn partition_of(tag: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in tag.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The name a partition's geofence snapshots and heartbeats go under, `p<partition>`: the same
/// whichever instance holds it, so the one that takes it over finds what the last holder kept.
pub fn partition_name(partition: u32) -> String {
    format!("p{partition}")
}

/// The durable consumer through which `party`'s geofence instances share `partition`.
pub fn partition_consumer(party: &PartyId, partition: u32) -> String {
    format!("{party}-p{partition}")
}

/// The consumer of one partition for `party`'s geofence: one pinned instance of the group at
/// a time, no acknowledgements; a standby takes the pin when the holder has not pulled for
/// [`PARTITION_PIN_TIMEOUT`].
pub fn partition_consumer_config(party: &PartyId, partition: u32) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(partition_consumer(party, partition)),
        description: Some(format!(
            "partition {partition} of the position stream, for {party}'s geofence"
        )),
        filter_subjects: Filter::partition_positions(partition)
            .into_iter()
            .map(String::from)
            .collect(),
        // No acknowledgements: the consumer only carries live messages and the pin. What an
        // instance evaluated is kept by its snapshots and its logged decisions, and whoever
        // takes a partition rebuilds from the newest snapshot through the stream's end, so a
        // message delivered to an instance that died is evaluated again by the next. Acks
        // would only add redeliveries, and a dead holder's unacknowledged backlog would stall
        // the next one until they were redelivered.
        ack_policy: jetstream::consumer::AckPolicy::None,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![PARTITION_GROUP.to_owned()],
        priority_timeout: PARTITION_PIN_TIMEOUT,
        ..Default::default()
    }
}

/// Create each partition's consumer for every geofence party of `rights` (an existing one is
/// left as it is: it holds how far the partition is evaluated).
async fn provision_partitions(
    stream: &jetstream::stream::Stream,
    rights: &Rights,
    partitions: u32,
) -> Result<(), BrokerError> {
    for (party, r) in &rights.parties {
        if !r.geofence {
            continue;
        }
        for partition in 0..partitions {
            let config = partition_consumer_config(party, partition);
            stream
                .get_or_create_consumer(&partition_consumer(party, partition), config)
                .await
                .map_err(|e| BrokerError::Request {
                    operation: "provision a partition consumer",
                    source: format!("{}: {e}", partition_consumer(party, partition)).into(),
                })?;
        }
    }
    Ok(())
}

/// The geofence's snapshot stream: one message per subject (a snapshot written to a slot
/// replaces the one there before), kept at most `max_age` (the retention of position batches:
/// a snapshot holds positions). No identity deletes from it; a slot is overwritten.
pub fn snapshots_config(max_age: Duration, replicas: usize) -> stream::Config {
    stream::Config {
        name: SNAPSHOTS_STREAM.to_owned(),
        subjects: vec![Filter::all_snapshots().into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        max_age,
        // Bounds a misbehaving writer: nobody may delete, so the stream bounds itself.
        max_bytes: SNAPSHOTS_MAX_BYTES,
        max_message_size: SNAPSHOTS_MAX_MESSAGE,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The geofence's heartbeat stream: the latest heartbeat of each instance (one message per
/// subject), kept a day, bounded.
pub fn heartbeats_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: HEARTBEATS_STREAM.to_owned(),
        subjects: vec![Filter::all_heartbeats().into()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(24 * 3600),
        max_bytes: 64 << 20,
        max_message_size: 4096,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The view stream of one party: the subjects of `HRU_EVENTS` it is entitled to, sourced by
/// the server.
pub fn view_config(rights: &Rights, party: &PartyId, replicas: usize) -> stream::Config {
    let transforms = rights
        .view_filters(party)
        .into_iter()
        .map(|s| stream::SubjectTransform {
            source: s.into(),
            destination: String::new(),
        })
        .collect();
    stream::Config {
        name: view_stream(party),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        sources: Some(vec![stream::Source {
            name: EVENTS_STREAM.to_owned(),
            subject_transforms: transforms,
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The `HRU_EVENTS` sequence a view's copy was sourced from (its `Nats-Stream-Source` header).
pub fn source_sequence(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    // The last value is the one the sourcing server added.
    let value = headers?.get_last(SOURCE_HEADER)?.as_str();
    let mut fields = value.split_whitespace();
    let stream = fields.next()?;
    let from_events = stream
        .strip_prefix(EVENTS_STREAM)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'));
    if !from_events {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Refuse an existing event stream whose configuration would weaken the log.
pub fn check_events_config(found: &stream::Config, replicas: usize) -> Result<(), BrokerError> {
    let unsafe_field = |field, found: String, required: String| {
        Err(BrokerError::UnsafeStream {
            stream: EVENTS_STREAM,
            field,
            found,
            required,
        })
    };
    if !found.deny_delete {
        return unsafe_field("deny_delete", "false".into(), "true".into());
    }
    if found.num_replicas.max(1) < replicas {
        return unsafe_field(
            "num_replicas",
            found.num_replicas.to_string(),
            format!("at least {replicas}"),
        );
    }
    if !found.deny_purge {
        return unsafe_field("deny_purge", "false".into(), "true".into());
    }
    if found.storage != stream::StorageType::File {
        return unsafe_field("storage", format!("{:?}", found.storage), "File".into());
    }
    if found.duplicate_window < MIN_DUPLICATE_WINDOW {
        return unsafe_field(
            "duplicate_window",
            format!("{:?}", found.duplicate_window),
            "at least 2 min".into(),
        );
    }
    // Limits make the server drop messages even from a deny-delete stream.
    let limits = [
        ("max_messages", found.max_messages),
        ("max_bytes", found.max_bytes),
        ("max_messages_per_subject", found.max_messages_per_subject),
    ];
    for (field, value) in limits {
        if value > 0 {
            return unsafe_field(field, value.to_string(), "unlimited (-1)".into());
        }
    }
    if !found.max_age.is_zero() {
        return unsafe_field("max_age", format!("{:?}", found.max_age), "unlimited (0)".into());
    }
    if !found.allow_direct {
        // Readers and producers read by direct get (decision 006).
        return unsafe_field("allow_direct", "false".into(), "true".into());
    }
    let mut subjects = found.subjects.clone();
    subjects.sort();
    let mut want = strings(event_filters());
    want.sort();
    if subjects != want {
        return unsafe_field("subjects", format!("{subjects:?}"), format!("{want:?}"));
    }
    Ok(())
}

/// Open `HRU_EVENTS`, creating it with `replicas` when it does not exist, or checking that the
/// existing stream is at least as safe.
pub async fn open_events(js: &jetstream::Context, replicas: usize) -> Result<stream::Stream, BrokerError> {
    match js.get_stream(EVENTS_STREAM).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(request("stream info"))?;
            check_events_config(&info.config, replicas)?;
            Ok(s)
        }
        Err(_) => js
            .create_stream(events_config(replicas))
            .await
            .map_err(request("create stream HRU_EVENTS")),
    }
}

/// Create or update the shared stream, the position stream and the geofence's snapshot stream
/// (both kept `positions_max_age`), the geofence's heartbeat stream, and
/// every party's view stream, and retire the views of parties `rights` no longer names (the
/// provisioner's job); the views retired by this call.
pub async fn provision(
    client: &async_nats::Client,
    rights: &Rights,
    positions_max_age: Duration,
    replicas: usize,
    partitions: u32,
) -> Result<Vec<String>, BrokerError> {
    let js = jetstream::new(client.clone());
    // Created, or checked; never updated (no identity may update it: `destroying_api`).
    open_events(&js, replicas).await?;
    if !(1..=MAX_PARTITIONS).contains(&partitions) {
        return Err(BrokerError::Request {
            operation: "provision HRU_POSITIONS",
            source: format!("partitions is {partitions}: give a number from 1 to {MAX_PARTITIONS}").into(),
        });
    }
    // A tag's partition depends on their number: it is chosen once, with the stream.
    if let Ok(mut existing) = js.get_stream(POSITIONS_STREAM).await {
        let info = existing.info().await.map_err(request("provision HRU_POSITIONS"))?;
        let had = partitions_of(&info.config.metadata).map_err(|e| BrokerError::Request {
            operation: "provision HRU_POSITIONS",
            source: e.into(),
        })?;
        // A stream made before partitions (no metadata) holds one.
        if had != partitions && !(info.config.metadata.is_empty() && partitions == 1) {
            return Err(BrokerError::Request {
                operation: "provision HRU_POSITIONS",
                source: format!(
                    "it is divided into {had} partitions, not {partitions}: a tag's partition depends on their \
                     number, so it is kept; provision with --partitions {had}"
                )
                .into(),
            });
        }
    }
    create_or_update(
        &js,
        positions_config(positions_max_age, replicas, partitions),
        "provision HRU_POSITIONS",
    )
    .await?;
    let positions = js
        .get_stream(POSITIONS_STREAM)
        .await
        .map_err(request("provision HRU_POSITIONS"))?;
    provision_partitions(&positions, rights, partitions).await?;
    create_or_update(
        &js,
        snapshots_config(positions_max_age, replicas),
        "provision HRU_SNAPSHOTS",
    )
    .await?;
    create_or_update(&js, heartbeats_config(replicas), "provision HRU_HEARTBEATS").await?;
    for party in rights.parties.keys() {
        create_or_update(&js, view_config(rights, party, replicas), "provision view stream").await?;
    }
    retire_views(&js, rights).await
}

/// Retire the views of parties `rights` no longer names (a party that left the agreement):
/// each stops sourcing the log and keeps what it already holds (no identity may delete a view;
/// its messages go as retention says). The views retired now, by name.
async fn retire_views(js: &jetstream::Context, rights: &Rights) -> Result<Vec<String>, BrokerError> {
    use futures::TryStreamExt as _;
    let current: std::collections::HashSet<String> = rights.parties.keys().map(view_stream).collect();
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(request("list the view streams"))?;
    let mut retired = Vec::new();
    for name in names {
        if !name.starts_with(VIEW_STREAM_PREFIX) || current.contains(&name) {
            continue;
        }
        let mut stream = js.get_stream(&name).await.map_err(request("retire a view"))?;
        let mut config = stream.info().await.map_err(request("retire a view"))?.config.clone();
        if config.sources.as_ref().is_none_or(Vec::is_empty) {
            continue;
        }
        config.sources = None;
        js.update_stream(config).await.map_err(|e| BrokerError::Request {
            operation: "retire a view",
            source: format!("{name}: {e}").into(),
        })?;
        retired.push(name);
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_log_that_could_drop_messages_is_refused() {
        assert!(check_events_config(&events_config(1), 1).is_ok());
        let cases: [(&str, stream::Config); 6] = [
            (
                "max_messages",
                stream::Config {
                    max_messages: 1,
                    ..events_config(1)
                },
            ),
            (
                "max_bytes",
                stream::Config {
                    max_bytes: 1 << 20,
                    ..events_config(1)
                },
            ),
            (
                "max_messages_per_subject",
                stream::Config {
                    max_messages_per_subject: 5,
                    ..events_config(1)
                },
            ),
            (
                "max_age",
                stream::Config {
                    max_age: Duration::from_secs(3600),
                    ..events_config(1)
                },
            ),
            (
                "deny_delete",
                stream::Config {
                    deny_delete: false,
                    ..events_config(1)
                },
            ),
            (
                "allow_direct",
                stream::Config {
                    allow_direct: false,
                    ..events_config(1)
                },
            ),
        ];
        for (field, config) in cases {
            match check_events_config(&config, 1) {
                Err(BrokerError::UnsafeStream { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
