//! Fetching a JWKS document over HTTP(S) with Pingora's own client connector, and the
//! background service that refreshes the keys every `jwks_refresh`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::connectors::http::Connector;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;

use super::keys::MAX_JWKS_BYTES;
use crate::runtime::SharedRuntime;

/// Fetches `url` and returns its body. Every step is bounded by `timeout`.
pub async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    tokio::time::timeout(timeout, fetch_inner(url, timeout))
        .await
        .map_err(|_| format!("fetching {url} took longer than {timeout:?}"))?
}

async fn fetch_inner(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or_else(|| format!("no host in {url}"))?;
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    let mut peer = HttpPeer::new(
        addr,
        tls,
        if tls { host.to_string() } else { String::new() },
    );
    peer.options.connection_timeout = Some(timeout);
    peer.options.total_connection_timeout = Some(timeout);
    peer.options.read_timeout = Some(timeout);
    peer.options.write_timeout = Some(timeout);
    let connector = Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req =
        RequestHeader::build("GET", target.as_bytes(), None).map_err(|e| e.to_string())?;
    let authority = uri.authority().map_or(host, |a| a.as_str());
    req.insert_header("Host", authority)
        .map_err(|e| e.to_string())?;
    req.insert_header("Accept", "application/json")
        .map_err(|e| e.to_string())?;
    req.insert_header("User-Agent", "portcullis-jwks")
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| e.to_string())?;
    session
        .finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    session
        .read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    if status != 200 {
        return Err(format!("{url} answered {status}"));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.to_string())?
    {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("{url} sent more than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.to_vec())
}

/// Refreshes the current runtime's keys every `jwks_refresh` until shutdown. A reload
/// restarts the wait with the new authenticator's interval.
pub struct JwksRefresh {
    pub shared: Arc<SharedRuntime>,
}

#[async_trait]
impl BackgroundService for JwksRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reloads = self.shared.subscribe();
        loop {
            let auth = self.shared.load().auth.clone().filter(|a| {
                let c = a.config();
                c.jwks_url.is_some() || c.jwks_file.is_some()
            });
            let every = auth
                .as_ref()
                .map_or(Duration::from_secs(3600), |a| a.config().jwks_refresh);
            tokio::select! {
                _ = tokio::time::sleep(every), if auth.is_some() => {}
                changed = reloads.changed() => {
                    if changed.is_err() { return }
                    continue;
                }
                _ = shutdown.changed() => return,
            }
            if let Some(auth) = auth {
                if let Err(e) = auth.refresh().await {
                    log::warn!("JWKS refresh failed, keeping the last good keys: {e}");
                }
            }
        }
    }
}
