//! Prometheus metrics: one process-wide registry, the families the gateway exports, and
//! per-route and per-cluster handles resolved once, when a runtime is built, so that the
//! request path increments plain atomics instead of looking label values up.
//!
//! Every label value comes from the config (route, upstream, policy and part names), a fixed
//! set (method, status class, reasons) or a configured backend address: a client cannot grow
//! the number of series.

use std::sync::OnceLock;

use http::Method;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: sub-millisecond proxying up to slow composite calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `route` label of requests no route matched (or refused before routing).
pub const NO_ROUTE: &str = "-";

/// Methods with a label of their own; everything else is `other`.
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    upstream_attempts: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_failures: IntCounterVec,
    backend_healthy: IntGaugeVec,
    rate_limited: IntCounterVec,
    auth_failures: IntCounterVec,
    part_failures: IntCounterVec,
    edge_refusals: IntCounterVec,
    access_log_dropped: IntCounter,
    reloads: IntCounterVec,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Registers a metric built from constants (so neither step can fail) and returns it.
fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    built: prometheus::Result<C>,
) -> C {
    let c = built.expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let latency = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "portcullis_request_duration_seconds",
                    "Time from request header to the end of the response, by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            ),
        );
        let in_flight = registered(
            &r,
            IntGauge::new(
                "portcullis_requests_in_flight",
                "Requests being served right now.",
            ),
        );
        let backend_healthy = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "portcullis_backend_healthy",
                    "1 when the active health check admits the backend, else 0.",
                ),
                &["upstream", "backend"],
            ),
        );
        let access_log_dropped = registered(
            &r,
            IntCounter::new(
                "portcullis_access_log_dropped_total",
                "Access log lines dropped because the writer fell behind.",
            ),
        );
        let reloads = counter_vec(
            &r,
            "portcullis_config_reloads_total",
            "Config reloads, by result (ok or error).",
            &["result"],
        );
        // Both series exist from the start, so `increase()` sees the first reload.
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
        Metrics {
            reloads,
            requests: counter_vec(
                &r,
                "portcullis_requests_total",
                "Requests answered, by route, method and status class.",
                &["route", "method", "status"],
            ),
            latency,
            in_flight,
            upstream_attempts: counter_vec(
                &r,
                "portcullis_upstream_attempts_total",
                "Connection attempts to an upstream's backends (first tries and retries).",
                &["upstream"],
            ),
            upstream_retries: counter_vec(
                &r,
                "portcullis_upstream_retries_total",
                "Requests sent to another backend after a failure.",
                &["upstream"],
            ),
            upstream_failures: counter_vec(
                &r,
                "portcullis_upstream_failures_total",
                "Failed upstream attempts, by reason.",
                &["upstream", "reason"],
            ),
            backend_healthy,
            rate_limited: counter_vec(
                &r,
                "portcullis_rate_limited_total",
                "Requests refused with 429, by the policy that refused them.",
                &["policy"],
            ),
            auth_failures: counter_vec(
                &r,
                "portcullis_auth_failures_total",
                "Requests refused by authentication, by reason.",
                &["reason"],
            ),
            part_failures: counter_vec(
                &r,
                "portcullis_composite_part_failures_total",
                "Composite parts that failed, by route, part and reason.",
                &["route", "part", "reason"],
            ),
            edge_refusals: counter_vec(
                &r,
                "portcullis_edge_refusals_total",
                "Request heads refused or cut off before routing, by reason.",
                &["reason"],
            ),
            access_log_dropped,
            registry: r,
        }
    }

    /// Handles for one route, resolved now so the request path does no label lookup.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            requests: Default::default(),
            latency: self.latency.with_label_values(&[route]),
        }
    }

    /// Handles for one upstream.
    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            name: upstream.into(),
            attempts: self.upstream_attempts.with_label_values(&[upstream]),
            retries: self.upstream_retries.with_label_values(&[upstream]),
        }
    }

    pub fn rate_limited(&self, policy: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[policy])
    }

    pub fn in_flight(&self) -> &IntGauge {
        &self.in_flight
    }

    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    pub fn part_failure(&self, route: &str, part: &str, reason: &str) {
        self.part_failures
            .with_label_values(&[route, part, reason])
            .inc();
    }

    pub fn edge_refusal(&self, reason: &str) {
        self.edge_refusals.with_label_values(&[reason]).inc();
    }

    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Replaces the backend health gauges with this snapshot (backends removed by a reload
    /// disappear from the exposition).
    pub fn set_backend_health<'a>(&self, health: impl Iterator<Item = (&'a str, String, bool)>) {
        self.backend_healthy.reset();
        for (upstream, backend, healthy) in health {
            self.backend_healthy
                .with_label_values(&[upstream, backend.as_str()])
                .set(i64::from(healthy));
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on invalid metric names, which are constants here.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// One route's counters and latency histogram.
pub struct RouteMetrics {
    route: Box<str>,
    /// `[method][status class]`, created on first use so unused pairs export no series.
    requests: [[OnceLock<IntCounter>; 5]; 8],
    latency: Histogram,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn observe(&self, method: &Method, status: u16, seconds: f64) {
        let m = method_index(method);
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[m][s]
            .get_or_init(|| {
                metrics()
                    .requests
                    .with_label_values(&[&self.route, METHODS[m], STATUS_CLASSES[s]])
            })
            .inc();
        self.latency.observe(seconds);
    }
}

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// One upstream's attempt and retry counters.
pub struct UpstreamMetrics {
    name: Box<str>,
    pub attempts: IntCounter,
    pub retries: IntCounter,
}

impl UpstreamMetrics {
    /// Counts a failed attempt; failures are rare, so the label lookup happens here.
    pub fn failure(&self, reason: &str) {
        metrics()
            .upstream_failures
            .with_label_values(&[&self.name, reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counters_and_histogram_appear_in_the_exposition() {
        let m = metrics();
        let r = m.route("unit-test-route");
        r.observe(&Method::GET, 204, 0.002);
        r.observe(&Method::from_bytes(b"PROPFIND").unwrap(), 503, 0.2);
        r.observe(&Method::GET, 999, 0.0);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "portcullis_requests_total{method=\"GET\",route=\"unit-test-route\",status=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "portcullis_requests_total{method=\"other\",route=\"unit-test-route\",status=\"5xx\"} 1"
        ));
        // Out-of-range statuses are clamped into a class rather than growing the label set.
        assert!(text.contains(
            "portcullis_requests_total{method=\"GET\",route=\"unit-test-route\",status=\"5xx\"} 1"
        ));
        assert!(
            text.contains("portcullis_request_duration_seconds_count{route=\"unit-test-route\"} 3")
        );
    }
}
