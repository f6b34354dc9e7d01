//! The sub-request client: one GET to a cluster, through the same balancing, health state,
//! passive ejection and retry-on-connect-failure rules as proxied requests, on pooled
//! keep-alive connections (Pingora's own `Connector`).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::Peer;
use pingora_error::ErrorType;
use pingora_http::RequestHeader;

use super::PartError;
use crate::upstream::{Cluster, SelectError};

pub struct SubClient {
    connector: Connector,
}

impl Default for SubClient {
    fn default() -> Self {
        SubClient {
            connector: Connector::new(None),
        }
    }
}

impl SubClient {
    /// GETs `target` from `cluster` and returns the body of a 2xx answer (at most `max_bytes`).
    pub async fn get(
        &self,
        cluster: &Cluster,
        key: &[u8],
        target: &str,
        headers: &[(HeaderName, HeaderValue)],
        max_bytes: usize,
    ) -> Result<Bytes, PartError> {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries_left = cluster.retries;
        let mut timed_out = false;
        loop {
            let peer = cluster.select(key, &tried).map_err(|e| match e {
                SelectError::NoHealthyBackend => PartError::Unavailable,
                SelectError::AllTried if timed_out => PartError::Timeout,
                SelectError::AllTried => PartError::Connect,
            })?;
            let addr = peer.address().as_inet().copied();
            cluster.metrics.attempts.inc();
            let (mut session, _reused) = match self.connector.get_http_session(&peer).await {
                Ok(s) => s,
                Err(e) => {
                    timed_out = matches!(e.etype(), ErrorType::ConnectTimedout);
                    cluster.metrics.failure(crate::upstream::failure_reason(&e));
                    if let Some(a) = addr {
                        tried.push(a);
                        cluster.report_connect_failure(&a);
                    }
                    if retries_left > 0 {
                        retries_left -= 1;
                        cluster.metrics.retries.inc();
                        continue;
                    }
                    return Err(if timed_out {
                        PartError::Timeout
                    } else {
                        PartError::Connect
                    });
                }
            };
            let mut req = RequestHeader::build("GET", target.as_bytes(), Some(headers.len() + 1))
                .map_err(|_| PartError::Upstream)?;
            for (name, value) in headers {
                req.insert_header(name.clone(), value.clone())
                    .map_err(|_| PartError::Upstream)?;
            }
            req.insert_header("accept", "application/json")
                .map_err(|_| PartError::Upstream)?;
            if !req.headers.contains_key(http::header::HOST) {
                // An HTTP/1.0 client may send no Host; an HTTP/1.1 request needs one.
                if let Some(a) = addr {
                    req.insert_header(http::header::HOST, a.to_string())
                        .map_err(|_| PartError::Upstream)?;
                }
            }
            let exchange = async {
                session.write_request_header(Box::new(req)).await?;
                session.finish_request_body().await?;
                session.read_response_header().await?;
                Ok::<_, Box<pingora_error::Error>>(())
            };
            if let Err(e) = exchange.await {
                cluster.metrics.failure(crate::upstream::failure_reason(&e));
                return Err(match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => PartError::Timeout,
                    _ => PartError::Upstream,
                });
            }
            let status = session.response_header().map_or(0, |h| h.status.as_u16());
            if !(200..300).contains(&status) {
                return Err(PartError::Status(status));
            }
            let mut body = BytesMut::new();
            loop {
                match session.read_response_body().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > max_bytes {
                            return Err(PartError::TooLarge);
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        cluster.metrics.failure(crate::upstream::failure_reason(&e));
                        return Err(match e.etype() {
                            ErrorType::ReadTimedout => PartError::Timeout,
                            _ => PartError::Upstream,
                        });
                    }
                }
            }
            // A complete, clean exchange: the connection goes back to the pool.
            self.connector
                .release_http_session(session, &peer, peer.options.idle_timeout)
                .await;
            return Ok(body.freeze());
        }
    }
}
