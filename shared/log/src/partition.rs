//! One partition of the position stream as a geofence instance takes it: the messages its
//! durable consumer delivers while this instance holds the consumer's pin. The server pins one pulling instance of the group at a time and moves the pin
//! to a standby when the holder stops pulling for `PARTITION_PIN_TIMEOUT`; a pin is a lease, not
//! a lock (a paused holder may still act on what it was delivered), so what an instance does
//! with a message must be safe to do twice: the geofence's decisions derive their event ids.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt as _;
use hru_broker::stream::{PARTITION_GROUP, POSITIONS_STREAM, partition_consumer, partition_consumer_config};
use hru_domain::PartyId;

use crate::{LogEntry, LogError, PositionLog};

/// How long each pull waits on the server: well below the pin timeout, so a holder that is
/// alive renews its pin several times over before a standby may take it.
const PULL_EXPIRES: Duration = Duration::from_millis(400);

/// Messages delivered and not yet taken by the service that an instance keeps.
pub const WAITING: usize = 512;

/// A message delivered from a partition.
pub struct Delivered {
    /// The position-stream message.
    pub entry: LogEntry,
    /// The consumer's delivery count when it was delivered: consecutive while no other
    /// instance was delivered anything in between.
    pub delivery: u64,
    /// The pin this delivery was made under (`Nats-Pin-Id`), if the server named one.
    pub pin: Option<String>,
    /// Messages of the partition stored and not yet delivered when this one was.
    pub pending: u64,
}

/// Whether no instance of `party`'s geofence holds `partition` now (its consumer has no pinned
/// client), so a standby that does not prefer it may take it.
pub async fn partition_unheld(positions: &PositionLog, party: &PartyId, partition: u32) -> Result<bool, LogError> {
    let stream = positions
        .js()
        .get_stream_no_info(POSITIONS_STREAM)
        .await
        .map_err(hru_broker::request("open HRU_POSITIONS"))?;
    let (pin, _) = pinned(&stream, &partition_consumer(party, partition)).await?;
    Ok(pin.is_none())
}

/// The pin of `consumer`'s group (none while no instance holds it) and how many messages wait
/// to be delivered.
async fn pinned<I>(stream: &jetstream::stream::Stream<I>, consumer: &str) -> Result<(Option<String>, u64), LogError> {
    let info = stream
        .consumer_info(consumer)
        .await
        .map_err(hru_broker::request("read a partition consumer"))?;
    let pin = info
        .priority_groups
        .iter()
        .find(|g| g.group == PARTITION_GROUP)
        .and_then(|g| g.pinned_client_id.clone());
    Ok((pin, info.num_pending))
}

/// What a standby found when it looked at a partition nothing was delivered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// An instance holds it.
    Held,
    /// Nobody holds it, but messages wait: the next pull takes it.
    Pending,
    /// Nobody held it and nothing waited: a claim was stored.
    Claimed,
}

/// One partition's consumer, pulled in the geofence's priority group. A task of its own pulls
/// whatever the service is doing (a rebuild, a long append), so the pin is renewed while this
/// instance is alive; what it was delivered waits here, up to [`WAITING`] messages. An
/// instance that falls that far behind stops pulling, and after the pin timeout another takes
/// the partition.
pub struct PartitionFeed {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    name: String,
    /// The partition.
    pub partition: u32,
    delivered: tokio::sync::mpsc::Receiver<Result<Delivered, LogError>>,
    puller: tokio::task::JoinHandle<()>,
}

impl Drop for PartitionFeed {
    fn drop(&mut self) {
        self.puller.abort();
    }
}

impl PartitionFeed {
    /// Pull `party`'s consumer of `partition` (provisioned by `hru log provision`; created here
    /// where this identity may, as on an unauthenticated test broker).
    pub async fn open(positions: &PositionLog, party: &PartyId, partition: u32) -> Result<Self, LogError> {
        let stream = positions
            .js()
            .get_stream(POSITIONS_STREAM)
            .await
            .map_err(hru_broker::request("open HRU_POSITIONS"))?;
        let name = partition_consumer(party, partition);
        let consumer: jetstream::consumer::Consumer<pull::Config> = match stream.get_consumer(&name).await {
            Ok(c) => c,
            Err(_) => stream
                .get_or_create_consumer(&name, partition_consumer_config(party, partition))
                .await
                .map_err(|e| LogError::Request {
                    operation: "open a partition consumer",
                    source: format!("{name}: {e} (run `hru log provision` with the stream's partitions)").into(),
                })?,
        };
        let mut messages = consumer
            .stream()
            .group(PARTITION_GROUP)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_EXPIRES / 4)
            .max_messages_per_batch(256)
            .messages()
            .await
            .map_err(|e| LogError::Request {
                operation: "pull a partition",
                source: format!("{name}: {e}").into(),
            })?;
        let (tx, delivered) = tokio::sync::mpsc::channel(WAITING);
        let pulled = name.clone();
        let puller = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                let d = m
                    .map_err(|e| LogError::Request {
                        operation: "pull a partition",
                        source: format!("{pulled}: {e}").into(),
                    })
                    .and_then(delivered_message);
                if tx.send(d).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            js: positions.js().clone(),
            stream,
            name,
            partition,
            delivered,
            puller,
        })
    }

    /// The next message delivered to this instance (it holds the pin while these come); `None`
    /// when the pull stream ended.
    pub async fn next(&mut self) -> Option<Result<Delivered, LogError>> {
        self.delivered.recv().await
    }

    /// Whether the consumer's pin is `pin` now (this instance still holds the partition).
    pub async fn holds(&self, pin: &str) -> Result<bool, LogError> {
        Ok(pinned(&self.stream, &self.name).await?.0.as_deref() == Some(pin))
    }

    /// Claim the partition if no instance holds it: an idle partition (nothing stored to
    /// deliver) gets no pinned instance on its own, and a partition nobody holds has nobody
    /// watching its tags. The claim, stored in the partition, is delivered to one waiting
    /// instance, which then holds it.
    pub async fn claim_if_unheld(&self, party: &PartyId) -> Result<Claim, LogError> {
        match pinned(&self.stream, &self.name).await? {
            (Some(_), _) => return Ok(Claim::Held),
            (None, pending) if pending > 0 => return Ok(Claim::Pending),
            (None, _) => {}
        }
        let subject = hru_broker::Subject::position_claim(party, self.partition);
        self.js
            .publish(subject.to_string(), bytes::Bytes::new())
            .await
            .map_err(hru_broker::request("claim a partition"))?
            .await
            .map_err(hru_broker::request("claim a partition"))?;
        Ok(Claim::Claimed)
    }

    /// Release the pin (a clean stop): a standby takes the partition at once rather than after
    /// the pin timeout. The pulling stops first, or its next pull could take the pin again.
    pub async fn release(mut self) -> Result<(), LogError> {
        self.puller.abort();
        let _ = (&mut self.puller).await;
        self.stream
            .unpin_consumer(&self.name, PARTITION_GROUP)
            .await
            .map_err(hru_broker::request("release a partition"))
    }
}

fn delivered_message(message: jetstream::Message) -> Result<Delivered, LogError> {
    let bad = |why: String| LogError::Request {
        operation: "read a partition message",
        source: why.into(),
    };
    let info = message.info().map_err(|e| bad(e.to_string()))?;
    let (sequence, delivery, pending) = (info.stream_sequence, info.consumer_sequence, info.pending);
    let stored_ms = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let pin = message
        .headers
        .as_ref()
        .and_then(|h| h.get_last("Nats-Pin-Id"))
        .map(|v| v.as_str().to_owned());
    Ok(Delivered {
        entry: LogEntry {
            sequence,
            subject: hru_broker::Subject::from_wire(message.subject.as_str()),
            payload: message.payload.clone(),
            stored: hru_broker::StoredAt::Exactly(stored_ms),
        },
        delivery,
        pin,
        pending,
    })
}
