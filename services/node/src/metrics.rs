//! Prometheus metrics of a node: events folded, consumer lag, and request latency and outcome
//! by method, served as text on `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default)]
struct Latency {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The node's counters.
#[derive(Default)]
pub struct Metrics {
    events_folded: AtomicU64,
    folded_through: AtomicU64,
    pending: AtomicU64,
    requests: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Latency>>,
}

impl Metrics {
    /// Events folded into projections.
    pub fn folded(&self, events: u64, through: u64) {
        self.events_folded.fetch_add(events, Ordering::Relaxed);
        self.folded_through.fetch_max(through, Ordering::Relaxed);
    }

    /// Messages of the party's view the durable consumer has not delivered yet.
    pub fn pending(&self, messages: u64) {
        self.pending.store(messages, Ordering::Relaxed);
    }

    /// One answered (or refused) call.
    pub fn request(&self, method: &str, code: &str, took: Duration) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((method.to_owned(), code.to_owned())).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(method.to_owned()).or_default();
            let s = took.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if s <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let folded = self.events_folded.load(Ordering::Relaxed);
        let through = self.folded_through.load(Ordering::Relaxed);
        let pending = self.pending.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP hru_node_events_folded_total Events folded into projections.\n# TYPE hru_node_events_folded_total counter\nhru_node_events_folded_total {folded}"
        );
        let _ = writeln!(
            out,
            "# HELP hru_node_consumer_lag Messages of the party's view not yet delivered to the fold.\n# TYPE hru_node_consumer_lag gauge\nhru_node_consumer_lag {pending}"
        );
        let _ = writeln!(
            out,
            "# HELP hru_node_folded_through The last log sequence folded.\n# TYPE hru_node_folded_through gauge\nhru_node_folded_through {through}"
        );
        let _ = writeln!(
            out,
            "# HELP hru_node_requests_total Calls by method and gRPC code.\n# TYPE hru_node_requests_total counter"
        );
        if let Ok(r) = self.requests.lock() {
            for ((method, code), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "hru_node_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP hru_node_request_seconds Call latency by method.\n# TYPE hru_node_request_seconds histogram"
        );
        if let Ok(l) = self.latency.lock() {
            for (method, h) in l.iter() {
                for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                    let _ = writeln!(
                        out,
                        "hru_node_request_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "hru_node_request_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(out, "hru_node_request_seconds_sum{{method=\"{method}\"}} {}", h.sum);
                let _ = writeln!(out, "hru_node_request_seconds_count{{method=\"{method}\"}} {}", h.count);
            }
        }
        out
    }
}
