//! Dev-only test harness: starts real `nats-server` processes (a single JetStream node or a
//! JetStream cluster) on free loopback ports with temporary stores, and stops them on `Drop`.
//!
//! It owns finding the pinned binary (`NATS_SERVER_BIN`, then `<repo>/.tools/venv/bin`, then
//! `PATH`), refusing servers older than 2.11, writing their configs, and waiting until JetStream
//! reports healthy. No NATS mocks and no client library: callers bring their own client.
//! See DESIGN.md §8 and §14.

mod binary;
mod cluster;
mod error;
mod probe;
mod server;

pub use binary::{MIN_VERSION, NatsServerBinary};
pub use cluster::NatsCluster;
pub use error::TestkitError;
pub use server::{NatsServer, NatsServerBuilder};
