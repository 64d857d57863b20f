//! The one error type of the harness; every message says what to do next.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// What went wrong while finding, starting or stopping a `nats-server`.
#[derive(thiserror::Error)]
pub enum LocalNatsError {
    /// No `nats-server` binary was found in any of the places looked at.
    #[error(
        "nats-server not found (looked at: {}); run scripts/test.sh (installs the pinned nats-server into .tools/) or set NATS_SERVER_BIN",
        .looked.join("; ")
    )]
    BinaryNotFound {
        /// Every place that was looked at, in order.
        looked: Vec<String>,
    },

    /// The binary is older than [`crate::MIN_VERSION`] (or its version could not be read).
    #[error(
        "nats-server at {} reports version {found:?}, need >= {required} (older servers silently drop multi-subject consumer filters); run scripts/test.sh (installs the pinned nats-server into .tools/) or set NATS_SERVER_BIN",
        .path.display()
    )]
    TooOld {
        /// The binary that was checked.
        path: PathBuf,
        /// What `nats-server --version` printed.
        found: String,
        /// The minimum version accepted.
        required: String,
    },

    /// The process could not be spawned at all.
    #[error("could not run {}: {source}; check that NATS_SERVER_BIN points to an executable nats-server", .bin.display())]
    Spawn {
        /// The binary that was run.
        bin: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// The server did not report healthy JetStream before the deadline.
    #[error("nats-server at {url} not ready (last answer: {last}). Server log tail:\n{log_tail}")]
    NotReady {
        /// What was polled (monitoring `/healthz` URL, or the ports file while it was missing).
        url: String,
        /// The last answer or error seen while polling.
        last: String,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// The server process exited while it was being started (often: a port was taken).
    #[error(
        "nats-server (pid {pid}) exited during startup with {status}; if the log says 'address already in use', retry. Server log tail:\n{log_tail}"
    )]
    Exited {
        /// The pid the process had.
        pid: u32,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// A server's own disk could not be mounted.
    #[error(
        "a server's own disk (a tmpfs, and a power-cut file system over it, at {}) could not be mounted: {detail}; this needs root (CAP_SYS_ADMIN), `mount` and /dev/fuse",
        .at.display()
    )]
    NoOwnDisk {
        /// Where it was to be mounted.
        at: PathBuf,
        /// What mount said.
        detail: String,
    },

    /// A caller asked for something the harness cannot do (e.g. a cluster of zero nodes).
    #[error("invalid testkit request: {0}")]
    Invalid(String),

    /// A file or socket operation of the harness itself failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

/// `Debug` prints the `Display` message, so `.unwrap()` in a test shows the hint, not a struct dump.
impl fmt::Debug for LocalNatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl LocalNatsError {
    /// Wraps an `io::Error` with what the harness was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LocalNatsError {
        let context = context.into();
        move |source| LocalNatsError::Io { context, source }
    }
}
