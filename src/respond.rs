//! The gateway's own answers: one table of error codes, one JSON shape, one place that builds
//! the response header.
//!
//! Body: `{"error": "<code>", "message": "<human text>", "request_id": "<id>"}`.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use pingora_http::ResponseHeader;

/// Stable error codes; the wire names are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotFound,
    MethodNotAllowed,
    Unauthorized,
    Forbidden,
    RateLimited,
    BadRequest,
    PayloadTooLarge,
    HeadersTooLarge,
    BadGateway,
    GatewayTimeout,
    ServiceUnavailable,
    /// The request body did not arrive in time (an addition to the contract's codes).
    RequestTimeout,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::GatewayTimeout => "gateway_timeout",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    /// The default human message; specific causes may say more.
    pub fn default_message(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "no route matches this request",
            ErrorCode::MethodNotAllowed => "this route does not accept that method",
            ErrorCode::Unauthorized => "a valid bearer token is required",
            ErrorCode::Forbidden => "the token does not grant access to this route",
            ErrorCode::RateLimited => "too many requests; retry after the time in Retry-After",
            ErrorCode::BadRequest => "the request is malformed",
            ErrorCode::PayloadTooLarge => "the request body is larger than allowed",
            ErrorCode::HeadersTooLarge => "the request header is larger than allowed",
            ErrorCode::BadGateway => "the upstream could not be reached or answered badly",
            ErrorCode::GatewayTimeout => "the upstream did not answer in time",
            ErrorCode::ServiceUnavailable => "no healthy backend is available",
            ErrorCode::RequestTimeout => "the request body did not arrive in time",
        }
    }
}

/// A response the gateway makes itself, before or instead of proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub code: ErrorCode,
    pub message: std::borrow::Cow<'static, str>,
    /// Extra headers, e.g. `Allow` on a 405.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl GatewayError {
    pub fn new(code: ErrorCode) -> Self {
        GatewayError {
            code,
            message: code.default_message().into(),
            headers: Vec::new(),
        }
    }

    pub fn with_message(
        code: ErrorCode,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        GatewayError {
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> Bytes {
        let body = serde_json::json!({
            "error": self.code.as_str(),
            "message": self.message,
            "request_id": request_id,
        });
        Bytes::from(body.to_string())
    }

    /// The response header, for a body of `body_len` bytes.
    pub fn header(&self, request_id: &HeaderValue, body_len: usize, close: bool) -> ResponseHeader {
        let mut resp = ResponseHeader::build(self.code.status(), Some(4 + self.headers.len()))
            .unwrap_or_else(|_| {
                ResponseHeader::build_no_case(self.code.status(), None).expect("status is valid")
            });
        let _ = resp.insert_header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let _ = resp.insert_header(header::CONTENT_LENGTH, body_len);
        let _ = resp.insert_header("x-request-id", request_id.clone());
        if close {
            let _ = resp.insert_header(header::CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in &self.headers {
            let _ = resp.insert_header(name.clone(), value.clone());
        }
        resp
    }

    /// The whole answer as HTTP/1.1 bytes, for the edge, which writes before Pingora has a
    /// session; it closes the connection. `head_only` (the request was a HEAD) leaves the body
    /// out but keeps its Content-Length.
    pub fn to_http1(&self, request_id: &str, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_http1(&mut out, request_id, head_only, true, b"");
        out
    }

    /// Appends the whole answer as HTTP/1.1 bytes to `out`, with `extra` header lines
    /// (RateLimit-*, `name: value\r\n` each) and `Connection: close` when `close`.
    pub fn write_http1(
        &self,
        out: &mut Vec<u8>,
        request_id: &str,
        head_only: bool,
        close: bool,
        extra: &[u8],
    ) {
        use std::io::Write;
        let body = self.body(request_id);
        let status = self.code.status();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
            request_id
        );
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(extra);
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_contract_shape() {
        let e = GatewayError::new(ErrorCode::NotFound);
        let v: serde_json::Value = serde_json::from_slice(&e.body("abc")).unwrap();
        assert_eq!(v["error"], "not_found");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].is_string());
    }

    #[test]
    fn raw_http1_answer_parses() {
        let e = GatewayError::new(ErrorCode::HeadersTooLarge);
        let raw = String::from_utf8(e.to_http1("id1", false)).unwrap();
        assert!(raw.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        // A HEAD gets the same head, and nothing after it.
        let head_only = String::from_utf8(e.to_http1("id1", true)).unwrap();
        assert_eq!(head_only, format!("{head}\r\n\r\n"));
    }
}
