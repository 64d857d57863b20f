//! The Prometheus endpoint every service serves (`GET /metrics`, OpenMetrics text) from a
//! `prometheus-client` registry, on axum, the HTTP stack the people's pages use too.

use std::sync::Arc;

use axum::http::header;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::Shutdown;

/// Content type of the OpenMetrics text exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's metrics as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(cause = %e, "metrics not encoded");
    }
    out
}

/// Serve `GET /metrics` from `registry` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: Shutdown) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move { ([(header::CONTENT_TYPE, OPENMETRICS)], render(&registry)) }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Reason {
    reason: String,
}

/// `hru_read_refused_total{reason}`: messages the read path refused, by kind. Every kind is
/// registered at zero, so a dashboard sees the series before the first refusal.
#[derive(Debug, Clone, Default)]
pub struct ReadRefused(
    prometheus_client::metrics::family::Family<Reason, prometheus_client::metrics::counter::Counter>,
);

impl ReadRefused {
    /// The counter with a series at zero for each of `reasons`.
    pub fn new(reasons: impl IntoIterator<Item = &'static str>) -> Self {
        let this = Self::default();
        for reason in reasons {
            drop(this.0.get_or_create(&Reason {
                reason: reason.to_owned(),
            }));
        }
        this
    }

    /// Register the counter in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hru_read_refused",
            "Messages the read path refused (never folded, served or acted on), by reason",
            self.0.clone(),
        );
    }

    /// One refusal of `reason`.
    pub fn inc(&self, reason: &str) {
        self.0
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Refusals of `reason` so far.
    pub fn get(&self, reason: &str) -> u64 {
        self.0
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .get()
    }
}
