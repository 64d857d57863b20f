//! What can go wrong talking to the broker; each variant says what to check.

use crate::server::MIN_SERVER;

/// A broker failure: its kind is the variant, its cause the source.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No connection to the server.
    #[error("cannot connect to NATS at {url}: {source}; is nats-server running (scripts/tools.sh installs it)?")]
    Connect {
        /// The URL tried.
        url: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server is older than the floor.
    #[error("nats-server {found} is too old: HRU needs {}.{} or newer (older servers drop consumer filters silently)", MIN_SERVER.0, MIN_SERVER.1)]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// An existing stream is configured unsafely.
    #[error("stream {stream} is unsafe: {field} is {found}, must be {required}")]
    UnsafeStream {
        /// Stream name.
        stream: &'static str,
        /// The config field.
        field: &'static str,
        /// What it is.
        found: String,
        /// What it must be.
        required: String,
    },
    /// A view's copy lacks the header naming its `HRU_EVENTS` sequence.
    #[error("view message {view_sequence} has no Nats-Stream-Source header naming HRU_EVENTS")]
    Unsourced {
        /// The copy's sequence in the view.
        view_sequence: u64,
    },
    /// A JetStream request failed.
    #[error("{operation} failed: {source}")]
    Request {
        /// The operation.
        operation: &'static str,
        /// The client's or server's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Map a client error of `operation` to [`BrokerError::Request`].
pub fn request<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    operation: &'static str,
) -> impl Fn(E) -> BrokerError + Copy {
    move |e| BrokerError::Request {
        operation,
        source: e.into(),
    }
}

/// The JetStream error code (`err_code`) a client error carries from the server's answer, if any.
pub fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(api) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(api.error_code().0);
        }
        next = e.source();
    }
    None
}
