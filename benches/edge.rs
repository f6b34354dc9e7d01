//! The edge's per-request head checks: httparse completeness plus the desync classification
//! (its fast path for plainly compliant heads, and the classifier alone).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::edge::{check_head, framing_tier};

const HEAD: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&page=3 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIiwiZXhwIjo0MTAyNDQ0ODAwfQ.c2lnbmF0dXJlLWhlcmU\r\n\
X-Request-Id: 0123456789abcdef0123\r\n\
Connection: keep-alive\r\n\r\n";

fn bench(c: &mut Criterion) {
    c.bench_function(
        "check_head (httparse + desync fast path), 480-byte head",
        |b| b.iter(|| check_head(black_box(HEAD), 65536)),
    );
    c.bench_function("framing_tier (desync classifier alone)", |b| {
        b.iter(|| framing_tier(black_box(HEAD)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
