//! Dev-only test support: the local nats-server processes of `hru-local-nats` under the names
//! the tests use. Only ever a dev-dependency (a layout test checks it).

pub use hru_local_nats::{
    LocalNatsError as TestkitError, MIN_VERSION, NatsCluster, NatsServer, NatsServerBinary, NatsServerBuilder,
};
