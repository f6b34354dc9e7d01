//! The lean conductor's pool of idle upstream connections, one per worker thread.
//!
//! Each Pingora worker thread runs its own single-threaded runtime (`work_stealing: false`),
//! and a task never leaves the thread it started on, so a thread-local pool needs no lock and
//! hands out sockets registered with the very reactor that polls them. Keyed by backend
//! address, so it outlives reloads. Bounded per backend; a connection is checked for a close
//! or stray bytes from the backend before it is reused. A task per thread ([`sweep`], every
//! [`SWEEP_EVERY`]) closes connections past their idle timeout and any the backend closed,
//! so that a backend that gets no more requests does not keep sockets open on both sides.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::edge::idle::{self, Tick};

/// Most idle connections kept per backend and thread.
pub const MAX_IDLE_PER_BACKEND: usize = 128;

/// Most backends a thread keeps idle connections for.
const MAX_BACKENDS: usize = 4096;

struct Idle {
    stream: TcpStream,
    /// When it was checked in, on the coarse clock ([`idle::timeouts`]): an idle timeout
    /// needs no clock read per request, and may pass up to two 100 ms ticks late.
    since: Tick,
    /// Its cluster's `pool_idle_timeout` when it was checked in, for the sweep.
    idle_timeout: Duration,
}

/// How often a thread's pool is swept: an expired or closed connection stays open at most
/// about this long past its timeout.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// Keyed by configured backend addresses (not by anything a client chooses), so a fast
    /// seeded hash is safe here; SipHash was 2% of a proxied request's instructions.
    static POOL: RefCell<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
    /// Whether this thread's sweep task runs.
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// An idle connection to `addr` that is still open and silent, if this thread has one that
/// has idled less than `idle_timeout`. The most recently used goes first.
pub fn checkout(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        let clock = idle::timeouts();
        while let Some(conn) = idle.pop() {
            // A reload may have shortened the timeout since it was checked in. Connections
            // of clusters with other timeouts may share the backend: each is judged alone.
            let timeout = conn.idle_timeout.min(idle_timeout);
            if !expired(clock.since(conn.since), timeout) && is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
}

/// Whether a connection idle for `idled` (by the coarse clock, which may read up to about
/// a tick short of the truth, more if its thread runs late) is past `timeout`. It errs
/// early, by two ticks: a connection closed up to 200 ms before its time costs a connect,
/// one kept past it may meet a backend that has just closed it (a `502` for a request that
/// is not retried).
fn expired(idled: Duration, timeout: Duration) -> bool {
    idled.saturating_add(idle::TICK * 2) >= timeout
}

/// Whether an idle connection has neither been closed nor sent anything. The reactor's
/// readiness answers without a system call in the common case: it only turns readable when
/// the backend closed or wrote; then a read tells which (either way the connection goes).
fn is_quiet(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Err(_)) => false,
        // Readiness may be left over from a read that filled its buffer exactly: look.
        std::task::Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Returns a connection whose last exchange completed cleanly, to be kept `idle_timeout` at
/// most; the oldest connections to the same backend that are past their own timeout are
/// closed now (the sweep closes the rest).
pub fn checkin(addr: SocketAddr, stream: TcpStream, idle_timeout: Duration) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() >= MAX_BACKENDS && !pool.contains_key(&addr) {
            return;
        }
        let idle = pool.entry(addr).or_default();
        let clock = idle::timeouts();
        let now = clock.now();
        let expired = idle
            .iter()
            .take_while(|c| expired(clock.since(c.since), c.idle_timeout))
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(Idle {
                stream,
                since: now,
                idle_timeout,
            });
        }
    });
    start_sweeping();
}

/// Starts this thread's sweep task, once, on the thread's runtime (the pool is filled from a
/// request's task, so there is one).
fn start_sweeping() {
    if SWEEPING.replace(true) {
        return;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        SWEEPING.set(false);
        return;
    }
    tokio::spawn(async {
        // Timed on the coarse clock, not tokio's: a tokio timer pending in the runtime makes
        // its every park read the clock and walk the timer wheel (400 instructions per
        // proxied request).
        let clock = idle::timeouts();
        loop {
            clock
                .within(SWEEP_EVERY, std::future::pending::<()>())
                .await;
            sweep();
        }
    });
}

/// Closes this thread's idle connections that are past their idle timeout, or that the
/// backend closed or wrote to, and forgets backends left with none.
pub fn sweep() {
    let clock = idle::timeouts();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.retain(|_, idle| {
            idle.retain(|c| !expired(clock.since(c.since), c.idle_timeout) && is_quiet(&c.stream));
            !idle.is_empty()
        });
    });
}

/// Idle connections this thread holds for `addr`, for tests.
pub fn idle_count(addr: SocketAddr) -> usize {
    POOL.with(|pool| pool.borrow().get(&addr).map_or(0, Vec::len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::net::TcpListener;

    async fn connected(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Sweeps until `addr` has `want` idle connections, letting the reactor see the sockets'
    /// events in between; panics after 5 s.
    async fn swept_to(addr: SocketAddr, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            sweep();
            if idle_count(addr) == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} idle, want {want}",
                idle_count(addr)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn expiry_errs_early_by_two_ticks() {
        let timeout = Duration::from_secs(5);
        assert!(!expired(Duration::from_millis(4_799), timeout));
        assert!(expired(Duration::from_millis(4_800), timeout));
        assert!(expired(Duration::from_secs(60), timeout));
        // Shorter than two ticks: never reused.
        assert!(expired(Duration::ZERO, Duration::from_millis(150)));
    }

    #[tokio::test]
    async fn the_thread_s_own_task_sweeps_without_a_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed, closed_peer) = connected(&listener).await;
        checkin(addr, closed, Duration::from_secs(3600));
        drop(closed_peer);
        // Neither `sweep` nor `checkout` is called here: the task `checkin` started runs
        // every SWEEP_EVERY (1 s).
        let deadline = Instant::now() + SWEEP_EVERY * 5;
        while idle_count(addr) != 0 {
            assert!(Instant::now() < deadline, "the sweep task never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_sweep_closes_expired_and_closed_connections_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hour = Duration::from_secs(3600);
        let (kept, _kept_peer) = connected(&listener).await;
        let (closed, closed_peer) = connected(&listener).await;
        checkin(addr, kept, hour);
        checkin(addr, closed, hour);
        assert_eq!(idle_count(addr), 2);
        sweep();
        assert_eq!(idle_count(addr), 2, "nothing to close yet");

        // The backend closes one: the sweep closes it too, without a request.
        drop(closed_peer);
        swept_to(addr, 1).await;

        // One past its timeout goes at the next sweep; the other stays.
        let (expiring, _expiring_peer) = connected(&listener).await;
        checkin(addr, expiring, Duration::ZERO);
        assert_eq!(idle_count(addr), 2);
        sweep();
        assert_eq!(idle_count(addr), 1);
        assert!(
            checkout(addr, hour).is_some(),
            "the quiet one is still there"
        );

        // A backend left without connections is forgotten.
        sweep();
        assert!(POOL.with(|p| !p.borrow().contains_key(&addr)));
    }
}
