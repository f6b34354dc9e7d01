//! Active health checks, configured from `upstreams.<name>.health_check`, and the service
//! that runs them for whichever clusters the current runtime has.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};

use tokio::sync::watch;

use super::Cluster;
use crate::config::{HealthCheckConfig, HealthCheckKind, UpstreamConfig};
use crate::runtime::SharedRuntime;

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

/// Runs the active checks of the current runtime's clusters. A reload that keeps a cluster
/// keeps its checks (and health state) running; one that replaces or removes it stops them
/// and starts the new cluster's.
pub struct HealthChecks {
    pub shared: Arc<SharedRuntime>,
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reloads = self.shared.subscribe();
        // Keyed by the cluster's address: a kept cluster is the same `Arc`.
        let mut running: HashMap<usize, (Arc<Cluster>, watch::Sender<bool>)> = HashMap::new();
        loop {
            let runtime = self.shared.load_full();
            let current: Vec<&Arc<Cluster>> = runtime
                .clusters
                .iter()
                .filter(|c| c.has_health_check)
                .collect();
            running.retain(|key, (_, stop)| {
                let kept = current.iter().any(|c| Arc::as_ptr(c) as usize == *key);
                if !kept {
                    let _ = stop.send(true);
                }
                kept
            });
            for cluster in current {
                let key = Arc::as_ptr(cluster) as usize;
                if running.contains_key(&key) {
                    continue;
                }
                let (stop, watch) = watch::channel(false);
                let c = cluster.clone();
                tokio::spawn(async move { c.run_health_checks(watch).await });
                running.insert(key, (cluster.clone(), stop));
            }
            drop(runtime);
            tokio::select! {
                changed = reloads.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        for (_, (_, stop)) in running {
            let _ = stop.send(true);
        }
    }
}
