//! Victim alerts on the broker: the geofence publishes each signed alert on
//! `hru.alert.<device>` with `Nats-Msg-Id` = the alert's id, so the device's own stream
//! `HRU_ALERTS_<device>` keeps it once however often a restarted geofence sends it; the paired
//! device reads only its own stream, with its own identity, and records its receipt of each
//! alert on `hru.receipt.<device>` in the same stream.

use async_nats::jetstream;
use bytes::Bytes;
use futures::TryStreamExt as _;
use hru_broker::{Filter, Subject, alert_stream, device_identity, request};

use crate::{BrokerIdentity, LogEntry, LogError, Reader, connect};

/// Whether an alert was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Stored in the device's stream.
    Stored,
    /// The stream already held an alert with this id (a resend after a restart).
    Duplicate,
}

/// The geofence's side: publishes alerts into the devices' streams.
#[derive(Clone)]
pub struct AlertPublisher {
    js: jetstream::Context,
}

impl AlertPublisher {
    /// Publish through `client` (the geofence's connection).
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            js: jetstream::new(client),
        }
    }

    /// Publish `body` (a signed alert) to `device` with id `alert_id`, and wait until the
    /// device's stream has stored it. An unpaired device has no stream: the error says so.
    pub async fn publish(&self, device: &str, alert_id: &str, body: Bytes) -> Result<Sent, LogError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", alert_id);
        let subject = Subject::alert(device);
        let ack = self
            .js
            .publish_with_headers(subject.to_string(), headers, body)
            .await
            .map_err(request("publish alert"))?
            .await
            .map_err(|e| LogError::Request {
                operation: "publish alert",
                source: format!(
                    "{subject}: {e} (is device {device} paired: `hru device pair`, its [[device]] entry in \
                     directory.toml and `hru log provision`?)"
                )
                .into(),
            })?;
        Ok(if ack.duplicate { Sent::Duplicate } else { Sent::Stored })
    }
}

/// A paired device's side: its own stream, read with its own identity.
pub struct DeviceAlerts {
    js: jetstream::Context,
    reader: Reader,
    device: String,
}

impl DeviceAlerts {
    /// Connect as `device` (its nkey seed) and open its stream.
    pub async fn open(url: &str, nkey_seed: &str, device: &str) -> Result<Self, LogError> {
        let identity = BrokerIdentity {
            id: device_identity(device),
            nkey_seed: nkey_seed.to_owned(),
        };
        let client = connect(url, Some(&identity)).await?;
        let js = jetstream::new(client.clone());
        let name = alert_stream(device);
        let stream = js.get_stream(&name).await.map_err(|e| LogError::Request {
            operation: "open device stream",
            source: format!("{name}: {e}; the provisioner creates it (`hru log provision`)").into(),
        })?;
        Ok(Self {
            js,
            reader: Reader::stored(client, stream),
            device: device.to_owned(),
        })
    }

    /// The alerts the stream holds after stream sequence `after`, in order.
    pub async fn after(&self, after: u64) -> Result<Vec<LogEntry>, LogError> {
        self.reader
            .replay(after + 1, &[Filter::exactly(&Subject::alert(&self.device))])
            .await?
            .try_collect()
            .await
    }

    /// Record the device's receipt (`body`) on the broker, and wait until it is stored.
    pub async fn receipt(&self, receipt_id: &str, body: Bytes) -> Result<(), LogError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", receipt_id);
        self.js
            .publish_with_headers(Subject::receipt(&self.device).to_string(), headers, body)
            .await
            .map_err(request("publish receipt"))?
            .await
            .map_err(request("publish receipt"))?;
        Ok(())
    }
}
