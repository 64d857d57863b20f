//! Prometheus metrics of a node: events folded, consumer lag, and request latency and outcome
//! by method, registered with `prometheus-client` and served by `hru_runtime::metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The node's metrics.
pub struct Metrics {
    registry: Arc<Registry>,
    events_folded: Counter,
    folded_through: Gauge,
    pending: Gauge,
    requests: Family<Call, Counter>,
    latency: Family<Method, Histogram, fn() -> Histogram>,
    read_refused: hru_runtime::metrics::ReadRefused,
    /// 1 while the geofence is silent (nodes whose party receives breaches).
    pub(crate) geofence_silent: Gauge,
    /// Store time of the geofence's latest heartbeat, Unix ms (0: none heard).
    pub(crate) geofence_heartbeat_ms: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let events_folded = Counter::default();
        let folded_through = Gauge::default();
        let pending = Gauge::default();
        let requests = Family::<Call, Counter>::default();
        let latency = Family::<Method, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let mut registry = Registry::default();
        registry.register(
            "hru_node_events_folded",
            "Events folded into projections",
            events_folded.clone(),
        );
        registry.register(
            "hru_node_consumer_lag",
            "Messages of the party's view not yet delivered to the fold",
            pending.clone(),
        );
        registry.register(
            "hru_node_folded_through",
            "The last log sequence folded",
            folded_through.clone(),
        );
        registry.register("hru_node_requests", "Calls by method and gRPC code", requests.clone());
        registry.register("hru_node_request_seconds", "Call latency by method", latency.clone());
        let read_refused =
            hru_runtime::metrics::ReadRefused::new(hru_reader::RefusalKind::ALL.iter().map(|k| k.name()));
        read_refused.register(&mut registry);
        let (geofence_silent, geofence_heartbeat_ms) = (Gauge::default(), Gauge::default());
        registry.register(
            "hru_node_geofence_silent",
            "1 while no geofence heartbeat has been stored within the limit (nodes that receive breaches)",
            geofence_silent.clone(),
        );
        registry.register(
            "hru_node_geofence_heartbeat_ms",
            "Store time of the geofence's latest heartbeat, Unix ms (0: none heard)",
            geofence_heartbeat_ms.clone(),
        );
        Self {
            geofence_silent,
            geofence_heartbeat_ms,
            read_refused,
            registry: Arc::new(registry),
            events_folded,
            folded_through,
            pending,
            requests,
            latency,
        }
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Events folded into projections.
    pub fn folded(&self, events: u64, through: u64) {
        self.events_folded.inc_by(events);
        let through = gauge_value(through);
        if through > self.folded_through.get() {
            self.folded_through.set(through);
        }
    }

    /// One message the read path refused.
    pub fn read_refused(&self, kind: hru_reader::RefusalKind) {
        self.read_refused.inc(kind.name());
    }

    /// Messages of the party's view the durable consumer has not delivered yet.
    pub fn pending(&self, messages: u64) {
        self.pending.set(gauge_value(messages));
    }

    /// One answered (or refused) call.
    pub fn request(&self, method: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&Call {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&Method {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The registry the metrics endpoint serves.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        hru_runtime::metrics::render(&self.registry)
    }
}
