//! End-to-end tests: the real `portcullis` binary in front of real loopback backends.

mod support;
mod tokens;

mod aggregate;
mod auth;
mod balancing;
mod cli;
mod desync;
mod errors;
mod faults;
mod health;
mod hostile;
mod hygiene;
mod limits;
mod operations;
mod ratelimit;
mod routing;
