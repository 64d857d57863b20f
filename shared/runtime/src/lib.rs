//! What every running program shares: loading a deployment (the agreement in force by one
//! rule, the party directory, a party's secrets), layered configuration (defaults → TOML →
//! `HRU_*` environment → flags → validation naming the key), the Prometheus metrics endpoint,
//! and shutdown passed in from the binary with every spawned task joined.

pub mod config;
pub mod deployment;
pub mod metrics;
pub mod shutdown;

pub use config::{ConfigError, Settings, load};
pub use deployment::{Deployment, DeploymentError};
pub use shutdown::{Shutdown, Tasks};

/// Exit code of a command whose check found something (DESIGN §13).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code of a usage or configuration error (DESIGN §13).
pub const EXIT_USAGE: u8 = 2;
