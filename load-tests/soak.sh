#!/usr/bin/env bash
# Soak: legitimate traffic mixed with abuse and backend kills against the real gateway, for a
# set time; prints per interval the legitimate requests served and failed, their p50/p99 and
# the gateway's RSS. Exit status 1 if any legitimate request failed. Not part of CI.
#
#   load-tests/soak.sh                  10 minutes
#   DURATION=120 load-tests/soak.sh     2 minutes
#
# Knobs (environment): DURATION=600 (s), INTERVAL=10 (s per report line), CLIENTS=4 (closed-loop
# keep-alive clients, each opening a fresh connection every 50 requests), KILL_EVERY=20 (s
# between backend kills; each killed backend resets its connections and comes back after 5 s),
# PORTCULLIS_BIN=target/release/portcullis, NO_BUILD=1 (use the binaries as built).
#
# Abuse, every 100 ms: two smuggling heads (CL+CL, TE+CL with a hidden request), two path
# confusion attempts (..%2f, %252e), a 100 KiB header, a client leaving mid-body, and a
# slowloris crowd kept at 200 connections (the gateway cuts each at request_header_timeout, 5 s
# here). The gateway: one worker thread, two backends with a 1 s TCP health check, retries 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${NO_BUILD:-0}" != 1 ]]; then
  cargo build --release --bin portcullis --example soak
fi
exec target/release/examples/soak
