//! Streams that keep the latest message per subject: the geofence's state snapshots
//! (`HRU_SNAPSHOTS`: sealed chunks and a signed manifest per slot) and the geofence's heartbeats
//! (`HRU_HEARTBEATS`). A message written to a subject replaces the one before it there, so
//! nothing is ever deleted by anyone.

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::TryStreamExt as _;
use hru_broker::{Filter, Subject, request};

use crate::{BrokerIdentity, LogEntry, LogError, Reader, connect};

/// A handle on a stream that keeps the latest message per subject.
#[derive(Clone)]
pub struct KeptStream {
    js: jetstream::Context,
    stream: stream::Stream,
    reader: Reader,
}

impl KeptStream {
    /// Connect and open the stream `config` names, creating it when it does not exist and this
    /// identity may (the provisioner creates it where parties may not).
    pub async fn open(url: &str, identity: Option<&BrokerIdentity>, config: stream::Config) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        Self::on(client, config).await
    }

    /// As [`KeptStream::open`], on an existing connection.
    pub async fn on(client: async_nats::Client, config: stream::Config) -> Result<Self, LogError> {
        let js = jetstream::new(client.clone());
        let stream: stream::Stream = match js.get_stream(&config.name).await {
            Ok(s) => s,
            Err(_) => js
                .create_stream(config)
                .await
                .map_err(request("create a kept stream"))?,
        };
        Ok(Self {
            js,
            reader: Reader::stored(client, stream.clone()),
            stream,
        })
    }

    /// Store `bytes` under `subject` (replacing what was there); its stream sequence.
    pub async fn put(&self, subject: &Subject, bytes: Bytes) -> Result<u64, LogError> {
        let ack = self
            .js
            .publish(subject.to_string(), bytes)
            .await
            .map_err(request("publish to a kept stream"))?
            .await
            .map_err(request("kept stream ack"))?;
        Ok(ack.sequence)
    }

    /// Every message on subjects matching `filter`, in stream order.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<LogEntry>, LogError> {
        self.reader
            .replay(1, std::slice::from_ref(filter))
            .await?
            .try_collect()
            .await
    }

    /// The message at `sequence`, if the stream still holds it.
    pub async fn get(&self, sequence: u64) -> Result<Option<(Subject, Bytes)>, LogError> {
        match self.stream.direct_get(sequence).await {
            Ok(m) => Ok(Some((Subject::from_wire(m.subject.as_str()), m.payload))),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(request("read a kept message")(e)),
        }
    }
}
