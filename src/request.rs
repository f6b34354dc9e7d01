//! What the decision modules (`plan`, `admit`, `auth`, `ratelimit`) read of a request,
//! borrowed from whichever form the conductor holds: Pingora's `RequestHeader` (an
//! `http::HeaderMap` and `Uri`), or the lean HTTP/1.1 path's `httparse` slices over the
//! client's buffer.
//!
//! Why: building an `http::HeaderMap` and `Uri` just to ask four questions of them cost the
//! lean path an allocation per header value and more (about 2% of its CPU). A view borrows;
//! both conductors get the same answers from the same decision code.

use http::{HeaderMap, HeaderName, Uri};

/// A request's header fields, by name (case-insensitive), first value first.
#[derive(Clone, Copy)]
pub enum HeaderView<'a> {
    Map(&'a HeaderMap),
    /// As `httparse` parsed them, in the order the client sent them.
    Raw(&'a [httparse::Header<'a>]),
}

/// A field that must appear at most once came more than once.
#[derive(Debug, PartialEq, Eq)]
pub struct Repeated;

impl<'a> HeaderView<'a> {
    /// The first value of `name`.
    pub fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        match self {
            HeaderView::Map(m) => m.get(name).map(|v| v.as_bytes()),
            HeaderView::Raw(hs) => hs
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
                .map(|h| h.value),
        }
    }

    /// The first value of `name` when it is visible ASCII (what `HeaderValue::to_str`
    /// accepts), else `None`.
    pub fn get_str(self, name: &HeaderName) -> Option<&'a str> {
        visible_ascii(self.get(name)?)
    }

    /// The value of a field that may appear once: `Ok(None)` when absent.
    pub fn get_unique(self, name: &HeaderName) -> Result<Option<&'a [u8]>, Repeated> {
        match self {
            HeaderView::Map(m) => {
                let mut values = m.get_all(name).iter();
                let first = values.next().map(|v| v.as_bytes());
                match values.next() {
                    Some(_) => Err(Repeated),
                    None => Ok(first),
                }
            }
            HeaderView::Raw(hs) => {
                let mut values = hs
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()));
                let first = values.next().map(|h| h.value);
                match values.next() {
                    Some(_) => Err(Repeated),
                    None => Ok(first),
                }
            }
        }
    }

    pub fn contains(self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }
}

/// `bytes` as text when every byte is visible ASCII, space or tab: the rule of
/// `http::HeaderValue::to_str`, so that both views read a value alike.
pub fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    // A fold without an early exit: the compiler checks many bytes per instruction (a
    // bearer token is some 200 of them).
    if bytes.iter().fold(true, |ok, &b| {
        ok & ((b == b'\t') | (0x20..0x7f).contains(&b))
    }) {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// The request target, split the way `http::Uri` splits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The host of an absolute-form target (`GET http://host/path`).
    pub host: Option<&'a str>,
    /// Absolute form: the path goes upstream rewritten to origin form.
    pub absolute: bool,
}

impl<'a> Target<'a> {
    pub fn of_uri(uri: &'a Uri) -> Target<'a> {
        Target {
            path: uri.path(),
            query: uri.query(),
            host: uri.host(),
            absolute: uri.scheme().is_some(),
        }
    }

    /// An origin-form target (`/path?query`) made only of bytes `http::Uri` takes as they
    /// are; `None` for anything else (absolute form, `*`, a fragment, bytes `Uri` refuses or
    /// decodes), which the lean path leaves to Pingora's session.
    pub fn origin_form(raw: &'a str) -> Option<Target<'a>> {
        const MAX_LEN: usize = u16::MAX as usize - 1;
        if !raw.starts_with('/') || raw.len() > MAX_LEN {
            return None;
        }
        if !raw.bytes().all(plain_target_byte) {
            return None;
        }
        let (path, query) = match memchr::memchr(b'?', raw.as_bytes()) {
            Some(i) => (raw.get(..i)?, Some(raw.get(i + 1..)?)),
            None => (raw, None),
        };
        Some(Target {
            path,
            query,
            host: None,
            absolute: false,
        })
    }
}

/// Bytes an origin-form target may hold for [`Target::origin_form`]: visible ASCII except
/// `#` (a fragment, which `Uri` cuts off) and the ones `Uri` refuses in a path or query.
fn plain_target_byte(b: u8) -> bool {
    (0x21..0x7f).contains(&b) && !matches!(b, b'#' | b'"' | b'<' | b'>' | b'`' | b'{' | b'}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn origin_targets_split_like_uri() {
        let mut checked = 0;
        for b in 0u8..=255 {
            let c = b as char;
            for raw in [
                format!("/a{c}b"),
                format!("/a?q{c}r"),
                format!("/a{c}?{c}"),
                format!("/{c}"),
            ] {
                let uri = Uri::try_from(raw.as_str());
                let Some(t) = Target::origin_form(&raw) else {
                    continue;
                };
                let uri = uri.unwrap_or_else(|e| panic!("{raw:?} passed but Uri refuses it: {e}"));
                assert_eq!(t, Target::of_uri(&uri), "{raw:?}");
                checked += 1;
            }
        }
        // Every visible ASCII byte but the seven excluded, in four positions.
        assert_eq!(checked, (94 - 7) * 4);
        for raw in ["", "*", "http://h/x", "x/y", "/a#f", "/ a", "/\u{e9}"] {
            assert_eq!(Target::origin_form(raw), None, "{raw:?}");
        }
        assert_eq!(
            Target::origin_form("/p?"),
            Some(Target {
                path: "/p",
                query: Some(""),
                host: None,
                absolute: false
            })
        );
    }

    #[test]
    fn both_views_answer_alike() {
        let raw = [
            httparse::Header {
                name: "Host",
                value: b"a.example",
            },
            httparse::Header {
                name: "X-Twice",
                value: b"1",
            },
            httparse::Header {
                name: "x-twice",
                value: b"2",
            },
            httparse::Header {
                name: "X-High",
                value: b"caf\xc3\xa9",
            },
        ];
        let mut map = HeaderMap::new();
        for h in &raw {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        let twice = HeaderName::from_static("x-twice");
        let high = HeaderName::from_static("x-high");
        for view in [HeaderView::Map(&map), HeaderView::Raw(&raw)] {
            assert_eq!(view.get_str(&header::HOST), Some("a.example"));
            assert_eq!(view.get(&twice), Some(&b"1"[..]));
            assert_eq!(view.get_unique(&twice), Err(Repeated));
            assert_eq!(view.get_unique(&header::HOST), Ok(Some(&b"a.example"[..])));
            assert_eq!(view.get_unique(&header::AUTHORIZATION), Ok(None));
            assert!(view.get(&high).is_some());
            assert_eq!(view.get_str(&high), None);
            assert_eq!(
                view.get_str(&high),
                map.get(&high).and_then(|v| v.to_str().ok())
            );
            assert!(!view.contains(&header::CONTENT_LENGTH));
        }
    }
}
