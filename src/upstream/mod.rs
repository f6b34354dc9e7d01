//! Upstream clusters: backends, load balancing, active health checks, passive ejection and
//! the bookkeeping that lets a request retry on a *different* backend when connecting fails.
//!
//! Balancing and active checks are pingora-load-balancing's; this module adds what a gateway
//! needs on top: per-request "already tried" tracking (Pingora's own retry would happily pick
//! the same dead backend again) and a short passive ejection after a failed connect, so that
//! a backend that dies between two health checks stops costing every request a connect.

mod health;
pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};

use crate::config::{HashKey, LbPolicy, UpstreamConfig};
use crate::observability::{metrics, UpstreamMetrics};

pub use health::HealthChecks;

/// How long a backend that refused a connection is skipped, unless nothing else is left.
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(5);

/// Bound on the selection walk; far above any cluster's backend count times its weights.
const MAX_SELECT_STEPS: usize = 1024;

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Random(Arc<LoadBalancer<Random>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

struct BackendSlot {
    addr: SocketAddr,
    /// Part of a `Backend`'s identity in pingora-load-balancing.
    weight: usize,
    /// Ready-made peer (address, TLS, timeouts); cloned per request.
    peer: HttpPeer,
    /// Milliseconds since `epoch()` until which the backend is passively ejected.
    ejected_until_ms: AtomicU64,
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectError {
    /// Every backend is unhealthy: 503.
    NoHealthyBackend,
    /// Every healthy backend was tried for this request and refused: 502.
    AllTried,
}

/// A named upstream cluster.
pub struct Cluster {
    pub name: Arc<str>,
    pub hash_key: HashKey,
    pub retries: u32,
    pub has_health_check: bool,
    pub metrics: UpstreamMetrics,
    /// What it was built from: a reload keeps the cluster (health state, ejections) when
    /// this is unchanged.
    pub config: UpstreamConfig,
    balancer: Balancer,
    slots: Vec<BackendSlot>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Cluster {
    /// Builds the cluster; its active checks run when [`HealthChecks`] starts them.
    pub fn build(cfg: &UpstreamConfig) -> Cluster {
        let backends: std::collections::BTreeSet<Backend> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(b.addr),
                weight: b.weight,
                ext: Default::default(),
            })
            .collect();
        let hc = cfg.health_check.as_ref();
        let balancer = match cfg.lb {
            LbPolicy::RoundRobin => Balancer::RoundRobin(balancer_for(cfg, backends)),
            LbPolicy::Random => Balancer::Random(balancer_for(cfg, backends)),
            LbPolicy::ConsistentHash => Balancer::Consistent(balancer_for(cfg, backends)),
        };
        let slots = cfg
            .backends
            .iter()
            .map(|b| {
                let mut peer = HttpPeer::new(b.addr, cfg.tls, cfg.sni.clone());
                peer.options.connection_timeout = Some(cfg.connect_timeout);
                peer.options.read_timeout = Some(cfg.read_timeout);
                peer.options.write_timeout = Some(cfg.read_timeout);
                peer.options.idle_timeout = Some(cfg.pool_idle_timeout);
                BackendSlot {
                    addr: b.addr,
                    weight: b.weight,
                    peer,
                    ejected_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        Cluster {
            name: cfg.name.as_str().into(),
            hash_key: cfg.hash_key.clone(),
            retries: cfg.retries,
            has_health_check: hc.is_some(),
            metrics: metrics().upstream(&cfg.name),
            config: cfg.clone(),
            balancer,
            slots,
        }
    }

    /// Runs the active health checks until `stop` fires (shutdown, or a reload that
    /// replaced this cluster). Returns at once without checks.
    pub async fn run_health_checks(&self, stop: ShutdownWatch) {
        if !self.has_health_check {
            return;
        }
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.start(stop).await,
            Balancer::Random(lb) => lb.start(stop).await,
            Balancer::Consistent(lb) => lb.start(stop).await,
        }
    }

    /// Each backend and whether the active check admits it, for the metrics.
    pub fn backend_health(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.slots.iter().map(|s| {
            let backend = Backend {
                addr: pingora_core::protocols::l4::socket::SocketAddr::Inet(s.addr),
                weight: s.weight,
                ext: Default::default(),
            };
            let ready = match &self.balancer {
                Balancer::RoundRobin(lb) => lb.backends().ready(&backend),
                Balancer::Random(lb) => lb.backends().ready(&backend),
                Balancer::Consistent(lb) => lb.backends().ready(&backend),
            };
            (s.addr, ready)
        })
    }

    /// Picks a backend for one attempt. `tried` are the backends this request already failed
    /// to connect to; `key` feeds consistent hashing and is ignored otherwise.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Result<HttpPeer, SelectError> {
        self.select_slot(key, tried).map(|slot| slot.peer.clone())
    }

    /// [`Cluster::select`], for a caller that only needs the address (no peer to clone).
    pub fn select_addr(&self, key: &[u8], tried: &[SocketAddr]) -> Result<SocketAddr, SelectError> {
        self.select_slot(key, tried).map(|slot| slot.addr)
    }

    fn select_slot(&self, key: &[u8], tried: &[SocketAddr]) -> Result<&BackendSlot, SelectError> {
        let now = now_ms();
        let fresh = |addr: &SocketAddr| !tried.contains(addr);
        // First choice: healthy, untried, not passively ejected.
        if let Some(slot) = self.pick(key, |slot, healthy| {
            healthy && fresh(&slot.addr) && slot.ejected_until_ms.load(Ordering::Relaxed) <= now
        }) {
            return Ok(slot);
        }
        // Passive ejection is a hint, not a verdict: rather than fail, try an ejected backend.
        if let Some(slot) = self.pick(key, |slot, healthy| healthy && fresh(&slot.addr)) {
            return Ok(slot);
        }
        if tried.is_empty() || self.pick(key, |_, healthy| healthy).is_none() {
            Err(SelectError::NoHealthyBackend)
        } else {
            Err(SelectError::AllTried)
        }
    }

    fn pick(
        &self,
        key: &[u8],
        accept: impl Fn(&BackendSlot, bool) -> bool,
    ) -> Option<&BackendSlot> {
        let filter = |b: &Backend, healthy: bool| self.slot(b).is_some_and(|s| accept(s, healthy));
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => select_with(lb, key, &filter),
            Balancer::Random(lb) => select_with(lb, key, &filter),
            Balancer::Consistent(lb) => select_with(lb, key, &filter),
        };
        backend.and_then(|b| self.slot(&b))
    }

    fn slot(&self, backend: &Backend) -> Option<&BackendSlot> {
        let addr = backend.addr.as_inet()?;
        self.slots.iter().find(|s| s.addr == *addr)
    }

    /// Records a failed connect: the backend is skipped for a while.
    pub fn report_connect_failure(&self, addr: &SocketAddr) {
        if let Some(slot) = self.slots.iter().find(|s| s.addr == *addr) {
            slot.ejected_until_ms.store(
                now_ms() + PASSIVE_EJECTION.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// Backends the active health check currently admits (all of them without a check).
    pub fn healthy_backends(&self) -> usize {
        match &self.balancer {
            Balancer::RoundRobin(lb) => count_ready(lb),
            Balancer::Random(lb) => count_ready(lb),
            Balancer::Consistent(lb) => count_ready(lb),
        }
    }

    pub fn backend_count(&self) -> usize {
        self.slots.len()
    }
}

fn select_with<S>(
    lb: &LoadBalancer<S>,
    key: &[u8],
    accept: &dyn Fn(&Backend, bool) -> bool,
) -> Option<Backend>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    lb.select_with(key, MAX_SELECT_STEPS, |b, healthy| accept(b, healthy))
}

fn count_ready<S>(lb: &LoadBalancer<S>) -> usize
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let backends = lb.backends();
    backends
        .get_backend()
        .iter()
        .filter(|b| backends.ready(b))
        .count()
}

fn balancer_for<S>(
    cfg: &UpstreamConfig,
    backends: std::collections::BTreeSet<Backend>,
) -> Arc<LoadBalancer<S>>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(discovery::Static::new(backends)));
    // Static discovery never blocks or fails: this only builds the selector.
    let _ = futures_now(lb.update());
    if let Some(hc) = &cfg.health_check {
        // A fresh balancer per build: `set_health_check` may only be called once on one.
        lb.set_health_check(health::build(hc, cfg));
        lb.health_check_frequency = Some(hc.interval);
        lb.parallel_health_check = true;
    }
    Arc::new(lb)
}

/// The `reason` label of `portcullis_upstream_failures_total` for an upstream error.
pub fn failure_reason(e: &pingora_error::Error) -> &'static str {
    use pingora_error::ErrorType::*;
    match e.etype() {
        ConnectTimedout => "connect_timeout",
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => {
            "connect_refused"
        }
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => "tls",
        ReadTimedout | WriteTimedout => "timeout",
        ConnectionClosed | ReadError | WriteError => "connection_lost",
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => "bad_response",
        _ => "other",
    }
}

/// Polls a future that is known to complete without waiting (static discovery).
fn futures_now<F: std::future::Future>(fut: F) -> Option<F::Output> {
    use std::task::{Context, Poll, Waker};
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
