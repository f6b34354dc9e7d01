//! Client limits enforced at the edge: header size and deadline, idle keep-alive, requests
//! per connection, body size, malformed heads.

use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn oversized_header_is_431_and_the_connection_closes() {
    let (b, gw) = one_backend_gateway("  max_request_header_bytes: 2048");
    let mut c = Conn::open(gw.addr).unwrap();
    let big = "a".repeat(3000);
    let r = c
        .request(&format!(
            "GET /x HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n"
        ))
        .unwrap();
    r.assert_error(431, "headers_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_by_peer(),
        "nothing of the oversized request may be read as a next request"
    );
    assert_eq!(b.requests(), 0);

    // Just under the limit passes.
    let ok = "a".repeat(1800);
    let r = gw.send(&format!(
        "GET /x HTTP/1.1\r\nHost: t\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200);
}

#[test]
fn too_many_header_lines_is_431() {
    let (_b, gw) = one_backend_gateway("");
    let lines: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    gw.send(&format!("GET /x HTTP/1.1\r\nHost: t\r\n{lines}\r\n"))
        .assert_error(431, "headers_too_large");
}

#[test]
fn malformed_request_head_is_400_json() {
    let (b, gw) = one_backend_gateway("");
    for raw in [
        "GET /x HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET /x\x01 HTTP/1.1\r\nHost: t\r\n\r\n",
        "NOT A REQUEST\r\n\r\n",
    ] {
        gw.send(raw).assert_error(400, "bad_request");
    }
    assert_eq!(b.requests(), 0);
}

#[test]
fn trickled_header_is_cut_at_the_whole_header_deadline() {
    let (_b, gw) = one_backend_gateway("  request_header_timeout: 1s");
    let mut c = Conn::open(gw.addr).unwrap();
    let start = Instant::now();
    c.stream.write_all(b"GET /x HTTP/1.1\r\n").unwrap();
    // One byte every 100 ms: every single read is quick, the header never completes.
    let mut cut = None;
    for _ in 0..60 {
        thread::sleep(Duration::from_millis(100));
        if c.stream.write_all(b"X").is_err() {
            cut = Some(start.elapsed());
            break;
        }
        c.stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut b = [0u8; 1];
        if let Ok(0) = std::io::Read::read(&mut c.stream, &mut b) {
            cut = Some(start.elapsed());
            break;
        }
    }
    let cut = cut.expect("a trickling client was never cut off");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(2500),
        "cut after {cut:?}"
    );
}

#[test]
fn idle_keepalive_connection_is_closed() {
    let (_b, gw) = one_backend_gateway("  idle_timeout: 1s");
    let mut c = Conn::open(gw.addr).unwrap();
    let r = c.request("GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(r.status, 200);
    let start = Instant::now();
    assert!(c.closed_by_peer());
    let idle = start.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(3000),
        "closed after {idle:?}"
    );
}

#[test]
fn keepalive_requests_caps_requests_per_connection() {
    let (_b, gw) = one_backend_gateway("  keepalive_requests: 3");
    let mut c = Conn::open(gw.addr).unwrap();
    for i in 1..=3 {
        let r = c.request("GET /x HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(r.status, 200);
        if i < 3 {
            assert_ne!(r.header("connection"), Some("close"), "request {i}");
        } else {
            assert_eq!(
                r.header("connection"),
                Some("close"),
                "the last allowed request says so"
            );
        }
    }
    assert!(c.closed_by_peer());
}

#[test]
fn oversized_bodies_are_413() {
    let (b, gw) = one_backend_gateway("  max_request_body_bytes: 1024");
    let body = "x".repeat(2000);
    gw.send(&format!(
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
    .assert_error(413, "payload_too_large");
    assert_eq!(
        b.requests(),
        0,
        "a declared oversized body never reaches the backend"
    );

    let chunked = format!("POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n");
    gw.send(&chunked).assert_error(413, "payload_too_large");

    let small = "y".repeat(1000);
    let r = gw.send(&format!(
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{small}"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"], small.as_str());
}
