//! Route path patterns as written in the config: exact paths with `{param}` segments, and
//! segment-aware literal prefixes.

/// Most path parameters one route may capture; keeps matching allocation-free.
pub const MAX_PARAMS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    Param(Box<str>),
}

/// `match.path`: `/api/home/{user_id}`. Segments are what lies between slashes after the first:
/// `/` is one empty segment, `/a/` is `a` and an empty segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    pub segments: Vec<Segment>,
}

/// `match.path_prefix`: `/api/users` matches `/api/users` and `/api/users/7`, never
/// `/api/usersx`. Trailing slashes are ignored; `/` matches every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixPattern {
    pub segments: Vec<Box<str>>,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| format!("\"{text}\" must start with '/'"))?;
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let count = body.split('/').count();
        for (i, seg) in body.split('/').enumerate() {
            if seg.is_empty() && i + 1 < count {
                return Err(format!(
                    "\"{text}\" has an empty segment ('//'), which never survives normalisation"
                ));
            }
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner.strip_suffix('}').ok_or_else(|| {
                    format!("\"{seg}\": a parameter is a whole segment, written {{name}}")
                })?;
                if !is_param_name(name) {
                    return Err(format!(
                        "\"{{{name}}}\": parameter names use letters, digits and '_', not starting with a digit"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("parameter {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.into()));
            } else {
                check_literal(seg)?;
                segments.push(Segment::Literal(seg.into()));
            }
        }
        if names.len() > MAX_PARAMS {
            return Err(format!("at most {MAX_PARAMS} parameters per path"));
        }
        Ok(PathPattern { segments })
    }

    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(&**n),
            Segment::Literal(_) => None,
        })
    }
}

impl PrefixPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let body = text
            .strip_prefix('/')
            .ok_or_else(|| format!("\"{text}\" must start with '/'"))?
            .trim_end_matches('/');
        if body.contains(['{', '}']) {
            return Err("prefixes are literal; use match.path for {param} templates".into());
        }
        let mut segments = Vec::new();
        if !body.is_empty() {
            for seg in body.split('/') {
                check_literal(seg)?;
                if seg.is_empty() {
                    return Err(format!("\"{text}\" has an empty segment ('//')"));
                }
                segments.push(seg.into());
            }
        }
        Ok(PrefixPattern { segments })
    }
}

impl super::super::config::RoutePath {
    /// Whether `prefix` (a literal path, no trailing slash) covers the first segments of every
    /// path this pattern matches: the condition for `strip_prefix`.
    pub fn starts_with_segments(&self, prefix: &str) -> bool {
        let Some(body) = prefix.strip_prefix('/') else {
            return false;
        };
        let wanted: Vec<&str> = body.split('/').collect();
        match self {
            Self::Exact(p) => {
                wanted.len() <= p.segments.len()
                    && wanted
                        .iter()
                        .zip(&p.segments)
                        .all(|(w, s)| matches!(s, Segment::Literal(l) if **l == **w))
            }
            Self::Prefix(p) => {
                wanted.len() <= p.segments.len()
                    && wanted.iter().zip(&p.segments).all(|(w, s)| **s == **w)
            }
        }
    }

    /// Whether two patterns match exactly the same paths.
    pub fn same_requests(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Prefix(a), Self::Prefix(b)) => a == b,
            (Self::Exact(a), Self::Exact(b)) => {
                a.segments.len() == b.segments.len()
                    && a.segments.iter().zip(&b.segments).all(|pair| match pair {
                        (Segment::Literal(x), Segment::Literal(y)) => x == y,
                        (Segment::Param(_), Segment::Param(_)) => true,
                        _ => false,
                    })
            }
            _ => false,
        }
    }
}

fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A literal segment must look like what normalisation produces, or it could never match.
fn check_literal(seg: &str) -> Result<(), String> {
    if seg == "." || seg == ".." {
        return Err("'.' and '..' segments can never match a normalised path".into());
    }
    if seg.contains(['{', '}']) {
        return Err(format!(
            "\"{seg}\": a parameter is a whole segment, written {{name}}"
        ));
    }
    if let Some(b) = seg
        .bytes()
        .find(|&b| !super::normalize::is_path_byte(b) || b == b'%')
    {
        return Err(format!(
            "\"{seg}\": character {:?} is not allowed in a route path",
            b as char
        ));
    }
    Ok(())
}
