//! The compiled runtime model: everything the request path reads, built once from a
//! [`Config`] and never mutated. Later, reload swaps a whole new `Runtime` in.

use std::sync::Arc;

use pingora_core::services::ServiceWithDependents;

use crate::auth::Authenticator;
use crate::config::{AuthMode, Config, ServerConfig};
use crate::routing::Router;
use crate::upstream::Cluster;

/// A route, as the request path needs it.
pub struct Route {
    pub name: Box<str>,
    /// Index into `Runtime::clusters`.
    pub cluster: usize,
    pub strip_prefix: Option<Box<str>>,
    pub auth: AuthMode,
    pub required_scopes: Vec<String>,
}

pub struct Runtime {
    pub router: Router,
    pub routes: Vec<Route>,
    pub clusters: Vec<Arc<Cluster>>,
    pub server: ServerConfig,
    /// Present when `auth.jwt` is configured.
    pub auth: Option<Arc<Authenticator>>,
}

impl Runtime {
    /// Compiles a validated config. Returns the background services (health checks) that
    /// must run beside the proxy.
    pub fn build(
        cfg: &Config,
        auth: Option<Arc<Authenticator>>,
    ) -> (Runtime, Vec<Box<dyn ServiceWithDependents>>) {
        let mut services = Vec::new();
        let mut clusters = Vec::with_capacity(cfg.upstreams.len());
        for up in &cfg.upstreams {
            let (cluster, service) = Cluster::build(up);
            clusters.push(Arc::new(cluster));
            services.extend(service);
        }
        let routes = cfg
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                // Validated at load: every route names an existing upstream.
                cluster: cfg
                    .upstreams
                    .iter()
                    .position(|u| u.name == r.upstream)
                    .unwrap_or_default(),
                strip_prefix: r.strip_prefix.as_deref().map(Into::into),
                auth: r.auth,
                required_scopes: r.required_scopes.clone(),
            })
            .collect();
        let runtime = Runtime {
            router: Router::build(&cfg.routes),
            routes,
            clusters,
            server: cfg.server.clone(),
            auth,
        };
        (runtime, services)
    }

    /// Upstreams without a single healthy backend, for readiness.
    pub fn unready_upstreams(&self) -> Vec<&str> {
        self.clusters
            .iter()
            .filter(|c| c.healthy_backends() == 0)
            .map(|c| &*c.name)
            .collect()
    }
}
