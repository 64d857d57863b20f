//! The position stream `HRU_POSITIONS`: gateways publish sealed position batches (and the key
//! grants of their audiences, so the stream is self-contained and its retention shreds both
//! together); the geofence reads them in order.

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;

use crate::{BrokerIdentity, LogEntry, LogError, POSITIONS_STREAM, connect, js_err, positions_config, read_stream};

/// A handle on `HRU_POSITIONS`: for reading and publishing, or (a gateway) only publishing.
#[derive(Clone)]
pub struct PositionLog {
    js: jetstream::Context,
    /// The stream, when this handle reads.
    stream: Option<stream::Stream>,
}

impl PositionLog {
    /// Connect and create (or update) the position stream with the agreement's retention.
    pub async fn open(
        url: &str,
        identity: Option<&BrokerIdentity>,
        isa: &hru_policy::CompiledIsa,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client);
        let config = positions_config(isa, replicas);
        let stream = match js.get_stream(POSITIONS_STREAM).await {
            Ok(s) => s,
            Err(_) => js
                .create_stream(config)
                .await
                .map_err(|e| js_err("create stream HRU_POSITIONS")(e.into()))?,
        };
        Ok(Self {
            js,
            stream: Some(stream),
        })
    }

    /// Connect (as `identity`, when given) only to publish: no stream API call, which a gateway's
    /// permissions do not allow. The provisioner creates the stream.
    pub async fn publisher(url: &str, identity: Option<&BrokerIdentity>) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        Ok(Self {
            js: jetstream::new(client),
            stream: None,
        })
    }

    fn stream(&self) -> Result<&stream::Stream, LogError> {
        self.stream.as_ref().ok_or_else(|| LogError::JetStream {
            operation: "read HRU_POSITIONS",
            reason: "this handle only publishes".to_owned(),
        })
    }

    /// Publish envelopes on `subject`, each with its `Nats-Msg-Id`, pipelined; their sequences.
    pub async fn publish(&self, subject: &str, envelopes: &[(String, Bytes)]) -> Result<Vec<u64>, LogError> {
        let mut acks = Vec::with_capacity(envelopes.len());
        for (id, bytes) in envelopes {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            let ack = self
                .js
                .publish_with_headers(subject.to_owned(), headers, bytes.clone())
                .await
                .map_err(|e| js_err("publish position")(e.into()))?;
            acks.push(ack);
        }
        let mut sequences = Vec::with_capacity(acks.len());
        for ack in acks {
            sequences.push(ack.await.map_err(|e| js_err("position ack")(e.into()))?.sequence);
        }
        Ok(sequences)
    }

    /// Every message from sequence `from` to the end as it is now.
    pub async fn replay(&self, from: u64) -> Result<Vec<LogEntry>, LogError> {
        read_stream(
            self.stream()?,
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            &[],
            false,
        )
        .await
    }

    /// Follow the stream from sequence `from` on, live: each message as it is stored.
    pub async fn follow(
        &self,
        from: u64,
    ) -> Result<impl futures::Stream<Item = Result<LogEntry, LogError>> + use<>, LogError> {
        let config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..Default::default()
        };
        let consumer = self
            .stream()?
            .create_consumer(config)
            .await
            .map_err(|e| js_err("create ordered consumer")(e.into()))?;
        let messages = consumer.messages().await.map_err(|e| js_err("consume")(e.into()))?;
        Ok(messages.map(|m| {
            let m = m.map_err(|e| js_err("consume")(e.into()))?;
            let sequence = m
                .info()
                .map_err(|e| js_err("message info")(e.to_string().into()))?
                .stream_sequence;
            Ok(LogEntry {
                sequence,
                subject: m.subject.to_string(),
                payload: m.payload.clone(),
            })
        }))
    }

    /// The first and last sequence held.
    pub async fn bounds(&self) -> Result<(u64, u64), LogError> {
        let mut stream = self.stream()?.clone();
        let info = stream.info().await.map_err(|e| js_err("stream info")(e.into()))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }
}
