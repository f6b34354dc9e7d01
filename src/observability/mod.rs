//! What the gateway tells its operators: Prometheus metrics (served on the admin listener's
//! `/metrics`) and the access log. Application logs stay on `log`/`env_logger` (`RUST_LOG`).

pub mod access_log;
pub mod metrics;

pub use access_log::{AccessLog, AccessLogWriter, AccessRecord, AuthOutcome, RateOutcome};
pub use metrics::{metrics, Metrics, RouteMetrics, UpstreamMetrics};
