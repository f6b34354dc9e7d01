//! How a request head rates for request smuggling (HTTP desync): AWS's http_desync_guardian
//! classifier, behind a fast path for the heads it would plainly call compliant.
//!
//! The classifier costs about half a microsecond for a 480-byte head (one pass of its own over
//! every byte), a tenth of what the lean path spends in user space on a request. httparse has
//! already read the head by then, and checked most of what the classifier checks: a token
//! method, one space each side of a target without spaces or controls, `HTTP/1.1` exactly,
//! token header names each followed by a colon, values without control characters, no
//! folded lines. What httparse tolerates and the classifier does not is few: a bare LF for a
//! line end, empty lines before the request line, and header names that resemble
//! `Content-Length` or `Transfer-Encoding` (or are them). `plainly_compliant` rules those out
//! (read off the classifier's 0.1.3 source; cross-checked against it by the tests below on
//! generated heads, and end to end by the desync corpus test); any head it does not pass goes
//! to the classifier.

use http_desync_guardian::request_analyzer::HttpRequestData;
use http_desync_guardian::RequestSafetyTier;

/// How a request head rates for request smuggling, by the rules of AWS's
/// http_desync_guardian (what ALB applies): `Severe` (two Content-Lengths, a list in one,
/// control characters in the target, a broken Transfer-Encoding...) and `Ambiguous` (TE with
/// CL, a body on GET/HEAD, look-alike framing header names...) heads are refused, since an
/// upstream might cut the stream into requests differently than Pingora does. The raw bytes
/// are analysed, not httparse's reading of them: the point is what *another* parser could see.
pub fn framing_tier(head: &[u8]) -> RequestSafetyTier {
    HttpRequestData::analyze_raw_request(head).tier
}

/// [`framing_tier`] of a complete head that httparse has parsed into `req`, without the
/// classifier's pass when the head is plainly compliant.
pub fn parsed_framing_tier(head: &[u8], req: &httparse::Request) -> RequestSafetyTier {
    if plainly_compliant(head, req) {
        return RequestSafetyTier::Compliant;
    }
    framing_tier(head)
}

/// The classifier compares a header name with `content-length` (14 bytes) and
/// `transfer-encoding` only from this length on: a shorter name resembles neither.
const SHORTEST_FRAMING_NAME: usize = 14;

/// A head httparse parsed completely that the classifier rates `Compliant` for certain:
/// HTTP/1.1, the request line first, every line ended by CRLF, and no header name of 14 bytes
/// or more whose first letter or digit is `c` or `t` (any case): such a name might resemble
/// `Content-Length` or `Transfer-Encoding`, or be one.
fn plainly_compliant(head: &[u8], req: &httparse::Request) -> bool {
    req.version == Some(1)
        && head.first().is_some_and(u8::is_ascii_alphabetic)
        && req.headers.iter().all(|h| {
            h.name.len() < SHORTEST_FRAMING_NAME
                || !matches!(
                    h.name
                        .bytes()
                        .find(u8::is_ascii_alphanumeric)
                        .map(|b| b.to_ascii_lowercase()),
                    Some(b'c' | b't')
                )
        })
        && lines_end_in_crlf(head, req)
}

/// Whether every line of a head httparse parsed ends in CRLF (it also takes a bare LF as a
/// line end). A parsed request head holds no LF but its line ends (no folded lines, none in a
/// target or a value), and those are known without a scan: one before each header's name,
/// and the last two at the end. httparse's slices point into `head`, so a name's offset is
/// its address less the head's; an offset that is off (it cannot be) fails the check.
fn lines_end_in_crlf(head: &[u8], req: &httparse::Request) -> bool {
    let base = head.as_ptr() as usize;
    let crlf_before = |at: usize| at >= 2 && head.get(at - 2..at) == Some(&b"\r\n"[..]);
    head.ends_with(b"\r\n\r\n")
        && req.headers.iter().all(|h| {
            (h.name.as_ptr() as usize)
                .checked_sub(base)
                .is_some_and(crlf_before)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier(head: &[u8]) -> RequestSafetyTier {
        HttpRequestData::analyze_raw_request(head).tier
    }

    /// Whether the fast path passes `head`, as the edge calls it: after httparse has parsed
    /// the whole of it.
    fn fast(head: &[u8]) -> bool {
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut slots);
        match req.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => plainly_compliant(head, &req),
            _ => false,
        }
    }

    #[test]
    fn common_heads_take_the_fast_path() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET /api/v1/x?a=1&b=%20 HTTP/1.1\r\nHost: api.example.com\r\nAccept-Encoding: gzip, br\r\nAuthorization: Bearer e30.e30.sig\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
            b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nUser-Agent: caf\xc3\xa9\r\n\r\n",
        ] {
            assert!(fast(head), "{}", String::from_utf8_lossy(head));
            assert_eq!(classifier(head), RequestSafetyTier::Compliant);
        }
    }

    #[test]
    fn framing_and_odd_heads_go_to_the_classifier() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n-Content-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\ncontent-lengthx: 1\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        ] {
            assert!(!fast(head), "{}", String::from_utf8_lossy(head));
        }
    }

    /// The fast path must never say `Compliant` where the classifier would not: thousands of
    /// heads built from pieces chosen to sit on both sides of its rules (look-alike framing
    /// names, bare LFs, leading empty lines, bytes above 0x7f, odd spacing), from a fixed seed.
    /// Each list starts with plain pieces (the first `GOOD`), picked three times in four.
    #[test]
    fn the_fast_path_never_passes_what_the_classifier_would_not() {
        const GOOD: usize = 2;
        const STARTS: &[&str] = &["", "", "\r\n", "\n"];
        const METHODS: &[&str] = &["GET", "HEAD", "POST", "get", "G_T", "OPTIONS"];
        const TARGETS: &[&str] = &[
            "/",
            "/a?b=c",
            "/%2e%2e/x",
            "*",
            "/\u{e9}",
            "/a\x7fb",
            "/a\tb",
        ];
        const VERSIONS: &[&str] = &[" HTTP/1.1", " HTTP/1.1", " HTTP/1.0", "  HTTP/1.1"];
        const NAMES: &[&str] = &[
            "Host",
            "Accept",
            "Content-Length",
            "content-length",
            "Content_Length",
            "ContentLength",
            "Content-Lengths",
            "Transfer-Encoding",
            "Transfer-Encodingg",
            "tRANSFER-eNCODING",
            "-Transfer-Encoding",
            "_Content-Length",
            "Content-Type",
            "Cache-Control-Ext",
            "Trailer-Encodings",
            "Connection",
            "X-Forwarded-For",
            "Authorization",
            "C-ontent-Length",
            "Content.Length",
            "Content-Lengt",
        ];
        const VALUES: &[&str] = &[
            " a",
            " chunked",
            " 0",
            " 1, 1",
            "\tx",
            " caf\u{e9}",
            "",
            " a\tb ",
        ];
        const ENDINGS: &[&str] = &["\r\n", "\r\n", "\n"];
        let mut rng = crate::test_rng::Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = |n: usize| rng.below(n);
        let mut pick = |list: &[&'static str]| -> &'static str {
            let good = next(4) != 0;
            list[next(if good { GOOD } else { list.len() })]
        };
        let (mut parsed, mut fast_ones) = (0, 0);
        for _ in 0..50_000 {
            let mut head = String::new();
            head.push_str(pick(STARTS));
            head.push_str(pick(METHODS));
            head.push(' ');
            head.push_str(pick(TARGETS));
            head.push_str(pick(VERSIONS));
            head.push_str(pick(ENDINGS));
            for i in 0..4 {
                head.push_str(pick(NAMES));
                head.push(':');
                head.push_str(pick(VALUES));
                head.push_str(pick(ENDINGS));
                if i == 3 || pick(&["", "", "stop"]) == "stop" {
                    break;
                }
            }
            head.push_str(pick(ENDINGS));
            let head = head.as_bytes();
            let mut slots = [httparse::EMPTY_HEADER; 32];
            if httparse::Request::new(&mut slots).parse(head).is_ok() {
                parsed += 1;
            }
            if fast(head) {
                fast_ones += 1;
                assert_eq!(
                    classifier(head),
                    RequestSafetyTier::Compliant,
                    "{:?}",
                    String::from_utf8_lossy(head)
                );
            }
        }
        // The generator reaches both httparse's acceptance and the fast path often enough
        // for the check to mean something.
        assert!(parsed > 20_000, "httparse took only {parsed}");
        assert!(
            fast_ones > 5_000,
            "only {fast_ones} heads took the fast path"
        );
    }
}
