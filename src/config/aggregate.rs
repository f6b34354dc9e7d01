//! The route key `aggregate`: a composite endpoint's parts, deadlines and body cap.

use std::time::Duration;

use serde_yaml::Value;

use super::reader::{index_path, key_path, Reader};
use crate::aggregate::template::Template;

/// Largest part body accepted by default.
pub const DEFAULT_MAX_PART_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Deadline for the whole answer.
    pub timeout: Duration,
    pub max_part_bytes: usize,
    pub parts: Vec<PartConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartConfig {
    pub name: String,
    pub upstream: String,
    pub path: Template,
    pub required: bool,
    /// Deadline for this part; never longer than the whole answer's.
    pub timeout: Option<Duration>,
}

pub(super) fn read_aggregate(
    r: &mut Reader,
    path: &str,
    value: &Value,
    route_params: &[&str],
    has_jwt: bool,
    upstream_names: &[String],
) -> Option<AggregateConfig> {
    let t = r.table(path, value, &["timeout", "max_part_bytes", "parts"])?;
    // An invalid timeout is reported, and the rest is still checked against the default.
    let timeout = t
        .get("timeout")
        .and_then(|v| r.duration(&key_path(path, "timeout"), v))
        .unwrap_or(Duration::from_secs(5));
    let max_part_bytes = t
        .get("max_part_bytes")
        .and_then(|v| r.integer(&key_path(path, "max_part_bytes"), v, 1, 64 << 20))
        .map_or(DEFAULT_MAX_PART_BYTES, |n| n as usize);
    let pp = key_path(path, "parts");
    let Some(pv) = t.get("parts") else {
        r.error(&pp, "is required: at least one part");
        return None;
    };
    let items = r.list(&pp, pv);
    if items.is_empty() && matches!(pv, Value::Sequence(_)) {
        r.error(&pp, "at least one part is required");
    }
    if items.len() > 32 {
        r.error(&pp, "at most 32 parts");
    }
    let mut parts: Vec<PartConfig> = Vec::new();
    // Names seen so far, also of parts that fail for other reasons.
    let mut seen: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = index_path(&pp, i);
        let Some(pt) = r.table(
            &ip,
            item,
            &["name", "upstream", "path", "required", "timeout"],
        ) else {
            continue;
        };
        let name = match pt.get("name").map(|v| r.string(&key_path(&ip, "name"), v)) {
            Some(Some(n)) => n,
            Some(None) => continue,
            None => {
                r.error(&key_path(&ip, "name"), "is required");
                continue;
            }
        };
        if !super::schema::is_name(&name) {
            r.error(
                &key_path(&ip, "name"),
                "names use letters, digits, '_' and '-' only",
            );
        } else if seen.contains(&name) {
            r.error(
                &key_path(&ip, "name"),
                format!("duplicate part name \"{name}\""),
            );
        }
        seen.push(name.clone());
        let up = key_path(&ip, "upstream");
        let upstream = match pt.get("upstream").map(|v| r.string(&up, v)) {
            Some(Some(u)) => {
                if !upstream_names.contains(&u) {
                    r.error(&up, format!("unknown upstream \"{u}\""));
                }
                u
            }
            Some(None) => continue,
            None => {
                r.error(&up, "is required");
                continue;
            }
        };
        let tp = key_path(&ip, "path");
        let template = match pt.get("path").map(|v| r.string(&tp, v)) {
            Some(Some(text)) => match Template::parse(&text, route_params, has_jwt) {
                Ok(t) => t,
                Err(e) => {
                    r.error(&tp, e);
                    continue;
                }
            },
            Some(None) => continue,
            None => {
                r.error(&tp, "is required");
                continue;
            }
        };
        let required = pt
            .get("required")
            .and_then(|v| r.boolean(&key_path(&ip, "required"), v))
            .unwrap_or(false);
        let part_timeout = pt
            .get("timeout")
            .and_then(|v| r.duration(&key_path(&ip, "timeout"), v));
        if part_timeout.is_some_and(|d| d > timeout) {
            r.error(
                &key_path(&ip, "timeout"),
                "is longer than aggregate.timeout, which bounds it",
            );
        }
        parts.push(PartConfig {
            name,
            upstream,
            path: template,
            required,
            timeout: part_timeout,
        });
    }
    Some(AggregateConfig {
        timeout,
        max_part_bytes,
        parts,
    })
}
