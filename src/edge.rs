//! The edge of a client connection: everything that happens before Pingora's proxy sees a
//! request, and between two requests on one connection.
//!
//! Pingora reads the request header itself, with a timeout per read, so a client trickling
//! one byte at a time can hold a connection forever, and it has no idle timeout between
//! requests nor a bound below 1 MiB on header size. This app sits under the proxy: it reads
//! each request header itself, under one deadline for the WHOLE header
//! (`request_header_timeout`), an `idle_timeout` for the wait before a keep-alive request
//! starts, and `max_request_header_bytes`; it refuses malformed request heads with a JSON 400;
//! then it hands the bytes it read to a Pingora session as its first input, so nothing is
//! parsed from the socket twice, and counts `keepalive_requests` per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http_desync_guardian::request_analyzer::HttpRequestData;
use http_desync_guardian::RequestSafetyTier;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use std::pin::Pin;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::config::ServerConfig;
use crate::observability::metrics;
use crate::proxy::h1::{LeanProxy, Served};
use crate::proxy::headers::new_request_id;
use crate::respond::{ErrorCode, GatewayError};
use crate::runtime::SharedRuntime;

/// Most header lines a request may carry (beyond: 431).
const MAX_HEADERS: usize = 128;

/// How long a connection between requests keeps its head buffer before it gives it back
/// and waits for its next request without one (see [`readable`]).
const BUFFER_LINGER: Duration = Duration::from_millis(100);

/// How a connection's request heads are bounded.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub max_header_bytes: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_requests: u32,
    pub max_connections: usize,
    /// First allocation for a request head (grown as needed up to `max_header_bytes`).
    pub head_buffer_bytes: usize,
}

impl EdgeLimits {
    pub fn from_config(s: &ServerConfig) -> Self {
        EdgeLimits {
            max_header_bytes: s.max_request_header_bytes,
            header_timeout: s.request_header_timeout,
            idle_timeout: s.idle_timeout,
            keepalive_requests: s.keepalive_requests,
            max_connections: s.max_connections,
            head_buffer_bytes: s.request_head_buffer_bytes,
        }
    }
}

/// Counts a client connection as open for as long as it lives.
struct OpenConnection<'a>(&'a AtomicUsize);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What reading one request head came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A complete, well-formed head (and maybe the start of the body) is in the buffer.
    Complete(HeadInfo),
    /// The connection closed, or sat idle, before a request began: close quietly.
    Gone,
    /// The head did not complete within the deadline: close.
    TimedOut,
    /// Refuse with this answer and close.
    Refuse(ErrorCode),
}

/// A complete, well-formed, unambiguously framed request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    /// RFC-clean, not only acceptable (see [`framing_tier`]).
    pub compliant: bool,
    /// Its header lines.
    pub headers: usize,
}

/// Checks a buffer for a complete request head; `Ok(None)`: not complete yet.
pub fn check_head(buf: &[u8], max_bytes: usize) -> Result<Option<HeadInfo>, ErrorCode> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_bytes => Err(ErrorCode::HeadersTooLarge),
        Ok(httparse::Status::Complete(n)) => match framing_tier(&buf[..n]) {
            tier @ (RequestSafetyTier::Compliant | RequestSafetyTier::Acceptable) => {
                Ok(Some(HeadInfo {
                    compliant: tier == RequestSafetyTier::Compliant,
                    headers: req.headers.len(),
                }))
            }
            RequestSafetyTier::Ambiguous | RequestSafetyTier::Severe => Err(ErrorCode::BadRequest),
        },
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => Err(ErrorCode::HeadersTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ErrorCode::HeadersTooLarge),
        Err(_) => Err(ErrorCode::BadRequest),
    }
}

/// How a request head rates for request smuggling (HTTP desync), by the rules of AWS's
/// http_desync_guardian (what ALB applies): `Severe` (two Content-Lengths, a list in one,
/// control characters in the target, a broken Transfer-Encoding...) and `Ambiguous` (TE with
/// CL, a body on GET/HEAD, look-alike framing header names...) heads are refused, since an
/// upstream might cut the stream into requests differently than Pingora does. The raw bytes
/// are analysed, not httparse's reading of them: the point is what *another* parser could see.
pub fn framing_tier(head: &[u8]) -> RequestSafetyTier {
    HttpRequestData::analyze_raw_request(head).tier
}

/// The app Pingora runs per accepted connection.
pub struct EdgeApp<A> {
    proxy: Arc<A>,
    /// Serves the common request itself; hands the rest to `proxy`.
    lean: LeanProxy,
    /// The limits are read from the current runtime when a connection is accepted, so a
    /// reload applies to new connections.
    shared: Arc<SharedRuntime>,
    /// Client connections open now, for `max_connections`.
    open: AtomicUsize,
}

impl<A> EdgeApp<A> {
    pub fn new(proxy: A, lean: LeanProxy, shared: Arc<SharedRuntime>) -> Self {
        EdgeApp {
            proxy: Arc::new(proxy),
            lean,
            shared,
            open: AtomicUsize::new(0),
        }
    }
}

/// Writes a refusal the edge makes itself, then closes.
async fn refuse(stream: &mut Stream, err: &GatewayError, head_only: bool) {
    let answer = err.to_http1(new_request_id().to_str().unwrap_or(""), head_only);
    // Best effort: the client may already be gone.
    let _ = stream.write_all(&answer).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

/// Waits until the client sends something (or closes) without reading it: a zero-length
/// read parks on the socket's readiness. An idle connection so holds no read buffer at all
/// (what nginx does with keep-alive connections); the buffer is allocated when bytes arrive.
pub async fn readable(stream: &mut Stream) -> std::io::Result<()> {
    std::future::poll_fn(|cx| {
        let mut nothing = ReadBuf::new(&mut []);
        Pin::new(&mut *stream).poll_read(cx, &mut nothing)
    })
    .await
}

/// Polls a future once, without a waker to call: `None` if it would wait.
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Reads one request head into `buf`, which may already hold the start of it (bytes a
/// client sent behind its previous request). The first request's deadline runs from
/// accept; later ones wait up to `idle_timeout` for a first byte, then get the header
/// deadline.
async fn read_head(
    limits: &EdgeLimits,
    stream: &mut Stream,
    buf: &mut BytesMut,
    first: bool,
    shutdown: &ShutdownWatch,
) -> Head {
    let mut deadline = (first || !buf.is_empty()).then(|| Instant::now() + limits.header_timeout);
    let mut shutdown = shutdown.clone();
    loop {
        if !buf.is_empty() {
            match check_head(buf, limits.max_header_bytes) {
                Ok(Some(info)) => return Head::Complete(info),
                Ok(None) => {}
                Err(code) => return Head::Refuse(code),
            }
        }
        let wait_until = deadline.unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        let left = wait_until.saturating_duration_since(Instant::now());
        let read = if buf.capacity() == 0 {
            // The connection gave its buffer back: wait without one, then read into a fresh one.
            let waited = tokio::select! {
                biased;
                r = fast_timeout(left, readable(stream)) => r,
                _ = shutdown.changed(), if deadline.is_none() => return Head::Gone,
            };
            match waited {
                Ok(Ok(())) => {
                    buf.reserve(limits.head_buffer_bytes);
                    match poll_once(stream.read_buf(buf)) {
                        Some(r) => Ok(r),
                        // Woken without data after all: wait again, still without a buffer.
                        None => {
                            *buf = BytesMut::new();
                            continue;
                        }
                    }
                }
                Ok(Err(e)) => Ok(Err(e)),
                Err(elapsed) => Err(elapsed),
            }
        } else if buf.is_empty() && left > BUFFER_LINGER {
            // Between requests: a busy client's next request is usually this close behind,
            // so the buffer waits for it a little while; a quiet connection gives it back.
            match fast_timeout(BUFFER_LINGER, stream.read_buf(buf)).await {
                Err(_) => {
                    *buf = BytesMut::new();
                    continue;
                }
                Ok(read) => Ok(read),
            }
        } else {
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(4096);
            }
            // Pingora's timer wheel: no timer at all when the bytes are already there, and
            // no runtime wake-up (an eventfd write per request) when there are none yet.
            fast_timeout(left, stream.read_buf(buf)).await
        };
        match read {
            Err(_) if deadline.is_none() => return Head::Gone,
            Err(_) => return Head::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
        deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
    }
}

impl<A> EdgeApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// One client connection, from accept to close.
    async fn serve_connection(self: Arc<Self>, mut stream: Stream, shutdown: ShutdownWatch) {
        let limits = EdgeLimits::from_config(&self.shared.load().server);
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let _open = OpenConnection(&self.open);
        if open > limits.max_connections {
            // Refused before reading anything: admitted connections keep their share.
            metrics().edge_refusal("max_connections");
            let mut err = GatewayError::with_message(
                ErrorCode::ServiceUnavailable,
                "the gateway has too many open connections; retry later",
            );
            err.headers.push((
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            ));
            refuse(&mut stream, &err, false).await;
            return;
        }
        let idle_secs = limits.idle_timeout.as_secs().max(1);
        // Once per connection (Pingora caches it in the digest; it costs a getpeername).
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let mut served: u32 = 0;
        // Allocated when the first bytes arrive, given back when the connection idles: see
        // `readable` and `BUFFER_LINGER`. A connection that never sends holds none.
        let mut buf = BytesMut::new();
        loop {
            let head = match read_head(&limits, &mut stream, &mut buf, served == 0, &shutdown).await
            {
                Head::Complete(info) => info,
                Head::Gone => return,
                Head::TimedOut => {
                    metrics().edge_refusal("header_timeout");
                    return;
                }
                Head::Refuse(code) => {
                    metrics().edge_refusal(code.as_str());
                    refuse(
                        &mut stream,
                        &GatewayError::new(code),
                        buf.starts_with(b"HEAD "),
                    )
                    .await;
                    return;
                }
            };
            served += 1;
            // A head that is only acceptable (not RFC-clean) gets no second request behind it
            // on this connection: bytes after it are dropped, never read as a request.
            let last = served >= limits.keepalive_requests || *shutdown.borrow() || !head.compliant;
            // The lean path's per-request state lives in its own allocation, only while a
            // request is served: the connection's task stays small while it idles.
            let lean = Box::pin(
                self.lean
                    .serve(&mut stream, &mut buf, head.headers, last, client),
            )
            .await;
            match lean {
                Served::KeepAlive => continue,
                Served::Close => return,
                Served::Fallback => {}
            }
            let mut session = ServerSession::new_http1(stream);
            // Pingora re-derives keep-alive from the request's own Connection header, so the
            // "this is the last one" decision goes through the reuse budget, which it keeps.
            session.set_keepalive(Some(idle_secs));
            session.set_keepalive_reuses_remaining(last.then_some(0));
            session.set_pipelined_prefix(std::mem::take(&mut buf));
            let Some(reused) = self.proxy.process_new_http(session, &shutdown).await else {
                return;
            };
            if last {
                return;
            }
            // Pipelining is off, so Pingora never hands back bytes of a next request.
            let (s, _settings) = reused.consume();
            stream = s;
        }
    }
}

#[async_trait]
impl<A> ServerApp for EdgeApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Runs the connection in a task of its own and returns at once. Pingora's accept task
    /// lays out a TLS handshake future inline (about 7 KiB, even on a plain-TCP listener);
    /// ending it keeps an idle connection's memory to this small task.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        tokio::spawn(self.clone().serve_connection(stream, shutdown.clone()));
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_checks() {
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1024),
            Ok(Some(HeadInfo {
                compliant: true,
                headers: 1
            }))
        );
        assert_eq!(check_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 1024), Ok(None));
        assert_eq!(check_head(b"GET / HTTP/1.1\r\n", 1024), Ok(None));
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 10),
            Err(ErrorCode::HeadersTooLarge)
        );
        assert_eq!(
            check_head(&[b'a'; 2000], 1024),
            Err(ErrorCode::HeadersTooLarge)
        );
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 1024),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            check_head(b"GET /\x01 HTTP/1.1\r\n\r\n", 1024),
            Err(ErrorCode::BadRequest)
        );
        let many: String = (0..200).map(|i| format!("h{i}: v\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            check_head(req.as_bytes(), 1 << 20),
            Err(ErrorCode::HeadersTooLarge)
        );
    }
}
