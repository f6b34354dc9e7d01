//! The configuration file: its schema, its validation, and the typed model it becomes.
//!
//! `load`/`parse` turn YAML into a [`Config`] or into [`ConfigErrors`] that list every problem
//! with its key path. Nothing here touches a socket; `crate::runtime` compiles a `Config` into
//! what the request path reads.

mod aggregate;
mod auth;
mod limits;
mod reader;
mod schema;

use std::path::Path;

pub use aggregate::{AggregateConfig, PartConfig, DEFAULT_MAX_PART_BYTES};
pub use auth::{AuthMode, HmacSecret, JwtAlgorithm, JwtConfig, SecretSource, MIN_SECRET_BYTES};
pub use limits::{LimitKey, LimitStore, RateLimitConfig, RedisConfig, DEFAULT_MAX_KEYS};
pub use reader::{ConfigErrors, ConfigIssue};
pub use schema::*;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigIssue {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    parse(&text)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let message = match e.location() {
            Some(loc) => format!(
                "YAML syntax error at line {}, column {}: {}",
                loc.line(),
                loc.column(),
                strip_location(&e.to_string())
            ),
            None => format!("YAML syntax error: {e}"),
        };
        ConfigErrors(vec![ConfigIssue {
            path: String::new(),
            message,
        }])
    })?;
    schema::read(&value)
}

/// serde_yaml appends " at line X column Y" to its messages; the location is reported once.
fn strip_location(message: &str) -> &str {
    match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}
