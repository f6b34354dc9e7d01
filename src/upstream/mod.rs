//! Upstream clusters: backends, load balancing, active health checks, passive ejection and
//! the bookkeeping that lets a request retry on a *different* backend when connecting fails.
//!
//! Active checks and consistent hashing are pingora-load-balancing's; this module adds what
//! a gateway needs on top: per-request "already tried" tracking (Pingora's own retry would
//! happily pick the same dead backend again) and a short passive ejection after a failed
//! connect, so that a backend that dies between two health checks stops costing every
//! request a connect.
//!
//! Round robin and random pick here, from an array of backend slots whose health flags the
//! checks flip (through `health_status_change`). Pingora's `select_with` hashes each
//! candidate twice (its readiness map and its uniqueness set) and cost some 1,700
//! instructions a request, 5% of the lean path's; this costs an atomic add and a load.

mod health;
pub mod pool;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{BackendIter, BackendSelection, Consistent, RoundRobin};
use pingora_load_balancing::{discovery, Backend, Backends, LoadBalancer};

use crate::config::{HashKey, LbPolicy, UpstreamConfig};
use crate::observability::{metrics, UpstreamMetrics};

pub use health::HealthChecks;

/// How long a backend that refused a connection is skipped, unless nothing else is left.
pub const PASSIVE_EJECTION: Duration = Duration::from_secs(5);

/// Bound on the selection walk; far above any cluster's backend count times its weights.
const MAX_SELECT_STEPS: usize = 1024;

enum Balancer {
    /// Round robin and random: the cluster picks from `order` (slot indices, each repeated
    /// by its weight), and Pingora's balancer only runs the active checks.
    Weighted {
        checks: Arc<LoadBalancer<RoundRobin>>,
        order: Box<[usize]>,
        next: AtomicUsize,
    },
    /// Consistent hashing: Pingora's Ketama ring picks, and its balancer runs the checks.
    Consistent(Arc<LoadBalancer<Consistent>>),
}

struct BackendSlot {
    addr: SocketAddr,
    /// Ready-made peer (address, TLS, timeouts); cloned per request.
    peer: HttpPeer,
    /// Milliseconds since `epoch()` until which the backend is passively ejected.
    ejected_until_ms: AtomicU64,
    /// Whether the active check admits it: Pingora's health, mirrored by [`Mirrored`]
    /// (healthy until a check says otherwise, as in Pingora).
    healthy: Arc<AtomicBool>,
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
        let flags: Vec<(SocketAddr, Arc<AtomicBool>)> = cfg
            .backends
            .iter()
            .map(|b| (b.addr, Arc::new(AtomicBool::new(true))))
            .collect();
        let balancer = match cfg.lb {
            LbPolicy::ConsistentHash => Balancer::Consistent(balancer_for(cfg, backends, &flags)),
            LbPolicy::RoundRobin | LbPolicy::Random => Balancer::Weighted {
                checks: balancer_for(cfg, backends, &flags),
                order: cfg
                    .backends
                    .iter()
                    .enumerate()
                    .flat_map(|(i, b)| std::iter::repeat_n(i, b.weight))
                    .collect(),
                next: AtomicUsize::new(0),
            },
        };
        let slots = cfg
            .backends
            .iter()
            .zip(flags)
            .map(|(b, (_, healthy))| {
                let mut peer = HttpPeer::new(b.addr, cfg.tls, cfg.sni.clone());
                peer.options.connection_timeout = Some(cfg.connect_timeout);
                peer.options.read_timeout = Some(cfg.read_timeout);
                peer.options.write_timeout = Some(cfg.read_timeout);
                peer.options.idle_timeout = Some(cfg.pool_idle_timeout);
                BackendSlot {
                    addr: b.addr,
                    peer,
                    ejected_until_ms: AtomicU64::new(0),
                    healthy,
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
            Balancer::Weighted { checks, .. } => checks.start(stop).await,
            Balancer::Consistent(lb) => lb.start(stop).await,
        }
    }

    /// Each backend and whether the active check admits it, for the metrics.
    pub fn backend_health(&self) -> impl Iterator<Item = (SocketAddr, bool)> + '_ {
        self.slots
            .iter()
            .map(|s| (s.addr, s.healthy.load(Ordering::Relaxed)))
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
        // The clock is read only when some backend was ever ejected (0: never).
        let now = if self
            .slots
            .iter()
            .any(|s| s.ejected_until_ms.load(Ordering::Relaxed) != 0)
        {
            now_ms()
        } else {
            0
        };
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
        match &self.balancer {
            Balancer::Weighted { order, next, .. } => self.pick_weighted(order, next, |slot| {
                accept(slot, slot.healthy.load(Ordering::Relaxed))
            }),
            Balancer::Consistent(lb) => lb
                .select_with(key, MAX_SELECT_STEPS, |b, healthy| {
                    self.slot(b).is_some_and(|s| accept(s, healthy))
                })
                .and_then(|b| self.slot(&b)),
        }
    }

    /// Round robin or random: the weighted order's next (or a random) entry, then, when
    /// that one is not accepted, every slot once in turn after it.
    fn pick_weighted(
        &self,
        order: &[usize],
        next: &AtomicUsize,
        accept: impl Fn(&BackendSlot) -> bool,
    ) -> Option<&BackendSlot> {
        let n = order.len();
        if n == 0 || self.slots.is_empty() {
            return None;
        }
        let turn = match self.config.lb {
            LbPolicy::Random => random_index(n),
            _ => next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let first = order.get(turn).copied().unwrap_or(0);
        (0..self.slots.len())
            .filter_map(|i| self.slots.get((first + i) % self.slots.len()))
            .find(|slot| accept(slot))
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
        self.slots
            .iter()
            .filter(|s| s.healthy.load(Ordering::Relaxed))
            .count()
    }

    pub fn backend_count(&self) -> usize {
        self.slots.len()
    }
}

fn balancer_for<S>(
    cfg: &UpstreamConfig,
    backends: std::collections::BTreeSet<Backend>,
    flags: &[(SocketAddr, Arc<AtomicBool>)],
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
        lb.set_health_check(Box::new(Mirrored {
            check: health::build(hc, cfg),
            flags: flags.to_vec(),
        }));
        lb.health_check_frequency = Some(hc.interval);
        lb.parallel_health_check = true;
    }
    Arc::new(lb)
}

/// A health check whose verdicts also flip the cluster's own per-slot flags, which round
/// robin and random read without a hash lookup.
struct Mirrored {
    check: Box<dyn HealthCheck + Send + Sync>,
    flags: Vec<(SocketAddr, Arc<AtomicBool>)>,
}

#[async_trait::async_trait]
impl HealthCheck for Mirrored {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        self.check.check(target).await
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let Some(addr) = target.addr.as_inet() {
            for (a, flag) in &self.flags {
                if a == addr {
                    flag.store(healthy, Ordering::Relaxed);
                }
            }
        }
        self.check.health_status_change(target, healthy).await;
    }

    fn backend_summary(&self, target: &Backend) -> String {
        self.check.backend_summary(target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.check.health_threshold(success)
    }
}

/// A random index below `n`, from a per-thread xorshift generator (the pick needs spread,
/// not secrecy).
fn random_index(n: usize) -> usize {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1,
        );
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        // Multiply-shift: an even spread over 0..n without a division.
        ((u128::from(x) * n as u128) >> 64) as usize
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(lb: &str) -> Cluster {
        let yaml = format!(
            "upstreams:\n  u:\n    lb: {lb}\n    backends:\n      - {{ addr: \"127.0.0.1:1001\", weight: 3 }}\n      - \"127.0.0.1:1002\"\n\
             routes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: u }}\n"
        );
        let cfg = crate::config::parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
        Cluster::build(&cfg.upstreams[0])
    }

    fn port(c: &Cluster, tried: &[SocketAddr]) -> Result<u16, SelectError> {
        c.select_addr(b"", tried).map(|a| a.port())
    }

    fn counts(c: &Cluster, n: usize) -> [usize; 2] {
        let mut seen = [0; 2];
        for _ in 0..n {
            seen[usize::from(port(c, &[]).unwrap() - 1001)] += 1;
        }
        seen
    }

    #[test]
    fn round_robin_follows_the_weights_and_skips_what_it_must() {
        let c = cluster("round_robin");
        assert_eq!(counts(&c, 400), [300, 100]);
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        // Tried for this request: the other one, every time.
        for _ in 0..8 {
            assert_eq!(port(&c, &[a]), Ok(1002));
        }
        assert_eq!(port(&c, &[a, b]), Err(SelectError::AllTried));
        // Passively ejected: skipped while another is left, chosen when none is.
        c.report_connect_failure(&b);
        assert_eq!(counts(&c, 40), [40, 0]);
        assert_eq!(port(&c, &[a]), Ok(1002));
        // Unhealthy (the active check's verdict): never chosen.
        c.slots[0].healthy.store(false, Ordering::Relaxed);
        assert_eq!(c.healthy_backends(), 1);
        assert_eq!(port(&c, &[b]), Err(SelectError::AllTried));
        c.slots[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(port(&c, &[]), Err(SelectError::NoHealthyBackend));
    }

    #[test]
    fn random_spreads_by_weight() {
        let c = cluster("random");
        let [a, b] = counts(&c, 4000);
        assert!((2700..3300).contains(&a) && a + b == 4000, "{a} / {b}");
        for n in [1, 2, 3, 7, 1000] {
            assert!((0..500).all(|_| random_index(n) < n));
        }
    }
}
