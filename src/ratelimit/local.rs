//! The in-memory store: one sharded map per policy, key -> sliding-window counter.
//!
//! A check locks one shard of one map (dashmap), never the whole map, so the hot path has no
//! global lock and a burst on one key from many threads is counted exactly. The map is
//! bounded: at `max_keys` distinct keys, requests with new keys share a single overflow
//! counter instead of growing the map (under a key flood they are limited together, while
//! existing keys keep their own budgets). Idle keys are swept in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;

use super::window::{Counter, Verdict};

pub struct LocalStore {
    window_ms: u64,
    limit: u32,
    max_keys: usize,
    counters: DashMap<Box<[u8]>, Counter>,
    len: AtomicUsize,
    overflow: Mutex<Counter>,
}

impl LocalStore {
    pub fn new(window_ms: u64, limit: u32, max_keys: usize) -> Self {
        LocalStore {
            window_ms,
            limit,
            max_keys,
            counters: DashMap::new(),
            len: AtomicUsize::new(0),
            overflow: Mutex::new(Counter::default()),
        }
    }

    /// Counts one request for `key` at `now` (ms on a monotonic clock).
    pub fn check(&self, key: &[u8], now: u64) -> Verdict {
        if let Some(mut c) = self.counters.get_mut(key) {
            return c.check(now, self.window_ms, self.limit);
        }
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            let mut c = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            return c.check(now, self.window_ms, self.limit);
        }
        let mut entry = self.counters.entry(key.into()).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Counter::default()
        });
        entry.check(now, self.window_ms, self.limit)
    }

    /// Drops counters that can no longer matter; returns how many went.
    pub fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        self.counters.retain(|_, c| {
            let keep = !c.is_idle(now, self.window_ms);
            removed += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    pub fn keys(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn many_threads_one_key_exact_count() {
        let store = Arc::new(LocalStore::new(60_000, 1000, 100));
        let allowed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (s, a) = (store.clone(), allowed.clone());
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        if s.check(b"hot", 1_000).allowed {
                            a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(allowed.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn keys_are_independent() {
        let store = LocalStore::new(1_000, 2, 100);
        assert!(store.check(b"a", 0).allowed);
        assert!(store.check(b"a", 0).allowed);
        assert!(!store.check(b"a", 0).allowed);
        assert!(store.check(b"b", 0).allowed);
    }

    #[test]
    fn a_key_flood_is_bounded_and_shares_the_overflow_budget() {
        let store = LocalStore::new(60_000, 10, 1_000);
        let mut allowed = 0;
        for i in 0..1_000_000u32 {
            if store.check(&i.to_be_bytes(), 5).allowed {
                allowed += 1;
            }
        }
        assert_eq!(store.keys(), 1_000);
        assert_eq!(store.counters.len(), 1_000);
        // The first 1,000 keys got their own budget; the other 999,000 shared 10.
        assert_eq!(allowed, 1_000 + 10);
    }

    #[test]
    fn idle_keys_are_swept() {
        let store = LocalStore::new(1_000, 5, 100);
        for i in 0..50u32 {
            store.check(&i.to_be_bytes(), 0);
        }
        store.check(b"recent", 2_500);
        assert_eq!(store.sweep(2_500), 50);
        assert_eq!(store.keys(), 1);
        // Swept space is reusable.
        assert!(store.check(b"new", 2_600).allowed);
        assert_eq!(store.keys(), 2);
    }
}
