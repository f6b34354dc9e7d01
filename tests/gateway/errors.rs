//! 502, 504 and their timing; 503 is in `health`.

use std::time::{Duration, Instant};

use crate::support::*;

fn single(addr: &str, extra: &str) -> String {
    format!(
        r#"
upstreams:
  pool:
    backends: [{addr}]
    {extra}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}
"#
    )
}

#[test]
fn connection_refused_is_502() {
    let dead = free_port();
    let gw = Gateway::start(&single(&format!("\"127.0.0.1:{dead}\""), "retries: 0"));
    let start = Instant::now();
    gw.get("/x").assert_error(502, "bad_gateway");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn every_backend_refusing_after_retries_is_502() {
    let (d1, d2) = (free_port(), free_port());
    let gw = Gateway::start(&single(
        &format!("\"127.0.0.1:{d1}\", \"127.0.0.1:{d2}\""),
        "retries: 3",
    ));
    for _ in 0..3 {
        gw.get("/x").assert_error(502, "bad_gateway");
    }
}

#[test]
fn slow_backend_is_504_after_read_timeout() {
    let slow = TestBackend::start("slow");
    slow.set_delay(Duration::from_secs(3));
    let gw = Gateway::start(&single(
        &format!("\"{}\"", slow.addr),
        "read_timeout: 300ms",
    ));
    gw.assert_timeout_after(
        "/x",
        Duration::from_millis(280)..Duration::from_millis(1500),
    );
}

/// A timeout of 2 s or more is timed on the coarse 100 ms clock (`edge::idle::timeouts`):
/// it fires no earlier than asked, and at most a few ticks late.
#[test]
fn a_long_read_timeout_fires_on_the_coarse_clock() {
    let slow = TestBackend::start("slow");
    slow.set_delay(Duration::from_secs(4));
    let gw = Gateway::start(&single(&format!("\"{}\"", slow.addr), "read_timeout: 2s"));
    gw.assert_timeout_after("/x", Duration::from_secs(2)..Duration::from_millis(3500));
}

#[test]
fn errors_answer_head_requests_without_body() {
    let dead = free_port();
    let gw = Gateway::start(&single(&format!("\"127.0.0.1:{dead}\""), "retries: 0"));
    let mut c = Conn::open(gw.addr).unwrap();
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    use std::io::Write;
    c.stream
        .write_all(b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // A HEAD answer carries Content-Length but no body; read the head only.
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    use std::io::Read;
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(c.stream.read(&mut byte).unwrap(), 1);
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // No body follows the head: the next thing on the connection is its end.
    let mut rest = Vec::new();
    let _ = c.stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "stray bytes after a HEAD answer: {rest:?}");
}

#[test]
fn connect_timeout_is_504() {
    // A listener that never accepts: once its accept queue is full, the kernel drops new
    // SYNs and a connect hangs, as with a black-holed host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let full = (0..4096).any(|_| {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => {
                held.push(s);
                false
            }
            Err(_) => true,
        }
    });
    assert!(full, "could not fill the accept queue");
    let gw = Gateway::start(&single(
        &format!("\"{addr}\""),
        "retries: 1\n    connect_timeout: 300ms",
    ));
    let start = Instant::now();
    gw.get("/x").assert_error(504, "gateway_timeout");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2000),
        "504 after {took:?}"
    );
    drop(listener);
}
