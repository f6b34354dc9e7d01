//! Part path templates: `/users/{path.user_id}`, `/orders?user={jwt.sub}&limit={query.limit}`.
//!
//! Parsed and checked at load. Filled per request with every value percent-encoded except
//! `A-Z a-z 0-9 - _ ~` (the dot too), so that a value can never add a path segment, a `..`, a
//! query parameter or a fragment. A value missing in the path part fails the part (the gateway
//! never calls a different path than the one configured); in the query part it becomes empty.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Path,
    Query,
    Header,
    Jwt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value {
        source: Source,
        name: String,
        in_query: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Where placeholder values come from, for one request.
pub trait Values {
    fn get(&self, source: Source, name: &str) -> Option<std::borrow::Cow<'_, str>>;
}

impl Template {
    /// `route_params`: the `{name}`s of the route's own path; `has_jwt`: whether `auth.jwt` exists.
    pub fn parse(text: &str, route_params: &[&str], has_jwt: bool) -> Result<Template, String> {
        if !text.starts_with('/') {
            return Err(format!("\"{text}\" must start with '/'"));
        }
        if text.contains('#') {
            return Err("a part path has no fragment".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        let mut in_query = false;
        while let Some(open) = rest.find('{') {
            let literal = &rest[..open];
            if literal.contains('}') {
                return Err(format!("unbalanced '}}' in \"{text}\""));
            }
            in_query |= literal.contains('?');
            check_literal(literal)?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal.to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in \"{text}\""))?;
            let inner = &rest[open + 1..open + close];
            let (src, name) = inner.split_once('.').ok_or_else(|| {
                format!("{{{inner}}}: write {{path.X}}, {{query.X}}, {{header.X}} or {{jwt.X}}")
            })?;
            let source = match src {
                "path" => Source::Path,
                "query" => Source::Query,
                "header" => Source::Header,
                "jwt" => Source::Jwt,
                other => {
                    return Err(format!(
                        "{{{inner}}}: unknown source \"{other}\" (path, query, header or jwt)"
                    ))
                }
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(format!("{{{inner}}}: \"{name}\" is not a valid name"));
            }
            if source == Source::Path && !route_params.contains(&name) {
                return Err(format!(
                    "{{{inner}}}: the route's path has no {{{name}}} parameter"
                ));
            }
            if source == Source::Jwt && !has_jwt {
                return Err(format!("{{{inner}}}: jwt values need auth.jwt"));
            }
            pieces.push(Piece::Value {
                source,
                name: name.to_string(),
                in_query,
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unbalanced '}}' in \"{text}\""));
        }
        check_literal(rest)?;
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    /// The request target for one request, or the name of the first value missing in the path.
    pub fn fill(&self, values: &dyn Values) -> Result<String, String> {
        let mut out = String::with_capacity(64);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Value {
                    source,
                    name,
                    in_query,
                } => match values.get(*source, name) {
                    // An empty value in the path would call another path (`/u//x`).
                    Some(v) if v.is_empty() && !*in_query => return Err(name.clone()),
                    Some(v) => encode_into(&mut out, &v),
                    None if *in_query => {}
                    None => return Err(name.clone()),
                },
            }
        }
        Ok(out)
    }
}

fn check_literal(l: &str) -> Result<(), String> {
    match l.bytes().find(|&b| b <= b' ' || b >= 0x7f || b == b'\\') {
        Some(b) => Err(format!(
            "character {:?} is not allowed in a part path",
            b as char
        )),
        None => Ok(()),
    }
}

/// Percent-encodes every byte but `A-Z a-z 0-9 - _ ~`.
pub fn encode_into(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;
    use std::collections::HashMap;

    struct Map(HashMap<(u8, &'static str), &'static str>);
    impl Values for Map {
        fn get(&self, source: Source, name: &str) -> Option<Cow<'_, str>> {
            let k = match source {
                Source::Path => 0,
                Source::Query => 1,
                Source::Header => 2,
                Source::Jwt => 3,
            };
            self.0
                .iter()
                .find(|((s, n), _)| *s == k && *n == name)
                .map(|(_, v)| Cow::Borrowed(*v))
        }
    }

    #[test]
    fn parses_and_fills() {
        let t = Template::parse(
            "/orders/{path.id}?user={jwt.sub}&limit={query.limit}",
            &["id"],
            true,
        )
        .unwrap();
        let v = Map(HashMap::from([
            ((0, "id"), "7"),
            ((3, "sub"), "alice"),
            ((1, "limit"), "10"),
        ]));
        assert_eq!(t.fill(&v).unwrap(), "/orders/7?user=alice&limit=10");
    }

    #[test]
    fn hostile_values_stay_inside_their_slot() {
        let t = Template::parse("/u/{path.id}/x?q={query.q}", &["id"], false).unwrap();
        for (value, encoded) in [
            ("../admin", "%2E%2E%2Fadmin"),
            ("..", "%2E%2E"),
            ("a/b", "a%2Fb"),
            ("%2F", "%252F"),
            ("a?b=c", "a%3Fb%3Dc"),
            ("x#frag", "x%23frag"),
            ("a&b=1", "a%26b%3D1"),
            ("é", "%C3%A9"),
            ("a b", "a%20b"),
        ] {
            let v = Map(HashMap::from([((0, "id"), value), ((1, "q"), value)]));
            assert_eq!(
                t.fill(&v).unwrap(),
                format!("/u/{encoded}/x?q={encoded}"),
                "{value}"
            );
        }
    }

    #[test]
    fn missing_values() {
        let t = Template::parse("/u/{header.x-user}?limit={query.limit}", &[], false).unwrap();
        assert_eq!(t.fill(&Map(HashMap::new())).unwrap_err(), "x-user");
        let v = Map(HashMap::from([((2, "x-user"), "u1")]));
        assert_eq!(t.fill(&v).unwrap(), "/u/u1?limit=");
        let empty = Map(HashMap::from([((2, "x-user"), "")]));
        assert_eq!(
            t.fill(&empty).unwrap_err(),
            "x-user",
            "an empty path value is missing"
        );
    }

    #[test]
    fn load_time_errors() {
        assert!(Template::parse("users/{path.id}", &["id"], false).is_err());
        assert!(Template::parse("/u/{path.nope}", &["id"], false)
            .unwrap_err()
            .contains("no {nope}"));
        assert!(Template::parse("/u/{jwt.sub}", &[], false)
            .unwrap_err()
            .contains("auth.jwt"));
        assert!(Template::parse("/u/{cookie.x}", &[], false)
            .unwrap_err()
            .contains("unknown source"));
        assert!(Template::parse("/u/{path.id", &["id"], false)
            .unwrap_err()
            .contains("unclosed"));
        assert!(Template::parse("/u/{id}", &["id"], false).is_err());
        assert!(Template::parse("/u/x}", &[], false).is_err());
        assert!(Template::parse("/u#x", &[], false).is_err());
    }
}
