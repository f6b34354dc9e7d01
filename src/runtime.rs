//! The compiled runtime model: everything the request path reads, built once from a
//! [`Config`] and never mutated. Later, reload swaps a whole new `Runtime` in.

use std::sync::Arc;

use pingora_core::services::ServiceWithDependents;

use crate::aggregate::client::SubClient;
use crate::aggregate::Aggregate;
use crate::auth::Authenticator;
use crate::config::{AuthMode, Config, ServerConfig};
use crate::ratelimit::{RateLimits, Sweeper};
use crate::routing::Router;
use crate::upstream::Cluster;

/// Where a route's requests go.
pub enum RouteTarget {
    /// Proxied to the cluster at this index of `Runtime::clusters`.
    Proxy(usize),
    /// A composite endpoint.
    Aggregate(Arc<Aggregate>),
}

/// A route, as the request path needs it.
pub struct Route {
    pub name: Box<str>,
    pub target: RouteTarget,
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
    /// The client composite routes make their sub-requests with.
    pub sub_client: Arc<SubClient>,
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
            .map(|r| -> Result<Route, String> {
                Ok(Route {
                    name: r.name.as_str().into(),
                    // Validated at load: a route names an existing upstream or has parts that do.
                    target: match &r.aggregate {
                        Some(agg) => RouteTarget::Aggregate(Arc::new(
                            Aggregate::build(agg, |name| {
                                let i = cfg.upstreams.iter().position(|u| u.name == name)?;
                                Some(clusters[i].clone())
                            })
                            .ok_or_else(|| {
                                format!("route {}: a part names an unknown upstream", r.name)
                            })?,
                        )),
                        None => RouteTarget::Proxy(
                            cfg.upstreams
                                .iter()
                                .position(|u| Some(&u.name) == r.upstream.as_ref())
                                .unwrap_or_default(),
                        ),
                    },
                    strip_prefix: r.strip_prefix.as_deref().map(Into::into),
                    auth: r.auth,
                    required_scopes: r.required_scopes.clone(),
                    rate_limit: r
                        .rate_limit
                        .iter()
                        .filter_map(|name| rate_limits.index_of(name))
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let runtime = Runtime {
            router: Router::build(&cfg.routes),
            routes,
            clusters,
            server: cfg.server.clone(),
            auth,
            rate_limits,
            sub_client: Arc::new(SubClient::default()),
        };
        Ok((runtime, services))
    }

    /// The cluster a proxied route sends to; `None` for composite routes.
    pub fn cluster_for(&self, route: usize) -> Option<&Arc<Cluster>> {
        match self.routes.get(route)?.target {
            RouteTarget::Proxy(i) => self.clusters.get(i),
            RouteTarget::Aggregate(_) => None,
        }
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
