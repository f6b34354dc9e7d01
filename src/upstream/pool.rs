//! The lean conductor's pool of idle upstream connections, one per worker thread.
//!
//! Each Pingora worker thread runs its own single-threaded runtime (`work_stealing: false`),
//! and a task never leaves the thread it started on, so a thread-local pool needs no lock and
//! hands out sockets registered with the very reactor that polls them. Keyed by backend
//! address, so it outlives reloads. Bounded per backend; a connection is checked for a close
//! or stray bytes from the backend before it is reused.

use std::cell::RefCell;
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
}

thread_local! {
    /// Keyed by configured backend addresses (not by anything a client chooses), so a fast
    /// seeded hash is safe here; SipHash was 2% of a proxied request's instructions.
    static POOL: RefCell<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

/// An idle connection to `addr` that is still open and silent, if this thread has one that
/// has idled less than `idle_timeout`. The most recently used goes first.
pub fn checkout(addr: SocketAddr, idle_timeout: Duration) -> Option<TcpStream> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        let clock = idle::timeouts();
        while let Some(conn) = idle.pop() {
            if clock.since(conn.since) >= idle_timeout {
                // Older ones are older still.
                idle.clear();
                return None;
            }
            if is_quiet(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    })
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

/// Returns a connection whose last exchange completed cleanly; connections to the same
/// backend idle past `idle_timeout` are closed now (the oldest are first in line).
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
            .take_while(|c| clock.since(c.since) >= idle_timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE_PER_BACKEND {
            idle.push(Idle { stream, since: now });
        }
    });
}

/// Idle connections this thread holds for `addr`, for tests.
pub fn idle_count(addr: SocketAddr) -> usize {
    POOL.with(|pool| pool.borrow().get(&addr).map_or(0, Vec::len))
}
