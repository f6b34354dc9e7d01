//! HTTP/1.1 bytes for the lean conductor ([`super::h1`]), as pure functions: which requests
//! it may take, the head it sends upstream, the head the client gets back, and where an
//! upstream response body ends. No I/O here; the tests drive it with byte strings.
//!
//! The rules are the Pingora conductor's (see [`super::headers`]): hop-by-hop headers never
//! cross, `X-Forwarded-*` and `X-Request-Id` are the gateway's, identity headers come from
//! the gateway only. Framing is strict: a response the gateway cannot delimit without
//! guessing (two different lengths, a length with chunked, an unknown coding) is a 502,
//! never relayed, since a client or the next request on the connection would read it
//! differently.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};

use super::headers::MAX_UPSTREAM_HEADER_BYTES;

/// Most header lines a response may carry.
const MAX_RESPONSE_HEADERS: usize = 128;

/// Longest chunk-size line (size, extensions, CRLF) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// Most trailer bytes after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Whether the lean path takes a request, from its parsed head. Anything with a body, an
/// upgrade, an `Expect`, HTTP/1.0 keep-alive rules, `CONNECT`, an absolute-form target, or
/// anything but exactly one plain `Host` goes to Pingora's session (which refuses or rewrites
/// what it must).
pub fn lean_eligible(req: &httparse::Request<'_, '_>) -> bool {
    if req.version != Some(1)
        || req.method == Some("CONNECT")
        || !req.path.is_some_and(|p| p.starts_with('/'))
    {
        return false;
    }
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        // By length first: most names match none of these, and their length says so.
        match name.len() {
            4 if is_named(name, b"host") => {
                hosts += 1;
                if h.value.contains(&b'@') {
                    return false;
                }
            }
            6 if is_named(name, b"expect") => return false,
            7 if is_named(name, b"upgrade") => return false,
            14 if is_named(name, b"content-length") && h.value != b"0" => return false,
            17 if is_named(name, b"transfer-encoding") => return false,
            _ => {}
        }
    }
    hosts == 1
}

/// Whether `name` is `known` (lowercase) in any case. The first byte is compared first:
/// names of one length mostly differ there.
#[inline]
fn is_named(name: &[u8], known: &[u8]) -> bool {
    name.first().map(u8::to_ascii_lowercase) == known.first().copied()
        && name.eq_ignore_ascii_case(known)
}

/// Whether the client asked to close after this request (`Connection: close`).
pub fn wants_close(req: &httparse::Request<'_, '_>) -> bool {
    req.headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection") && has_token(h.value, b"close"))
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// An address in its usual text form, IPv4 without `core::fmt` (the common case, on every
/// proxied request's `X-Forwarded-For`).
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            // At most 45 bytes; written without a String.
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// What a message's `Connection` headers say, read as its lines go by. A head is written in
/// one pass that assumes they name no other header (so far the common case); when they do,
/// the lines they name are hop-by-hop too, and the head is written again ([`Self::rewrite`]).
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    /// A token other than `close` and `keep-alive`: the name of a header to drop.
    others: bool,
    /// A line literally named `close`, which `Connection: close` makes hop-by-hop.
    named_close: bool,
}

impl ConnectionTokens {
    fn read(&mut self, value: &[u8]) {
        // The usual values, without the split.
        if value.eq_ignore_ascii_case(b"keep-alive") {
            return;
        }
        if value.eq_ignore_ascii_case(b"close") {
            self.close = true;
            return;
        }
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                self.others = true;
            }
        }
    }

    /// Notes a relayed line's name.
    fn relayed(&mut self, name: &[u8]) {
        self.named_close |= name.len() == 5 && name.eq_ignore_ascii_case(b"close");
    }

    /// Whether the one pass relayed a line the `Connection` headers name.
    fn rewrite(&self) -> bool {
        self.others || (self.close && self.named_close)
    }
}

/// Whether a header is named by one of the message's `Connection` headers.
fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection") && has_token(h.value, name))
}

// Always inlined: outlined (as the compiler chose once the head writers grew), it cost some
// 200 instructions per proxied request.
#[inline(always)]
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the gateway adds to a request it forwards.
pub struct Forwarding<'a> {
    /// Path and query to send; the client's target when `None`.
    pub target: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a [u8],
    /// Names only the gateway may set (the identity headers of `forward_claims`): client
    /// copies are dropped.
    pub reserved: &'a [(String, HeaderName)],
    /// The verified identity's headers.
    pub identity: &'a [(HeaderName, HeaderValue)],
}

/// What the upstream head does with a client's request header line, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestLine {
    Relay,
    /// Relayed, and its value becomes `X-Forwarded-Host`.
    Host,
    /// Hop-by-hop, or one of the gateway's `X-Forwarded-*`/`X-Request-Id`.
    Drop,
    /// Dropped; its value leads the gateway's own.
    ForwardedFor,
    /// Read (which headers it names), never relayed.
    Connection,
}

impl RequestLine {
    fn of(name: &[u8]) -> RequestLine {
        match KnownName::of(name) {
            KnownName::Host => RequestLine::Host,
            KnownName::Connection => RequestLine::Connection,
            KnownName::XForwardedFor => RequestLine::ForwardedFor,
            KnownName::HopByHop | KnownName::XRequestId | KnownName::XForwardedOther => {
                RequestLine::Drop
            }
            KnownName::ContentLength
            | KnownName::TransferEncoding
            | KnownName::RateLimit
            | KnownName::Other => RequestLine::Relay,
        }
    }
}

/// The header names either direction treats specially, told apart once per line: by the
/// name's length (most names match none, and their length says so), then at most two
/// comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KnownName {
    /// Hop-by-hop (RFC 9110 7.6.1), `Upgrade`, `Proxy-Connection` and `Proxy-Authorization`;
    /// `Connection` is told apart.
    HopByHop,
    Connection,
    Host,
    ContentLength,
    TransferEncoding,
    XRequestId,
    XForwardedFor,
    /// `X-Forwarded-Host`, `X-Forwarded-Proto`.
    XForwardedOther,
    /// One of the RateLimit-* names the gateway writes itself (`ratelimit::HEADER_NAMES`,
    /// but `Retry-After`).
    RateLimit,
    Other,
}

impl KnownName {
    fn of(name: &[u8]) -> KnownName {
        let is = |known: &str| is_named(name, known.as_bytes());
        match name.len() {
            2 if is("te") => KnownName::HopByHop,
            4 if is("host") => KnownName::Host,
            7 if is("trailer") || is("upgrade") => KnownName::HopByHop,
            9 if is("ratelimit") => KnownName::RateLimit,
            10 if is("connection") => KnownName::Connection,
            10 if is("keep-alive") => KnownName::HopByHop,
            12 if is("x-request-id") => KnownName::XRequestId,
            14 if is("content-length") => KnownName::ContentLength,
            15 if is("x-forwarded-for") => KnownName::XForwardedFor,
            15 if is("ratelimit-limit") || is("ratelimit-reset") => KnownName::RateLimit,
            16 if is("proxy-connection") => KnownName::HopByHop,
            16 if is("x-forwarded-host") => KnownName::XForwardedOther,
            16 if is("ratelimit-policy") => KnownName::RateLimit,
            17 if is("transfer-encoding") => KnownName::TransferEncoding,
            17 if is("x-forwarded-proto") => KnownName::XForwardedOther,
            19 if is("proxy-authorization") => KnownName::HopByHop,
            19 if is("ratelimit-remaining") => KnownName::RateLimit,
            _ => KnownName::Other,
        }
    }
}

/// Writes the upstream request head for a request the lean path took.
pub fn write_request_head(out: &mut Vec<u8>, req: &httparse::Request<'_, '_>, fwd: &Forwarding) {
    out.clear();
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(fwd.target.unwrap_or(req.path.unwrap_or("/")).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let request_line = out.len();
    let reserved = |name: &[u8]| {
        fwd.reserved
            .iter()
            .any(|(_, r)| name.eq_ignore_ascii_case(r.as_str().as_bytes()))
    };
    let mut forwarded_for: Option<&[u8]> = None;
    let mut host: Option<&[u8]> = None;
    let mut connection = ConnectionTokens::default();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match RequestLine::of(name) {
            RequestLine::Relay => connection.relayed(name),
            RequestLine::Host => host = host.or(Some(h.value)),
            RequestLine::Drop => continue,
            RequestLine::ForwardedFor => {
                let value = h.value.trim_ascii();
                if forwarded_for.is_none() && !value.is_empty() {
                    forwarded_for = Some(value);
                }
                continue;
            }
            RequestLine::Connection => {
                connection.read(h.value);
                continue;
            }
        }
        if !reserved(name) {
            push_header(out, name, h.value);
        }
    }
    if connection.rewrite() {
        out.truncate(request_line);
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if matches!(
                RequestLine::of(name),
                RequestLine::Relay | RequestLine::Host
            ) && !reserved(name)
                && !named_by_connection(req.headers, name)
            {
                push_header(out, name, h.value);
            }
        }
    }
    if let Some(ip) = fwd.client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prev) = forwarded_for {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        push_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    if let Some(h) = host {
        push_header(out, b"x-forwarded-host", h);
    }
    push_header(out, b"x-request-id", fwd.request_id);
    for (name, value) in fwd.identity {
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: the client connection closes after it too.
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head in the buffer; the body starts after.
    pub len: usize,
    pub framing: Framing,
    /// The upstream may carry another request on this connection afterwards.
    pub reusable: bool,
}

/// Why an upstream response head is refused (502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadResponse {
    /// Over [`MAX_UPSTREAM_HEADER_BYTES`] or too many header lines.
    TooLarge,
    /// Not HTTP/1.x, or framing the gateway refuses to guess at.
    Malformed,
}

/// What the gateway adds to the response the client gets.
pub struct Answering<'a> {
    pub request_id: &'a [u8],
    /// RateLimit-* header lines (`name: value\r\n` each); when there are any, the
    /// upstream's own RateLimit-* headers are dropped.
    pub extra: &'a [u8],
    /// The client connection closes after this response.
    pub close: bool,
    /// The request was a HEAD: no body follows whatever the head says.
    pub head_request: bool,
}

/// Parses an upstream response head in `buf` and, when complete, writes the client's head
/// into `out`. `Ok(None)`: incomplete. Informational (1xx) answers come back as themselves
/// with `Framing::Empty` and nothing in `out`: the caller skips them.
pub fn parse_response(
    buf: &[u8],
    ans: &Answering,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, BadResponse> {
    // Few slots first: httparse's response parser wants them initialised, and 128 of them
    // are 4 KiB to clear per response. A head with more lines is parsed again with all.
    let mut few = [httparse::EMPTY_HEADER; FEW_RESPONSE_HEADERS];
    match parse_response_into(buf, ans, out, &mut few) {
        Err(Parse::TooManyHeaders) => {}
        Err(Parse::Bad(bad)) => return Err(bad),
        Ok(head) => return Ok(head),
    }
    let mut all = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    match parse_response_into(buf, ans, out, &mut all) {
        Err(Parse::TooManyHeaders) => Err(BadResponse::TooLarge),
        Err(Parse::Bad(bad)) => Err(bad),
        Ok(head) => Ok(head),
    }
}

/// Header slots tried first for a response head.
const FEW_RESPONSE_HEADERS: usize = 24;

enum Parse {
    TooManyHeaders,
    Bad(BadResponse),
}

impl From<BadResponse> for Parse {
    fn from(bad: BadResponse) -> Parse {
        Parse::Bad(bad)
    }
}

fn parse_response_into<'b>(
    buf: &'b [u8],
    ans: &Answering,
    out: &mut Vec<u8>,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<ResponseHead>, Parse> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_UPSTREAM_HEADER_BYTES => {
            return Err(BadResponse::TooLarge.into())
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_UPSTREAM_HEADER_BYTES => {
            return Err(BadResponse::TooLarge.into())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Parse::TooManyHeaders),
        Err(_) => return Err(BadResponse::Malformed.into()),
    };
    let status = resp.code.ok_or(Parse::Bad(BadResponse::Malformed))?;
    if (100..200).contains(&status) {
        // 101 is never asked for on this path; 100 and 103 are dropped (RFC 9110 15.2).
        if status == 101 {
            return Err(BadResponse::Malformed.into());
        }
        return Ok(Some(ResponseHead {
            status,
            len,
            framing: Framing::Empty,
            reusable: true,
        }));
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = resp.reason.unwrap_or("");
    if reason.is_empty() {
        let canonical = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason());
        out.extend_from_slice(canonical.unwrap_or("").as_bytes());
    } else {
        out.extend_from_slice(reason.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let status_line = out.len();
    // One pass reads the framing and copies the lines the client gets; each name is
    // classified once. A `Connection` header naming other headers (rare) makes those
    // hop-by-hop too, and is only known once it is read: the lines are then copied again.
    let drop_rate_limit = !ans.extra.is_empty();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut connection = ConnectionTokens::default();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        match ResponseLine::of(name, drop_rate_limit) {
            ResponseLine::Relay => connection.relayed(name),
            ResponseLine::Drop => continue,
            ResponseLine::ContentLength => {
                let n = decimal_length(h.value).ok_or(Parse::Bad(BadResponse::Malformed))?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadResponse::Malformed.into());
                }
                length = Some(n);
            }
            ResponseLine::TransferEncoding => {
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(BadResponse::Malformed.into());
                }
                chunked = true;
            }
            ResponseLine::Connection => {
                connection.read(h.value);
                continue;
            }
        }
        push_header(out, name, h.value);
    }
    if connection.rewrite() {
        out.truncate(status_line);
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            let relayed = !matches!(
                ResponseLine::of(name, drop_rate_limit),
                ResponseLine::Drop | ResponseLine::Connection
            );
            if relayed && !named_by_connection(resp.headers, name) {
                push_header(out, name, h.value);
            }
        }
    }
    let mut reusable = resp.version == Some(1) && !connection.close;
    let framing = if ans.head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (length, chunked) {
            (Some(_), true) => return Err(BadResponse::Malformed.into()),
            (Some(n), false) => Framing::Length(n),
            (None, true) => Framing::Chunked,
            (None, false) => {
                reusable = false;
                Framing::UntilClose
            }
        }
    };
    push_header(out, b"x-request-id", ans.request_id);
    out.extend_from_slice(ans.extra);
    if ans.close || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
        reusable,
    }))
}

/// What the client's head does with an upstream response header line, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseLine {
    Relay,
    /// Hop-by-hop, the gateway's own (`X-Request-Id`), or an upstream RateLimit-* header
    /// when the gateway sends its own.
    Drop,
    /// Relayed, and read for the framing.
    ContentLength,
    TransferEncoding,
    /// Read (close, and which headers it names), never relayed.
    Connection,
}

impl ResponseLine {
    fn of(name: &[u8], drop_rate_limit: bool) -> ResponseLine {
        match KnownName::of(name) {
            KnownName::HopByHop | KnownName::XRequestId => ResponseLine::Drop,
            KnownName::RateLimit if drop_rate_limit => ResponseLine::Drop,
            KnownName::Connection => ResponseLine::Connection,
            KnownName::ContentLength => ResponseLine::ContentLength,
            KnownName::TransferEncoding => ResponseLine::TransferEncoding,
            KnownName::RateLimit
            | KnownName::Host
            | KnownName::XForwardedFor
            | KnownName::XForwardedOther
            | KnownName::Other => ResponseLine::Relay,
        }
    }
}

/// A `Content-Length` value: digits only (no sign, no spaces, no list), within `u64`.
fn decimal_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Finds the end of a chunked body in the bytes as they arrive; the bytes are relayed as
/// they are, so only the framing is followed (and checked).
#[derive(Debug, Default)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Bytes of the current size line or trailer section so far.
    line_bytes: usize,
    size: u64,
    size_digits: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// In a chunk extension, up to the CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// A chunked body the gateway will not relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// One byte inside a bounded line (a chunk extension, a trailer field): CR ends it and
    /// moves to `after_cr`; a bare LF or a line over `limit` is refused.
    fn line_byte(&mut self, b: u8, limit: usize, after_cr: ChunkState) -> Result<(), BadChunk> {
        self.line_bytes += 1;
        match b {
            _ if self.line_bytes > limit => Err(BadChunk),
            b'\r' => {
                self.state = after_cr;
                Ok(())
            }
            b'\n' => Err(BadChunk),
            _ => Ok(()),
        }
    }

    /// Follows `data`; returns how many of its bytes belong to the body (all of them unless
    /// the body ended inside `data`).
    pub fn scan(&mut self, data: &[u8]) -> Result<usize, BadChunk> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                Done => return Ok(i),
                Size => {
                    self.line_bytes += 1;
                    match b {
                        b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                            if self.size_digits >= 15 {
                                return Err(BadChunk);
                            }
                            let d = (b as char).to_digit(16).ok_or(BadChunk)?;
                            self.size = self.size * 16 + u64::from(d);
                            self.size_digits += 1;
                        }
                        b';' if self.size_digits > 0 => self.state = Extension,
                        b'\r' if self.size_digits > 0 => self.state = SizeLf,
                        _ => return Err(BadChunk),
                    }
                }
                Extension => self.line_byte(b, MAX_CHUNK_LINE, SizeLf)?,
                SizeLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.line_bytes = 0;
                    self.size_digits = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => {
                    if b != b'\r' {
                        return Err(BadChunk);
                    }
                    self.state = DataLf;
                }
                DataLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = Size;
                }
                TrailerStart => {
                    self.line_bytes += 1;
                    self.state = match b {
                        b'\r' => FinalLf,
                        b'\n' => return Err(BadChunk),
                        _ => TrailerLine,
                    };
                }
                TrailerLine => self.line_byte(b, MAX_TRAILER_BYTES, TrailerLf)?,
                TrailerLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = TrailerStart;
                }
                FinalLf => {
                    if b != b'\n' {
                        return Err(BadChunk);
                    }
                    self.state = Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'h, 'b>(
        raw: &'b [u8],
        headers: &'h mut [httparse::Header<'b>],
    ) -> httparse::Request<'h, 'b> {
        let mut req = httparse::Request::new(headers);
        assert!(req.parse(raw).unwrap().is_complete());
        req
    }

    /// Hop-by-hop headers (RFC 9110 7.6.1) and `Upgrade`: never forwarded in either
    /// direction.
    fn is_hop_by_hop(name: &[u8]) -> bool {
        const HOP: [&[u8]; 7] = [
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"te",
            b"trailer",
            b"proxy-authorization",
            b"upgrade",
        ];
        HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
    }

    /// The rules the one-pass writers implement, written plainly (each line against every
    /// list, every `Connection` header read for every line): the reference they must match.
    fn reference_request_lines(hs: &[httparse::Header<'_>], reserved: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for h in hs {
            let name = h.name.as_bytes();
            let gateways = [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-request-id",
            ];
            if is_hop_by_hop(name)
                || gateways
                    .iter()
                    .chain(reserved)
                    .any(|g| name.eq_ignore_ascii_case(g.as_bytes()))
                || named_by_connection(hs, name)
            {
                continue;
            }
            push_header(&mut out, name, h.value);
        }
        out
    }

    fn reference_response_lines(hs: &[httparse::Header<'_>], drop_rate_limit: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for h in hs {
            let name = h.name.as_bytes();
            if is_hop_by_hop(name)
                || name.eq_ignore_ascii_case(b"x-request-id")
                || named_by_connection(hs, name)
                || (drop_rate_limit
                    && crate::ratelimit::HEADER_NAMES[..5]
                        .iter()
                        .any(|n| name.eq_ignore_ascii_case(n.as_bytes())))
            {
                continue;
            }
            push_header(&mut out, name, h.value);
        }
        out
    }

    #[test]
    fn one_pass_heads_agree_with_the_reference_rules() {
        // Names that differ from a known one in case, one byte or one length, and
        // `Connection` values that name nothing, the usual tokens, or other lines.
        let names = [
            "Host",
            "hosT",
            "hostx",
            "x-a",
            "X-B",
            "close",
            "CLOSE",
            "keep-alive",
            "Keep-Alivf",
            "connection",
            "Connection",
            "connectiom",
            "te",
            "TE",
            "tf",
            "trailer",
            "upgrade",
            "upgradf",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authorizatioN",
            "x-request-id",
            "x-request-ie",
            "x-forwarded-for",
            "X-Forwarded-Proto",
            "x-forwarded-host",
            "x-forwarded-hosu",
            "content-length",
            "transfer-encoding",
            "ratelimit",
            "RateLimit-Limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "ratelimit-policy",
            "retry-after",
            "x-user",
            "X-Scope",
        ];
        let values: [&[u8]; 10] = [
            b"close",
            b"Keep-Alive",
            b"close, keep-alive",
            b" x-a ",
            b"keep-alive, X-B",
            b",,",
            b"",
            b"CLOSE ,x-user",
            b"te, Close",
            b"1",
        ];
        let mut rng = crate::test_rng::Xorshift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let lines = 1 + rng.below(8);
            let hs: Vec<httparse::Header<'_>> = (0..lines)
                .map(|_| httparse::Header {
                    name: names[rng.below(names.len())],
                    value: values[rng.below(values.len())],
                })
                .collect();
            let reserved = if rng.below(2) == 0 {
                &["x-user"][..]
            } else {
                &[][..]
            };
            let reserved_names: Vec<(String, HeaderName)> = reserved
                .iter()
                .map(|n| (n.to_string(), HeaderName::from_static(n)))
                .collect();

            let mut req_headers = hs.clone();
            let req = httparse::Request {
                method: Some("GET"),
                path: Some("/"),
                version: Some(1),
                headers: &mut req_headers,
            };
            let mut out = Vec::new();
            let fwd = Forwarding {
                target: None,
                client_ip: Some(IpAddr::from([10, 1, 2, 3])),
                request_id: b"id",
                reserved: &reserved_names,
                identity: &[],
            };
            write_request_head(&mut out, &req, &fwd);
            let lines_written = &out[b"GET / HTTP/1.1\r\n".len()..];
            let expected = reference_request_lines(&hs, reserved);
            assert!(
                lines_written.starts_with(&expected),
                "request {hs:?}: {}",
                String::from_utf8_lossy(&out)
            );
            // The gateway's own lines: the client's first non-empty X-Forwarded-For leads
            // the address, the first Host becomes X-Forwarded-Host.
            let mut gateway_lines = b"x-forwarded-for: ".to_vec();
            let named = |n: &'static str| {
                hs.iter()
                    .filter(move |h| h.name.eq_ignore_ascii_case(n))
                    .map(|h| h.value)
            };
            if let Some(prev) = named("x-forwarded-for")
                .map(<[u8]>::trim_ascii)
                .find(|v| !v.is_empty())
            {
                gateway_lines.extend_from_slice(prev);
                gateway_lines.extend_from_slice(b", ");
            }
            gateway_lines.extend_from_slice(b"10.1.2.3\r\nx-forwarded-proto: http\r\n");
            if let Some(host) = named("host").next() {
                push_header(&mut gateway_lines, b"x-forwarded-host", host);
            }
            gateway_lines.extend_from_slice(b"x-request-id: id\r\n\r\n");
            assert_eq!(
                String::from_utf8_lossy(&lines_written[expected.len()..]),
                String::from_utf8_lossy(&gateway_lines),
                "{hs:?}"
            );

            let drop_rate_limit = rng.below(2) == 0;
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            for h in &hs {
                push_header(&mut raw, h.name.as_bytes(), h.value);
            }
            raw.extend_from_slice(b"\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 16];
            let mut out = Vec::new();
            let ans = Answering {
                request_id: b"id",
                extra: if drop_rate_limit {
                    b"ratelimit: x\r\n"
                } else {
                    b""
                },
                close: false,
                head_request: true,
            };
            match parse_response_into(&raw, &ans, &mut out, &mut slots) {
                Ok(Some(head)) => {
                    // Against the lines as httparse reads them (it trims values).
                    let mut parsed = [httparse::EMPTY_HEADER; 16];
                    let mut resp = httparse::Response::new(&mut parsed);
                    assert!(resp.parse(&raw).is_ok_and(|s| s.is_complete()));
                    let expected = reference_response_lines(resp.headers, drop_rate_limit);
                    let lines_written = &out[b"HTTP/1.1 200 OK\r\n".len()..];
                    assert!(lines_written.starts_with(&expected), "response {hs:?}");
                    assert_eq!(
                        &lines_written[expected.len()..expected.len() + 14],
                        b"x-request-id: ",
                        "response {hs:?}"
                    );
                    let closes = hs.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("connection") && has_token(h.value, b"close")
                    });
                    assert_eq!(head.reusable, !closes, "response {hs:?}");
                }
                Ok(None) => panic!("complete head read as partial: {hs:?}"),
                // Framing refusals are the framing test's; only these names cause them.
                Err(_) => assert!(hs.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("content-length")
                        || h.name.eq_ignore_ascii_case("transfer-encoding")
                })),
            }
        }
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.3",
            "127.0.0.1",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:192.0.2.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn eligibility() {
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(lean_eligible(&parse(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            &mut h
        )));
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(lean_eligible(&parse(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            &mut h
        )));
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(lean_eligible(&parse(
            b"GET / HTTP/1.1\r\nhOST: a\r\nExpecT-X: 1\r\nContent-Lengthy: 3\r\n\r\n",
            &mut h
        )));
        // Each with one Host, so that each refusal is its own rule's.
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ntRANSFER-eNCODING: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nEXPECT: 100-continue\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        ] {
            let mut h = [httparse::EMPTY_HEADER; 16];
            assert!(
                !lean_eligible(&parse(raw, &mut h)),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn request_head_rewrites_the_hop_headers() {
        let raw = b"GET /api/x?q=1 HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\nX-Request-Id: spoofed\r\nX-User: mallory\r\nAccept: */*\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let req = parse(raw, &mut h);
        let reserved = [("sub".to_string(), HeaderName::from_static("x-user"))];
        let identity = [(
            HeaderName::from_static("x-user"),
            HeaderValue::from_static("alice"),
        )];
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &req,
            &Forwarding {
                target: Some("/x?q=1"),
                client_ip: Some("127.0.0.1".parse().unwrap()),
                request_id: b"id1",
                reserved: &reserved,
                identity: &identity,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x?q=1 HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: shop\r\nx-request-id: id1\r\nx-user: alice\r\n\r\n"
        );
    }

    fn answer(
        raw: &[u8],
        head_request: bool,
    ) -> (Result<Option<ResponseHead>, BadResponse>, String) {
        let mut out = Vec::new();
        let extra = b"ratelimit-limit: 5\r\n";
        let r = parse_response(
            raw,
            &Answering {
                request_id: b"id1",
                extra,
                close: false,
                head_request,
            },
            &mut out,
        );
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn long_response_heads_take_the_second_parse() {
        let head = |lines: usize| {
            let mut raw = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
            for i in 1..lines {
                raw.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw
        };
        for lines in [
            FEW_RESPONSE_HEADERS,
            FEW_RESPONSE_HEADERS + 1,
            MAX_RESPONSE_HEADERS,
        ] {
            let (r, out) = answer(&head(lines), false);
            assert_eq!(r.unwrap().unwrap().framing, Framing::Length(0), "{lines}");
            assert!(out.contains(&format!("X-H{}: {}\r\n", lines - 1, lines - 1)));
            assert_eq!(out.matches("\r\n").count(), lines + 4, "{out}");
        }
        let (r, _) = answer(&head(MAX_RESPONSE_HEADERS + 1), false);
        assert_eq!(r, Err(BadResponse::TooLarge));
    }

    #[test]
    fn response_heads() {
        let (r, out) = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Request-Id: theirs\r\n\r\nok", false);
        assert_eq!(
            r,
            Ok(Some(ResponseHead {
                status: 200,
                len: 84,
                framing: Framing::Length(2),
                reusable: true
            }))
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-request-id: id1\r\nratelimit-limit: 5\r\n\r\n");
        let (r, out) = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.unwrap().unwrap().framing, Framing::Chunked);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        let (r, out) = answer(b"HTTP/1.0 200 OK\r\n\r\nbody", false);
        assert_eq!(
            r.unwrap().unwrap(),
            ResponseHead {
                status: 200,
                len: 19,
                framing: Framing::UntilClose,
                reusable: false
            }
        );
        assert!(out.ends_with("connection: close\r\n\r\n"));
        let (r, _) = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true);
        assert_eq!(r.unwrap().unwrap().framing, Framing::Empty);
        let (r, _) = answer(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\n\r\n",
            false,
        );
        assert_eq!(r.unwrap().unwrap().framing, Framing::Empty);
        let (r, _) = answer(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!r.unwrap().unwrap().reusable);
        let (r, out) = answer(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false);
        assert_eq!(r.unwrap().unwrap().status, 103);
        assert_eq!(out, "");
        assert_eq!(answer(b"HTTP/1.1 200 OK\r\nContent", false).0, Ok(None));
    }

    #[test]
    fn ambiguous_responses_are_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert_eq!(
                answer(raw, false).0,
                Err(BadResponse::Malformed),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_UPSTREAM_HEADER_BYTES + 1));
        assert_eq!(answer(&big, false).0, Err(BadResponse::TooLarge));
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        // Whole, and one byte at a time.
        let mut s = ChunkedScanner::default();
        assert_eq!(s.scan(body), Ok(body.len() - 4));
        assert!(s.is_done());
        let mut s = ChunkedScanner::default();
        let mut used = 0;
        for b in body.iter() {
            used += s.scan(std::slice::from_ref(b)).unwrap();
            if s.is_done() {
                break;
            }
        }
        assert_eq!(used, body.len() - 4);
        let mut s = ChunkedScanner::default();
        assert_eq!(s.scan(b"0\r\n\r\n"), Ok(5));
        assert!(s.is_done());
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloXX",
            b"\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            let mut s = ChunkedScanner::default();
            assert_eq!(
                s.scan(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
