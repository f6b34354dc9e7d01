//! Routing: from (host, method, path) to a route, compiled once at load.
//!
//! `normalize` owns the path form everything else sees; `pattern` the config's path syntax;
//! `router` the matcher. `strip` applies `strip_prefix`.

pub mod normalize;
pub mod pattern;
pub mod router;

pub use normalize::{normalize_path, PathError};
pub use router::{Lookup, MethodSet, Params, RouteId, Router};

/// Removes `prefix` (literal, segment-aligned, no trailing slash) from a normalised path.
/// The route was validated so that `prefix` leads every path it matches.
pub fn strip_prefix<'p>(path: &'p str, prefix: &str) -> &'p str {
    match path.strip_prefix(prefix) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_prefix;

    #[test]
    fn strips_on_segment_boundaries_only() {
        assert_eq!(strip_prefix("/api/users/7", "/api"), "/users/7");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api/", "/api"), "/");
        assert_eq!(strip_prefix("/apix", "/api"), "/apix");
    }
}
