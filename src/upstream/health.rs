//! Active health checks, configured from `upstreams.<name>.health_check`.

use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};

use crate::config::{HealthCheckConfig, HealthCheckKind, UpstreamConfig};

pub(super) fn build(
    hc: &HealthCheckConfig,
    up: &UpstreamConfig,
) -> Box<dyn HealthCheck + Send + Sync> {
    match &hc.kind {
        HealthCheckKind::Tcp => {
            let mut check = if up.tls {
                TcpHealthCheck::new_tls(&up.sni)
            } else {
                TcpHealthCheck::new()
            };
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.total_connection_timeout = Some(hc.timeout);
            check
        }
        HealthCheckKind::Http {
            path,
            expect_status,
        } => {
            let host = if up.sni.is_empty() {
                "localhost"
            } else {
                up.sni.as_str()
            };
            let mut check = HttpHealthCheck::new(host, up.tls);
            check.consecutive_success = hc.healthy_threshold;
            check.consecutive_failure = hc.unhealthy_threshold;
            check.peer_template.options.connection_timeout = Some(hc.timeout);
            check.peer_template.options.total_connection_timeout = Some(hc.timeout);
            check.peer_template.options.read_timeout = Some(hc.timeout);
            check.peer_template.options.write_timeout = Some(hc.timeout);
            if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                // Validated at load: the path is printable ASCII, so these cannot fail.
                let _ = req.append_header("Host", host);
                let _ = req.append_header("User-Agent", "portcullis-health-check");
                check.req = req;
            }
            let expect = *expect_status;
            check.validator = Some(Box::new(move |resp: &ResponseHeader| {
                if resp.status.as_u16() == expect {
                    Ok(())
                } else {
                    Error::e_explain(
                        ErrorType::Custom("unexpected health check status"),
                        format!("status {}, expected {expect}", resp.status.as_u16()),
                    )
                }
            }));
            Box::new(check)
        }
    }
}
