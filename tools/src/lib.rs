//! The demo and the benchmarks, reachable as `hru demo` and `hru bench …`: they start local
//! nats-servers (`hru-local-nats`), run the real services on them, and print what each party
//! sees or figures beside the raw building blocks measured in the same run.

pub mod bench;
pub mod bench_geo;
pub mod bench_partitions;
pub mod bench_restart;
mod cast;
pub mod demo;
pub mod geofence_workload;

/// How a tool prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}
