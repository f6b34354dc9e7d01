//! Memory of the local rate-limit store per live key, and what happens at its `max_keys` bound.
//!
//! usage: limiter_memory                       run every case below, one child process each
//!        limiter_memory case SHAPE N MAX_KEYS [sweep]
//!          SHAPE  ipv4 | ipv6 | sub  (client IPs; JWT-subject-like UUID strings)
//!          N      distinct live keys to insert (one request each)
//!          sweep  afterwards, let the keys go idle and sweep them (window 100ms)
//!        limiter_memory flood                 N = 1,000,000 new keys against the default bound
//!
//! The store is built as the gateway builds it: a YAML config through `config::parse`, then
//! `RateLimits::build`, and every request goes through `RateLimits::check_route` with the
//! request's `KeyParts`. `ipv4`/`ipv6` use a `client_ip` policy; `sub` uses a
//! `header:x-user-id` policy carrying subject strings, because an `Identity` (for `jwt:sub`)
//! is only made by verifying a token. Both key kinds store the same bytes: a one-byte tag and
//! the value (`Policy::key_bytes`), so the memory of `jwt:sub` keys is the same.
//!
//! Two measures: live heap bytes from a counting global allocator around mimalloc (the
//! gateway's allocator), exact and excluding allocator overhead; and resident memory from
//! `/proc/self/statm`, which includes allocator rounding, page granularity and free memory the
//! allocator keeps. Both are the difference to the store built and empty.

use std::alloc::{GlobalAlloc, Layout};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use portcullis::config::DEFAULT_MAX_KEYS;
use portcullis::ratelimit::{KeyParts, RateLimits};
use portcullis::request::HeaderView;

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_BLOCKS: AtomicIsize = AtomicIsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

// SAFETY: every call is forwarded unchanged to mimalloc; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { INNER.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { INNER.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resident set size in bytes: `/proc/self/statm` field 2 (pages) times the page size.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page_size()
}

/// AT_PAGESZ from the auxiliary vector (no libc binding needed).
fn page_size() -> u64 {
    let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
    auxv.chunks_exact(16)
        .map(|c| {
            let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().unwrap());
            (word(&c[..8]), word(&c[8..]))
        })
        .find(|(k, _)| *k == 6)
        .map_or(4096, |(_, v)| v)
}

fn live() -> (isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_BLOCKS.load(Ordering::Relaxed),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Ipv4,
    Ipv6,
    Sub,
}

impl Shape {
    fn parse(s: &str) -> Shape {
        match s {
            "ipv4" => Shape::Ipv4,
            "ipv6" => Shape::Ipv6,
            "sub" => Shape::Sub,
            _ => panic!("unknown shape {s}"),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Shape::Ipv4 => "ipv4",
            Shape::Ipv6 => "ipv6",
            Shape::Sub => "sub",
        }
    }
    /// Stored key length: tag byte + value (`Policy::key_bytes`).
    fn key_len(self) -> usize {
        match self {
            Shape::Ipv4 => 5,
            Shape::Ipv6 => 17,
            Shape::Sub => 37,
        }
    }
}

/// The gateway's config text for one policy.
fn config(shape: Shape, max_keys: Option<usize>, window: &str) -> String {
    let key = match shape {
        Shape::Sub => "\"header:x-user-id\"",
        _ => "client_ip",
    };
    let bound = max_keys.map_or(String::new(), |m| format!(", max_keys: {m}"));
    format!(
        "upstreams:\n  u:\n    backends: [\"127.0.0.1:9\"]\n\
         rate_limits:\n  p: {{ key: {key}, limit: 100, window: {window}{bound} }}\n\
         routes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: u\n    rate_limit: [p]\n"
    )
}

fn build(shape: Shape, max_keys: Option<usize>, window: &str) -> RateLimits {
    let cfg = portcullis::config::parse(&config(shape, max_keys, window))
        .unwrap_or_else(|e| panic!("config: {e:?}"));
    RateLimits::build(&cfg.rate_limits, None, None).expect("rate limits")
}

/// The `i`-th distinct client of a shape: 10.0.0.0/8-style IPv4, 2001:db8::/32 IPv6, or a
/// UUID-shaped subject (36 characters).
fn client(shape: Shape, i: u64) -> (IpAddr, Option<HeaderValue>) {
    let v4 = IpAddr::V4(Ipv4Addr::from(0x0A00_0000u32.wrapping_add(i as u32)));
    match shape {
        Shape::Ipv4 => (v4, None),
        Shape::Ipv6 => (
            IpAddr::V6(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_0000u128
                    | (i as u128).wrapping_mul(0x9E37_79B9),
            )),
            None,
        ),
        Shape::Sub => {
            let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let s = format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                h >> 32,
                (h >> 16) & 0xffff,
                h & 0xfff,
                (i >> 12) & 0xfff,
                i
            );
            (v4, Some(HeaderValue::from_str(&s).unwrap()))
        }
    }
}

/// One request per key in `range`; returns how many were allowed.
async fn requests(limits: &RateLimits, shape: Shape, range: std::ops::Range<u64>) -> u64 {
    let index = [limits.index_of("p").unwrap()];
    let mut allowed = 0;
    let mut headers = HeaderMap::new();
    for i in range {
        let (ip, value) = client(shape, i);
        if let Some(v) = value {
            headers.insert("x-user-id", v);
        }
        let parts = KeyParts {
            client_ip: Some(ip),
            headers: HeaderView::Map(&headers),
            identity: None,
            route: "r",
        };
        let v = limits.check_route(&index, &parts).await.expect("a verdict");
        allowed += u64::from(v.verdict.allowed);
    }
    allowed
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(f)
}

fn case(shape: Shape, n: u64, max_keys: usize, sweep: bool) {
    let window = if sweep { "100ms" } else { "1m" };
    let limits = build(shape, Some(max_keys), window);
    // Warm the paths that allocate once (runtime, metrics, the first key) outside the count.
    block_on(async {});
    let (b0, k0) = live();
    let r0 = rss_bytes();
    let t = Instant::now();
    let allowed = block_on(requests(&limits, shape, 0..n));
    let elapsed = t.elapsed();
    let (b1, k1) = live();
    let r1 = rss_bytes();
    let stored = n.min(max_keys as u64);
    let heap = (b1 - b0) as f64;
    let rss = r1.saturating_sub(r0) as f64;
    println!(
        "shape={} key_bytes={} n={} max_keys={} stored={} allowed={} heap_bytes={} heap_blocks={} rss_bytes={} heap_per_key={:.1} rss_per_key={:.1} ns_per_new_key={:.0}",
        shape.name(),
        shape.key_len(),
        n,
        max_keys,
        stored,
        allowed,
        b1 - b0,
        k1 - k0,
        r1.saturating_sub(r0),
        heap / stored as f64,
        rss / stored as f64,
        elapsed.as_nanos() as f64 / n as f64,
    );
    if sweep {
        std::thread::sleep(Duration::from_millis(250));
        let removed = limits.sweep();
        let (b2, k2) = live();
        println!(
            "  after sweep: removed={} heap_bytes={} heap_blocks={} rss_bytes={} (the tables keep their capacity)",
            removed,
            b2 - b0,
            k2 - k0,
            rss_bytes().saturating_sub(r0)
        );
        // The same number of new keys again: the kept capacity is reused, not added to.
        let allowed = block_on(requests(&limits, shape, n..2 * n));
        let (b3, _) = live();
        println!(
            "  {n} other keys after the sweep: allowed={allowed} heap_bytes={} rss_bytes={}",
            b3 - b0,
            rss_bytes().saturating_sub(r0)
        );
    }
}

/// A flood of new keys against the default bound: is memory bounded, what do new keys get?
fn flood() {
    let limits = build(Shape::Ipv4, None, "1m");
    let bound = DEFAULT_MAX_KEYS as u64;
    block_on(async {});
    let (b0, _) = live();
    let r0 = rss_bytes();
    let first = block_on(requests(&limits, Shape::Ipv4, 0..bound));
    let (b1, _) = live();
    let r1 = rss_bytes();
    println!(
        "flood: default max_keys={bound}, limit 100/1m per key; first {bound} keys: allowed {first}, heap +{} B, rss +{} B",
        b1 - b0,
        r1.saturating_sub(r0)
    );
    let over = 900_000;
    let more = block_on(requests(&limits, Shape::Ipv4, bound..bound + over));
    let (b2, _) = live();
    let r2 = rss_bytes();
    println!(
        "flood: next {over} new keys (one request each): allowed {more} (they share one overflow budget of 100), heap +{} B more, rss +{} B more",
        b2 - b1,
        r2.saturating_sub(r1)
    );
    // An existing key keeps its own budget; a newcomer is refused while the flood lasts.
    let old = block_on(requests(&limits, Shape::Ipv4, 5..6));
    let new = block_on(requests(&limits, Shape::Ipv4, 5_000_000..5_000_001));
    println!("flood: afterwards, an existing key's next request allowed={old}; a brand-new key's first request allowed={new}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("case") => {
            let shape = Shape::parse(&args[1]);
            let n: u64 = args[2].parse().unwrap();
            let max_keys: usize = args[3].parse().unwrap();
            case(
                shape,
                n,
                max_keys,
                args.get(4).is_some_and(|s| s == "sweep"),
            );
        }
        Some("flood") => flood(),
        Some(other) => {
            eprintln!(
                "unknown mode {other}; see the comment at the top of examples/limiter_memory.rs"
            );
            std::process::exit(2);
        }
        None => {
            println!("page size {} B", page_size());
            let me = std::env::current_exe().unwrap();
            let mut runs: Vec<Vec<String>> = Vec::new();
            for shape in ["ipv4", "ipv6", "sub"] {
                for n in [1_000u64, 100_000, 1_000_000] {
                    runs.push(vec![
                        "case".into(),
                        shape.into(),
                        n.to_string(),
                        "2000000".into(),
                    ]);
                }
            }
            runs.push(vec![
                "case".into(),
                "ipv4".into(),
                "1000000".into(),
                "2000000".into(),
                "sweep".into(),
            ]);
            runs.push(vec!["flood".into()]);
            for args in runs {
                let status = Command::new(&me).args(&args).status().unwrap();
                assert!(status.success(), "{args:?} failed");
            }
        }
    }
}
