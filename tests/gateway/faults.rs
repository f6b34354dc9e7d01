//! Broken upstreams: a fault-injecting backend that resets mid-response, hangs, sends garbage,
//! a bad chunked body, oversized headers, two responses for one request, or closes a pooled
//! connection just as it is reused. Each must end cleanly and within its timeout (an error
//! answer, a cut-off response, or a safe retry), and none may poison the connection pool for
//! the requests after it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;

/// The backend: each request's path picks its fault; `/ok...` answers normally with the path
/// in the body, keeping the connection alive.
struct FaultServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl FaultServer {
    fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || serve_faults(conn));
            }
        });
        FaultServer { addr, connections }
    }
}

fn ok_response(path: &str) -> String {
    let body = format!("{{\"path\":\"{path}\"}}");
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn serve_faults(conn: TcpStream) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let mut close_on_next = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        if close_on_next {
            // A pooled connection closed just as it is reused: no answer at all.
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let w = &mut out;
        let _ = match path.as_str() {
            "/garbage" => w.write_all(b"SSH-2.0-OpenSSH_9.0\r\nnot http at all\r\n\r\n"),
            "/big-headers" => {
                let big = "x".repeat(200 * 1024);
                w.write_all(
                    format!("HTTP/1.1 200 OK\r\nX-Big: {big}\r\nContent-Length: 2\r\n\r\nok")
                        .as_bytes(),
                )
            }
            "/hang" => {
                thread::sleep(Duration::from_secs(10));
                return;
            }
            "/hang-after-headers" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart");
                thread::sleep(Duration::from_secs(10));
                return;
            }
            "/reset-mid" => {
                let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                let _ = w.write_all(&[b'a'; 1000]);
                let _ = w.flush();
                // A reset, not a clean close: linger 0 sends RST.
                let _ = socket2::SockRef::from(reader.get_ref()).set_linger(Some(Duration::ZERO));
                return;
            }
            "/bad-chunked" => {
                let _ = w.write_all(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz-not-hex\r\n",
                );
                thread::sleep(Duration::from_millis(200));
                return;
            }
            "/two-lengths" => w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 12\r\n\r\nok-and-more!",
            ),
            "/length-and-chunked" => w.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            ),
            "/gzip-coding" => w.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
            ),
            "/two-responses" => {
                let mut both = ok_response("/two-responses");
                both.push_str(&ok_response("/stale-second-response"));
                w.write_all(both.as_bytes())
            }
            "/close-next" => {
                close_on_next = true;
                w.write_all(ok_response("/close-next").as_bytes())
            }
            p => w.write_all(ok_response(p).as_bytes()),
        };
    }
}

fn fault_gateway(server: &FaultServer) -> Gateway {
    Gateway::start(&format!(
        r#"
upstreams:
  faulty: {{ backends: ["{}"], read_timeout: 500ms, connect_timeout: 500ms, retries: 1 }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: faulty }}
"#,
        server.addr
    ))
}

/// After a fault: the pool gives every later request its own, correct answer.
fn assert_pool_clean(gw: &Gateway, tag: &str) {
    for i in 0..10 {
        let path = format!("/ok/{}/{i}", tag.trim_start_matches('/'));
        let r = get(gw.addr, &path).unwrap_or_else(|e| panic!("after {tag}: {e}\n{}", gw.log()));
        assert_eq!(r.status, 200, "after {tag}");
        assert_eq!(r.json()["path"], path, "after {tag}: a stale answer");
    }
}

/// Sends a GET and reads whatever comes until the gateway closes or 5 s pass; returns the
/// bytes and how long it took.
fn raw_exchange(addr: SocketAddr, path: &str) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    (buf, start.elapsed())
}

#[test]
fn broken_answers_become_clean_errors_and_do_not_poison_the_pool() {
    let server = FaultServer::start();
    let gw = fault_gateway(&server);
    assert_pool_clean(&gw, "start");

    gw.get("/garbage").assert_error(502, "bad_gateway");
    assert_pool_clean(&gw, "garbage");

    gw.get("/big-headers").assert_error(502, "bad_gateway");
    assert_pool_clean(&gw, "big-headers");

    // Framing another parser could read differently is never relayed.
    for path in ["/two-lengths", "/length-and-chunked", "/gzip-coding"] {
        gw.get(path).assert_error(502, "bad_gateway");
        assert_pool_clean(&gw, path);
    }

    let start = Instant::now();
    gw.get("/hang").assert_error(504, "gateway_timeout");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_pool_clean(&gw, "hang");
}

#[test]
fn answers_broken_after_their_header_are_cut_off_within_the_timeout() {
    let server = FaultServer::start();
    let gw = fault_gateway(&server);
    for path in ["/hang-after-headers", "/reset-mid", "/bad-chunked"] {
        let (bytes, took) = raw_exchange(gw.addr, path);
        let text = String::from_utf8_lossy(&bytes);
        // The status line was already on its way: the client gets a response that ends
        // early and a closed connection, never a hang and never a complete-looking answer.
        assert!(text.starts_with("HTTP/1.1 200"), "{path}: {text:?}");
        assert!(took < Duration::from_secs(3), "{path} took {took:?}");
        let complete = match path {
            "/hang-after-headers" => text.ends_with(&"a".repeat(100)),
            "/reset-mid" => bytes.len() > 100_000,
            _ => text.contains("\r\n0\r\n\r\n"),
        };
        assert!(!complete, "{path}: looked complete: {text:?}");
        assert_pool_clean(&gw, path);
    }
}

#[test]
fn a_second_response_for_one_request_never_reaches_another_request() {
    let server = FaultServer::start();
    let gw = fault_gateway(&server);
    for i in 0..5 {
        let r = gw.get("/two-responses");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/two-responses", "round {i}");
        assert_pool_clean(&gw, "two-responses");
    }
}

#[test]
fn a_pooled_connection_closed_on_reuse_is_retried_on_a_fresh_one() {
    let server = FaultServer::start();
    let gw = fault_gateway(&server);
    let mut conn = Conn::open(gw.addr).unwrap();
    for i in 0..5 {
        let r = conn
            .request("GET /close-next HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(r.status, 200, "round {i}");
        // The pooled upstream connection now closes when reused: the gateway must replay
        // this GET on a fresh connection instead of failing it.
        let r = conn
            .request(&format!("GET /ok/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "round {i}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["path"], format!("/ok/{i}"));
    }
    assert!(server.connections.load(Ordering::SeqCst) >= 6);
}
