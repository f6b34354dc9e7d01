//! The access log: one JSON line per request, written by a thread of its own.
//!
//! A worker thread only moves a small record into a bounded queue (`try_send`, never a wait);
//! when the queue is full the record is dropped and counted
//! (`portcullis_access_log_dropped_total`), so a slow disk can never stall traffic. The writer
//! drains the queue in batches and formats there, off the request path. While records keep
//! coming it polls every `FLUSH_INTERVAL` instead of parking, so that a busy gateway does not
//! pay a thread wake-up per request; when the queue runs dry it parks until the next record.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{HeaderValue, Method, Uri};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde::Serialize;

use super::metrics::metrics;
use crate::config::AccessLogTarget;

/// Records the queue holds before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 16 * 1024;

/// How often a busy writer drains the queue and flushes.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// What authentication decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The route does not authenticate, or the request was refused before auth.
    NotChecked,
    Anonymous,
    Verified,
    /// Refused, with the reason the metrics use.
    Refused(&'static str),
}

impl AuthOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AuthOutcome::NotChecked => "none",
            AuthOutcome::Anonymous => "anonymous",
            AuthOutcome::Verified => "verified",
            AuthOutcome::Refused(reason) => reason,
        }
    }
}

/// What rate limiting decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    NotChecked,
    Allowed,
    Limited,
}

impl RateOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RateOutcome::NotChecked => "none",
            RateOutcome::Allowed => "allowed",
            RateOutcome::Limited => "limited",
        }
    }
}

/// One request, as the access log records it. Cheap to build: clones of shared values.
pub struct AccessRecord {
    pub time: SystemTime,
    pub request_id: Option<HeaderValue>,
    pub client: Option<SocketAddr>,
    pub method: Method,
    pub uri: Uri,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub duration: Duration,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rate_limit: RateOutcome,
    pub auth: AuthOutcome,
}

/// The JSON shape of a line. The query string is left out: it may carry credentials.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client: Option<String>,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    backend: Option<String>,
    status: u16,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    rate_limit: &'static str,
    auth: &'static str,
}

impl AccessRecord {
    /// Writes the record as one JSON line.
    pub fn write_line(&self, out: &mut impl Write) -> io::Result<()> {
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            request_id: self
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            client: self.client.map(|a| a.to_string()),
            method: self.method.as_str(),
            path: self.uri.path(),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            backend: self.backend.map(|a| a.to_string()),
            status: self.status,
            duration_ms: (self.duration.as_secs_f64() * 1e6).round() / 1e3,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            rate_limit: self.rate_limit.as_str(),
            auth: self.auth.as_str(),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")
    }
}

/// The sending side, shared by every worker.
pub struct AccessLog {
    queue: SyncSender<AccessRecord>,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Opens the target now (a file that cannot be opened is a start-up error) and returns
    /// the log with the service that writes it; `Ok(None)` when the log is off. The writer
    /// thread starts with the service, after Pingora has daemonized (threads do not survive
    /// a fork).
    pub fn open(target: &AccessLogTarget) -> Result<Option<(AccessLog, AccessLogWriter)>, String> {
        let sink = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Sink::Stdout,
            AccessLogTarget::File(path) => Sink::File(path.clone()),
        };
        let out = sink.open().map_err(|e| format!("server.access_log: {e}"))?;
        let (queue, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = AccessLogWriter {
            parts: Mutex::new(Some((rx, sink, out))),
            reopen: reopen.clone(),
        };
        Ok(Some((AccessLog { queue, reopen }, writer)))
    }

    /// Queues a record; never waits.
    pub fn record(&self, rec: AccessRecord) {
        match self.queue.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics().access_log_dropped();
            }
        }
    }

    /// Asks the writer to reopen its file (after log rotation moved it away).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

type WriterParts = (Receiver<AccessRecord>, Sink, Box<dyn Write + Send>);

/// Starts the writer thread when Pingora starts its services.
pub struct AccessLogWriter {
    parts: Mutex<Option<WriterParts>>,
    reopen: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for AccessLogWriter {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let parts = self.parts.lock().ok().and_then(|mut p| p.take());
        let Some((rx, sink, out)) = parts else { return };
        let flag = self.reopen.clone();
        // The thread ends when the last sender goes, at process exit.
        if let Err(e) = thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, sink, out, &flag))
        {
            log::error!("access log: cannot start the writer thread: {e}");
        }
    }
}

enum Sink {
    Stdout,
    File(PathBuf),
}

impl Sink {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Sink::Stdout => Box::new(io::stdout()),
            Sink::File(path) => Box::new(open_append(path)?),
        })
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write_loop(
    rx: Receiver<AccessRecord>,
    sink: Sink,
    out: Box<dyn Write + Send>,
    reopen: &AtomicBool,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut failing = false;
    // A record taken by the blocking wait below, written first in the next round.
    let mut waiting: Option<AccessRecord> = None;
    loop {
        // Checked before writing, so a record after a rotation goes to the new file.
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match sink.open() {
                Ok(fresh) => {
                    out = BufWriter::with_capacity(64 * 1024, fresh);
                    log::info!("access log reopened");
                }
                Err(e) => log::warn!("access log: cannot reopen, keeping the old file: {e}"),
            }
        }
        let mut wrote = 0usize;
        let closed = loop {
            let rec = match waiting.take().map(Ok).unwrap_or_else(|| rx.try_recv()) {
                Ok(rec) => rec,
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            };
            wrote += 1;
            if let Err(e) = rec.write_line(&mut out) {
                report(&mut failing, &e);
            }
        };
        match out.flush() {
            Ok(()) => failing = false,
            Err(e) => report(&mut failing, &e),
        }
        if closed {
            return;
        }
        if wrote > 1 {
            // Busy: poll again shortly instead of parking, so senders never pay a wake-up.
            thread::sleep(FLUSH_INTERVAL);
            continue;
        }
        // Quiet: park until the next record (one wake-up, then polling again while busy).
        match rx.recv() {
            Ok(rec) => waiting = Some(rec),
            Err(_) => return,
        }
    }
}

/// Logs a write failure once per failing streak, not once per line.
fn report(failing: &mut bool, e: &io::Error) {
    if !*failing {
        log::warn!("access log: write failed: {e}");
        *failing = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_line_without_the_query() {
        let rec = AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: Some(HeaderValue::from_static("abc")),
            client: Some("10.0.0.1:5555".parse().unwrap()),
            method: Method::POST,
            uri: "/v1/users/7?token=secret%22x".parse().unwrap(),
            route: Some("users".into()),
            upstream: Some("users-svc".into()),
            backend: Some("127.0.0.1:8001".parse().unwrap()),
            status: 201,
            duration: Duration::from_micros(1500),
            bytes_in: 12,
            bytes_out: 34,
            rate_limit: RateOutcome::Allowed,
            auth: AuthOutcome::Refused("expired"),
        };
        let mut out = Vec::new();
        rec.write_line(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["path"], "/v1/users/7");
        assert_eq!(v["client"], "10.0.0.1:5555");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["auth"], "expired");
        assert_eq!(v["rate_limit"], "allowed");
        assert_eq!(v["backend"], "127.0.0.1:8001");
        assert!(!text.contains("secret"));
    }
}
