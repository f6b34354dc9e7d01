//! The request-phase decision, as a pure function of the runtime model and the request
//! header: which route, what path goes upstream, or which error answers instead.

use http::header;
use pingora_http::RequestHeader;

use crate::request::{HeaderView, Target};
use crate::respond::{ErrorCode, GatewayError};
use crate::routing::{normalize_path, strip_prefix, Lookup, RouteId};
use crate::runtime::{RouteTarget, Runtime};

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub route: RouteId,
    /// The path and query to send upstream, when it differs from what the client sent.
    pub upstream_target: Option<String>,
    /// The route's `{param}` values, kept only for composite routes (their part paths use them).
    pub params: Vec<(Box<str>, String)>,
}

pub fn plan(rt: &Runtime, req: &RequestHeader) -> Result<Plan, GatewayError> {
    plan_parts(
        rt,
        &req.method,
        &Target::of_uri(&req.uri),
        HeaderView::Map(&req.headers),
    )
}

/// [`plan`] on a view of a request, for the lean HTTP/1.1 conductor, which has no Pingora
/// `RequestHeader`.
pub fn plan_parts(
    rt: &Runtime,
    method: &http::Method,
    target: &Target<'_>,
    headers: HeaderView<'_>,
) -> Result<Plan, GatewayError> {
    if let Some(len) = headers.get(&header::CONTENT_LENGTH) {
        let len = crate::request::visible_ascii(len)
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                GatewayError::with_message(ErrorCode::BadRequest, "invalid Content-Length")
            })?;
        if len > rt.server.max_request_body_bytes {
            return Err(GatewayError::new(ErrorCode::PayloadTooLarge));
        }
    }
    let raw_path = target.path;
    let path = normalize_path(raw_path)
        .map_err(|e| GatewayError::with_message(ErrorCode::BadRequest, e.message()))?;
    let host = host_of(target, headers);
    match rt.router.lookup(host, method, &path) {
        Lookup::Found { route, params } => {
            if matches!(rt.routes[route].target, RouteTarget::Aggregate(_)) {
                let params = params
                    .iter()
                    .map(|(n, v)| (n.into(), v.to_string()))
                    .collect();
                return Ok(Plan {
                    route,
                    upstream_target: None,
                    params,
                });
            }
            let forwarded = match rt.routes[route].strip_prefix.as_deref() {
                Some(prefix) => strip_prefix(&path, prefix),
                None => &path,
            };
            let upstream_target = if forwarded == raw_path && !target.absolute {
                None
            } else {
                Some(match target.query {
                    Some(q) => format!("{forwarded}?{q}"),
                    None => forwarded.to_string(),
                })
            };
            Ok(Plan {
                route,
                upstream_target,
                params: Vec::new(),
            })
        }
        Lookup::MethodNotAllowed(allow) => {
            let mut e = GatewayError::new(ErrorCode::MethodNotAllowed);
            if let Ok(v) = http::HeaderValue::from_str(&allow) {
                e = e.with_header(header::ALLOW, v);
            }
            Err(e)
        }
        Lookup::NotFound => Err(GatewayError::new(ErrorCode::NotFound)),
    }
}

/// The request's host without port: from an absolute-form target, else the Host header.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    host_of(&Target::of_uri(&req.uri), HeaderView::Map(&req.headers))
}

fn host_of<'a>(target: &Target<'a>, headers: HeaderView<'a>) -> Option<&'a str> {
    if let Some(h) = target.host {
        return Some(h);
    }
    let raw = headers.get_str(&header::HOST)?;
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(host);
    }
    match memchr::memrchr(b':', host.as_bytes()) {
        Some(i) if host.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => {
            host.get(..i).unwrap_or(host)
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(yaml: &str) -> Runtime {
        let cfg = crate::config::parse(yaml).unwrap();
        Runtime::build(&cfg, None, None).unwrap()
    }

    const YAML: &str = r#"
server: { max_request_body_bytes: 100 }
upstreams:
  users: { backends: ["127.0.0.1:9"] }
routes:
  - { name: users, match: { path_prefix: /api/users, methods: [GET] }, upstream: users, strip_prefix: /api }
  - { name: item, match: { path: "/items/{id}", host: shop.example.com }, upstream: users }
"#;

    fn req(method: &str, target: &str, host: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        r
    }

    #[test]
    fn strips_prefix_and_keeps_query() {
        let rt = runtime(YAML);
        let p = plan(&rt, &req("GET", "/api/users/7?x=1", None)).unwrap();
        assert_eq!(p.route, 0);
        assert_eq!(p.upstream_target.as_deref(), Some("/users/7?x=1"));
        let p = plan(&rt, &req("GET", "/api/./users//7", None)).unwrap();
        assert_eq!(p.upstream_target.as_deref(), Some("/users/7"));
    }

    #[test]
    fn unchanged_paths_are_not_rewritten() {
        let rt = runtime(YAML);
        let p = plan(
            &rt,
            &req("GET", "/items/3?q", Some("shop.example.com:8080")),
        )
        .unwrap();
        assert_eq!(
            p,
            Plan {
                route: 1,
                upstream_target: None,
                params: Vec::new(),
            }
        );
    }

    #[test]
    fn errors() {
        let rt = runtime(YAML);
        let code = |r: RequestHeader| plan(&rt, &r).unwrap_err().code;
        assert_eq!(
            code(req("POST", "/api/users", None)),
            ErrorCode::MethodNotAllowed
        );
        assert_eq!(
            code(req("GET", "/items/3", Some("other.example.com"))),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(req("GET", "/api/../../x", None)),
            ErrorCode::BadRequest
        );
        let mut big = req("GET", "/api/users", None);
        big.insert_header("content-length", "101").unwrap();
        assert_eq!(code(big), ErrorCode::PayloadTooLarge);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(strip_port("a.example:80"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }
}
