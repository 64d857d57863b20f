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
