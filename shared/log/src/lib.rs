//! The shared event log on NATS JetStream (DESIGN §8), by what a handle may do:
//! [`EventLog`] appends to and reads `HRU_EVENTS` itself (operators, the provisioner, the
//! auditor); [`PartyView`] appends to `HRU_EVENTS` and reads only its party's view, under
//! `HRU_EVENTS` sequences. Appends live in [`append`], reads (as bounded-page streams) in
//! [`read`]; everything NATS-shaped is spelled by `hru-broker`.

pub mod alerts;
pub mod append;
pub mod heartbeats;
pub mod holds;
mod kept;
pub mod linkage;
mod partition;
pub mod periods;
mod positions;
mod producer;
pub mod read;

pub use alerts::{AlertPublisher, DeviceAlerts, Sent};
pub use append::{Ack, AppendError, Appender, Expect};
pub use hru_broker::{BrokerError as LogError, BrokerIdentity, StoredAt, connect};
pub use kept::KeptStream;
pub use partition::{Claim, Delivered, PartitionFeed, partition_unheld};
pub use positions::PositionLog;
pub use producer::{EventToSeal, GroupSealer, Producer, SealedGroup, StoreError};
pub use read::{Entries, Page, Pages, Reader};

use async_nats::jetstream;
use bytes::Bytes;
use hru_broker::{Subject, request, view_stream};

/// One message of the log as stored.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Log sequence (`HRU_EVENTS`'s, also when read from a view).
    pub sequence: u64,
    /// Subject it was published under.
    pub subject: Subject,
    /// The envelope bytes.
    pub payload: Bytes,
    /// When the broker stored it: exactly, when read from the stream it was published to; no
    /// later than the view's copy, when read from a view.
    pub stored: hru_broker::StoredAt,
}

/// What both log handles offer a producer: somewhere to append, and a reader that holds the
/// producer's own envelopes.
pub trait SharedLog: Send + Sync {
    /// The append side.
    fn appender(&self) -> &Appender;
    /// The read side.
    fn reader(&self) -> &Reader;
}

/// A handle on `HRU_EVENTS` itself: appends and reads the whole log.
#[derive(Clone)]
pub struct EventLog {
    client: async_nats::Client,
    appender: Appender,
    reader: Reader,
}

impl EventLog {
    /// Connect without credentials, check the server floor, and create (or check) `HRU_EVENTS`.
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        Self::open(url, None, 1).await
    }

    /// Connect (as `identity`, when given; `url` may list several servers, comma-separated),
    /// check the server floor, and create `HRU_EVENTS` with `replicas` or check the existing
    /// stream is at least as safe.
    pub async fn open(url: &str, identity: Option<&BrokerIdentity>, replicas: usize) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client.clone());
        let mut stream = hru_broker::stream::open_events(&js, replicas).await?;
        let allows_atomic = stream
            .info()
            .await
            .map_err(request("stream info"))?
            .config
            .allow_atomic_publish;
        let server_takes_atomic = hru_broker::server::major_minor(&client.server_info().version)
            .is_some_and(|v| v >= hru_broker::server::ATOMIC_BATCH_SERVER);
        let reader = Reader::stored(client.clone(), stream);
        Ok(Self {
            appender: Appender::new(js, allows_atomic && server_takes_atomic),
            reader,
            client,
        })
    }

    /// The client this log talks through.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }
}

impl SharedLog for EventLog {
    fn appender(&self) -> &Appender {
        &self.appender
    }
    fn reader(&self) -> &Reader {
        &self.reader
    }
}

/// A party's handle: appends to `HRU_EVENTS`, reads only the party's view `HRU_VIEW_<party>`
/// (what the generated broker permissions allow a party), under `HRU_EVENTS` sequences.
#[derive(Clone)]
pub struct PartyView {
    client: async_nats::Client,
    party: hru_domain::PartyId,
    appender: Appender,
    reader: Reader,
}

impl PartyView {
    /// Connect as `identity` to append as `party` and read its view. The view must have been
    /// provisioned (`hru log provision`).
    pub async fn open(
        url: &str,
        identity: Option<&BrokerIdentity>,
        party: &hru_domain::PartyId,
    ) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client.clone());
        let name = view_stream(party);
        let stream = js.get_stream(&name).await.map_err(|e| LogError::Request {
            operation: "open view stream",
            source: format!("{name}: {e}; the provisioner creates it (`hru log provision`)").into(),
        })?;
        let reader = Reader::sourced(client.clone(), stream);
        Ok(Self {
            appender: Appender::new(js, false),
            reader,
            party: party.clone(),
            client,
        })
    }

    /// The client this view talks through.
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// The party whose view this is.
    pub fn party(&self) -> &hru_domain::PartyId {
        &self.party
    }
}

impl SharedLog for PartyView {
    fn appender(&self) -> &Appender {
        &self.appender
    }
    fn reader(&self) -> &Reader {
        &self.reader
    }
}
