//! The position stream `HRU_POSITIONS`: gateways publish sealed position batches (and the key
//! grants of their audiences, so the stream is self-contained and its retention shreds both
//! together); the geofence reads them in order.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use hru_broker::{POSITIONS_STREAM, Subject, request};

use crate::{BrokerIdentity, Entries, LogError, Reader, connect};

/// A handle on `HRU_POSITIONS`: for reading and publishing, or (a gateway) only publishing.
#[derive(Clone)]
pub struct PositionLog {
    js: jetstream::Context,
    /// The reader, when this handle reads.
    reader: Option<Reader>,
}

impl PositionLog {
    /// Connect and open the position stream, creating it (kept `max_age`, the agreement's
    /// retention of position batches) when it does not exist.
    pub async fn open(
        url: &str,
        identity: Option<&BrokerIdentity>,
        max_age: Duration,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client.clone());
        let stream: stream::Stream = match js.get_stream(POSITIONS_STREAM).await {
            Ok(s) => s,
            Err(_) => js
                .create_stream(hru_broker::stream::positions_config(max_age, replicas, 1))
                .await
                .map_err(request("create stream HRU_POSITIONS"))?,
        };
        Ok(Self {
            js,
            reader: Some(Reader::stored(client, stream)),
        })
    }

    /// Connect (as `identity`, when given) only to publish: no stream API call, which a gateway's
    /// permissions do not allow. The provisioner creates the stream.
    pub async fn publisher(url: &str, identity: Option<&BrokerIdentity>) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        Ok(Self {
            js: jetstream::new(client),
            reader: None,
        })
    }

    /// The JetStream context this handle uses.
    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// How many partitions the stream is divided into (its metadata; 1 when it names none).
    pub async fn partitions(&self) -> Result<u32, LogError> {
        let mut stream = self
            .js
            .get_stream(POSITIONS_STREAM)
            .await
            .map_err(request("read HRU_POSITIONS's configuration"))?;
        let info = stream
            .info()
            .await
            .map_err(request("read HRU_POSITIONS's configuration"))?;
        hru_broker::stream::partitions_of(&info.config.metadata).map_err(|e| LogError::Request {
            operation: "read HRU_POSITIONS's configuration",
            source: e.into(),
        })
    }

    /// Every message of `partition` from sequence `from` to the end as it is now.
    pub async fn replay_partition(&self, from: u64, partition: u32) -> Result<Entries, LogError> {
        self.reader()?
            .replay(from, &hru_broker::Filter::partition_positions(partition))
            .await
    }

    /// The reader of the stream (an error for a publish-only handle).
    pub fn reader(&self) -> Result<&Reader, LogError> {
        self.reader.as_ref().ok_or_else(|| LogError::Request {
            operation: "read HRU_POSITIONS",
            source: "this handle only publishes".into(),
        })
    }

    /// Publish envelopes on `subject`, each with its `Nats-Msg-Id`, pipelined; their sequences.
    pub async fn publish(&self, subject: &Subject, envelopes: &[(String, Bytes)]) -> Result<Vec<u64>, LogError> {
        let mut acks = Vec::with_capacity(envelopes.len());
        for (id, bytes) in envelopes {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let ack = self
                .js
                .publish_with_headers(subject.to_string(), headers, bytes.clone())
                .await
                .map_err(request("publish position"))?;
            acks.push(ack);
        }
        let mut sequences = Vec::with_capacity(acks.len());
        for ack in acks {
            sequences.push(ack.await.map_err(request("position ack"))?.sequence);
        }
        Ok(sequences)
    }

    /// Every message from sequence `from` to the end as it is now.
    pub async fn replay(&self, from: u64) -> Result<Entries, LogError> {
        self.reader()?.replay(from, &[]).await
    }

    /// Follow the stream from sequence `from` on, live: each message as it is stored.
    pub async fn follow(&self, from: u64) -> Result<Entries, LogError> {
        self.reader()?.follow(from, None).await
    }

    /// The first and last sequence held.
    pub async fn bounds(&self) -> Result<(u64, u64), LogError> {
        self.reader()?.bounds().await
    }
}
