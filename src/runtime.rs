//! The compiled runtime model: everything the request path reads, built once from a
//! [`Config`] and never mutated. Later, reload swaps a whole new `Runtime` in.

use std::sync::Arc;

use pingora_core::services::ServiceWithDependents;

use crate::auth::Authenticator;
use crate::config::{AuthMode, Config, ServerConfig};
use crate::ratelimit::{RateLimits, Sweeper};
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
    /// Indexes into `Runtime::rate_limits`.
    pub rate_limit: Vec<usize>,
}

pub struct Runtime {
    pub router: Router,
    pub routes: Vec<Route>,
    pub clusters: Vec<Arc<Cluster>>,
    pub server: ServerConfig,
    /// Present when `auth.jwt` is configured.
    pub auth: Option<Arc<Authenticator>>,
    pub rate_limits: Arc<RateLimits>,
}

impl Runtime {
    /// Compiles a validated config. Returns the background services (health checks) that
    /// must run beside the proxy.
    pub fn build(
        cfg: &Config,
        auth: Option<Arc<Authenticator>>,
    ) -> Result<(Runtime, Vec<Box<dyn ServiceWithDependents>>), String> {
        let mut services: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
        let rate_limits = Arc::new(RateLimits::build(&cfg.rate_limits, cfg.redis.as_ref())?);
        if !rate_limits.is_empty() {
            services.push(Box::new(
                pingora_core::services::background::background_service(
                    "rate limit sweeper",
                    Sweeper {
                        limits: rate_limits.clone(),
                    },
                ),
            ));
        }
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
                rate_limit: r
                    .rate_limit
                    .iter()
                    .filter_map(|name| rate_limits.index_of(name))
                    .collect(),
            })
            .collect();
        let runtime = Runtime {
            router: Router::build(&cfg.routes),
            routes,
            clusters,
            server: cfg.server.clone(),
            auth,
            rate_limits,
        };
        Ok((runtime, services))
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
