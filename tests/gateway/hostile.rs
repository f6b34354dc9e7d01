//! Hostile clients: a slowloris crowd, slow request bodies, a client that stops reading, one
//! that disconnects mid-request, and more connections than `server.max_connections`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

fn in_flight(gw: &Gateway) -> f64 {
    gw.metric("portcullis_requests_in_flight", &[])
}

/// Whether the peer has closed `s` (EOF or reset) — a read that times out means still open.
fn peer_closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1024];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn a_slowloris_crowd_does_not_stop_real_clients() {
    const CROWD: usize = 1500;
    let (_b, gw) = one_backend_gateway("  request_header_timeout: 3s\n");
    let mut crowd = Vec::with_capacity(CROWD);
    for i in 0..CROWD {
        let mut s = TcpStream::connect(gw.addr).expect("slowloris connect");
        // A head that never ends.
        s.write_all(format!("GET /slow/{i} HTTP/1.1\r\nHost: x\r\nX-A: ").as_bytes())
            .unwrap();
        crowd.push(s);
    }
    // Real clients, on fresh connections, while the crowd holds its connections.
    for i in 0..50 {
        let r = gw.get(&format!("/real/{i}"));
        assert_eq!(r.status, 200);
    }
    let mut still_open = crowd.iter_mut().take(10).fold(0, |n, s| {
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        n + usize::from(!peer_closed(s))
    });
    assert!(
        still_open > 0,
        "the crowd was cut before the real clients ran; the test proves nothing"
    );
    // Every slowloris connection is cut at the whole-head deadline.
    assert!(wait_until(Duration::from_secs(15), || {
        still_open = 0;
        for s in crowd.iter_mut() {
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            if !peer_closed(s) {
                still_open += 1;
            }
        }
        still_open == 0
    }));
    assert!(
        gw.metric(
            "portcullis_edge_refusals_total",
            &[("reason", "header_timeout")]
        ) >= CROWD as f64
    );
}

#[test]
fn a_slow_request_body_is_cut_with_408() {
    let (b, gw) = one_backend_gateway("  request_body_timeout: 1s\n");
    // Stalls: 10 of 100 bytes, then nothing.
    let mut c = Conn::open(gw.addr).unwrap();
    let start = Instant::now();
    c.stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let r = c.read_response().unwrap();
    r.assert_error(408, "request_timeout");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(c.closed_by_peer());

    // Trickles: one byte every 300 ms beats any per-read timeout, not the whole-body one.
    let mut c = Conn::open(gw.addr).unwrap();
    c.stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let mut cut = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(300));
        if c.stream.write_all(b"x").is_err() {
            cut = true;
            break;
        }
        c.stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut peek = [0u8; 1];
        match c.stream.peek(&mut peek) {
            Ok(n) if n > 0 => {
                cut = true;
                break;
            }
            _ => {}
        }
    }
    assert!(cut, "a trickled body was never cut");
    assert!(start.elapsed() < Duration::from_secs(10));
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if let Ok(r) = c.read_response() {
        r.assert_error(408, "request_timeout");
    }
    // Nothing of the refused uploads counts as served.
    assert!(wait_until(Duration::from_secs(5), || in_flight(&gw) == 0.0));
    let _ = b;
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let (_b, gw) = one_backend_gateway("  response_write_timeout: 1s\n");
    let mut c = TcpStream::connect(gw.addr).unwrap();
    // 200 MB that the client will never read.
    c.write_all(b"GET /__big/200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || in_flight(&gw) == 1.0));
    // Buffers fill, the write times out, the request ends and everything is freed.
    assert!(
        wait_until(Duration::from_secs(15), || in_flight(&gw) == 0.0),
        "{}",
        gw.log()
    );
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total < 200_000_000, "the whole answer went out: {total}");
}

#[test]
fn a_client_that_disconnects_mid_request_frees_everything() {
    let (b, gw) = one_backend_gateway("");
    b.set_delay(Duration::from_secs(3));
    for _ in 0..5 {
        let mut c = TcpStream::connect(gw.addr).unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        drop(c);
    }
    assert!(wait_until(Duration::from_secs(5), || b.requests() == 5));
    // Gone clients are noticed while the upstream is still thinking (3 s).
    assert!(
        wait_until(Duration::from_millis(2500), || in_flight(&gw) == 0.0),
        "requests of gone clients still in flight: {}",
        in_flight(&gw)
    );
}

#[test]
fn connections_beyond_max_connections_get_503_and_admitted_ones_keep_working() {
    let (_b, gw) = one_backend_gateway("  max_connections: 10\n");
    let mut admitted: Vec<Conn> = (0..10)
        .map(|i| {
            let mut c = Conn::open(gw.addr).unwrap();
            let r = c
                .request(&format!("GET /held/{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
                .unwrap();
            assert_eq!(r.status, 200);
            c
        })
        .collect();
    let r = get(gw.addr, "/one-too-many").unwrap();
    r.assert_error(503, "service_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    for (i, c) in admitted.iter_mut().enumerate() {
        let r = c
            .request(&format!("GET /again/{i} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // A slot freed is a slot for the next client.
    drop(admitted.pop());
    assert!(wait_until(Duration::from_secs(5), || {
        get(gw.addr, "/next").is_ok_and(|r| r.status == 200)
    }));
    assert!(
        gw.metric(
            "portcullis_edge_refusals_total",
            &[("reason", "max_connections")]
        ) >= 1.0
    );
}

#[test]
fn a_stalled_body_is_the_clients_fault_even_when_the_upstream_times_out_first() {
    let b = TestBackend::start("b");
    let gw = Gateway::start(&format!(
        "upstreams:\n  pool: {{ backends: [\"{}\"], read_timeout: 1s }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}\n",
        b.addr
    ));
    let mut c = Conn::open(gw.addr).unwrap();
    c.stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    // request_body_timeout is 30 s by default; the upstream gives up after 1 s of waiting
    // for a body the client never sends: that is a slow client (408), not a slow upstream.
    c.read_response()
        .unwrap()
        .assert_error(408, "request_timeout");
}

/// An upstream that switches protocols and then echoes every byte back.
fn echo_upgrade_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_upgraded_connection_outlives_the_request_body_timeout() {
    let up = echo_upgrade_server();
    let gw = Gateway::start_with(
        "  request_body_timeout: 1s\n",
        &format!(
            "upstreams:\n  ws: {{ backends: [\"{up}\"] }}\nroutes:\n  - {{ name: ws, match: {{ path_prefix: / }}, upstream: ws }}\n"
        ),
    );
    let mut c = TcpStream::connect(gw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        b"GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Messages for three times the body timeout, each echoed.
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let msg = format!("message {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("tunnel cut after {:?}: {e}", start.elapsed()));
        assert_eq!(got, msg.as_bytes());
        i += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}
