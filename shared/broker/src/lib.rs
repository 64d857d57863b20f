//! Everything NATS-shaped (DESIGN §8): subjects and filters, stream and view names and
//! configurations, provisioning, the broker permissions generated from the agreement's
//! rights table, server configuration rendering and the server version floor.
//!
//! This is the only crate that spells an `hru.` or `$JS.` subject. It depends on the domain
//! types alone, so every other crate (the envelope's sealer included) can use it.

pub mod authorization;
mod error;
pub mod rights;
pub mod server;
pub mod stream;
pub mod subject;

pub use authorization::{AUDITOR, Accounts, PROVISIONER, nats_config};
pub use error::{BrokerError, jetstream_code, request};
pub use rights::{PartyRights, Receipt, Rights};
pub use server::{BrokerIdentity, MIN_SERVER, connect};
pub use stream::{
    EVENTS_STREAM, HEARTBEATS_STREAM, POSITIONS_STREAM, SNAPSHOTS_STREAM, alert_stream, device_identity, provision,
    provision_devices, source_sequence, view_stream,
};
pub use subject::{Filter, Subject};

/// When the broker stored a message, as far as its reader can tell (DESIGN §8a: a key's
/// validity is judged against the broker's time, not the time the signer wrote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAt {
    /// Read from the stream it was published to: the broker's own timestamp (Unix ms).
    Exactly(i64),
    /// Read from a view, which stamps its copy when it sources it: stored no later than this.
    NoLaterThan(i64),
    /// Not known (an envelope kept locally, a fixture).
    Unknown,
}

/// JetStream error code: the stream's last sequence (for the expected subject) is not the one expected.
pub const WRONG_LAST_SEQUENCE: u64 = 10071;
