//! Request smuggling: AWS http_desync_guardian's whole test corpus (its `tests/*.yaml`, read
//! from the crate's source) replayed against the gateway, with a capture upstream that
//! records the raw bytes it receives. Severe and Ambiguous heads must be answered 400 with the
//! connection closed and nothing of them may reach the upstream, even with a second request
//! hidden behind them; Compliant and Acceptable ones must pass as exactly one request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::*;

/// A second request hidden behind a refused head: if any of it reaches the upstream, the
/// gateway was smuggled through.
const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: evil\r\n\r\n";

/// An upstream that records every byte it receives, per connection, and answers each
/// request `200 ok` with `Connection: close`.
struct CaptureServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CaptureServer {
    fn start() -> CaptureServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let rec = received.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let rec = rec.clone();
                thread::spawn(move || capture(conn, &rec));
            }
        });
        CaptureServer { addr, received }
    }

    /// Everything received so far, all connections concatenated.
    fn all_bytes(&self) -> Vec<u8> {
        self.received.lock().unwrap().concat()
    }

    fn connections(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

fn capture(mut conn: TcpStream, rec: &Mutex<Vec<Vec<u8>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read until one whole request (head and its body) is in: then answer and close.
    loop {
        if let Some(RequestSplit::Whole(_)) = split_request(&buf) {
            break;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // Whatever else arrives on this connection is recorded too.
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    while let Ok(n) = conn.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    rec.lock().unwrap().push(buf);
}

enum RequestSplit {
    /// One whole request of this many bytes.
    Whole(usize),
    Partial,
}

/// Splits the first request off `buf` the way an upstream would (Content-Length or chunked).
fn split_request(buf: &[u8]) -> Option<RequestSplit> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Some(RequestSplit::Partial),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_string())
    };
    if header("transfer-encoding").is_some() {
        let end = find(&buf[head..], b"0\r\n\r\n")?;
        return Some(RequestSplit::Whole(head + end + 5));
    }
    let len: usize = header("content-length").map_or(Some(0), |v| v.trim().parse().ok())?;
    if buf.len() >= head + len {
        Some(RequestSplit::Whole(head + len))
    } else {
        Some(RequestSplit::Partial)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How many whole requests `bytes` holds, and whether anything is left over.
fn count_requests(mut bytes: &[u8]) -> (usize, bool) {
    let mut n = 0;
    while !bytes.is_empty() {
        match split_request(bytes) {
            Some(RequestSplit::Whole(len)) => {
                n += 1;
                bytes = &bytes[len..];
            }
            _ => return (n, true),
        }
    }
    (n, false)
}

struct Case {
    file: String,
    name: String,
    method: String,
    uri: String,
    version: String,
    headers: Vec<(String, String)>,
    tier: String,
}

/// The corpus's own unescaping (`\xNN`, `\n`, ...), applied after YAML's, as its harness does.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('x') => {
                let v = chars
                    .by_ref()
                    .take(2)
                    .fold(0u32, |acc, c| acc * 16 + c.to_digit(16).unwrap());
                char::from(v as u8)
            }
            Some('b') => '\x08',
            Some('f') => '\x0c',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some(c) => c,
            None => '\\',
        });
    }
    out
}

fn text(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => unescape(s),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Null => String::new(),
        other => panic!("unexpected YAML value {other:?}"),
    }
}

/// The corpus directory inside the http_desync_guardian crate's source, found by cargo.
fn corpus_dir() -> PathBuf {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http_desync_guardian" && p["version"] == "0.1.3")
        .expect("http_desync_guardian 0.1.3 in the dependency graph");
    PathBuf::from(pkg["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("tests")
}

fn load_corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for c in doc.as_sequence().unwrap() {
            let headers = c["headers"]
                .as_sequence()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (text(&h["name"]), text(&h["value"])))
                        .collect()
                })
                .unwrap_or_default();
            cases.push(Case {
                file: file.file_name().unwrap().to_string_lossy().into(),
                name: text(&c["name"]),
                method: text(&c["method"]),
                uri: text(&c["uri"]),
                version: text(&c["version"]),
                headers,
                tier: text(&c["expected"]["tier"]),
            });
        }
    }
    cases
}

impl Case {
    /// The head exactly as the corpus's harness builds it.
    fn head(&self) -> String {
        let mut s = format!("{} {} {}\r\n", self.method, self.uri, self.version);
        for (name, value) in &self.headers {
            s.push_str(&format!("{name}: {value}\r\n"));
        }
        s.push_str("\r\n");
        s
    }

    /// The body a well-behaved client would send after this head.
    fn body(&self) -> Vec<u8> {
        let get = |n: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.trim().to_string())
        };
        // The final coding over all Transfer-Encoding fields decides chunked framing.
        let last_coding = self
            .headers
            .iter()
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|(_, v)| v.split(','))
            .last()
            .map(|c| c.trim().to_ascii_lowercase());
        if last_coding.as_deref() == Some("chunked") {
            return b"5\r\nhello\r\n0\r\n\r\n".to_vec();
        }
        match get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n <= 5_000_000 => vec![b'a'; n],
            _ => Vec::new(),
        }
    }
}

/// Sends raw bytes on a fresh connection; returns the status (0: no answer) and whether the
/// gateway closed the connection after its answer. `head_only`: the answer to a HEAD.
fn exchange(addr: SocketAddr, bytes: &[u8], head_only: bool) -> (u16, bool) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (status, need) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            break (resp.code.unwrap_or(0), n + if head_only { 0 } else { len });
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, true),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    };
    while buf.len() < need {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    // Closed: EOF (or a reset) right after the answer, within the read timeout. Only asked of
    // refusals: a kept-alive connection would make this read wait for the whole timeout.
    let closed = status == 400
        && buf.len() == need
        && match stream.read(&mut chunk) {
            Ok(0) => true,
            // A read timeout is a connection left open, not a closed one.
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            Ok(_) => false,
        };
    (status, closed)
}

/// Compliant by the corpus, refused here on purpose (each also checked: 400, closed, nothing
/// upstream). Why: RFC 9112 wants the request-target in ASCII and never empty, and a
/// Transfer-Encoding whose final coding is not exactly `chunked` leaves the body length
/// unknowable (RFC 9112 6.3: 400 and close).
const REFUSED_ON_PURPOSE: &[&str] = &[
    "International in URI",
    "Empty URI",
    "TE with custom parameters OK",
    "Transfer-Encoding with a param: chunked;custom_param",
];

#[test]
fn the_desync_guardian_corpus_is_refused_or_passed_by_the_bytes_upstream() {
    let up = CaptureServer::start();
    let gw = Gateway::start(&format!(
        "upstreams:\n  capture: {{ backends: [\"{}\"], retries: 0 }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: capture }}\n",
        up.addr
    ));
    let cases = load_corpus();
    assert!(cases.len() > 150, "the corpus has {} cases", cases.len());
    let severe = cases.iter().filter(|c| c.tier == "Severe").count();
    assert!(severe >= 50, "{severe} Severe cases");

    let mut failures = Vec::new();
    let (mut passed, mut refused) = (0, 0);
    for case in &cases {
        let before_conns = up.connections();
        let before = up.all_bytes().len();
        let head_only = case.method == "HEAD";
        let must_refuse = matches!(case.tier.as_str(), "Severe" | "Ambiguous")
            || REFUSED_ON_PURPOSE.contains(&case.name.as_str());
        let mut bytes = case.head().into_bytes();
        bytes.extend_from_slice(&case.body());
        if must_refuse || case.tier == "Acceptable" {
            bytes.extend_from_slice(HIDDEN.as_bytes());
        }
        let (status, closed) = exchange(gw.addr, &bytes, head_only);
        if status != 400 {
            // Forwarded: its upstream connection is recorded just after it is answered.
            wait_until(Duration::from_secs(2), || up.connections() > before_conns);
        }
        let received = up.all_bytes();
        let (requests, leftover) = count_requests(&received[before..]);
        let clean_refusal = status == 400 && closed && received.len() == before;
        let clean_pass = status == 200 && requests == 1 && !leftover;
        let ok = match case.tier.as_str() {
            _ if must_refuse => clean_refusal,
            // Acceptable: not RFC-clean, no known risk: refused or passed, either cleanly.
            "Acceptable" => clean_refusal || clean_pass,
            _ => clean_pass,
        };
        if !ok {
            failures.push(format!(
                "{} [{}] {}: status {status}, closed {closed}, upstream got {requests} request(s){}",
                case.file,
                case.tier,
                case.name,
                if leftover { " and stray bytes" } else { "" }
            ));
        } else if clean_pass {
            passed += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!(
        "desync corpus: {} cases, {passed} passed, {refused} refused",
        cases.len()
    );
    // Every passing case made one upstream connection; once all are recorded, nothing
    // hidden behind a refused head may be among the bytes.
    assert!(wait_until(Duration::from_secs(5), || up.connections() >= passed));
    assert!(find(&up.all_bytes(), b"/smuggled").is_none());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed ({passed} passed):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
