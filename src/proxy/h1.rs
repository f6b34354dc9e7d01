//! The lean HTTP/1.1 conductor: the common request (HTTP/1.1, no body, no upgrade, to a
//! plain-TCP cluster) served straight from the edge's buffer, without a Pingora session.
//!
//! Why a second conductor: Pingora's HTTP/1 session and proxy state machine cost about three
//! times nginx's user-space time per request (load-tests/RESULTS.md), most of it in generic
//! work this request does not need (a request header rebuilt with a case map, per-phase
//! boxing, body tasks and channels, a pool check by `getpeername`). Here one request is
//! parsed once, one upstream head and one client head are written from the parsed bytes,
//! and a small body goes back in the same write as its head.
//!
//! The decisions are the same modules as the Pingora conductor's (`plan`, `admit`,
//! `Cluster::select`, the error contract), so both paths answer alike; what this path does
//! not take (bodies, upgrades, `Expect`, HTTP/1.0, composite routes, TLS upstreams) it hands
//! back untouched as [`Served::Fallback`], and the edge gives it to Pingora's session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use http::{HeaderName, HeaderValue, Method, Uri};
use pingora_core::protocols::Stream;
use pingora_timeout::fast_timeout::fast_timeout;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::admit::{admit, Admission};
use super::headers::RequestId;
use super::plan::plan_parts;
use super::scratch::{self, Buffers, Lease};
use super::wire::{self, Answering, BadResponse, ChunkedScanner, Forwarding, Framing};
use super::InFlight;
use crate::config::{HashKey, LbPolicy};
use crate::edge::{check_parsed, idle, HeadInfo, MAX_HEADERS};
use crate::observability::metrics::NO_ROUTE;
use crate::observability::{
    metrics, AccessLog, AccessRecord, AuthOutcome, RateOutcome, RouteMetrics,
};
use crate::request::{HeaderView, Target};
use crate::respond::{ErrorCode, GatewayError};
use crate::runtime::{RouteTarget, Runtime, SharedRuntime};
use crate::upstream::{pool, Cluster, SelectError};

/// Bytes read from an upstream at a time once its head is in.
const BODY_CHUNK: usize = 16 * 1024;

/// A response body up to this size goes to the client in the same write as its head.
const COALESCE_BYTES: usize = 16 * 1024;

/// What serving one request came to, for the edge's connection loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// Answered; the connection may carry another request (its bytes may be in the buffer).
    KeepAlive,
    /// Answered, or the client is gone: close the connection.
    Close,
    /// Not this path's request: the buffer is untouched, Pingora's session takes it
    /// (`last`: no request may follow it on the connection).
    Fallback { last: bool },
    /// The head failed the edge's checks: refuse it with this, untouched, and close.
    Refuse(ErrorCode),
}

/// The lean conductor, one per listening service.
pub struct LeanProxy {
    shared: Arc<SharedRuntime>,
    access_log: Option<Arc<AccessLog>>,
    unrouted: RouteMetrics,
}

/// What one request did, for the metrics and the access log.
struct Exchange {
    started: Instant,
    route: Option<usize>,
    backend: Option<SocketAddr>,
    status: u16,
    bytes_out: u64,
    auth: AuthOutcome,
    rate: RateOutcome,
}

/// How relaying a response ended.
enum Relay {
    /// All of it reached the client; whether the client connection may be reused.
    Done { client_reusable: bool },
    /// Cut off after the head went out: the client connection must close.
    Broken,
}

/// Why no response head came from the upstream.
enum HeadError {
    /// The connection closed or failed before a single byte came back (retryable on a
    /// fresh connection or another backend).
    Lost,
    /// Some bytes, then the connection ended: a broken answer.
    Truncated,
    Timeout,
    Bad(BadResponse),
    /// The client went away while the upstream worked.
    ClientGone,
}

impl LeanProxy {
    pub fn new(shared: Arc<SharedRuntime>, access_log: Option<Arc<AccessLog>>) -> Self {
        LeanProxy {
            shared,
            access_log,
            unrouted: metrics().route(NO_ROUTE),
        }
    }

    /// Serves the request whose complete head starts `buf`: `checked` when the edge parsed
    /// and checked it, else this parse is the only one, and applies the edge's checks. On
    /// `KeepAlive`, `buf` holds only what the client sent after that request.
    pub async fn serve(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        checked: Option<HeadInfo>,
        last: bool,
        client: Option<SocketAddr>,
    ) -> Served {
        let client_ip = client.map(|a| a.ip());
        let mut scratch = Lease::take();
        // Sized by the edge's parse, or a few: no 128-slot array in this future (it is
        // allocated per request, and moved there whole).
        let mut header_slots = scratch.header_slots(header_slots_for(checked));
        let mut more_slots = Vec::new();
        let (req, parsed) = parse_head(&mut header_slots, &mut more_slots, buf, checked);
        let (head_len, compliant) = match parsed {
            Ok(parsed) => parsed,
            Err(Some(code)) => return Served::Refuse(code),
            Err(None) => return Served::Fallback { last },
        };
        // A head that is only acceptable (not RFC-clean) gets no second request behind it
        // on this connection: bytes after it are dropped, never read as a request.
        let last = last || !compliant;
        if !wire::lean_eligible(&req) {
            return Served::Fallback { last };
        }
        let Some(parts) = RequestParts::of(&req) else {
            // Targets other than a plain origin form (and methods the `http` crate
            // refuses) take Pingora's session, which answers them.
            return Served::Fallback { last };
        };
        let rt = self.shared.load_full();
        let plan = plan_parts(&rt, &parts.method, &parts.target, parts.headers);
        if let Ok(p) = &plan {
            match rt.routes[p.route].target {
                RouteTarget::Aggregate(_) => return Served::Fallback { last },
                RouteTarget::Proxy(i) if rt.clusters[i].config.tls => {
                    return Served::Fallback { last }
                }
                RouteTarget::Proxy(_) => {}
            }
        }
        let _in_flight = InFlight::new();
        let mut ex = Exchange {
            started: Instant::now(),
            route: None,
            backend: None,
            status: 0,
            bytes_out: 0,
            auth: AuthOutcome::NotChecked,
            rate: RateOutcome::NotChecked,
        };
        let close = last || wire::wants_close(&req);
        let head_request = parts.method == Method::HEAD;
        let request_id = RequestId::of(parts.headers);
        let id = request_id.as_bytes();
        // What the log needs after the client's buffer is handed on.
        let method = parts.method.clone();
        let logged_uri = self
            .access_log
            .as_ref()
            .map(|_| Uri::try_from(parts.raw_target).unwrap_or_default());

        let outcome = match plan {
            Err(e) => answer(stream, &rt, &mut ex, &e, id, head_request, close, b"").await,
            Ok(p) => {
                ex.route = Some(p.route);
                let route = &rt.routes[p.route];
                let admission = admit(&rt, route, &parts.method, parts.headers, client_ip).await;
                ex.auth = admission.auth;
                ex.rate = admission.rate;
                let Buffers {
                    up_head,
                    rate_lines: rate_headers,
                    client_head,
                    upstream: rbuf,
                    slots,
                } = &mut *scratch;
                if let Some(v) = &admission.rate_verdict {
                    rt.rate_limits.write_header_lines(v, rate_headers);
                }
                if let Some(refusal) = &admission.refusal {
                    answer(
                        stream,
                        &rt,
                        &mut ex,
                        refusal,
                        id,
                        head_request,
                        close,
                        rate_headers,
                    )
                    .await
                } else if let Some(cluster) = rt.cluster_for(p.route) {
                    let identity: &[(HeaderName, HeaderValue)] = admission
                        .identity
                        .as_deref()
                        .map_or(&[], |i| i.headers.as_slice());
                    let reserved = rt
                        .auth
                        .as_ref()
                        .map_or(&[][..], |a| a.config().forward_claims.as_slice());
                    wire::write_request_head(
                        up_head,
                        &req,
                        &Forwarding {
                            target: p.upstream_target.as_deref(),
                            client_ip,
                            request_id: id,
                            reserved,
                            identity,
                        },
                    );
                    // Only consistent hashing reads the key.
                    let key = if cluster.config.lb == LbPolicy::ConsistentHash {
                        hash_key(cluster, parts.headers, &admission, client_ip)
                    } else {
                        Vec::new()
                    };
                    let idempotent = parts.method.is_idempotent();
                    // The parse's last reader is done: its slots go back before `buf`,
                    // which they borrow, is read into again.
                    scratch::keep_slots(slots, header_slots);
                    let ans = Answering {
                        request_id: id,
                        extra: rate_headers,
                        close,
                        head_request,
                    };
                    match proxy(
                        stream,
                        buf,
                        head_len,
                        cluster,
                        &key,
                        up_head,
                        (client_head, rbuf),
                        &ans,
                        idempotent,
                        rt.server.response_write_timeout,
                        &mut ex,
                    )
                    .await
                    {
                        Ok(relay) => relay,
                        Err(e) => {
                            answer(
                                stream,
                                &rt,
                                &mut ex,
                                &e,
                                id,
                                head_request,
                                close,
                                rate_headers,
                            )
                            .await
                        }
                    }
                } else {
                    // Composite routes were handed back above.
                    let e = GatewayError::new(ErrorCode::BadGateway);
                    answer(stream, &rt, &mut ex, &e, id, head_request, true, b"").await
                }
            }
        };
        buf.advance(head_len.min(buf.len()));
        self.log(&rt, &ex, &method, logged_uri, &request_id, client);
        match outcome {
            Relay::Done {
                client_reusable: true,
            } if !close => Served::KeepAlive,
            _ => Served::Close,
        }
    }

    fn log(
        &self,
        rt: &Runtime,
        ex: &Exchange,
        method: &Method,
        uri: Option<Uri>,
        request_id: &RequestId,
        client: Option<SocketAddr>,
    ) {
        let elapsed = ex.started.elapsed();
        let route = ex.route.and_then(|r| rt.routes.get(r));
        match route {
            Some(r) => r.metrics.observe(method, ex.status, elapsed.as_secs_f64()),
            None => self
                .unrouted
                .observe(method, ex.status, elapsed.as_secs_f64()),
        }
        let (Some(log), Some(uri)) = (&self.access_log, uri) else {
            return;
        };
        log.record(AccessRecord {
            time: SystemTime::now(),
            request_id: Some(request_id.to_header_value()),
            client,
            method: method.clone(),
            uri,
            route: route.map(|r| r.name.clone()),
            upstream: ex
                .route
                .and_then(|r| rt.cluster_for(r))
                .map(|c| c.name.clone()),
            backend: ex.backend,
            status: ex.status,
            duration: elapsed,
            bytes_in: 0,
            bytes_out: ex.bytes_out,
            rate_limit: ex.rate,
            auth: ex.auth,
        });
    }
}

/// Header slots a head the edge did not parse is parsed with first. Most heads have fewer
/// lines; one with more is parsed again with a slot per line, which is cheaper than counting
/// every head's lines first (a 250-byte head took 240 instructions to count).
const FEW_REQUEST_HEADERS: usize = 24;

/// Header slots for the first parse of the head that starts a buffer: as many as the edge's
/// parse found, else [`FEW_REQUEST_HEADERS`].
fn header_slots_for(checked: Option<HeadInfo>) -> usize {
    checked
        .map_or(FEW_REQUEST_HEADERS, |info| info.headers)
        .clamp(1, MAX_HEADERS)
}

/// Parses the head that starts `buf` into `slots`, or, when it has more lines than that and
/// the edge did not count them, again into `more` (one slot per line, within the edge's
/// limit). When the edge did not check it (`checked` is `None`), applies the edge's checks to
/// this parse, with the edge's answers. The verdict: `Ok((length, compliant))`;
/// `Err(Some(code))`: refuse; `Err(None)`: a parse that disagrees with the edge's (not
/// expected), left to Pingora's session.
#[allow(clippy::type_complexity)]
fn parse_head<'h, 'b>(
    slots: &'h mut [httparse::Header<'b>],
    more: &'h mut Vec<httparse::Header<'b>>,
    buf: &'b [u8],
    checked: Option<HeadInfo>,
) -> (
    httparse::Request<'h, 'b>,
    Result<(usize, bool), Option<ErrorCode>>,
) {
    let mut req = httparse::Request::new(slots);
    let mut parsed = req.parse(buf);
    if checked.is_none() && matches!(parsed, Err(httparse::Error::TooManyHeaders)) {
        let lines = memchr::memchr_iter(b'\n', buf).count();
        more.resize(lines.clamp(1, MAX_HEADERS), httparse::EMPTY_HEADER);
        req = httparse::Request::new(more);
        parsed = req.parse(buf);
    }
    let verdict = match (parsed, checked) {
        (Ok(httparse::Status::Complete(n)), Some(info)) => Ok((n, info.compliant)),
        (Ok(httparse::Status::Complete(n)), None) => {
            check_parsed(buf.get(..n).unwrap_or_default(), &req)
                .map(|compliant| (n, compliant))
                .map_err(Some)
        }
        (_, Some(_)) => Err(None),
        // The edge found a blank line after a plain start, so the head is complete: these
        // are the answers its own check gives.
        (Err(httparse::Error::TooManyHeaders), None) => Err(Some(ErrorCode::HeadersTooLarge)),
        (_, None) => Err(Some(ErrorCode::BadRequest)),
    };
    (req, verdict)
}

/// The request as the shared decision modules read it, borrowed from the parse.
struct RequestParts<'a> {
    method: Method,
    raw_target: &'a str,
    target: Target<'a>,
    headers: HeaderView<'a>,
}

impl<'a> RequestParts<'a> {
    /// Borrows `req` only (not the bytes for as long as they live), so that its header slots
    /// can be given back once the last reader is done.
    fn of(req: &'a httparse::Request<'_, '_>) -> Option<RequestParts<'a>> {
        let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
        let raw_target = req.path?;
        Some(RequestParts {
            method,
            raw_target,
            target: Target::origin_form(raw_target)?,
            headers: HeaderView::Raw(req.headers),
        })
    }
}

/// The bytes a consistent-hash cluster hashes on.
fn hash_key(
    cluster: &Cluster,
    headers: HeaderView<'_>,
    admission: &Admission,
    client_ip: Option<IpAddr>,
) -> Vec<u8> {
    let ip = || match client_ip {
        Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
        Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
        None => Vec::new(),
    };
    match &cluster.hash_key {
        HashKey::ClientIp => ip(),
        HashKey::Header(name) => headers.get(name).map_or_else(ip, <[u8]>::to_vec),
        HashKey::Jwt(claim) => admission
            .identity
            .as_deref()
            .and_then(|id| id.claim_bytes(claim.as_str()))
            .map_or_else(ip, |v| v.into_owned()),
    }
}

/// Writes an answer the gateway makes itself.
#[allow(clippy::too_many_arguments)]
async fn answer(
    stream: &mut Stream,
    rt: &Runtime,
    ex: &mut Exchange,
    err: &GatewayError,
    request_id: &[u8],
    head_only: bool,
    close: bool,
    extra: &[u8],
) -> Relay {
    // After a malformed request, nothing more is read from the connection: what follows
    // might be framed differently from how this request was understood.
    let close = close || err.code == ErrorCode::BadRequest;
    let mut out = Vec::with_capacity(384);
    let id = std::str::from_utf8(request_id).unwrap_or("");
    err.write_http1(&mut out, id, head_only, close, extra);
    ex.status = err.code.status().as_u16();
    match write_client(stream, &out, rt.server.response_write_timeout).await {
        Ok(()) => Relay::Done {
            client_reusable: !close,
        },
        Err(()) => Relay::Broken,
    }
}

/// Timeouts at least this long are timed on the coarse clock ([`idle::timeouts`]), whose
/// lateness (up to two 100 ms ticks) is then at most a tenth of the timeout; shorter ones on
/// Pingora's millisecond timer wheel.
const COARSE_TIMEOUTS_FROM: Duration = Duration::from_secs(2);

/// A wait that ran out of time.
struct TimedOut;

/// `fut`, unless `timeout` passes first. On the coarse clock a future that is ready at once
/// (most writes) reads no clock, and a pending one parks in a slot instead of registering a
/// timer: Pingora's wheel read the clock twice per call and boxed a timer per wait (2% of a
/// proxied request's instructions).
async fn timed<F: std::future::Future>(timeout: Duration, fut: F) -> Result<F::Output, TimedOut> {
    if timeout >= COARSE_TIMEOUTS_FROM {
        idle::timeouts().within(timeout, fut).await.ok_or(TimedOut)
    } else {
        fast_timeout(timeout, fut).await.map_err(|_| TimedOut)
    }
}

async fn write_client(stream: &mut Stream, bytes: &[u8], timeout: Duration) -> Result<(), ()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match timed(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Connects to a backend. `Err(true)`: timed out.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, bool> {
    match timed(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) => Err(false),
        Err(_) => Err(true),
    }
}

/// Sends the request to a backend of `cluster`, with Pingora's retry rules (another backend
/// after a failed connect, within `retries`; a fresh connection when a pooled one turns out
/// closed), and relays the answer. `Err`: nothing reached the client; answer with this.
#[allow(clippy::too_many_arguments)]
async fn proxy(
    stream: &mut Stream,
    client_buf: &mut BytesMut,
    head_len: usize,
    cluster: &Cluster,
    key: &[u8],
    up_head: &[u8],
    (client_head, rbuf): (&mut Vec<u8>, &mut BytesMut),
    ans: &Answering<'_>,
    idempotent: bool,
    write_timeout: Duration,
    ex: &mut Exchange,
) -> Result<Relay, GatewayError> {
    let cfg = &cluster.config;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempts = 0u32;
    let mut retries_used = 0u32;
    let mut connect_timed_out = false;
    let mut fresh_only = false;
    let (mut up, addr, head) = loop {
        let addr = cluster.select_addr(key, &tried).map_err(|e| match e {
            SelectError::NoHealthyBackend => GatewayError::new(ErrorCode::ServiceUnavailable),
            SelectError::AllTried if connect_timed_out => {
                GatewayError::new(ErrorCode::GatewayTimeout)
            }
            SelectError::AllTried => GatewayError::new(ErrorCode::BadGateway),
        })?;
        cluster.metrics.attempts.inc();
        attempts += 1;
        if attempts > 1 {
            cluster.metrics.retries.inc();
        }
        ex.backend = Some(addr);
        let pooled = if fresh_only {
            None
        } else {
            pool::checkout(addr, cfg.pool_idle_timeout)
        };
        let reused = pooled.is_some();
        let mut up = match pooled {
            Some(s) => s,
            None => match connect(addr, cfg.connect_timeout).await {
                Ok(s) => s,
                Err(timed_out) => {
                    cluster.metrics.failure(if timed_out {
                        "connect_timeout"
                    } else {
                        "connect_refused"
                    });
                    connect_timed_out = timed_out;
                    tried.push(addr);
                    cluster.report_connect_failure(&addr);
                    if retries_used < cluster.retries {
                        retries_used += 1;
                        continue;
                    }
                    return Err(GatewayError::new(if timed_out {
                        ErrorCode::GatewayTimeout
                    } else {
                        ErrorCode::BadGateway
                    }));
                }
            },
        };
        fresh_only = false;
        rbuf.clear();
        match exchange_head(
            &mut up,
            up_head,
            rbuf,
            cfg.read_timeout,
            ans,
            client_head,
            stream,
            client_buf,
            head_len,
        )
        .await
        {
            Ok(head) => break (up, addr, head),
            Err(HeadError::ClientGone) => {
                // Nobody to answer; the upstream connection is dropped mid-exchange.
                ex.status = 499;
                return Ok(Relay::Broken);
            }
            Err(HeadError::Lost) => {
                cluster.metrics.failure("connection_lost");
                if !idempotent {
                    return Err(GatewayError::new(ErrorCode::BadGateway));
                }
                if reused {
                    // A pooled connection the backend had closed: Pingora's rule, again on
                    // a fresh connection, outside the retry budget.
                    fresh_only = true;
                    continue;
                }
                // The backend dropped the connection before answering.
                tried.push(addr);
                cluster.report_connect_failure(&addr);
                if retries_used < cluster.retries {
                    retries_used += 1;
                    continue;
                }
                return Err(GatewayError::new(ErrorCode::BadGateway));
            }
            Err(HeadError::Truncated) => {
                cluster.metrics.failure("connection_lost");
                return Err(GatewayError::new(ErrorCode::BadGateway));
            }
            Err(HeadError::Timeout) => {
                cluster.metrics.failure("timeout");
                return Err(GatewayError::new(ErrorCode::GatewayTimeout));
            }
            Err(HeadError::Bad(BadResponse::TooLarge)) => {
                cluster.metrics.failure("bad_response");
                return Err(GatewayError::with_message(
                    ErrorCode::BadGateway,
                    "the upstream answered with oversized headers",
                ));
            }
            Err(HeadError::Bad(BadResponse::Malformed)) => {
                cluster.metrics.failure("bad_response");
                return Err(GatewayError::new(ErrorCode::BadGateway));
            }
        }
    };
    ex.status = head.status;
    rbuf.advance(head.len);
    let relay = relay_body(
        &mut up,
        stream,
        rbuf,
        client_head,
        head.framing,
        (cfg.read_timeout, write_timeout),
        ex,
        ans.close,
    )
    .await;
    if let (Some(true), true) = (relay.upstream_clean, head.reusable) {
        pool::checkin(addr, up, cfg.pool_idle_timeout);
    }
    Ok(relay.relay)
}

/// Sends the request head and reads the response head into `rbuf`, skipping 1xx answers;
/// meanwhile watches the client, keeping what it sends (a pipelined request) in
/// `client_buf` after the current head, up to the head limit.
#[allow(clippy::too_many_arguments)]
async fn exchange_head(
    up: &mut TcpStream,
    up_head: &[u8],
    rbuf: &mut BytesMut,
    read_timeout: Duration,
    ans: &Answering<'_>,
    client_head: &mut Vec<u8>,
    client: &mut Stream,
    client_buf: &mut BytesMut,
    head_len: usize,
) -> Result<wire::ResponseHead, HeadError> {
    match timed(read_timeout, up.write_all(up_head)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(HeadError::Lost),
        Err(_) => return Err(HeadError::Timeout),
    }
    let mut received = 0usize;
    loop {
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(4096);
        }
        let read = tokio::select! {
            biased;
            r = timed(read_timeout, up.read_buf(rbuf)) => r,
            () = client_gone(client, client_buf, head_len) => return Err(HeadError::ClientGone),
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) if received == 0 => return Err(HeadError::Lost),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(HeadError::Truncated),
            Ok(Ok(n)) => received += n,
            Err(_) => return Err(HeadError::Timeout),
        }
        loop {
            match wire::parse_response(rbuf, ans, client_head) {
                Ok(Some(head)) if (100..200).contains(&head.status) => {
                    rbuf.advance(head.len);
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => break,
                Err(bad) => return Err(HeadError::Bad(bad)),
            }
        }
    }
}

/// Resolves when the client has closed (or failed); bytes it sends meanwhile are kept in
/// `buf` behind the current request's head, as long as they fit in the head limit. Costs no
/// system call until the client's socket turns readable.
async fn client_gone(client: &mut Stream, buf: &mut BytesMut, head_len: usize) {
    // The edge bounds heads far below this; beyond it the client is just not watched.
    const MAX_KEPT: usize = 64 * 1024;
    loop {
        if buf.len() >= head_len + MAX_KEPT {
            std::future::pending::<()>().await;
        }
        if crate::edge::readable(client).await.is_err() {
            return;
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(2048);
        }
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

struct RelayOutcome {
    relay: Relay,
    /// `Some(true)`: the response ended exactly where its framing said, nothing followed.
    upstream_clean: Option<bool>,
}

/// Relays the response body after its head (`client_head`), per its framing. Small bodies
/// leave in the same write as the head.
#[allow(clippy::too_many_arguments)]
async fn relay_body(
    up: &mut TcpStream,
    client: &mut Stream,
    rbuf: &mut BytesMut,
    client_head: &mut Vec<u8>,
    framing: Framing,
    (read_timeout, write_timeout): (Duration, Duration),
    ex: &mut Exchange,
    close: bool,
) -> RelayOutcome {
    let broken = RelayOutcome {
        relay: Relay::Broken,
        upstream_clean: None,
    };
    let done = |clean: bool, client_reusable: bool| RelayOutcome {
        relay: Relay::Done { client_reusable },
        upstream_clean: Some(clean),
    };
    match framing {
        Framing::Empty => {
            if write_client(client, client_head, write_timeout)
                .await
                .is_err()
            {
                return broken;
            }
            done(rbuf.is_empty(), !close)
        }
        Framing::Length(total) => {
            let mut left = total;
            let first = usize::try_from(left).unwrap_or(usize::MAX).min(rbuf.len());
            let excess = rbuf.len() > first;
            if client_head.len() + first <= COALESCE_BYTES + 1024 {
                client_head.extend_from_slice(&rbuf[..first]);
                if write_client(client, client_head, write_timeout)
                    .await
                    .is_err()
                {
                    return broken;
                }
            } else if write_client(client, client_head, write_timeout)
                .await
                .is_err()
                || write_client(client, &rbuf[..first], write_timeout)
                    .await
                    .is_err()
            {
                return broken;
            }
            left -= first as u64;
            ex.bytes_out += first as u64;
            while left > 0 {
                rbuf.clear();
                rbuf.reserve(BODY_CHUNK);
                match timed(read_timeout, up.read_buf(rbuf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    // Ended early or stalled: the client sees a cut-off body and a close.
                    _ => return broken,
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(rbuf.len());
                if rbuf.len() > take {
                    // More than the length said: never relayed, and never reused.
                    if write_client(client, &rbuf[..take], write_timeout)
                        .await
                        .is_err()
                    {
                        return broken;
                    }
                    ex.bytes_out += take as u64;
                    return done(false, !close);
                }
                if write_client(client, &rbuf[..take], write_timeout)
                    .await
                    .is_err()
                {
                    return broken;
                }
                left -= take as u64;
                ex.bytes_out += take as u64;
            }
            done(!excess, !close)
        }
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let Ok(used) = scanner.scan(rbuf) else {
                // As if the bad chunk had come later: the head goes out, then the cut.
                let _ = write_client(client, client_head, write_timeout).await;
                return broken;
            };
            let mut excess = scanner.is_done() && used < rbuf.len();
            client_head.extend_from_slice(&rbuf[..used]);
            if write_client(client, client_head, write_timeout)
                .await
                .is_err()
            {
                return broken;
            }
            ex.bytes_out += used as u64;
            while !scanner.is_done() {
                rbuf.clear();
                rbuf.reserve(BODY_CHUNK);
                match timed(read_timeout, up.read_buf(rbuf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return broken,
                }
                let Ok(used) = scanner.scan(rbuf) else {
                    return broken;
                };
                excess = used < rbuf.len();
                if write_client(client, &rbuf[..used], write_timeout)
                    .await
                    .is_err()
                {
                    return broken;
                }
                ex.bytes_out += used as u64;
            }
            done(!excess, !close)
        }
        Framing::UntilClose => {
            client_head.extend_from_slice(rbuf);
            ex.bytes_out += rbuf.len() as u64;
            if write_client(client, client_head, write_timeout)
                .await
                .is_err()
            {
                return broken;
            }
            loop {
                rbuf.clear();
                rbuf.reserve(BODY_CHUNK);
                match timed(read_timeout, up.read_buf(rbuf)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => {}
                    _ => return broken,
                }
                if write_client(client, rbuf, write_timeout).await.is_err() {
                    return broken;
                }
                ex.bytes_out += rbuf.len() as u64;
            }
            // The body ended with the connection: so does the client's.
            done(false, false)
        }
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;
    use crate::edge::{check_head, plain_head_end};

    /// The one parse of a head the edge did not check answers exactly as the edge's check
    /// would have: thousands of generated heads, plain and hostile (bare LFs, duplicate and
    /// look-alike framing headers, control and high bytes, too many lines), each followed
    /// by nothing, a body, or a pipelined request.
    #[test]
    fn the_one_parse_answers_as_the_edge_check_would() {
        const METHODS: &[&str] = &["GET", "POST", "HEAD", "G@T", "OPTIONS"];
        const TARGETS: &[&str] = &["/", "/a?b=c", "*", "/\u{e9}", "/a\x01b", "http://h/x"];
        const VERSIONS: &[&str] = &[" HTTP/1.1", " HTTP/1.0", " HTTP/2.0", "  HTTP/1.1", ""];
        const LINES: &[&str] = &[
            "Host: a",
            "Content-Length: 5",
            "Content-Length: 5, 5",
            "content-length: 6",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip, chunked",
            "Transfer_Encoding: chunked",
            " Host: folded",
            "Bad Header: x",
            "X-A: caf\u{e9}",
            "X-B: a\x01b",
            "X-C:",
            "Connection: close",
            "Expect: 100-continue",
        ];
        const ENDINGS: &[&str] = &["\r\n", "\r\n", "\r\n", "\n"];
        const AFTER: &[&str] = &["", "hello", "GET /next HTTP/1.1\r\n\r\n"];
        let mut rng = crate::test_rng::Xorshift(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| rng.below(n);
        let (mut plain, mut served) = (0, 0);
        for round in 0..20_000 {
            let mut head = String::new();
            // Mostly plain pieces (the first of each list), sometimes any.
            let mut pick = |list: &[&'static str]| {
                let any = next(3) == 0;
                list[if any { next(list.len()) } else { 0 }]
            };
            head.push_str(pick(METHODS));
            head.push(' ');
            head.push_str(pick(TARGETS));
            head.push_str(pick(VERSIONS));
            head.push_str(pick(ENDINGS));
            if round % 500 == 0 {
                // Lines beyond the limit (and, every other time, exactly at it).
                let n = if round % 1000 == 0 {
                    MAX_HEADERS
                } else {
                    MAX_HEADERS + 1
                };
                head.push_str(&"X-N: v\r\n".repeat(n));
            } else if round % 500 == 250 {
                // More than the first parse's slots: the second parse.
                head.push_str(&"X-N: v\r\n".repeat(FEW_REQUEST_HEADERS));
            }
            for _ in 0..round % 5 {
                head.push_str(pick(LINES));
                head.push_str(pick(ENDINGS));
            }
            head.push_str("\r\n");
            head.push_str(pick(AFTER));
            let buf = head.as_bytes();
            let max = 8192;
            let Some(end) = plain_head_end(buf) else {
                continue;
            };
            if end > max {
                continue;
            }
            plain += 1;
            let expected = check_head(buf, max);
            let mut slots = vec![httparse::EMPTY_HEADER; header_slots_for(None)];
            let mut more = Vec::new();
            let (req, actual) = parse_head(&mut slots, &mut more, buf, None);
            match (&expected, &actual) {
                (Ok(Some(info)), Ok((_, compliant))) => {
                    assert_eq!(info.compliant, *compliant, "{head:?}");
                    assert_eq!(info.headers, req.headers.len(), "{head:?}");
                    served += 1;
                }
                (Err(code), Err(Some(refused))) => assert_eq!(code, refused, "{head:?}"),
                _ => panic!("{head:?}: edge {expected:?}, one parse {actual:?}"),
            }
        }
        // The corpus reaches both sides.
        assert!(
            plain > 10_000 && served > 2_000 && plain - served > 2_000,
            "{plain} {served}"
        );
    }
}

/// Release builds only (`make test`): a debug build keeps more locals in a future.
#[cfg(all(test, not(debug_assertions)))]
mod tests {
    use super::*;
    use crate::runtime::{Runtime, SharedRuntime};

    /// Each request's future is boxed (see `edge`), and a box is filled by copying the whole
    /// future: rare paths with large futures (a JWKS fetch, a Redis round trip) are boxed
    /// where they are awaited, so that the common request does not copy their size. They
    /// once made this future 12.7 KB, a 2% memcpy in the chain's profile.
    #[tokio::test]
    async fn a_request_future_stays_small() {
        let cfg = crate::config::parse(
            "upstreams:\n  u: { backends: [\"127.0.0.1:9\"] }\nroutes:\n  - { name: a, match: { path: /a }, upstream: u }\n",
        )
        .unwrap();
        let shared = Arc::new(SharedRuntime::new(
            Runtime::build(&cfg, None, None).unwrap(),
        ));
        let lean = LeanProxy::new(shared, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let mut stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(
            listener.accept().await.unwrap().0,
        ));
        let mut buf = BytesMut::new();
        let size = std::mem::size_of_val(&lean.serve(&mut stream, &mut buf, None, false, None));
        assert!(size <= 3072, "the lean request future grew to {size} bytes");
    }
}
