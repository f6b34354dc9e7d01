//! The lean path's per-request buffers, recycled per thread: the parse's header slots, the
//! upstream head, the RateLimit-* lines, the client's head and the upstream read buffer.
//!
//! Why: allocated per request they were five allocations and five frees (some 4% of a proxied
//! request's instructions, and mimalloc's slow path whenever a page's free list ran dry).
//! Kept per connection they would cost every idle connection their bytes (issue 8 holds an
//! idle connection under 2 KiB). A thread's pool holds only what its requests in flight gave
//! back, up to [`POOL_SIZE`] sets; a buffer that grew past its bound is not kept.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use bytes::BytesMut;

/// Sets of buffers a thread keeps between requests.
const POOL_SIZE: usize = 64;

/// A buffer with more capacity than this is dropped rather than kept (a large body's
/// chunks, a long head): the pool stays small whatever one request needed. The read buffer
/// may hold up to about twice this: `BytesMut` does not count the front it has consumed
/// (given back by its next `reserve`).
const MAX_KEPT_BYTES: usize = 64 * 1024;

/// Header slots above this many are not kept (the edge allows up to `MAX_HEADERS`).
const MAX_KEPT_SLOTS: usize = 128;

thread_local! {
    static POOL: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

/// One request's buffers, each empty when taken.
#[derive(Default)]
pub struct Buffers {
    /// The head sent upstream.
    pub up_head: Vec<u8>,
    /// The gateway's RateLimit-* lines (`name: value\r\n` each).
    pub rate_lines: Vec<u8>,
    /// The client's response head, and a small body written with it.
    pub client_head: Vec<u8>,
    /// Bytes read from the upstream.
    pub upstream: BytesMut,
    /// httparse's header slots, held empty: lent by [`Self::header_slots`], given back by
    /// [`keep_slots`] once the parse's last reader is done.
    pub slots: Vec<httparse::Header<'static>>,
}

impl Buffers {
    /// `n` empty header slots for a parse of bytes that live for `'b`, in the kept
    /// allocation when there is one.
    pub fn header_slots<'b>(&mut self, n: usize) -> Vec<httparse::Header<'b>> {
        let mut slots = relabel(std::mem::take(&mut self.slots));
        slots.resize(n, httparse::EMPTY_HEADER);
        slots
    }

    /// Empties every buffer; `false` when one grew past what the pool keeps.
    fn reset(&mut self) -> bool {
        self.up_head.clear();
        self.rate_lines.clear();
        self.client_head.clear();
        self.upstream.clear();
        self.up_head.capacity() <= MAX_KEPT_BYTES
            && self.rate_lines.capacity() <= MAX_KEPT_BYTES
            && self.client_head.capacity() <= MAX_KEPT_BYTES
            && self.upstream.capacity() <= MAX_KEPT_BYTES
    }
}

/// Keeps in `home` (a [`Buffers`]' `slots`) the allocation of slots
/// [`Buffers::header_slots`] gave out.
pub fn keep_slots(home: &mut Vec<httparse::Header<'static>>, slots: Vec<httparse::Header<'_>>) {
    if slots.capacity() <= MAX_KEPT_SLOTS {
        *home = relabel(slots);
    }
}

/// The same allocation, emptied, for headers of another lifetime. Collecting an emptied
/// vector's iterator into a vector of a type of the same layout reuses its allocation (the
/// standard library's in-place collection), so no `unsafe` is needed to recycle it.
fn relabel<'a, 'b>(mut slots: Vec<httparse::Header<'a>>) -> Vec<httparse::Header<'b>> {
    slots.clear();
    slots.into_iter().map(|_| httparse::EMPTY_HEADER).collect()
}

/// A thread's buffers, lent for one request and given back when dropped.
pub struct Lease(Buffers);

impl Lease {
    pub fn take() -> Lease {
        let kept = POOL
            .try_with(|pool| pool.try_borrow_mut().ok().and_then(|mut p| p.pop()))
            .ok()
            .flatten();
        Lease(kept.unwrap_or_default())
    }
}

impl Deref for Lease {
    type Target = Buffers;
    fn deref(&self) -> &Buffers {
        &self.0
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Buffers {
        &mut self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut buffers = std::mem::take(&mut self.0);
        if !buffers.reset() {
            return;
        }
        // A thread that is exiting has no pool left: the buffers are just freed.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if pool.len() < POOL_SIZE {
                    pool.push(buffers);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_keep_their_allocations() {
        let (head_ptr, slots_ptr) = {
            let mut lease = Lease::take();
            lease.up_head.extend_from_slice(b"GET / HTTP/1.1\r\n");
            lease.rate_lines.extend_from_slice(b"ratelimit: x\r\n");
            lease.client_head.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            lease.upstream.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
            let mut slots = lease.header_slots(4);
            let mut req = httparse::Request::new(&mut slots);
            assert!(req.parse(&raw).unwrap().is_complete());
            let slots_ptr = slots.as_ptr() as usize;
            keep_slots(&mut lease.slots, slots);
            (lease.up_head.as_ptr() as usize, slots_ptr)
        };
        let mut lease = Lease::take();
        assert!(lease.up_head.is_empty() && lease.upstream.is_empty());
        assert!(lease.rate_lines.is_empty() && lease.client_head.is_empty());
        assert_eq!(lease.up_head.as_ptr() as usize, head_ptr);
        let slots = lease.header_slots(3);
        assert_eq!(slots.len(), 3);
        assert!(slots.iter().all(|h| h.name.is_empty()));
        assert_eq!(slots.as_ptr() as usize, slots_ptr);
    }

    #[test]
    fn grown_buffers_and_a_full_pool_are_not_kept() {
        let mut big = Lease::take();
        big.client_head.reserve(MAX_KEPT_BYTES + 1);
        let big_ptr = big.client_head.as_ptr() as usize;
        drop(big);
        assert_ne!(Lease::take().client_head.as_ptr() as usize, big_ptr);

        let leases: Vec<Lease> = (0..POOL_SIZE + 8).map(|_| Lease::take()).collect();
        drop(leases);
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_SIZE);
    }
}
