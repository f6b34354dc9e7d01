//! The compiled runtime model: everything the request path reads, built from a [`Config`] and
//! never mutated, and the [`SharedRuntime`] through which a reload swaps a whole new one in.
//!
//! A request takes the runtime current when it starts and keeps it to the end, so a reload
//! never changes the rules under a request in flight. What must outlive a reload is carried
//! from the old runtime into the new one when its config is unchanged: clusters (health
//! state, passive ejections), rate-limit policies (counters), the authenticator (keys, token
//! cache) and the composite sub-request client (its connection pool). The proxy's own
//! upstream connection pool is keyed by peer, so it survives regardless.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::aggregate::client::SubClient;
use crate::aggregate::Aggregate;
use crate::auth::Authenticator;
use crate::config::{AuthMode, Config, ServerConfig};
use crate::observability::{metrics, RouteMetrics};
use crate::ratelimit::RateLimits;
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
    pub name: Arc<str>,
    pub target: RouteTarget,
    pub strip_prefix: Option<Box<str>>,
    pub auth: AuthMode,
    pub required_scopes: Vec<String>,
    /// Indexes into `Runtime::rate_limits`.
    pub rate_limit: Vec<usize>,
    pub metrics: RouteMetrics,
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
    /// Compiles a validated config. `previous` is the runtime a reload replaces: whatever is
    /// unchanged is taken over from it (see the module comment). The caller builds or keeps
    /// the authenticator, since building one may fetch keys.
    pub fn build(
        cfg: &Config,
        auth: Option<Arc<Authenticator>>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, String> {
        let rate_limits = Arc::new(RateLimits::build(
            &cfg.rate_limits,
            cfg.redis.as_ref(),
            previous.map(|p| &*p.rate_limits),
        )?);
        let clusters: Vec<Arc<Cluster>> = cfg
            .upstreams
            .iter()
            .map(|up| {
                previous
                    .and_then(|p| p.clusters.iter().find(|c| c.config == *up))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Cluster::build(up)))
            })
            .collect();
        let routes = cfg
            .routes
            .iter()
            .map(|r| -> Result<Route, String> {
                Ok(Route {
                    name: r.name.as_str().into(),
                    // Validated at load: a route names an existing upstream or has parts that do.
                    target: match &r.aggregate {
                        Some(agg) => RouteTarget::Aggregate(Arc::new(
                            Aggregate::build(agg, &r.name, |name| {
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
                    metrics: metrics().route(&r.name),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Runtime {
            router: Router::build(&cfg.routes),
            routes,
            clusters,
            server: cfg.server.clone(),
            auth,
            rate_limits,
            sub_client: previous
                .map_or_else(|| Arc::new(SubClient::default()), |p| p.sub_client.clone()),
        })
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

/// The current runtime, swapped whole on reload, with a signal for services that follow it.
pub struct SharedRuntime {
    current: ArcSwap<Runtime>,
    generation: watch::Sender<u64>,
}

impl SharedRuntime {
    pub fn new(runtime: Runtime) -> SharedRuntime {
        SharedRuntime {
            current: ArcSwap::from_pointee(runtime),
            generation: watch::Sender::new(0),
        }
    }

    /// The current runtime, for a short look (no reference count taken).
    pub fn load(&self) -> Guard<Arc<Runtime>> {
        self.current.load()
    }

    /// The current runtime, to keep (a request holds it to its end).
    pub fn load_full(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Makes `runtime` current; requests already started keep the one they have.
    pub fn swap(&self, runtime: Runtime) {
        self.current.store(Arc::new(runtime));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Fires after every swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
