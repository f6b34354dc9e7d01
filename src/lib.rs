//! portcullis: an edge API gateway on Pingora.
//!
//! A request's path through the modules: `edge` (header deadline, size limits) → `proxy`
//! (the conductor) → `routing` (normalise, match) → `upstream` (balance, health, retries),
//! with `respond` shaping every answer the gateway makes itself. `config` reads the file;
//! `runtime` is what it compiles to; `server` assembles the process; `admin` serves health.

#![forbid(unsafe_code)]

pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod config;
pub mod demo;
pub mod edge;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod lifecycle;
pub mod observability;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod respond;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod upstream;

#[cfg(test)]
mod test_rng;
