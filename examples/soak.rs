//! Soak: legitimate traffic mixed with abuse and backend kills, for a set time, against the
//! real gateway binary. Prints, every interval, the legitimate requests served and failed,
//! their p50/p99 latency and the gateway's RSS; exits 1 if any legitimate request failed.
//! Run through `load-tests/soak.sh` (which builds and explains the knobs).
//!
//! Legitimate clients retry a request only in the one case every HTTP client does: a reused
//! keep-alive connection closed before any byte of the answer (RFC 9112, 9.3.1).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A keep-alive backend that can be killed (listener gone, connections reset) and revived.
struct Backend {
    addr: SocketAddr,
    alive: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Backend {
    fn start(port: u16) -> Backend {
        let b = Backend {
            addr: ([127, 0, 0, 1], port).into(),
            alive: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        b.revive();
        b
    }

    fn revive(&self) {
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        self.alive.store(true, Ordering::SeqCst);
        let (alive, conns) = (self.alive.clone(), self.conns.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if !alive.load(Ordering::SeqCst) {
                    return; // the listener drops here
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    conns.lock().unwrap().push(c);
                }
                thread::spawn(move || serve(conn));
            }
        });
    }

    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve(conn: TcpStream) {
    let mut out = match conn.try_clone() {
        Ok(o) => o,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // One write: head and body in two would meet Nagle and delayed ACKs (40 ms).
        let payload = "{\"ok\":true}";
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
            payload.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads one response; returns its status. `Err` with `UnexpectedEof` when nothing came.
fn read_status(reader: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(status)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    errors: Mutex<Vec<String>>,
}

fn legit_client(addr: SocketAddr, stop: &AtomicBool, tally: &Tally, id: usize) {
    let mut conn: Option<(TcpStream, BufReader<TcpStream>, u32)> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let raw = format!("GET /api/items/{id}/{n} HTTP/1.1\r\nHost: soak\r\n\r\n");
        let start = Instant::now();
        let attempt = |conn: &mut Option<(TcpStream, BufReader<TcpStream>, u32)>| {
            if conn.is_none() {
                let s = TcpStream::connect(addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let r = BufReader::new(s.try_clone()?);
                *conn = Some((s, r, 0));
            }
            let (s, r, used) = conn.as_mut().expect("just set");
            *used += 1;
            s.write_all(raw.as_bytes())?;
            read_status(r)
        };
        let reused = conn.as_ref().is_some_and(|c| c.2 > 0);
        let mut result = attempt(&mut conn);
        if let Err(e) = &result {
            let race = matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            );
            if reused && race {
                conn = None;
                result = attempt(&mut conn);
            }
        }
        match result {
            Ok(200) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally
                    .latencies_us
                    .lock()
                    .unwrap()
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            other => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = tally.errors.lock().unwrap();
                if errs.len() < 20 {
                    errs.push(format!("{other:?}"));
                }
                conn = None;
            }
        }
        // A fresh connection now and then, as real clients come and go.
        if n % 50 == 0 {
            conn = None;
        }
    }
}

/// One round of abuse; each kind on its own connection, answers ignored.
fn abuse_round(addr: SocketAddr, round: u64, slowloris: &mut Vec<TcpStream>) {
    let send = |bytes: &[u8]| {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.write_all(bytes);
            let mut sink = [0u8; 4096];
            let _ = s.read(&mut sink);
        }
    };
    // Smuggling attempts.
    send(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhelloGET /admin HTTP/1.1\r\n\r\n");
    send(b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n");
    // Path confusion.
    send(b"GET /api/..%2f..%2fadmin HTTP/1.1\r\nHost: a\r\n\r\n");
    send(b"GET /api/%252e%252e/admin HTTP/1.1\r\nHost: a\r\n\r\n");
    // Oversized head.
    let mut big = b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    send(&big);
    // A client that disconnects mid-request.
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = s.write_all(
            b"POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\npartial",
        );
    }
    // A slowloris crowd that keeps renewing itself (the gateway cuts each at its deadline).
    slowloris.retain_mut(|s| {
        let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
        let mut b = [0u8; 512];
        !matches!(s.read(&mut b), Ok(0))
    });
    while slowloris.len() < 200 {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                let _ =
                    s.write_all(format!("GET /slow/{round} HTTP/1.1\r\nHost: a\r\n").as_bytes());
                slowloris.push(s);
            }
            Err(_) => break,
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let duration = Duration::from_secs(env_or("DURATION", 600));
    let interval = Duration::from_secs(env_or("INTERVAL", 10));
    let clients: usize = env_or("CLIENTS", 4);
    let kill_every = Duration::from_secs(env_or("KILL_EVERY", 20));
    let bin =
        std::env::var("PORTCULLIS_BIN").unwrap_or_else(|_| "target/release/portcullis".into());

    let backends = [Backend::start(free_port()), Backend::start(free_port())];
    let dir = std::env::temp_dir().join(format!("portcullis-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = format!(
        r#"server:
  listen: ["127.0.0.1:{port}"]
  admin_listen: "127.0.0.1:{admin}"
  threads: 1
  pid_file: {d}/gw.pid
  upgrade_sock: {d}/gw.sock
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  request_header_timeout: 5s
  request_body_timeout: 5s
upstreams:
  pool:
    backends: ["{a}", "{b}"]
    retries: 2
    read_timeout: 5s
    health_check: {{ kind: tcp, interval: 1s, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1 }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: pool }}
"#,
        d = dir.display(),
        a = backends[0].addr,
        b = backends[1].addr
    );
    std::fs::write(dir.join("gw.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.join("gw.log")).unwrap();
    let mut gw: Child = Command::new(&bin)
        .arg("-c")
        .arg(dir.join("gw.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ready = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < ready, "the gateway did not start");
        thread::sleep(Duration::from_millis(20));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut threads = Vec::new();
    for id in 0..clients {
        let (stop, tally) = (stop.clone(), tally.clone());
        threads.push(thread::spawn(move || legit_client(addr, &stop, &tally, id)));
    }
    {
        let stop = stop.clone();
        threads.push(thread::spawn(move || {
            let mut crowd = Vec::new();
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                abuse_round(addr, round, &mut crowd);
                round += 1;
                thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    println!(
        "soak: {}s, {clients} legitimate clients, abuse every 100 ms, a backend killed every {}s for 5s",
        duration.as_secs(),
        kill_every.as_secs()
    );
    println!(
        "{:>6} {:>9} {:>7} {:>8} {:>8} {:>9}",
        "t(s)", "ok", "failed", "p50 ms", "p99 ms", "RSS KiB"
    );
    let start = Instant::now();
    let mut next_kill = start + kill_every;
    let mut next_report = start + interval;
    let mut killed: Option<(usize, Instant)> = None;
    let mut victim = 0;
    let (mut last_ok, mut last_failed) = (0, 0);
    let mut rss = Vec::new();
    while start.elapsed() < duration {
        let now = Instant::now();
        if let Some((i, at)) = killed {
            if now >= at {
                backends[i].revive();
                killed = None;
            }
        } else if now >= next_kill {
            backends[victim].kill();
            killed = Some((victim, now + Duration::from_secs(5)));
            victim = 1 - victim;
            next_kill = now + kill_every;
        }
        if now >= next_report {
            let mut lat = std::mem::take(&mut *tally.latencies_us.lock().unwrap());
            lat.sort_unstable();
            let (ok, failed) = (
                tally.ok.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
            );
            let r = rss_kib(gw.id());
            rss.push(r);
            println!(
                "{:>6} {:>9} {:>7} {:>8.2} {:>8.2} {:>9}",
                start.elapsed().as_secs(),
                ok - last_ok,
                failed - last_failed,
                percentile(&lat, 0.50),
                percentile(&lat, 0.99),
                r
            );
            (last_ok, last_failed) = (ok, failed);
            next_report += interval;
        }
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(gw.id().to_string())
        .status();
    let _ = gw.wait();
    let failed = tally.failed.load(Ordering::Relaxed);
    let (first, last, max) = (
        rss.first().copied().unwrap_or(0),
        rss.last().copied().unwrap_or(0),
        rss.iter().copied().max().unwrap_or(0),
    );
    println!(
        "total: {} legitimate requests served, {failed} failed; RSS first {first} KiB, last {last} KiB, max {max} KiB",
        tally.ok.load(Ordering::Relaxed)
    );
    for e in tally.errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(i32::from(failed > 0));
}
