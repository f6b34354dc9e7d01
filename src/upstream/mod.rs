//! Upstream clusters: backends, load balancing, active health checks, passive ejection and
//! the bookkeeping that lets a request retry on a *different* backend when connecting fails.
//!
//! Balancing and active checks are pingora-load-balancing's; this module adds what a gateway
//! needs on top: per-request "already tried" tracking (Pingora's own retry would happily pick
//! the same dead backend again) and a short passive ejection after a failed connect, so that
//! a backend that dies between two health checks stops costing every request a connect.

mod health;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pingora_core::services::background::background_service;
use pingora_core::services::ServiceWithDependents;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::selection::{
    BackendIter, BackendSelection, Consistent, Random, RoundRobin,
};
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};

use crate::config::{HashKey, LbPolicy, UpstreamConfig};

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
    pub name: Box<str>,
    pub hash_key: HashKey,
    pub retries: u32,
    pub has_health_check: bool,
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
    /// Builds the cluster, and the background service that runs its health checks if it has any.
    pub fn build(cfg: &UpstreamConfig) -> (Cluster, Option<Box<dyn ServiceWithDependents>>) {
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
        let (balancer, service) = match cfg.lb {
            LbPolicy::RoundRobin => {
                let (lb, svc) = balancer_for::<RoundRobin>(cfg, backends);
                (Balancer::RoundRobin(lb), svc)
            }
            LbPolicy::Random => {
                let (lb, svc) = balancer_for::<Random>(cfg, backends);
                (Balancer::Random(lb), svc)
            }
            LbPolicy::ConsistentHash => {
                let (lb, svc) = balancer_for::<Consistent>(cfg, backends);
                (Balancer::Consistent(lb), svc)
            }
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
                    peer,
                    ejected_until_ms: AtomicU64::new(0),
                }
            })
            .collect();
        let cluster = Cluster {
            name: cfg.name.as_str().into(),
            hash_key: cfg.hash_key.clone(),
            retries: cfg.retries,
            has_health_check: hc.is_some(),
            balancer,
            slots,
        };
        (cluster, service)
    }

    /// Picks a backend for one attempt. `tried` are the backends this request already failed
    /// to connect to; `key` feeds consistent hashing and is ignored otherwise.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Result<HttpPeer, SelectError> {
        let now = now_ms();
        let fresh = |addr: &SocketAddr| !tried.contains(addr);
        // First choice: healthy, untried, not passively ejected.
        if let Some(slot) = self.pick(key, |slot, healthy| {
            healthy && fresh(&slot.addr) && slot.ejected_until_ms.load(Ordering::Relaxed) <= now
        }) {
            return Ok(slot.peer.clone());
        }
        // Passive ejection is a hint, not a verdict: rather than fail, try an ejected backend.
        if let Some(slot) = self.pick(key, |slot, healthy| healthy && fresh(&slot.addr)) {
            return Ok(slot.peer.clone());
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
) -> (Arc<LoadBalancer<S>>, Option<Box<dyn ServiceWithDependents>>)
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(discovery::Static::new(backends)));
    // Static discovery never blocks or fails: this only builds the selector.
    let _ = futures_now(lb.update());
    match &cfg.health_check {
        None => (Arc::new(lb), None),
        Some(hc) => {
            lb.set_health_check(health::build(hc, cfg));
            lb.health_check_frequency = Some(hc.interval);
            lb.parallel_health_check = true;
            let service = background_service(&format!("health check {}", cfg.name), lb);
            let lb = service.task();
            (lb, Some(Box::new(service)))
        }
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
