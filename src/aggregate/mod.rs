//! Composite endpoints: one client call, parallel sub-requests to several clusters, one JSON
//! answer with each part's body under its name, in the configured order.
//!
//! `template` fills part paths; `client` makes the sub-requests. This module runs the parts
//! concurrently under the whole answer's deadline and each part's own, stitches the bodies
//! (validated as JSON, embedded as they came, never re-serialised), and decides the outcome:
//! a failed optional part becomes `null` and is named in `X-Aggregate-Failed`; a failed
//! required part cancels the others at once and fails the answer (502, or 504 on a timeout).

pub mod client;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use tokio::task::JoinSet;

use crate::config::AggregateConfig;
use crate::upstream::Cluster;
use client::SubClient;
use template::{Template, Values};

/// Why a part failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartError {
    /// A value its path needs is missing from the request.
    MissingValue(String),
    /// No healthy backend in its cluster.
    Unavailable,
    Connect,
    Timeout,
    Status(u16),
    NotJson,
    TooLarge,
    /// A broken or reset answer.
    Upstream,
}

impl PartError {
    /// A stable reason, for messages, logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PartError::MissingValue(_) => "missing_value",
            PartError::Unavailable => "no_healthy_backend",
            PartError::Connect => "connect_error",
            PartError::Timeout => "timeout",
            PartError::Status(_) => "bad_status",
            PartError::NotJson => "not_json",
            PartError::TooLarge => "too_large",
            PartError::Upstream => "upstream_error",
        }
    }
}

pub struct Part {
    pub name: Box<str>,
    pub cluster: Arc<Cluster>,
    pub template: Template,
    pub required: bool,
    pub timeout: Duration,
}

pub struct Aggregate {
    /// The route's name, for the part-failure metrics.
    pub route: Box<str>,
    pub timeout: Duration,
    pub max_part_bytes: usize,
    pub parts: Vec<Part>,
}

/// A composite answer that could be built.
#[derive(Debug)]
pub struct Stitched {
    pub body: Vec<u8>,
    /// Names of the optional parts that failed, in order.
    pub failed: Vec<Box<str>>,
}

/// A required part failed.
#[derive(Debug)]
pub struct RequiredFailed {
    pub part: Box<str>,
    pub error: PartError,
}

impl Aggregate {
    pub fn build(
        cfg: &AggregateConfig,
        route: &str,
        cluster: impl Fn(&str) -> Option<Arc<Cluster>>,
    ) -> Option<Aggregate> {
        let parts = cfg
            .parts
            .iter()
            .map(|p| {
                Some(Part {
                    name: p.name.as_str().into(),
                    cluster: cluster(&p.upstream)?,
                    template: p.path.clone(),
                    required: p.required,
                    timeout: p.timeout.unwrap_or(cfg.timeout).min(cfg.timeout),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Aggregate {
            route: route.into(),
            timeout: cfg.timeout,
            max_part_bytes: cfg.max_part_bytes,
            parts,
        })
    }

    /// Runs every part. `headers` go on every sub-request; `key_for` gives the request's key
    /// for a cluster's `hash_key` (consistent hashing), as for proxied requests.
    pub async fn run(
        self: &Arc<Self>,
        client: &Arc<SubClient>,
        values: &(dyn Values + Sync),
        headers: Arc<Vec<(HeaderName, HeaderValue)>>,
        key_for: &(dyn Fn(&crate::config::HashKey) -> Vec<u8> + Sync),
    ) -> Result<Stitched, RequiredFailed> {
        let mut results: Vec<Option<Result<Bytes, PartError>>> = vec![None; self.parts.len()];
        let mut tasks = JoinSet::new();
        for (i, part) in self.parts.iter().enumerate() {
            let target = match part.template.fill(values) {
                Ok(t) => t,
                Err(name) => {
                    results[i] = Some(Err(PartError::MissingValue(name)));
                    continue;
                }
            };
            let (me, client, headers, key) = (
                self.clone(),
                client.clone(),
                headers.clone(),
                key_for(&part.cluster.hash_key),
            );
            tasks.spawn(async move {
                let part = &me.parts[i];
                let fetched = tokio::time::timeout(
                    part.timeout,
                    client.get(&part.cluster, &key, &target, &headers, me.max_part_bytes),
                )
                .await
                .unwrap_or(Err(PartError::Timeout))
                .and_then(|body| {
                    match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                        Ok(_) => Ok(body),
                        Err(_) => Err(PartError::NotJson),
                    }
                });
                (i, fetched)
            });
        }
        // A required part that could not even be addressed fails the answer before any call.
        if let Some(failed) = self.first_required_failure(&results) {
            tasks.abort_all();
            self.count_failures(&results);
            return Err(failed);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(Ok((i, outcome)))) => {
                    let failed_required = self.parts[i].required && outcome.is_err();
                    results[i] = Some(outcome);
                    if failed_required {
                        if let Some(failed) = self.first_required_failure(&results) {
                            tasks.abort_all();
                            self.count_failures(&results);
                            return Err(failed);
                        }
                    }
                }
                // A task cannot panic short of a bug; its part counts as failed.
                Ok(Some(Err(_join_error))) => {}
                Ok(None) => break,
                Err(_deadline) => {
                    tasks.abort_all();
                    break;
                }
            }
        }
        for r in results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Err(PartError::Timeout));
        }
        self.count_failures(&results);
        if let Some(failed) = self.first_required_failure(&results) {
            return Err(failed);
        }
        Ok(self.stitch(results))
    }

    /// `portcullis_composite_part_failures_total` for every part that failed.
    fn count_failures(&self, results: &[Option<Result<Bytes, PartError>>]) {
        for (part, r) in self.parts.iter().zip(results) {
            if let Some(Err(e)) = r {
                crate::observability::metrics().part_failure(&self.route, &part.name, e.reason());
            }
        }
    }

    fn first_required_failure(
        &self,
        results: &[Option<Result<Bytes, PartError>>],
    ) -> Option<RequiredFailed> {
        self.parts.iter().zip(results).find_map(|(p, r)| match r {
            Some(Err(e)) if p.required => Some(RequiredFailed {
                part: p.name.clone(),
                error: e.clone(),
            }),
            _ => None,
        })
    }

    /// `{"a": <body>, "b": null, ...}` in part order.
    fn stitch(&self, results: Vec<Option<Result<Bytes, PartError>>>) -> Stitched {
        let size: usize = results
            .iter()
            .map(|r| match r {
                Some(Ok(b)) => b.len(),
                _ => 4,
            })
            .sum::<usize>()
            + self.parts.iter().map(|p| p.name.len() + 4).sum::<usize>()
            + 2;
        let mut body = Vec::with_capacity(size);
        let mut failed = Vec::new();
        body.push(b'{');
        for (i, (part, result)) in self.parts.iter().zip(results).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            // Part names are validated to [A-Za-z0-9_-]: no JSON escaping needed.
            body.push(b'"');
            body.extend_from_slice(part.name.as_bytes());
            body.extend_from_slice(b"\":");
            match result {
                Some(Ok(bytes)) => body.extend_from_slice(&bytes),
                _ => {
                    body.extend_from_slice(b"null");
                    failed.push(part.name.clone());
                }
            }
        }
        body.push(b'}');
        Stitched { body, failed }
    }
}
