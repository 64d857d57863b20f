//! The geofence's snapshot stream `HRU_SNAPSHOTS`: sealed state snapshots in chunks, each under
//! its own subject in a slot, with a signed manifest per slot. One message per subject: a
//! snapshot written to a slot replaces the one before it there, so nothing is ever deleted.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::TryStreamExt as _;
use hru_broker::{Filter, SNAPSHOTS_STREAM, Subject, request};

use crate::{BrokerIdentity, LogEntry, LogError, Reader, connect};

/// A handle on `HRU_SNAPSHOTS`.
#[derive(Clone)]
pub struct SnapshotLog {
    js: jetstream::Context,
    stream: stream::Stream,
    reader: Reader,
}

impl SnapshotLog {
    /// Connect and open the snapshot stream, creating it (kept `max_age`) when it does not
    /// exist and this identity may.
    pub async fn open(
        url: &str,
        identity: Option<&BrokerIdentity>,
        max_age: Duration,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client.clone());
        let stream: stream::Stream = match js.get_stream(SNAPSHOTS_STREAM).await {
            Ok(s) => s,
            Err(_) => js
                .create_stream(hru_broker::stream::snapshots_config(max_age, replicas))
                .await
                .map_err(request("create stream HRU_SNAPSHOTS"))?,
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
            .map_err(request("publish snapshot"))?
            .await
            .map_err(request("snapshot ack"))?;
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
            Err(e) => Err(request("read snapshot chunk")(e)),
        }
    }
}
