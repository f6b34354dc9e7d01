//! Path normalisation: the one form of a request path that the router matches and the upstream
//! receives, so that the two can never disagree.
//!
//! Steps, in order: percent-escapes of unreserved characters are decoded (`%7E` -> `~`,
//! `%2e` -> `.`), other escapes get upper-case hex (`%2f` -> `%2F`, which stays an escape and
//! never becomes a separator); runs of `/` merge into one; `.` segments vanish and `..` removes
//! the segment before it (RFC 3986 5.2.4). A path that would climb above the root, carries a
//! malformed escape, a byte outside the URI path alphabet (controls, space, `\`, non-ASCII),
//! or a `.`/`..` segment hidden behind `;` parameters is refused rather than guessed at.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty, no leading `/`).
    NotAbsolute,
    /// A byte that has no place in a path.
    InvalidByte,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `..` above the root, or a dot segment disguised with `;`.
    Traversal,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "request path must start with '/'",
            PathError::InvalidByte => "request path contains a character that is not allowed",
            PathError::BadEscape => "request path contains a malformed percent-escape",
            PathError::Traversal => "request path climbs above the root",
        }
    }
}

/// Bytes allowed in a path as sent: RFC 3986 pchar plus '/'.
pub fn is_path_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~'                       // unreserved
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='  // sub-delims
        | b':' | b'@' | b'/' | b'%')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises the path part of a request target (no query). Borrows when the path is already
/// normal, which is the common case and costs one scan.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_work = false;
    let mut prev = 0u8;
    for &b in bytes {
        if !is_path_byte(b) {
            return Err(PathError::InvalidByte);
        }
        // '%' may need decoding, "//" merging, "/." a dot segment, ';' a disguised one.
        if b == b'%' || b == b';' || (prev == b'/' && (b == b'/' || b == b'.')) {
            needs_work = true;
        }
        prev = b;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }
    rebuild(bytes).map(Cow::Owned)
}

/// Decodes every well-formed `%XX` escape; any other byte, a lone `%` included, stays as it is.
pub fn percent_decode_bytes(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match (
            input[i],
            input.get(i + 1).copied().and_then(hex),
            input.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Rounds of decoding [`check_decoded`] looks through (`%252e` is two).
const DECODE_ROUNDS: usize = 3;

/// What an upstream that decodes the path (once, or again and again) would see must not
/// climb either: `..%2F`, `..%5C`, `%252e%252e` and overlong UTF-8 (`%C0%AE`) are refused
/// here, where the router is, rather than left to whichever service receives them. Encoded
/// slashes elsewhere (`a%2Fb`, an id) stay allowed and are forwarded as they are.
fn check_decoded(path: &[u8]) -> Result<(), PathError> {
    let mut cur = Cow::Borrowed(path);
    for _ in 0..DECODE_ROUNDS {
        if !cur.contains(&b'%') {
            break;
        }
        cur = Cow::Owned(percent_decode_bytes(&cur));
        // Overlong and other invalid UTF-8 only ever serves to hide a byte from a filter.
        if std::str::from_utf8(&cur).is_err() {
            return Err(PathError::InvalidByte);
        }
        let climbs = cur
            .split(|&b| b == b'/' || b == b'\\')
            .map(|seg| seg.split(|&b| b == b';').next().unwrap_or(seg))
            .any(|seg| seg == b"." || seg == b"..");
        if climbs {
            return Err(PathError::Traversal);
        }
    }
    Ok(())
}

fn rebuild(bytes: &[u8]) -> Result<String, PathError> {
    // Pass 1: escapes. Decoding an unreserved byte can only create one of -._~ or an
    // alphanumeric, so no new '/' or '%' appears.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = hi << 4 | lo;
            if is_unreserved(v) {
                decoded.push(v);
            } else {
                decoded.push(b'%');
                decoded.push(bytes[i + 1].to_ascii_uppercase());
                decoded.push(bytes[i + 2].to_ascii_uppercase());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }

    // Pass 2: segments. Empty segments (from "//") merge away, except a trailing one, which
    // keeps the trailing slash.
    let body = &decoded[1..];
    let mut out: Vec<&[u8]> = Vec::new();
    let count = body.split(|&b| b == b'/').count();
    for (idx, seg) in body.split(|&b| b == b'/').enumerate() {
        let last = idx + 1 == count;
        let plain = seg.split(|&b| b == b';').next().unwrap_or(seg);
        if (plain == b"." || plain == b"..") && plain.len() != seg.len() {
            return Err(PathError::Traversal);
        }
        match seg {
            b"." => {
                if last {
                    out.push(b"");
                }
            }
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::Traversal);
                }
                if last {
                    out.push(b"");
                }
            }
            b"" if !last => {}
            _ => out.push(seg),
        }
    }
    let mut path = Vec::with_capacity(decoded.len());
    for seg in &out {
        path.push(b'/');
        path.extend_from_slice(seg);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    if path.contains(&b'%') {
        check_decoded(&path)?;
    }
    // Every byte came from is_path_byte input or ASCII hex digits.
    String::from_utf8(path).map_err(|_| PathError::InvalidByte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/api/users",
            "/api/users/7",
            "/a/b/",
            "/a.b/c~d",
            "/x-y_z",
        ] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn what_a_decoding_upstream_would_see_must_not_climb_either() {
        for p in [
            "/public/..%2fadmin",
            "/public/..%2Fadmin",
            "/public/..%5cadmin",
            "/public/%2e%2e%2fadmin",
            "/public/%252e%252e/admin",
            "/public/%25252e%25252e/admin",
            "/public/x%2f..%2f..%2fadmin",
            "/public/..%3b/admin",
        ] {
            assert_eq!(norm(p), Err(PathError::Traversal), "{p}");
        }
        for p in [
            "/public/%c0%ae%c0%ae/admin",
            "/a/%c0%af",
            "/a/%e0%80%ae",
            "/a/%ff",
        ] {
            assert_eq!(norm(p), Err(PathError::InvalidByte), "{p}");
        }
        // Unreserved escapes are decoded before routing: this is /admin, and routes as /admin.
        assert_eq!(norm("/public/.%2e/admin").unwrap(), "/admin");
        // Encoded slashes and other escapes that hide nothing stay allowed.
        assert_eq!(norm("/files/a%2fb%2fc").unwrap(), "/files/a%2Fb%2Fc");
        assert_eq!(norm("/q/%25").unwrap(), "/q/%25");
        assert_eq!(norm("/name/%c3%a9").unwrap(), "/name/%C3%A9");
        assert_eq!(norm("/a/..b%2f").unwrap(), "/a/..b%2F");
    }

    #[test]
    fn decodes_unreserved_and_uppercases_the_rest() {
        assert_eq!(norm("/api/%75sers").unwrap(), "/api/users");
        assert_eq!(norm("/a/%7e%41").unwrap(), "/a/~A");
        assert_eq!(norm("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(norm("/a%2Fb").unwrap(), "/a%2Fb");
        assert_eq!(norm("/a%3fb").unwrap(), "/a%3Fb");
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("//a///b").unwrap(), "/a/b");
        assert_eq!(norm("/a/b//").unwrap(), "/a/b/");
        assert_eq!(norm("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(norm("/a/%2E./b").unwrap(), "/b");
        assert_eq!(norm("/..a/b").unwrap(), "/..a/b");
        assert_eq!(norm("/a/..").unwrap(), "/");
    }

    #[test]
    fn refuses_what_it_cannot_normalise_safely() {
        assert_eq!(norm("/.."), Err(PathError::Traversal));
        assert_eq!(norm("/a/../.."), Err(PathError::Traversal));
        assert_eq!(norm("/%2e%2e/etc"), Err(PathError::Traversal));
        assert_eq!(norm("/a/..;/b"), Err(PathError::Traversal));
        assert_eq!(norm("/a/.;x/b"), Err(PathError::Traversal));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/a\\b"), Err(PathError::InvalidByte));
        assert_eq!(norm("/a b"), Err(PathError::InvalidByte));
        assert_eq!(norm("/caf\u{e9}"), Err(PathError::InvalidByte));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn semicolon_params_on_normal_segments_stay() {
        assert_eq!(norm("/a;v=1/b").unwrap(), "/a;v=1/b");
    }
}
