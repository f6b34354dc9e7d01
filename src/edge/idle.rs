//! The wait of a connection between requests, or before its first: until its client sends,
//! its deadline passes or, between requests, the gateway shuts down.
//!
//! A connection waits for most of its life, so this wait is built to cost one intrusive list
//! node in the connection's own future, nothing on the heap and no system call. A timer per
//! connection (Pingora's `fast_timeout` boxes a future and keeps a timer per millisecond of
//! deadline; tokio's `Sleep` is about 100 bytes inline) and a shutdown watcher
//! (`watch::changed`, 120 bytes) were most of the difference between 2.6 KiB and under 2 KiB
//! per idle connection.
//!
//! [`IdleClock`] is a coarse timing wheel: rings of [`Notify`] slots, one slot per `TICK`
//! (100 ms), that a small thread fires in turn. A waiting connection parks on the slot of its
//! deadline's tick, so a deadline fires at most about a tick late. A deadline further away
//! than a ring is long parks on the ring's last slot and parks again when woken. Each worker
//! thread parks on a ring of its own, so that connections of different threads never share
//! a slot's lock. Graceful shutdown fires every slot once, after raising a flag that waiters
//! between requests read.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora_core::protocols::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// The clock's resolution: how late a deadline may fire.
pub const TICK: Duration = Duration::from_millis(100);

/// Slots in a ring: deadlines up to `SLOTS * TICK` (25.6 s) away wait in one park.
const SLOTS: u64 = 256;

/// Rings: worker threads beyond this many share them.
const RINGS: usize = 8;

thread_local! {
    /// This thread's ring, given out in turn as threads first wait.
    static RING: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % RINGS
    };
}

/// A tick of the clock: a deadline, rounded up to the clock's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tick(u64);

/// Why a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Without a buffer: the socket is readable (bytes, or the client closed: the read that
    /// follows tells). With one: bytes were read into it.
    Data,
    /// The client closed (seen with a buffer), or the socket failed.
    Gone,
    /// The deadline passed.
    Expired,
    /// The gateway is shutting down (only for waits that asked to hear of it).
    Closing,
}

/// The process's clock for the lean path's upstream and client timeouts (the edge's idle
/// waits use their service's own clock, which shutdown fires).
pub fn timeouts() -> &'static Arc<IdleClock> {
    static CLOCK: std::sync::OnceLock<Arc<IdleClock>> = std::sync::OnceLock::new();
    CLOCK.get_or_init(IdleClock::new)
}

/// What [`IdleClock::park`] found.
enum Park<'a> {
    On(tokio::sync::futures::Notified<'a>),
    Due,
    Closing,
    Again,
}

/// Rings of tick slots (one per worker thread, up to `RINGS`) shared by every connection of
/// one listening service.
pub struct IdleClock {
    slots: Box<[Notify]>,
    start: Instant,
    /// The last tick whose slot was fired: deadlines at or before it are due.
    fired: AtomicU64,
    closing: AtomicBool,
    ticker: Once,
}

impl IdleClock {
    pub fn new() -> Arc<Self> {
        Arc::new(IdleClock {
            slots: (0..SLOTS as usize * RINGS).map(|_| Notify::new()).collect(),
            start: Instant::now(),
            fired: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            ticker: Once::new(),
        })
    }

    /// Wakes every waiter between requests: the gateway is shutting down gracefully.
    pub fn close_all(&self) {
        // The flag first: a waiter that starts after this sees it, and one that started
        // before is woken by the slots' notify (see `wait`).
        self.closing.store(true, Ordering::SeqCst);
        for slot in &self.slots {
            slot.notify_waiters();
        }
    }

    /// A deadline `d` from now, without reading the time: the clock's own count of ticks
    /// (which runs at most a tick behind) is now enough for waits this coarse.
    pub fn after(&self, d: Duration) -> Tick {
        let ticks = d.as_nanos().div_ceil(TICK.as_nanos());
        let fired = self.fired.load(Ordering::Relaxed);
        Tick(
            fired
                .saturating_add(1)
                .saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX)),
        )
    }

    /// Now, as the clock's count of ticks (at most a tick behind), without reading the time.
    /// Starts the clock's thread if nothing has yet.
    pub fn now(self: &Arc<Self>) -> Tick {
        self.start_ticker();
        Tick(self.fired.load(Ordering::Relaxed))
    }

    /// Time since `earlier` (from [`Self::now`]), in whole ticks: within about a tick of the
    /// truth either way, and short of it by more when the clock's thread runs late.
    pub fn since(&self, earlier: Tick) -> Duration {
        let ticks = self.fired.load(Ordering::Relaxed).saturating_sub(earlier.0);
        TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// The tick at or after `t`: the first whose firing means `t` has passed.
    pub fn tick_of(&self, t: Instant) -> Tick {
        let nanos = t.saturating_duration_since(self.start).as_nanos();
        let tick = TICK.as_nanos();
        Tick(u64::try_from(nanos.div_ceil(tick)).unwrap_or(u64::MAX))
    }

    /// Waits until the client sends, the tick `due` fires or (with `hear_closing`) the
    /// gateway shuts down. With `buf`, reads what the client sends into it; without, reads
    /// nothing: a zero-length read parks on the socket's readiness (and costs a system call
    /// once it is ready, which is why a busy connection waits with its buffer).
    pub async fn wait(
        self: &Arc<Self>,
        stream: &mut Stream,
        mut buf: Option<&mut BytesMut>,
        due: Tick,
        hear_closing: bool,
    ) -> Wake {
        self.start_ticker();
        let ring = RING.with(|r| *r) * SLOTS as usize;
        loop {
            let mut woken = std::pin::pin!(match self.park(ring, due, hear_closing) {
                Park::On(woken) => woken,
                Park::Due => return Wake::Expired,
                Park::Closing => return Wake::Closing,
                Park::Again => continue,
            });
            let read = std::future::poll_fn(|cx| {
                let read = match buf.as_deref_mut() {
                    Some(buf) => match std::pin::pin!(stream.read_buf(buf)).poll(cx) {
                        Poll::Ready(Ok(0)) => Poll::Ready(Some(Wake::Gone)),
                        Poll::Ready(Ok(_)) => Poll::Ready(Some(Wake::Data)),
                        Poll::Ready(Err(_)) => Poll::Ready(Some(Wake::Gone)),
                        Poll::Pending => Poll::Pending,
                    },
                    None => super::poll_readable(stream, cx)
                        .map(|r| Some(if r.is_ok() { Wake::Data } else { Wake::Gone })),
                };
                match read {
                    Poll::Pending => woken.as_mut().poll(cx).map(|()| None),
                    ready => ready,
                }
            })
            .await;
            if let Some(wake) = read {
                return wake;
            }
            // A slot fired: the deadline's, a lap of the ring, or shutdown.
        }
    }

    /// Runs `fut` unless `timeout` passes first. The common case costs nothing: a future
    /// ready at its first poll reads no clock and parks nowhere. Otherwise it parks on the
    /// deadline's slot, like a connection between requests, and the deadline fires up to
    /// two ticks late: for timeouts long enough that this does not matter.
    pub async fn within<F: Future>(
        self: &Arc<Self>,
        timeout: Duration,
        fut: F,
    ) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        if let Poll::Ready(v) = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
        {
            return Some(v);
        }
        let due = self.after(timeout);
        self.start_ticker();
        let ring = RING.with(|r| *r) * SLOTS as usize;
        // `fut` was just polled and has this task's waker: the first park polls only the slot.
        let mut just_polled = true;
        loop {
            let mut woken = std::pin::pin!(match self.park(ring, due, false) {
                Park::On(woken) => woken,
                Park::Due | Park::Closing => return None,
                Park::Again => continue,
            });
            let done = std::future::poll_fn(|cx| {
                if !std::mem::take(&mut just_polled) {
                    if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                        return Poll::Ready(Some(v));
                    }
                }
                woken.as_mut().poll(cx).map(|()| None)
            })
            .await;
            if done.is_some() {
                return done;
            }
        }
    }

    /// The slot to park on for `due`, in `ring`: or why not to park.
    fn park(&self, ring: usize, due: Tick, hear_closing: bool) -> Park<'_> {
        // The slot's `Notified` is created before the checks: `notify_waiters` reaches it
        // from its creation on, so a tick or a shutdown after the checks cannot be missed.
        let fired = self.fired.load(Ordering::SeqCst);
        let park = due.0.min(fired.saturating_add(SLOTS - 1));
        let woken = self.slots[ring + (park % SLOTS) as usize].notified();
        let fired = self.fired.load(Ordering::SeqCst);
        if hear_closing && self.closing.load(Ordering::SeqCst) {
            return Park::Closing;
        }
        if due.0 <= fired {
            return Park::Due;
        }
        if park <= fired {
            // The ring moved on between the two loads: park again on a later slot.
            return Park::Again;
        }
        Park::On(woken)
    }

    /// Starts the thread that fires the slots, once, on the first wait (so after Pingora
    /// daemonizes: a thread does not survive `fork`). It ends when the clock is dropped.
    fn start_ticker(self: &Arc<Self>) {
        self.ticker.call_once(|| {
            let clock = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("idle-clock".into())
                .spawn(move || run_ticker(clock));
            if let Err(e) = spawned {
                // Without the thread no idle deadline fires; connections still close when
                // their clients do. Say so loudly: this is a machine out of threads.
                log::error!("cannot start the idle-connection clock thread: {e}");
            }
        });
    }
}

fn run_ticker(clock: Weak<IdleClock>) {
    loop {
        let Some(clock) = clock.upgrade() else { return };
        let next = clock.fired.load(Ordering::SeqCst) + 1;
        let at = clock.start + TICK * u32::try_from(next).unwrap_or(u32::MAX);
        let now = Instant::now();
        if at > now {
            drop(clock);
            std::thread::sleep(at - now);
            continue;
        }
        // The count first, then the slots: a waiter that read the old count is woken.
        clock.fired.store(next, Ordering::SeqCst);
        for ring in 0..RINGS {
            clock.slots[ring * SLOTS as usize + (next % SLOTS) as usize].notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        (server, client)
    }

    #[tokio::test]
    async fn a_deadline_fires_within_a_tick() {
        let clock = IdleClock::new();
        let (mut server, _client) = pair().await;
        let started = Instant::now();
        let until = started + Duration::from_millis(250);
        assert_eq!(
            clock
                .wait(&mut server, None, clock.tick_of(until), true)
                .await,
            Wake::Expired
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        // One tick of resolution, plus scheduling slack on a loaded machine.
        assert!(
            waited < Duration::from_millis(250) + TICK * 10,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn bytes_end_the_wait_and_a_past_deadline_does_not_park() {
        let clock = IdleClock::new();
        let (mut server, mut client) = pair().await;
        client.write_all(b"G").await.unwrap();
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            clock
                .wait(&mut server, None, clock.tick_of(far), true)
                .await,
            Wake::Data
        );
        let (mut quiet, _c) = pair().await;
        let past = Instant::now() - Duration::from_secs(1);
        clock.start_ticker();
        // Wait for the ticker to pass `past`'s tick (bounded: it ticks every 100 ms).
        let deadline = Instant::now() + Duration::from_secs(10);
        while clock.fired.load(Ordering::SeqCst) < clock.tick_of(past).0 {
            assert!(Instant::now() < deadline, "the ticker never ticked");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            clock
                .wait(&mut quiet, None, clock.tick_of(past), true)
                .await,
            Wake::Expired
        );
    }

    #[tokio::test]
    async fn shutdown_wakes_waiters_between_requests_only() {
        let clock = IdleClock::new();
        let (mut between, _c1) = pair().await;
        let (mut first, _c2) = pair().await;
        let far = Instant::now() + Duration::from_secs(3600);
        let c = clock.clone();
        let waiter =
            tokio::spawn(async move { c.wait(&mut between, None, c.tick_of(far), true).await });
        let c = clock.clone();
        let until = Instant::now() + Duration::from_millis(400);
        let first_wait =
            tokio::spawn(async move { c.wait(&mut first, None, c.tick_of(until), false).await });
        // Let both park (bounded by the test's own timeout below, not by luck: close_all
        // reaches a waiter whether or not it has parked yet).
        tokio::task::yield_now().await;
        clock.close_all();
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter).await;
        assert_eq!(woke.unwrap().unwrap(), Wake::Closing);
        // A connection still owed its first request keeps its header deadline.
        let first = tokio::time::timeout(Duration::from_secs(10), first_wait).await;
        assert_eq!(first.unwrap().unwrap(), Wake::Expired);
        assert!(Instant::now() >= until);
    }

    #[tokio::test]
    async fn with_a_buffer_the_wait_reads_and_sees_the_client_close() {
        let clock = IdleClock::new();
        let (mut server, mut client) = pair().await;
        let far = clock.after(Duration::from_secs(3600));
        let mut buf = BytesMut::with_capacity(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            clock.wait(&mut server, Some(&mut buf), far, true).await,
            Wake::Data
        );
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        drop(client);
        buf.clear();
        assert_eq!(
            clock.wait(&mut server, Some(&mut buf), far, true).await,
            Wake::Gone
        );
    }

    #[tokio::test]
    async fn within_times_out_a_pending_future_and_not_a_ready_one() {
        let clock = IdleClock::new();
        assert_eq!(clock.within(Duration::ZERO, async { 7 }).await, Some(7));
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(clock.within(Duration::from_millis(250), never).await, None);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        // Two ticks of lateness at most, plus scheduling slack on a loaded machine.
        assert!(
            waited < Duration::from_millis(250) + TICK * 10,
            "{waited:?}"
        );
        // A future that finishes before its deadline is not cut short by it.
        let soon = tokio::time::sleep(Duration::from_millis(20));
        let started = Instant::now();
        assert_eq!(
            clock.within(Duration::from_secs(3600), soon).await,
            Some(())
        );
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn after_is_at_least_the_duration_ahead() {
        let clock = IdleClock::new();
        clock.fired.store(10, Ordering::SeqCst);
        // Now is somewhere in tick 10's span, at most: 100 ms from now is past tick 11.
        assert_eq!(clock.after(TICK).0, 12);
        assert_eq!(clock.after(TICK * 5 / 2).0, 14);
        assert_eq!(clock.after(Duration::ZERO).0, 11);
    }

    #[test]
    fn since_counts_the_ticks_fired_in_between() {
        let clock = IdleClock::new();
        clock.fired.store(10, Ordering::SeqCst);
        let then = Tick(clock.fired.load(Ordering::SeqCst));
        assert_eq!(clock.since(then), Duration::ZERO);
        clock.fired.store(13, Ordering::SeqCst);
        assert_eq!(clock.since(then), TICK * 3);
        // A tick from a later reading than the clock's (not expected) is no time at all.
        assert_eq!(clock.since(Tick(20)), Duration::ZERO);
    }

    #[test]
    fn ticks_round_up() {
        let clock = IdleClock::new();
        let at = |t| clock.tick_of(t).0;
        assert_eq!(at(clock.start), 0);
        assert_eq!(at(clock.start + Duration::from_nanos(1)), 1);
        assert_eq!(at(clock.start + TICK), 1);
        assert_eq!(at(clock.start + TICK * 3 / 2), 2);
        assert_eq!(at(clock.start - TICK), 0);
    }
}
