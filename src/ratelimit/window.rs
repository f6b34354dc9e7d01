//! The sliding-window counter (as Cloudflare describes it): a count for the current fixed
//! window and one for the previous, the previous weighted by how much of it still overlaps
//! the sliding window. Pure arithmetic shared by the local and the Redis store.

/// The state of one key in one policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Start of the current fixed window, in ms of the store's clock.
    pub window_start: u64,
    pub current: u32,
    pub previous: u32,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    /// Requests still allowed right now, after this one.
    pub remaining: u32,
    /// Milliseconds until the current fixed window ends.
    pub reset_ms: u64,
    /// When refused: milliseconds until a request would pass.
    pub retry_after_ms: u64,
}

/// The weighted count of the sliding window ending at `elapsed` ms into the current window.
pub fn estimate(previous: u32, current: u32, elapsed: u64, window: u64) -> f64 {
    let overlap = (window.saturating_sub(elapsed)) as f64 / window as f64;
    previous as f64 * overlap + current as f64
}

/// Decides for counts already rolled to the current window (the Redis script returns such).
pub fn decide(previous: u32, current: u32, elapsed: u64, window: u64, limit: u32) -> Verdict {
    let est = estimate(previous, current, elapsed, window);
    let reset_ms = window.saturating_sub(elapsed);
    // The epsilon keeps float rounding from refusing a request exactly at the boundary.
    if est + 1.0 <= limit as f64 + 1e-9 {
        Verdict {
            allowed: true,
            limit,
            remaining: (limit as f64 - est - 1.0).floor().max(0.0) as u32,
            reset_ms,
            retry_after_ms: 0,
        }
    } else {
        Verdict {
            allowed: false,
            limit,
            remaining: 0,
            reset_ms,
            retry_after_ms: wait_ms(previous, current, elapsed, window, limit),
        }
    }
}

/// How long until `estimate + 1 <= limit` holds again, assuming no new requests.
fn wait_ms(previous: u32, current: u32, elapsed: u64, window: u64, limit: u32) -> u64 {
    let w = window as f64;
    let room = limit as f64 - 1.0;
    if (current as f64) <= room && previous > 0 {
        // Within this window: previous * (w - t) / w + current <= room.
        let t = w * (1.0 - (room - current as f64) / previous as f64);
        return ceil_ms(t - elapsed as f64).max(1);
    }
    // Next window: current becomes previous, weighted by (w - t) / w.
    let to_next = window.saturating_sub(elapsed);
    let t = if current == 0 {
        0.0
    } else {
        (w * (1.0 - room / current as f64)).max(0.0)
    };
    to_next + ceil_ms(t)
}

/// Rounds up, ignoring float noise below a microsecond.
fn ceil_ms(t: f64) -> u64 {
    (t - 1e-3).ceil().max(0.0) as u64
}

impl Counter {
    /// Rolls the windows forward to `now`, then counts the request if it fits.
    pub fn check(&mut self, now: u64, window: u64, limit: u32) -> Verdict {
        // A caller that read the clock just before another moved this counter into a new
        // window belongs to that window; going back would wipe it.
        let now = now.max(self.window_start);
        let start = now - now % window;
        if start != self.window_start {
            self.previous = if start.saturating_sub(self.window_start) == window {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.window_start = start;
        }
        let v = decide(self.previous, self.current, now - start, window, limit);
        if v.allowed {
            self.current = self.current.saturating_add(1);
        }
        v
    }

    /// Whether this counter can no longer affect any decision at `now`.
    pub fn is_idle(&self, now: u64, window: u64) -> bool {
        now.saturating_sub(self.window_start) >= 2 * window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 60_000;

    fn burst(c: &mut Counter, now: u64, n: u32, limit: u32) -> u32 {
        (0..n).filter(|_| c.check(now, W, limit).allowed).count() as u32
    }

    #[test]
    fn a_burst_inside_one_window_gets_exactly_the_limit() {
        let mut c = Counter::default();
        assert_eq!(burst(&mut c, 5 * W + 10, 30, 20), 20);
    }

    #[test]
    fn the_window_slides() {
        let mut c = Counter::default();
        assert_eq!(burst(&mut c, 10 * W, 20, 20), 20);
        // Half a window later, same fixed window: nothing.
        assert_eq!(burst(&mut c, 10 * W + W / 2, 20, 20), 0);
        // A quarter into the next window, 75% of the previous 20 still counts: 5 pass.
        assert_eq!(burst(&mut c, 11 * W + W / 4, 20, 20), 5);
        // Two idle windows later, the full limit again.
        assert_eq!(burst(&mut c, 14 * W, 30, 20), 20);
    }

    #[test]
    fn remaining_and_retry_after() {
        let mut c = Counter::default();
        let v = c.check(0, W, 3);
        assert_eq!((v.allowed, v.remaining, v.reset_ms), (true, 2, W));
        c.check(1, W, 3);
        let v = c.check(2, W, 3);
        assert_eq!((v.allowed, v.remaining), (true, 0));
        let v = c.check(W / 2, W, 3);
        assert!(!v.allowed);
        // Next window starts in W/2; then 3 * (1 - t/W) <= 2 needs t >= W/3.
        assert_eq!(v.retry_after_ms, W / 2 + W / 3);
        // And at that moment a request does pass.
        let mut probe = c;
        assert!(probe.check(W / 2 + v.retry_after_ms, W, 3).allowed);
        let mut early = c;
        assert!(!early.check(W / 2 + v.retry_after_ms - 50, W, 3).allowed);
    }
}

#[cfg(test)]
mod race_tests {
    use super::*;

    #[test]
    fn a_late_clock_reading_does_not_wipe_a_new_window() {
        let mut c = Counter::default();
        for _ in 0..5 {
            assert!(c.check(10_500, 1_000, 5).allowed);
        }
        // A thread that read 9_999 (old window) gets the lock after the roll-over.
        assert!(!c.check(9_999, 1_000, 5).allowed);
        assert_eq!(c.current, 5);
    }
}
