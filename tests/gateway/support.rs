//! Test support: real loopback backends, the real gateway binary, and a small raw HTTP/1.1
//! client that can send exactly the bytes a test wants.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------
// Backends

#[derive(Default)]
pub struct BackendState {
    pub healthy: AtomicBool,
    pub accepted: AtomicUsize,
    pub requests: AtomicUsize,
    pub delay_ms: AtomicU64,
    pub status: AtomicU16,
    conns: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
}

/// An HTTP/1.1 keep-alive server on loopback that answers JSON describing the request:
/// `{"backend": name, "method", "path", "headers": {lower-case name: value}, "body"}`.
/// `/health` answers 200 or 503 by `set_healthy`, and is not counted as a request.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
}

impl TestBackend {
    pub fn start(name: &str) -> TestBackend {
        Self::start_on(name, 0)
    }

    pub fn start_on(name: &str, port: u16) -> TestBackend {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState::default());
        state.healthy.store(true, Ordering::SeqCst);
        state.status.store(200, Ordering::SeqCst);
        let st = state.clone();
        let nm = name.to_string();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                st.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(c) = conn.try_clone() {
                    st.conns.lock().unwrap().push(c);
                }
                let st2 = st.clone();
                let nm2 = nm.clone();
                thread::spawn(move || serve_conn(conn, &nm2, &st2));
            }
        });
        TestBackend {
            name: name.to_string(),
            addr,
            state,
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Dies without warning: stops listening and resets every open connection.
    pub fn kill(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // The listener is gone once a connect is refused.
        assert!(
            wait_until(Duration::from_secs(5), || TcpStream::connect(self.addr)
                .is_err()),
            "backend {} still accepts after kill",
            self.name
        );
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if !self.state.stopped.load(Ordering::SeqCst) {
            self.kill();
        }
    }
}

fn serve_conn(conn: TcpStream, name: &str, st: &BackendState) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if chunked {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                    return;
                };
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        if st.stopped.load(Ordering::SeqCst) {
            return;
        }
        let (status, payload) = if path == "/health" {
            let ok = st.healthy.load(Ordering::SeqCst);
            (if ok { 200 } else { 503 }, format!("{{\"healthy\":{ok}}}"))
        } else {
            st.requests.fetch_add(1, Ordering::SeqCst);
            let delay = st.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                thread::sleep(Duration::from_millis(delay));
            }
            let hdrs: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let v = serde_json::json!({
                "backend": name,
                "method": method,
                "path": path,
                "headers": hdrs,
                "body": String::from_utf8_lossy(&body),
            });
            // Test hooks: a chosen status, a body that is not JSON, a large body.
            if let Some(code) = path
                .strip_prefix("/__status/")
                .and_then(|c| c.parse::<u16>().ok())
            {
                (code, v.to_string())
            } else if path.starts_with("/__text") {
                (200, "plain text, not JSON".to_string())
            } else if let Some(n) = path
                .strip_prefix("/__big/")
                .and_then(|n| n.parse::<usize>().ok())
            {
                (200, format!("\"{}\"", "x".repeat(n)))
            } else {
                (st.status.load(Ordering::SeqCst), v.to_string())
            }
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
            payload.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The gateway

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

/// The `server` section every test gateway gets, before its own extra keys (a key the
/// extra keys set is left out here: YAML refuses a key twice).
fn server_yaml(dir: &std::path::Path, port: u16, admin_port: u16, extra: &str) -> String {
    let base = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n  admin_listen: \"127.0.0.1:{admin_port}\"\n  threads: 1\n  pid_file: {d}/gw.pid\n  upgrade_sock: {d}/gw.sock\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n",
        d = dir.display()
    );
    base.lines()
        .filter(|line| {
            let key = line.trim_start().split(':').next().unwrap_or("");
            !line.starts_with("  ") || !extra.contains(&format!("  {key}:"))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "portcullis-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Gateway {
    /// Starts the gateway with `rest` (upstreams and routes) and test server settings.
    pub fn start(rest: &str) -> Gateway {
        Self::start_with("", rest)
    }

    /// `server_extra`: more `server` keys, each line indented by two spaces.
    pub fn start_with(server_extra: &str, rest: &str) -> Gateway {
        for _ in 0..3 {
            if let Some(g) = Self::try_start(server_extra, rest) {
                return g;
            }
        }
        panic!("the gateway did not start");
    }

    fn try_start(server_extra: &str, rest: &str) -> Option<Gateway> {
        let dir = temp_dir("gw");
        let port = free_port();
        let admin_port = free_port();
        let yaml = format!(
            "{}{server_extra}\n{rest}",
            server_yaml(&dir, port, admin_port, server_extra)
        );
        let conf = dir.join("gateway.yaml");
        std::fs::write(&conf, &yaml).unwrap();
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        let mut g = Gateway {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            if g.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            get(g.admin, "/healthz").is_ok_and(|r| r.status == 200)
                && TcpStream::connect(g.addr).is_ok()
        });
        if g.child.try_wait().ok().flatten().is_some() {
            eprintln!("gateway exited at start:\n{}", g.log());
            return None; // most likely a port race; try again
        }
        assert!(up, "gateway not ready in time:\n{}", g.log());
        Some(g)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// Replaces the config file (same listeners and paths), for a reload.
    pub fn write_config(&self, server_extra: &str, rest: &str) {
        let yaml = format!(
            "{}{server_extra}\n{rest}",
            server_yaml(&self.dir, self.addr.port(), self.admin.port(), server_extra)
        );
        std::fs::write(self.dir.join("gateway.yaml"), yaml).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`HUP`, `USR2`, `TERM`, ...) to the gateway process.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    /// Whether the process this test started has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("UTF-8 exposition")
    }

    /// One sample's value (0 when the series does not exist yet).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    /// GETs `path`, expects the gateway's `504 gateway_timeout`, and that it came within
    /// `within` (a timeout that fires neither early nor much late).
    pub fn assert_timeout_after(&self, path: &str, within: std::ops::Range<Duration>) {
        let start = Instant::now();
        self.get(path).assert_error(504, "gateway_timeout");
        let took = start.elapsed();
        assert!(
            within.contains(&took),
            "504 after {took:?}, not within {within:?}"
        );
    }

    pub fn send(&self, raw: &str) -> Response {
        send(self.addr, raw.as_bytes())
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.log()))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Ends a process this test did not start itself (an upgraded gateway) when dropped.
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if pid_alive(self.0) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.0.to_string())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the text exposition strictly: every sample line is `name{labels} value`, every
/// sample belongs to a family announced by `# TYPE`, label values are quoted.
pub fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().ok_or_else(|| at("TYPE without a name"))?;
            let kind = it.next().ok_or_else(|| at("TYPE without a kind"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at("unknown type"));
            }
            families.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        if line.starts_with('#') {
            return Err(at("unknown comment"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| at("bad value"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                let mut labels = Vec::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").ok_or_else(|| at("bad label"))?;
                    labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
                }
                (name.to_string(), labels)
            }
        };
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(at("bad metric name"));
        }
        let family_known = families.iter().any(|f| {
            name == *f
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(f))
        });
        if !family_known {
            return Err(at("sample before its # TYPE"));
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The value of the sample with exactly these labels; 0 when absent.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = parse_exposition(text).unwrap_or_else(|e| panic!("bad exposition: {e}"));
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map_or(0.0, |s| s.value)
}

// ---------------------------------------------------------------------------------------
// Load

/// Tallies of a load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    pub connections: usize,
    /// Requests retried after the keep-alive race (see `LoadGen`).
    pub retried: usize,
    pub errors: Vec<String>,
}

/// Several clients sending GETs back to back until stopped. Each opens a fresh connection
/// every few requests, so accepts keep happening too. Like any HTTP client, a client
/// retries a request once on a new connection when a *reused* connection is closed before
/// any byte of the answer arrives (RFC 9112, 9.3.1): that is the keep-alive race every
/// server closing idle connections has, not a failure. Anything else is a failure: a
/// refused or reset fresh connection, a status other than 200, a broken answer.
pub struct LoadGen {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<LoadReport>>,
    pub ok: Arc<AtomicUsize>,
}

impl LoadGen {
    pub fn start(addr: SocketAddr, path: &str, clients: usize) -> LoadGen {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, path) = (stop.clone(), ok.clone(), path.to_string());
                thread::spawn(move || load_client(addr, &path, &stop, &ok))
            })
            .collect();
        LoadGen { stop, threads, ok }
    }

    /// Waits until `n` more requests have succeeded (so load demonstrably ran across an
    /// event); false at the deadline.
    pub fn wait_for_more(&self, n: usize, deadline: Duration) -> bool {
        let target = self.ok.load(Ordering::SeqCst) + n;
        wait_until(deadline, || self.ok.load(Ordering::SeqCst) >= target)
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().expect("load client panicked");
            total.ok += r.ok;
            total.failed += r.failed;
            total.connections += r.connections;
            total.retried += r.retried;
            total.errors.extend(r.errors);
        }
        total
    }
}

/// A reused connection closed under a request before any byte of the answer.
fn keep_alive_race(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | ConnectionReset | BrokenPipe)
}

fn load_client(addr: SocketAddr, path: &str, stop: &AtomicBool, ok: &AtomicUsize) -> LoadReport {
    const REQUESTS_PER_CONNECTION: usize = 10;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: load.test\r\n\r\n");
    let mut report = LoadReport::default();
    let mut conn: Option<(Conn, usize)> = None;
    let fail = |report: &mut LoadReport, e: String| {
        report.failed += 1;
        if report.errors.len() < 10 {
            report.errors.push(e);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let (c, used) = match conn.take() {
            Some((c, used)) if used < REQUESTS_PER_CONNECTION => (c, used),
            _ => match Conn::open(addr) {
                Ok(c) => {
                    report.connections += 1;
                    (c, 0)
                }
                Err(e) => {
                    fail(&mut report, format!("connect: {e}"));
                    continue;
                }
            },
        };
        let mut c = c;
        let answer = match c.request(&raw) {
            Err(e) if used > 0 && keep_alive_race(&e) => {
                report.retried += 1;
                // The keep-alive race: retry once on a fresh connection.
                match Conn::open(addr) {
                    Ok(fresh) => {
                        report.connections += 1;
                        c = fresh;
                        c.request(&raw).map(|r| (r, 0))
                    }
                    Err(e) => Err(e),
                }
            }
            other => other.map(|r| (r, used)),
        };
        match answer {
            Ok((r, used)) if r.status == 200 => {
                report.ok += 1;
                ok.fetch_add(1, Ordering::SeqCst);
                let closing = r
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                if !closing {
                    conn = Some((c, used + 1));
                }
            }
            Ok((r, _)) => fail(
                &mut report,
                format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body)),
            ),
            Err(e) => fail(&mut report, format!("request: {e}")),
        }
    }
    report
}

// ---------------------------------------------------------------------------------------
// Client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The backend's echo: which backend answered.
    pub fn backend(&self) -> String {
        self.json()["backend"].as_str().unwrap_or("").to_string()
    }

    /// Asserts the gateway's own JSON error shape and returns it.
    pub fn assert_error(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        let id = v["request_id"].as_str().expect("request_id");
        assert!(!id.is_empty());
        assert_eq!(
            self.header("x-request-id"),
            Some(id),
            "X-Request-Id echoes the body's id"
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        v
    }
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn send(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut c = Conn::open(addr)?;
    c.stream.write_all(raw)?;
    c.read_response()
}

/// One client connection, for keep-alive tests.
pub struct Conn {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conn { stream, reader })
    }

    pub fn request(&mut self, raw: &str) -> std::io::Result<Response> {
        self.stream.write_all(raw.as_bytes())?;
        self.read_response()
    }

    /// Whether the server has closed the connection (reads EOF or a reset).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            self.reader.read_exact(&mut body)?;
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(std::io::Error::other)?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if status >= 200 && status != 204 && status != 304 {
            self.reader.read_to_end(&mut body)?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Counts which backend answered `n` GETs of `path`.
pub fn spread(gw: &Gateway, path: &str, n: usize) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        let r = gw.get(path);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        *m.entry(r.backend()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------
// A static JSON server (a JWKS endpoint, a trap for URLs that must never be fetched)

pub struct JsonServer {
    pub addr: SocketAddr,
    pub body: Arc<Mutex<String>>,
    pub hits: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
}

impl JsonServer {
    pub fn start(body: &str) -> JsonServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (b, h, a) = (body.clone(), hits.clone(), accepted.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (b, h) = (b.clone(), h.clone());
                thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            let mut hl = String::new();
                            if reader.read_line(&mut hl).unwrap_or(0) == 0 || hl.trim().is_empty() {
                                break;
                            }
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        let payload = b.lock().unwrap().clone();
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
                            payload.len()
                        );
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        JsonServer {
            addr,
            body,
            hits,
            accepted,
        }
    }

    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Path of a file under tests/fixtures.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

impl Gateway {
    /// Starts the gateway expecting it to fail; returns its exit code and log.
    pub fn start_failing(rest: &str) -> (i32, String) {
        let dir = temp_dir("gwfail");
        let yaml = format!(
            "server:\n  listen: [\"127.0.0.1:{}\"]\n  admin_listen: \"127.0.0.1:{}\"\n  threads: 1\n  pid_file: {d}/gw.pid\n  upgrade_sock: {d}/gw.sock\n{rest}",
            free_port(),
            free_port(),
            d = dir.display()
        );
        let conf = dir.join("gateway.yaml");
        std::fs::write(&conf, yaml).unwrap();
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                let _ = std::fs::remove_dir_all(&dir);
                return (status.code().unwrap_or(-1), err);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway was expected to exit but kept running");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------
// A real redis-server on a free loopback port

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let dir = temp_dir("redis");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/install-deps.sh installs it)");
        let r = RedisServer { child, port, dir };
        assert!(
            wait_until(Duration::from_secs(10), || r.ping()),
            "redis-server did not answer PING on port {port}"
        );
        r
    }

    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Shared scenarios

/// One backend behind a catch-all route; `server_extra` adds `server` keys.
pub fn one_backend_gateway(server_extra: &str) -> (TestBackend, Gateway) {
    let b = TestBackend::start("b");
    let gw = Gateway::start_with(
        server_extra,
        &format!(
            "upstreams:\n  pool: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: pool }}\n",
            b.addr
        ),
    );
    (b, gw)
}

/// `n` backends named b0.. and their addresses as a YAML list body.
pub fn backends(n: usize) -> (Vec<TestBackend>, String) {
    let bs: Vec<TestBackend> = (0..n)
        .map(|i| TestBackend::start(&format!("b{i}")))
        .collect();
    let list = bs
        .iter()
        .map(|b| format!("\"{}\"", b.addr))
        .collect::<Vec<_>>()
        .join(", ");
    (bs, list)
}

/// Asks `repeats` times per key which backend answers; every key must stay on one backend,
/// and the keys must spread over at least two.
pub fn assert_sticky(keys: usize, repeats: usize, ask: impl Fn(usize) -> String) {
    let mut owners = std::collections::HashSet::new();
    for k in 0..keys {
        let first = ask(k);
        for _ in 0..repeats {
            assert_eq!(ask(k), first, "key {k} moved");
        }
        owners.insert(first);
    }
    assert!(
        owners.len() >= 2,
        "{keys} keys all hashed to one backend: {owners:?}"
    );
}
