//! Serving a composite route: the request's values for part templates, the headers every
//! part carries, and the answer written back.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::{headers, Gateway, RequestCtx};
use crate::aggregate::template::{Source, Values};
use crate::aggregate::{Aggregate, PartError};
use crate::auth::Identity;
use crate::config::HashKey;
use crate::respond::{ErrorCode, GatewayError};

/// Placeholder values of one request.
pub struct RequestValues<'a> {
    pub params: &'a [(Box<str>, String)],
    pub req: &'a RequestHeader,
    pub identity: Option<&'a Identity>,
}

impl Values for RequestValues<'_> {
    fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
        match source {
            // Path values are segments of the normalised path, still percent-encoded: decode,
            // the template encodes again.
            Source::Path => self
                .params
                .iter()
                .find(|(n, _)| &**n == name)
                .map(|(_, v)| percent_decode(v)),
            Source::Query => query_value(self.req.uri.query()?, name),
            Source::Header => self
                .req
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
            Source::Jwt => self.identity?.claim_bytes(name).map(|b| match b {
                Cow::Borrowed(b) => String::from_utf8_lossy(b),
                Cow::Owned(b) => Cow::Owned(String::from_utf8_lossy(&b).into_owned()),
            }),
        }
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` stays a `+`).
fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let decoded = crate::routing::normalize::percent_decode_bytes(s.as_bytes());
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

impl Gateway {
    /// Runs a composite route and writes its answer.
    pub(super) async fn serve_composite(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        aggregate: &Arc<Aggregate>,
        params: Vec<(Box<str>, String)>,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let id = ctx.request_id().clone();
        let part_headers = Arc::new(self.part_headers(
            session.req_header(),
            client_ip,
            &id,
            ctx.identity.as_deref(),
        ));
        let key_for = |hash_key: &HashKey| -> Vec<u8> {
            let header_or_claim = match hash_key {
                HashKey::Header(name) => session
                    .req_header()
                    .headers
                    .get(name)
                    .map(|v| v.as_bytes().to_vec()),
                HashKey::Jwt(claim) => ctx
                    .identity
                    .as_deref()
                    .and_then(|id| id.claim_bytes(claim))
                    .map(|c| c.into_owned()),
                HashKey::ClientIp => None,
            };
            header_or_claim.unwrap_or_else(|| match client_ip {
                Some(std::net::IpAddr::V4(a)) => a.octets().to_vec(),
                Some(std::net::IpAddr::V6(a)) => a.octets().to_vec(),
                None => Vec::new(),
            })
        };
        let outcome = {
            let values = RequestValues {
                params: &params,
                req: session.req_header(),
                identity: ctx.identity.as_deref(),
            };
            aggregate
                .run(&ctx.runtime.sub_client, &values, part_headers, &key_for)
                .await
        };
        let stitched = match outcome {
            Ok(s) => s,
            Err(failed) => {
                let code = if failed.error == PartError::Timeout {
                    ErrorCode::GatewayTimeout
                } else {
                    ErrorCode::BadGateway
                };
                let message = format!("part \"{}\" failed: {}", failed.part, failed.error.reason());
                return self
                    .respond(session, ctx, &GatewayError::with_message(code, message))
                    .await;
            }
        };
        let mut resp = ResponseHeader::build(200, Some(6))?;
        resp.insert_header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )?;
        resp.insert_header(http::header::CONTENT_LENGTH, stitched.body.len())?;
        resp.insert_header("x-request-id", id)?;
        if !stitched.failed.is_empty() {
            resp.insert_header("x-aggregate-failed", stitched.failed.join(","))?;
        }
        self.write_answer(session, ctx, resp, bytes::Bytes::from(stitched.body))
            .await
    }

    /// What every part carries: the request id, the forwarding headers, the identity.
    fn part_headers(
        &self,
        req: &RequestHeader,
        client_ip: Option<std::net::IpAddr>,
        id: &HeaderValue,
        identity: Option<&Identity>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        if let Some(h) = req.headers.get(http::header::HOST) {
            out.push((http::header::HOST, h.clone()));
            out.push((HeaderName::from_static("x-forwarded-host"), h.clone()));
        }
        out.push((headers::X_REQUEST_ID, id.clone()));
        out.push((
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        ));
        if let Some(v) = headers::forwarded_for(req, client_ip) {
            out.push((headers::X_FORWARDED_FOR, v));
        }
        if let Some(identity) = identity {
            out.extend(identity.headers.iter().cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value("a=1&limit=10", "limit").as_deref(), Some("10"));
        assert_eq!(query_value("q=a%2Fb%20c", "q").as_deref(), Some("a/b c"));
        assert_eq!(query_value("flag&x=1", "flag").as_deref(), Some(""));
        assert_eq!(query_value("x=1", "y"), None);
        assert_eq!(query_value("q=%zz", "q").as_deref(), Some("%zz"));
    }
}
