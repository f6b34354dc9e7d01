//! The `ProxyHttp` implementation: the conductor. Each phase asks a module for a decision and
//! carries it out; only this module writes to the session.

pub mod admit;
mod composite;
pub mod h1;
pub mod headers;
pub mod plan;
mod scratch;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::auth::Identity;
use crate::config::HashKey;
use crate::observability::metrics::NO_ROUTE;
use crate::observability::{
    metrics, AccessLog, AccessRecord, AuthOutcome, RateOutcome, RouteMetrics,
};
use crate::ratelimit::RouteVerdict;
use crate::request::HeaderView;
use crate::respond::{ErrorCode, GatewayError};
use crate::routing::RouteId;
use crate::runtime::{RouteTarget, Runtime, SharedRuntime};
use crate::upstream::{failure_reason, SelectError};

/// Counts a request in `portcullis_requests_in_flight` for as long as it lives (both
/// conductors).
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        metrics().in_flight().inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight().dec();
    }
}

/// Per-request state.
pub struct RequestCtx {
    /// The runtime current when the request arrived; it serves the request to its end.
    runtime: Arc<Runtime>,
    started: Instant,
    _in_flight: InFlight,
    /// The backend of the last attempt, for the access log.
    backend: Option<SocketAddr>,
    auth: AuthOutcome,
    rate: RateOutcome,
    request_id: Option<HeaderValue>,
    route: Option<RouteId>,
    upstream_target: Option<String>,
    /// Backends this request failed to connect to.
    tried: Vec<SocketAddr>,
    /// Upstream attempts so far; every one after the first is a retry.
    attempts: u32,
    connect_retries: u32,
    /// Whether the last failed connect timed out (504) rather than was refused (502).
    connect_timed_out: bool,
    body_bytes: u64,
    /// The verified token's identity, when the route authenticated one.
    identity: Option<Arc<Identity>>,
    /// The route's rate-limit verdict, for the RateLimit-* response headers.
    rate_verdict: Option<RouteVerdict>,
    /// A decision already made about how this request fails, when the error alone is not enough.
    failure: Option<GatewayError>,
}

impl RequestCtx {
    fn request_id(&mut self) -> &HeaderValue {
        self.request_id.get_or_insert_with(headers::new_request_id)
    }
}

pub struct Gateway {
    shared: Arc<SharedRuntime>,
    access_log: Option<Arc<AccessLog>>,
    /// Metrics of requests answered before a route was chosen (404, 405, 400).
    unrouted: RouteMetrics,
}

impl Gateway {
    pub fn new(shared: Arc<SharedRuntime>, access_log: Option<Arc<AccessLog>>) -> Self {
        Gateway {
            shared,
            access_log,
            unrouted: metrics().route(NO_ROUTE),
        }
    }

    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        err: &GatewayError,
    ) -> Result<()> {
        let id = ctx.request_id().clone();
        let body = err.body(id.to_str().unwrap_or(""));
        let head = err.header(&id, body.len(), false);
        self.write_answer(session, ctx, head, body).await
    }

    /// Writes a complete answer the gateway made itself; HEAD gets the header only.
    async fn write_answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        mut head: ResponseHeader,
        body: Bytes,
    ) -> Result<()> {
        self.add_rate_headers(ctx, &mut head)?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(head), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// The RateLimit-* headers, on every answer of a limited route.
    fn add_rate_headers(&self, ctx: &RequestCtx, resp: &mut ResponseHeader) -> Result<()> {
        if let Some(v) = &ctx.rate_verdict {
            for (name, value) in ctx.runtime.rate_limits.headers(v) {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            runtime: self.shared.load_full(),
            started: Instant::now(),
            _in_flight: InFlight::new(),
            backend: None,
            auth: AuthOutcome::NotChecked,
            rate: RateOutcome::NotChecked,
            request_id: None,
            route: None,
            upstream_target: None,
            tried: Vec::new(),
            attempts: 0,
            connect_retries: 0,
            connect_timed_out: false,
            body_bytes: 0,
            identity: None,
            rate_verdict: None,
            failure: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.request_id = Some(headers::request_id(session.req_header()));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let runtime = ctx.runtime.clone();
        // Slow clients: each body read waits at most request_body_timeout (and the whole body
        // gets that long, see request_body_filter); each response write response_write_timeout.
        // An upgraded connection (WebSocket) is a long-lived tunnel, not a body: no deadline.
        if !is_tunnel_request(session) {
            session.set_read_timeout(Some(runtime.server.request_body_timeout));
        }
        session.set_write_timeout(Some(runtime.server.response_write_timeout));
        let p = match plan::plan(&runtime, session.req_header()) {
            Ok(p) => p,
            Err(e) => {
                self.respond(session, ctx, &e).await?;
                return Ok(true);
            }
        };
        ctx.route = Some(p.route);
        ctx.upstream_target = p.upstream_target;
        let params = p.params;
        let route = &runtime.routes[p.route];
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        let admission = admit::admit(
            &runtime,
            route,
            &req.method,
            HeaderView::Map(&req.headers),
            client_ip,
        )
        .await;
        ctx.auth = admission.auth;
        ctx.identity = admission.identity;
        ctx.rate = admission.rate;
        ctx.rate_verdict = admission.rate_verdict;
        if let Some(refusal) = admission.refusal {
            self.respond(session, ctx, &refusal).await?;
            return Ok(true);
        }
        if let RouteTarget::Aggregate(aggregate) = &route.target {
            self.serve_composite(session, ctx, aggregate, params)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if body.is_some()
            && ctx.started.elapsed() > ctx.runtime.server.request_body_timeout
            && !is_tunnel_request(session)
        {
            // A client trickling its body just fast enough to beat the per-read timeout.
            ctx.failure = Some(GatewayError::new(ErrorCode::RequestTimeout));
            return Error::e_explain(
                ErrorType::HTTPStatus(408),
                "request body slower than request_body_timeout",
            );
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > ctx.runtime.server.max_request_body_bytes {
                ctx.failure = Some(GatewayError::new(ErrorCode::PayloadTooLarge));
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over max_request_body_bytes",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(route) = ctx.route else {
            return Error::e_explain(ErrorType::InternalError, "no route chosen");
        };
        let Some(cluster) = ctx.runtime.cluster_for(route) else {
            return Error::e_explain(
                ErrorType::InternalError,
                "a composite route has no upstream",
            );
        };
        let mut ip_buf = [0u8; 16];
        let jwt_key;
        let key: &[u8] = match &cluster.hash_key {
            HashKey::Header(name) => match session.req_header().headers.get(name) {
                Some(v) => v.as_bytes(),
                None => client_ip_key(session, &mut ip_buf),
            },
            HashKey::ClientIp => client_ip_key(session, &mut ip_buf),
            HashKey::Jwt(claim) => {
                match ctx
                    .identity
                    .as_deref()
                    .and_then(|id| id.claim_bytes(claim.as_str()))
                {
                    Some(v) => {
                        jwt_key = v;
                        &jwt_key
                    }
                    None => client_ip_key(session, &mut ip_buf),
                }
            }
        };
        match cluster.select(key, &ctx.tried) {
            Ok(peer) => {
                cluster.metrics.attempts.inc();
                ctx.attempts += 1;
                if ctx.attempts > 1 {
                    // Counted here, where a retry really happens (Pingora may stop short).
                    cluster.metrics.retries.inc();
                }
                ctx.backend = peer.address().as_inet().copied();
                Ok(Box::new(peer))
            }
            Err(SelectError::NoHealthyBackend) => {
                ctx.failure = Some(GatewayError::new(ErrorCode::ServiceUnavailable));
                Error::e_explain(ErrorType::HTTPStatus(503), "no healthy backend")
            }
            Err(SelectError::AllTried) if ctx.connect_timed_out => {
                ctx.failure = Some(GatewayError::new(ErrorCode::GatewayTimeout));
                Error::e_explain(
                    ErrorType::HTTPStatus(504),
                    "every healthy backend timed out",
                )
            }
            Err(SelectError::AllTried) => {
                ctx.failure = Some(GatewayError::new(ErrorCode::BadGateway));
                Error::e_explain(ErrorType::HTTPStatus(502), "every healthy backend refused")
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(route) = ctx.route else { return e };
        let Some(cluster) = ctx.runtime.cluster_for(route) else {
            return e;
        };
        cluster.metrics.failure(failure_reason(&e));
        ctx.connect_timed_out = matches!(e.etype(), ErrorType::ConnectTimedout);
        if let Some(addr) = peer.address().as_inet() {
            ctx.tried.push(*addr);
            cluster.report_connect_failure(addr);
        }
        // Nothing was sent, so any method may go to another backend.
        if ctx.connect_retries < cluster.retries {
            ctx.connect_retries += 1;
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer {peer}"));
        let cluster = ctx.route.and_then(|r| ctx.runtime.cluster_for(r));
        if let (Some(cluster), ErrorSource::Upstream) = (cluster, e.esource()) {
            cluster.metrics.failure(failure_reason(&e));
        }
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        if !replayable {
            e.set_retry(false);
            return e;
        }
        // A pooled connection the backend had already closed: Pingora's own rule.
        e.retry.decide_reuse(client_reused);
        if e.retry() {
            return e;
        }
        // The backend dropped the connection before answering (it crashed or was killed):
        // an idempotent request goes to another backend, within the same `retries` budget.
        let dropped = e.esource() == &ErrorSource::Upstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            );
        if let (true, Some(cluster)) = (dropped, cluster) {
            if ctx.connect_retries < cluster.retries {
                if let Some(addr) = peer.address().as_inet() {
                    ctx.tried.push(*addr);
                    cluster.report_connect_failure(addr);
                }
                ctx.connect_retries += 1;
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .cloned();
        let id = ctx.request_id().clone();
        headers::prepare_upstream_request(upstream_request, client_ip, &id, host.as_ref());
        if let Some(auth) = &ctx.runtime.auth {
            // Identity headers come from the gateway only: client-sent copies go, on every route.
            for name in auth.identity_header_names() {
                upstream_request.remove_header(name);
            }
            if let Some(identity) = &ctx.identity {
                for (name, value) in &identity.headers {
                    upstream_request.insert_header(name.clone(), value.clone())?;
                }
            }
        }
        if let Some(target) = ctx.upstream_target.take() {
            let uri = target.parse::<http::Uri>().map_err(|_| {
                Error::explain(ErrorType::InternalError, "rewritten target is not a URI")
            })?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if headers::header_bytes(upstream_response) > headers::MAX_UPSTREAM_HEADER_BYTES {
            // Refused before anything reaches the client; the connection is not reused.
            ctx.failure = Some(GatewayError::with_message(
                ErrorCode::BadGateway,
                "the upstream answered with oversized headers",
            ));
            return Error::e_explain(ErrorType::HTTPStatus(502), "upstream header too large");
        }
        let id = ctx.request_id().clone();
        headers::prepare_response(upstream_response, &id);
        self.add_rate_headers(ctx, upstream_response)?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let elapsed = ctx.started.elapsed();
        let status = match session.response_written() {
            Some(resp) => resp.status.as_u16(),
            // Nothing was sent: the client went away first (499, as nginx logs it).
            None => e
                .and_then(classify)
                .map_or(499, |err| err.code.status().as_u16()),
        };
        let route = ctx.route.and_then(|r| ctx.runtime.routes.get(r));
        if let Some(route) = route {
            route
                .metrics
                .observe(&session.req_header().method, status, elapsed.as_secs_f64());
        } else {
            self.unrouted
                .observe(&session.req_header().method, status, elapsed.as_secs_f64());
        }
        let Some(log) = &self.access_log else { return };
        let req = session.req_header();
        log.record(AccessRecord {
            time: SystemTime::now(),
            request_id: ctx.request_id.clone(),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            method: req.method.clone(),
            uri: req.uri.clone(),
            route: route.map(|r| r.name.clone()),
            upstream: ctx
                .route
                .and_then(|r| ctx.runtime.cluster_for(r))
                .map(|c| c.name.clone()),
            backend: ctx.backend,
            status,
            duration: elapsed,
            bytes_in: session.body_bytes_read() as u64,
            bytes_out: session.body_bytes_sent() as u64,
            rate_limit: ctx.rate,
            auth: ctx.auth,
        });
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // A client that goes away mid-request is routine at the edge, not an error worth a line.
        error.esource() == &ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed
            )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // The upstream timed out waiting while the client was still sending its body: the
        // client was slow, not the upstream.
        if e.esource() == &ErrorSource::Upstream
            && matches!(e.etype(), ErrorType::ReadTimedout)
            && !session.as_mut().is_body_done()
            && ctx.failure.is_none()
        {
            ctx.failure = Some(GatewayError::new(ErrorCode::RequestTimeout));
        }
        let Some(err) = ctx.failure.take().or_else(|| classify(e)) else {
            // The client is gone; there is nobody to answer.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let status = err.code.status().as_u16();
        if session.response_written().is_none() {
            if let Err(write_err) = self.respond(session, ctx, &err).await {
                log::debug!("could not send error response: {write_err}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// A protocol upgrade (WebSocket): a GET, which the edge only admits without a body, so what
/// follows it is the tunnel, never a request body that escapes the body deadline.
fn is_tunnel_request(session: &Session) -> bool {
    session.req_header().method == http::Method::GET && session.is_upgrade_req()
}

/// The client IP's bytes, for hashing.
fn client_ip_key<'b>(session: &Session, buf: &'b mut [u8; 16]) -> &'b [u8] {
    match session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
    {
        Some(std::net::IpAddr::V4(v4)) => {
            buf[..4].copy_from_slice(&v4.octets());
            &buf[..4]
        }
        Some(std::net::IpAddr::V6(v6)) => {
            *buf = v6.octets();
            &buf[..]
        }
        None => &buf[..0],
    }
}

/// Maps a proxy error to the answer the client gets; `None` when the client itself failed.
pub fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    let code = match e.etype() {
        HTTPStatus(413) => ErrorCode::PayloadTooLarge,
        HTTPStatus(408) => ErrorCode::RequestTimeout,
        HTTPStatus(503) => ErrorCode::ServiceUnavailable,
        HTTPStatus(504) => ErrorCode::GatewayTimeout,
        HTTPStatus(400) => ErrorCode::BadRequest,
        HTTPStatus(_) => ErrorCode::BadGateway,
        _ => match e.esource() {
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed | WriteTimedout => return None,
                ReadTimedout => ErrorCode::RequestTimeout,
                _ => ErrorCode::BadRequest,
            },
            _ => match e.etype() {
                ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                    ErrorCode::GatewayTimeout
                }
                _ => ErrorCode::BadGateway,
            },
        },
    };
    Some(GatewayError::new(code))
}
