#!/usr/bin/env bash
# portcullis vs. nginx reverse-proxy benchmark.
#
# Starts (all on 127.0.0.1, all torn down again on exit):
#   - a fast upstream:       nginx, 1 worker, `return 200 '{"ok":true,"service":"bench"}'`
#   - the reference proxy:   nginx, 1 worker, proxy_pass with an upstream keepalive pool
#   - the proxy under test:  portcullis, threads: 1, one catch-all route to the same upstream
# then runs alternating wrk rounds against both proxies and prints req/s, p50, p99
# per round, the medians, and the portcullis/nginx ratio of median req/s.
#
# This is a benchmark, not a test: it is not part of CI. See load-tests/README.md.
#
# Knobs (environment):
#   DURATION=4          seconds per measured wrk round
#   ROUNDS=3            number of rounds (each round measures both proxies)
#   CONNECTIONS=32      wrk -c
#   WRK_THREADS=1       wrk -t
#   WARMUP=1            seconds of warm-up per proxy and scenario before round 1 (0 = none)
#   PORTCULLIS_BIN      default: target/release/portcullis (built with `cargo build --release`
#                       if that default path is missing; an explicit path must exist)
#   NO_BUILD=1          never run cargo; fail if a binary is missing
#   UPSTREAM_PORT=18081 NGINX_PORT=18082 PORTCULLIS_PORT=18083 ADMIN_PORT=18084
#                       if a port is not set explicitly and the default is busy, the next
#                       free port is used; an explicitly set port must be free
#   SCENARIOS=baseline  space-separated list of scenarios to run (see "scenarios" in this file):
#                       baseline   GET /        plain proxy (the catch-all route)
#                       jwt_hs256  GET /jwt-hs  portcullis `auth: required`, one HS256 token
#                       jwt_es256  GET /jwt-es  portcullis `auth: required`, one ES256 token (kid ec256)
#                       ratelimit  GET /rl      portcullis `rate_limit: [bench_limit]`, never refusing
#                       composite  GET /composite  three parts, all on the upstream (-c8; the
#                                  "nginx" column is the upstream called directly)
#                       composite1 composite2 composite3 composite5 composite8: the same with
#                                  1, 2, 3, 5, 8 parts (GET /compositeN), for the cost per
#                                  part; each also prints portcullis CPU µs per answer
#                       plain8     GET /  the plain proxy at 8 connections, with CPU µs per answer
#                       routes1    GET /api/v1/svc5000/items/42, a `{id}` template route
#                       routes10k  the same among 10,000 routes (run routes1 and routes10k in
#                                  separate invocations: a config holds every selected
#                                  scenario's routes)
#                       nginx proxies the same paths plainly; with baseline in the list, the
#                       report also gives each scenario's req/s relative to baseline per proxy
#   MINT_TOKEN_BIN      token minter for the jwt_* scenarios, default:
#                       target/release/examples/mint_token (built with `cargo build --release
#                       --example mint_token` if that default path is missing and NO_BUILD!=1;
#                       an explicit path must exist)
#   ACCESS_LOG=         portcullis server.access_log (off, stdout or a file path; default: unset,
#                       i.e. off)
#   PIN_CPUS=0          1 = taskset: upstream + wrk on CPU 0, the proxy under test on CPU 1
#   RESULT_FILE=        write a markdown snippet with the results to this path
#   RESULT_JSON=        write the results as JSON to this path
#   KEEP_TMP=0          1 = keep the temp dir (configs, logs) after exit
#   NGINX_BIN, WRK_BIN  override the binaries (default: from PATH / /usr/sbin)
#   DEBUG_STANDIN=0     1 = replace portcullis with a second nginx proxy (nginx vs nginx);
#                       checks the harness itself and shows the noise floor of the ratio
set -euo pipefail

# ---------------------------------------------------------------- settings
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=load-tests/lib.sh
source "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (all knobs are environment variables, see --help)" >&2; exit 2 ;;
esac

DURATION="${DURATION:-4}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-1}"
PIN_CPUS="${PIN_CPUS:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
NO_BUILD="${NO_BUILD:-0}"
DEBUG_STANDIN="${DEBUG_STANDIN:-0}"
SCENARIOS="${SCENARIOS:-baseline}"
RESULT_FILE="${RESULT_FILE:-}"
RESULT_JSON="${RESULT_JSON:-}"
DEFAULT_PORTCULLIS_BIN="target/release/portcullis"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-$DEFAULT_PORTCULLIS_BIN}"
DEFAULT_MINT_TOKEN_BIN="target/release/examples/mint_token"
MINT_TOKEN_BIN="${MINT_TOKEN_BIN:-$DEFAULT_MINT_TOKEN_BIN}"
READY_TIMEOUT=10           # seconds to wait for each server to answer 200
EXPECTED_BODY='{"ok":true,"service":"bench"}'

for v in DURATION ROUNDS CONNECTIONS WRK_THREADS WARMUP; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer, got '${!v}'" >&2; exit 2; }
done
(( ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1 && WRK_THREADS >= 1 )) ||
  { echo "ROUNDS, DURATION, CONNECTIONS and WRK_THREADS must be >= 1" >&2; exit 2; }
(( CONNECTIONS >= WRK_THREADS )) || { echo "CONNECTIONS must be >= WRK_THREADS (wrk rule)" >&2; exit 2; }

log()  { printf '[bench] %s\n' "$*" >&2; }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup
TMP=""
PIDS=()            # "name:pid:signal" for every long-running process we started
WRK_PID=""
POLICY_RC_CREATED=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n "$WRK_PID" ]]; then kill -TERM "$WRK_PID" 2>/dev/null; wait "$WRK_PID" 2>/dev/null; fi
  local i entry name pid sig
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do        # reverse start order: proxies before upstream
    entry="${PIDS[$i]}"; name="${entry%%:*}"; entry="${entry#*:}"; pid="${entry%%:*}"; sig="${entry#*:}"
    stop_pid "$name" "$pid" "$sig"
  done
  if (( POLICY_RC_CREATED )); then rm -f /usr/sbin/policy-rc.d; fi
  if [[ -n "$TMP" && -d "$TMP" ]]; then
    if (( rc != 0 && rc != 130 && rc != 143 )); then   # failure, not an interrupt: show logs
      local f
      for f in "$TMP"/*.log; do
        [[ -s "$f" ]] || continue
        log "---- last lines of $(basename "$f") ----"
        tail -n 20 "$f" >&2
      done
    fi
    if [[ "$KEEP_TMP" == 1 ]]; then log "kept temp dir $TMP"; else rm -rf "$TMP"; fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- scenarios
# A scenario is a name plus: extra nginx `location` blocks, extra portcullis `routes`
# entries, and a bench_pair call. To add one:
#   1. write scenario_NAME_nginx   -> prints nginx location blocks (inside `server {}`)
#   2. write scenario_NAME_routes  -> prints portcullis route list items (YAML, 2-space indent)
#   3. write scenario_NAME_run     -> calls: bench_pair NAME URL_NGINX URL_PORTCULLIS [wrk args...]
#      (wrk args, e.g. -H "Authorization: Bearer $TOKEN", go to both proxies; the -H
#      headers also go to the curl that checks each URL answers 200 with the upstream body)
#   4. run with SCENARIOS="baseline NAME"
# Optional hooks:
#   scenario_NAME_toplevel -> prints top-level portcullis YAML sections (`auth:`,
#      `rate_limits:`), emitted only when NAME is selected. A block printed identically by
#      several selected scenarios is emitted once (jwt_hs256 and jwt_es256 share `auth:`).
#      When an `auth:` block is emitted, routes default to `auth: required`, so every route
#      that must stay open (the catch-all `all`, ratelimit's `/rl`) prints $(auth_none).
#   scenario_NAME_setup    -> runs once the temp dir $TMP exists, before the configs are
#      written: key files, tokens (see mint_token).
#   scenario_NAME_needs    -> prints the tools NAME needs besides the proxies: `mint_token`
#      (resolved, and built if need be, before the busy-CPU check).
# Specific routes must come before the catch-all "/" route, which is always last.
# Upstream keeps one response for every path, so new scenarios need no upstream change.

scenario_baseline_nginx()  { :; }   # served by the catch-all `location /`
scenario_baseline_routes() { :; }   # served by the catch-all route `all`
scenario_baseline_run()    { bench_pair baseline "$NGINX_URL/" "$PORTCULLIS_URL/"; }

# -- JWT (jwt_hs256, jwt_es256). nginx OSS cannot verify JWTs, so its side is a plain
# proxy_pass of the same path; the number that matters is portcullis jwt_* vs portcullis
# baseline. wrk repeats ONE token, so after the first request portcullis answers from its
# verified-token cache: these scenarios measure the cached path, not signature checks.
JWT_FIXTURES="$REPO_ROOT/tests/fixtures/jwt"
jwt_toplevel() {   # the same block for both JWT scenarios, so it is emitted once
  cat <<EOF
auth:
  jwt:
    algorithms: [HS256, ES256]
    secrets: [{ file: $TMP/hs.key }]
    jwks_file: $JWT_FIXTURES/jwks.json
EOF
}
jwt_secret() {     # HMAC secret: 32 random bytes as 64 hex chars (>= 32 bytes); shared by both
  [[ -s "$TMP/hs.key" ]] && return
  ( umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$TMP/hs.key"; echo >>"$TMP/hs.key" )
}
jwt_route() {      # name path
  cat <<EOF
  - name: $1
    match: { path_prefix: $2 }
    upstream: bench
    auth: required
EOF
}
jwt_run() {        # name path token
  check_status 401 "$PORTCULLIS_URL$2"     # without the token: refused, so auth really runs
  bench_pair "$1" "$NGINX_URL$2" "$PORTCULLIS_URL$2" -H "Authorization: Bearer $3"
}

scenario_jwt_hs256_needs()    { echo mint_token; }
scenario_jwt_hs256_toplevel() { jwt_toplevel; }
scenario_jwt_hs256_setup()    { jwt_secret; TOKEN_HS256="$(mint_token HS256 "$TMP/hs.key")"; }
scenario_jwt_hs256_nginx()    { echo '        location /jwt-hs { proxy_pass http://up; }'; }
scenario_jwt_hs256_routes()   { jwt_route jwt-hs /jwt-hs; }
scenario_jwt_hs256_run()      { jwt_run jwt_hs256 /jwt-hs "$TOKEN_HS256"; }

scenario_jwt_es256_needs()    { echo mint_token; }
scenario_jwt_es256_toplevel() { jwt_toplevel; }
scenario_jwt_es256_setup()    { jwt_secret; TOKEN_ES256="$(mint_token ES256 "$JWT_FIXTURES/ec256.der" ec256)"; }
scenario_jwt_es256_nginx()    { echo '        location /jwt-es { proxy_pass http://up; }'; }
scenario_jwt_es256_routes()   { jwt_route jwt-es /jwt-es; }
scenario_jwt_es256_run()      { jwt_run jwt_es256 /jwt-es "$TOKEN_ES256"; }

# -- ratelimit: one local sliding-window policy keyed on the client IP, with a limit that
# is never reached, so the cost of the check (and of its RateLimit-* response headers) is
# measured, not refusals. All wrk connections come from 127.0.0.1: one key.
scenario_ratelimit_toplevel() {
  cat <<'EOF'
rate_limits:
  bench_limit: { key: client_ip, limit: 1000000000, window: 1m }
EOF
}
scenario_ratelimit_nginx()  { echo '        location /rl { proxy_pass http://up; }'; }
scenario_ratelimit_routes() {
  cat <<'EOF'
  - name: rl
    match: { path_prefix: /rl }
    upstream: bench
    rate_limit: [bench_limit]
EOF
  auth_none
}
scenario_ratelimit_run() {
  check_header "$PORTCULLIS_URL/rl" ratelimit-policy   # the limiter really runs
  bench_pair ratelimit "$NGINX_URL/rl" "$PORTCULLIS_URL/rl"
}

# -- composite: one route whose three parts all call the bench upstream, in parallel. The
# "nginx" column of this scenario is the upstream called directly (one part's latency), so the
# ratio reads as composite vs direct, and the p50 gap as the cost of fanning out and stitching.
# Moderate load: 8 connections.
scenario_composite_nginx()  { :; }
scenario_composite_routes() {
  cat <<'EOF2'
  - name: composite
    match: { path: /composite }
    aggregate:
      timeout: 1s
      parts:
        - { name: a, upstream: bench, path: /a, required: true }
        - { name: b, upstream: bench, path: /b }
        - { name: c, upstream: bench, path: /c }
EOF2
  auth_none
}
scenario_composite_run() {
  local body
  body="$(curl -s --max-time 2 "$PORTCULLIS_URL/composite")"
  [[ "$body" == "{\"a\":$EXPECTED_BODY,\"b\":$EXPECTED_BODY,\"c\":$EXPECTED_BODY}" ]] ||
    die "composite answered '$body'"
  log "composite: the 'nginx' column is the upstream called directly"
  local CONNECTIONS=8 BODY_CHECK=0
  bench_pair composite "http://127.0.0.1:$UPSTREAM_PORT/" "$PORTCULLIS_URL/composite"
}

# -- composite1, composite2, composite3, composite5, composite8: composite with N parts
# (p1 required, the rest optional, all on the bench upstream), for the cost of each extra
# part. Besides req/s, each prints the CPU portcullis used per composite answer: utime+stime
# of the process (all threads) over the scenario, divided by the requests wrk counted against
# it (warm-up included). The upstream and wrk share the machine's CPUs and get busier with
# every part, so req/s alone mixes the gateway's cost with theirs; CPU per answer does not.
composite_n_routes() {  # n
  local i
  echo "  - name: composite$1"
  echo "    match: { path: /composite$1 }"
  echo "    aggregate:"
  echo "      timeout: 1s"
  echo "      parts:"
  for ((i = 1; i <= $1; i++)); do
    echo "        - { name: p$i, upstream: bench, path: /p$i$( ((i == 1)) && echo ', required: true') }"
  done
  auth_none
}
proc_cpu_ticks() {  # pid -> utime+stime in clock ticks (all threads)
  proc_ticks "$1" | awk '{ print $1 + $2 }'
}
wrk_requests() {  # files... -> total requests wrk completed (a missing file, e.g. no warm-up: none)
  local f
  for f in "$@"; do if [[ -f "$f" ]]; then cat "$f"; fi; done | awk '/requests in/ { n += $1 } END { print n + 0 }'
}
bench_pair_cpu() {  # name url_nginx url_portcullis [wrk args...]  -- bench_pair, then log
  local name="$1" pid t0 t1 reqs hz   # the proxy under test's CPU per answer over the scenario
  pid="$(pid_of "$SUT_LABEL")"
  t0="$(proc_cpu_ticks "$pid")"
  bench_pair "$@"
  t1="$(proc_cpu_ticks "$pid")"
  reqs="$(wrk_requests "$TMP/warmup-$name-$SUT_LABEL.txt" "$TMP/wrk-$name-$SUT_LABEL-"*.txt)"
  hz="$(getconf CLK_TCK)"
  log "$(awk -v n="$name" -v t="$((t1 - t0))" -v hz="$hz" -v r="$reqs" -v l="$SUT_LABEL" \
    'BEGIN { printf "%s: %s CPU %.2f s for %d answers = %.2f us per answer", n, l, t / hz, r, (r > 0) ? 1e6 * t / hz / r : 0 }')"
}
composite_n_run() {  # n
  local n="$1" i body="{" want
  for ((i = 1; i <= n; i++)); do
    ((i > 1)) && body+=","
    body+="\"p$i\":$EXPECTED_BODY"
  done
  want="$body}"
  body="$(curl -s --max-time 2 "$PORTCULLIS_URL/composite$n")"
  [[ "$body" == "$want" ]] || die "composite$n answered '$body'"
  log "composite$n: the 'nginx' column is the upstream called directly"
  local CONNECTIONS=8 BODY_CHECK=0
  bench_pair_cpu "composite$n" "http://127.0.0.1:$UPSTREAM_PORT/" "$PORTCULLIS_URL/composite$n"
}
for n in 1 2 3 5 8; do
  eval "scenario_composite${n}_nginx()  { :; }"
  eval "scenario_composite${n}_routes() { composite_n_routes $n; }"
  eval "scenario_composite${n}_run()    { composite_n_run $n; }"
done
# plain8: the plain proxy at the composite scenarios' 8 connections, with the same CPU per
# answer: what one proxied request costs, next to what one composite part costs.
scenario_plain8_nginx()  { :; }
scenario_plain8_routes() { :; }
scenario_plain8_run()    { local CONNECTIONS=8; bench_pair_cpu plain8 "$NGINX_URL/" "$PORTCULLIS_URL/"; }

# -- routes1, routes10k: the router's cost as the route table grows, end to end. Both send
# GET /api/v1/svc5000/items/42 to one `{id}` template route; routes10k adds 9,999 other
# routes of the shapes benches/router.rs uses (templates, exact paths, prefixes, a fifth of
# them host-specific over 50 tenant hosts), routes1 only that one. Run them in separate
# invocations and compare each run's portcullis/nginx ratio: nginx proxies the path plainly
# in both, so its req/s shows how the machine drifted between the two runs; both also print
# portcullis CPU per answer, which the other load on the machine disturbs less.
routes_target() {
  printf '  - name: svc5000\n    match: { path: "/api/v1/svc5000/items/{id}" }\n    upstream: bench\n'
  auth_none
}
routes_filler() {  # i -> route i of the big table (never 5000)
  local i="$1" m
  case $((i % 10)) in
    0|1|2) m="path: \"/api/v1/svc$i/items/{id}\", methods: [GET, POST]" ;;
    3)     m="path: \"/api/v1/svc$i/users/{user}/orders/{order}\", methods: [GET]" ;;
    4|5)   m="path: /api/v1/svc$i/status, methods: [GET]" ;;
    6)     m="path_prefix: /static/svc$i, methods: [GET, HEAD]" ;;
    7)     m="path_prefix: /api/v2/svc$i" ;;
    8)     m="path: \"/api/v1/svc$i/items/{id}\", methods: [GET], host: tenant$((i % 50)).example.com" ;;
    9)     m="path: /svc$i/health, methods: [GET], host: tenant$((i % 50)).example.com" ;;
  esac
  printf '  - name: r%d\n    match: { %s }\n    upstream: bench\n' "$i" "$m"
  auth_none
}
routes_url() { echo "/api/v1/svc5000/items/42"; }
scenario_routes1_nginx()    { :; }
scenario_routes1_routes()   { routes_target; }
scenario_routes1_run()      { bench_pair_cpu routes1 "$NGINX_URL$(routes_url)" "$PORTCULLIS_URL$(routes_url)"; }
scenario_routes10k_nginx()  { :; }
scenario_routes10k_routes() {
  local i
  for ((i = 0; i < 10000; i++)); do
    if ((i == 5000)); then routes_target; else routes_filler "$i"; fi
  done
}
scenario_routes10k_run()    { bench_pair_cpu routes10k "$NGINX_URL$(routes_url)" "$PORTCULLIS_URL$(routes_url)"; }

for s in $SCENARIOS; do
  declare -F "scenario_${s}_run" >/dev/null || die "unknown scenario '$s'"
done
scenarios_need() {  # tool  -- does any selected scenario need it?
  local s
  for s in $SCENARIOS; do
    declare -F "scenario_${s}_needs" >/dev/null || continue
    [[ " $("scenario_${s}_needs") " == *" $1 "* ]] && return 0
  done
  return 1
}

# ---------------------------------------------------------------- dependencies
apt_install() {  # pkg...
  command -v apt-get >/dev/null || die "missing $*, and no apt-get to install it"
  log "installing: $*"
  # The nginx package must not start the distro's nginx service (port 80):
  # without a policy-rc.d, add one that forbids service starts, for the install only.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    POLICY_RC_CREATED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "$@" >/dev/null; then
    as_root apt-get update >/dev/null
    as_root apt-get install -y --no-install-recommends "$@" >/dev/null
  fi
  if (( POLICY_RC_CREATED )); then as_root rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
}

find_nginx() {
  if [[ -n "${NGINX_BIN:-}" ]]; then return; fi
  NGINX_BIN="$(command -v nginx || true)"
  [[ -z "$NGINX_BIN" && -x /usr/sbin/nginx ]] && NGINX_BIN=/usr/sbin/nginx
  return 0
}
find_nginx
missing=()
[[ -n "$NGINX_BIN" ]] || missing+=(nginx)
[[ -n "${WRK_BIN:-}" ]] || WRK_BIN="$(command -v wrk || true)"
[[ -n "$WRK_BIN" ]] || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if (( ${#missing[@]} )); then
  apt_install "${missing[@]}"
  find_nginx
  [[ -n "$WRK_BIN" ]] || WRK_BIN="$(command -v wrk || true)"
fi
[[ -x "$NGINX_BIN" ]] || die "nginx not found after install"
[[ -x "$WRK_BIN" ]] || die "wrk not found after install"

if [[ "$PIN_CPUS" == 1 ]]; then
  command -v taskset >/dev/null || die "PIN_CPUS=1 needs taskset (util-linux)"
  (( $(nproc) >= 2 )) || die "PIN_CPUS=1 needs at least 2 CPUs"
  PIN_LOAD=(taskset -c 0)     # upstream + wrk
  PIN_SUT=(taskset -c 1)      # proxy under test (nginx proxy / portcullis)
else
  PIN_LOAD=()
  PIN_SUT=()
fi

# ---------------------------------------------------------------- portcullis binary
if [[ "$DEBUG_STANDIN" != 1 ]]; then
  if [[ ! -x "$PORTCULLIS_BIN" ]]; then
    if [[ "$PORTCULLIS_BIN" == "$DEFAULT_PORTCULLIS_BIN" && "$NO_BUILD" != 1 ]]; then
      log "$PORTCULLIS_BIN missing: cargo build --release"
      cargo build --release
    fi
    [[ -x "$PORTCULLIS_BIN" ]] || die "portcullis binary not found/executable: $PORTCULLIS_BIN"
  fi
  if [[ "$PORTCULLIS_BIN" == "$DEFAULT_PORTCULLIS_BIN" ]] &&
     [[ -n "$(find src Cargo.toml Cargo.lock -newer "$PORTCULLIS_BIN" -print -quit 2>/dev/null)" ]]; then
    log "WARNING: sources are newer than $PORTCULLIS_BIN; run 'cargo build --release' to bench current code"
  fi
  case "$PORTCULLIS_BIN" in /*) ;; *) PORTCULLIS_BIN="$REPO_ROOT/$PORTCULLIS_BIN" ;; esac
fi

# ---------------------------------------------------------------- token minter (JWT scenarios)
# examples/mint_token.rs signs the tokens that wrk sends. Only needed when a selected
# scenario says so; with DEBUG_STANDIN=1 nginx ignores tokens, so a placeholder is used.
if scenarios_need mint_token && [[ "$DEBUG_STANDIN" != 1 ]]; then
  if [[ ! -x "$MINT_TOKEN_BIN" ]]; then
    if [[ "$MINT_TOKEN_BIN" == "$DEFAULT_MINT_TOKEN_BIN" && "$NO_BUILD" != 1 ]]; then
      log "$MINT_TOKEN_BIN missing: cargo build --release --example mint_token"
      cargo build --release --example mint_token
    fi
    [[ -x "$MINT_TOKEN_BIN" ]] || die "token minter not found/executable: $MINT_TOKEN_BIN (set MINT_TOKEN_BIN)"
  fi
  case "$MINT_TOKEN_BIN" in /*) ;; *) MINT_TOKEN_BIN="$REPO_ROOT/$MINT_TOKEN_BIN" ;; esac
fi
mint_token() {  # ALG KEY [KID] [SUB] [TTL_SECS]  -> prints a signed JWT
  local tok
  if [[ "$DEBUG_STANDIN" == 1 ]]; then echo "debug-standin.placeholder.token"; return; fi
  tok="$("$MINT_TOKEN_BIN" "$@")" || die "mint_token $* failed"
  [[ "$tok" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] || die "mint_token $* printed '$tok', not a JWT"
  printf '%s\n' "$tok"
}

# A busy machine (e.g. a cargo build) makes the numbers meaningless; say so up front.
# CPU busy % over 0.5 s from /proc/stat (all CPUs), plus any running rustc/cc.
BUSY_PCT="?"
if [[ -r /proc/stat ]]; then
  read -r t0 i0 < <(cpu_sample); sleep 0.5; read -r t1 i1 < <(cpu_sample)
  BUSY_PCT="$(awk -v dt=$((t1 - t0)) -v di=$((i1 - i0)) 'BEGIN { printf "%.0f", (dt > 0) ? 100 * (dt - di) / dt : 0 }')"
  if (( BUSY_PCT > 20 )); then
    log "WARNING: CPUs are ${BUSY_PCT}% busy before starting; results will be noisy"
  fi
fi
if pgrep -x 'rustc|cc1|cc1plus|ld|cargo' >/dev/null 2>&1; then
  log "WARNING: a compiler (cargo/rustc/cc) is running; results will be noisy"
fi

# ---------------------------------------------------------------- ports & temp dir
USED_PORTS=" "
pick_port UPSTREAM_PORT 18081
pick_port NGINX_PORT 18082
pick_port PORTCULLIS_PORT 18083
pick_port ADMIN_PORT 18084

TMP="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")"
chmod 755 "$TMP"     # nginx workers may run as an unprivileged user
mkdir -p "$TMP/nginx-temp"

for s in $SCENARIOS; do
  if declare -F "scenario_${s}_setup" >/dev/null; then "scenario_${s}_setup"; fi
done

# ---------------------------------------------------------------- configs
write_proxy_conf() {  # name port
  local s
  { nginx_common "$1"
    cat <<EOF
http {
$(nginx_http_common "$1")
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 1000000;   # default 1000 would recycle upstream conns
    }
    server {
        listen 127.0.0.1:$2;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
EOF
    for s in $SCENARIOS; do "scenario_${s}_nginx"; done
    cat <<EOF
        location / {
            proxy_pass http://up;
        }
    }
}
EOF
  } >"$TMP/$1.conf"
}

# Top-level sections from the selected scenarios' scenario_NAME_toplevel hooks, each
# distinct block once. Computed before any route is written (auth_none depends on it).
PORTCULLIS_TOPLEVEL=""
AUTH_BLOCK=0
collect_toplevel() {
  local s block b seen=()
  for s in $SCENARIOS; do
    declare -F "scenario_${s}_toplevel" >/dev/null || continue
    block="$("scenario_${s}_toplevel")"
    [[ -n "$block" ]] || continue
    for b in "${seen[@]}"; do [[ "$b" == "$block" ]] && continue 2; done
    seen+=("$block")
    PORTCULLIS_TOPLEVEL+="$block"$'\n'
  done
  if grep -q '^auth:' <<<"$PORTCULLIS_TOPLEVEL"; then AUTH_BLOCK=1; fi
}
# With auth.jwt configured, routes default to `auth: required`: open routes must say so.
auth_none() { if (( AUTH_BLOCK )); then echo '    auth: none'; fi; }

write_portcullis_conf() {
  local s
  collect_toplevel
  { cat <<EOF
server:
  listen: ["127.0.0.1:$PORTCULLIS_PORT"]
  admin_listen: "127.0.0.1:$ADMIN_PORT"
  threads: 1
  pid_file: $TMP/portcullis.pid
  upgrade_sock: $TMP/portcullis-upgrade.sock
  grace_period: 1s
  graceful_shutdown_timeout: 1s
${ACCESS_LOG:+  access_log: $ACCESS_LOG}
upstreams:
  bench:
    backends: ["127.0.0.1:$UPSTREAM_PORT"]
EOF
    printf '%s' "$PORTCULLIS_TOPLEVEL"
    echo "routes:"
    for s in $SCENARIOS; do "scenario_${s}_routes"; done
    cat <<EOF
  - name: all
    match: { path_prefix: / }
    upstream: bench
EOF
    auth_none
  } >"$TMP/portcullis.yaml"
}

# ---------------------------------------------------------------- process control
start_bg() {  # name stop-signal cmd...   (stdout+stderr -> $TMP/name.log)
  local name="$1" sig="$2" pid; shift 2
  # setsid: own process group (pgid == pid), so cleanup can sweep children too and
  # a Ctrl-C reaches only this script, whose trap then stops everything in order.
  # (A background job of a script is never a group leader, so setsid does not fork.)
  setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$name:$pid:$sig")
  log "started $name (pid $pid): $*"
}
start_nginx() {  # name pin...
  local name="$1"; shift
  "$NGINX_BIN" -t -q -p "$TMP" -e "$TMP/$name-error.log" -c "$TMP/$name.conf" >"$TMP/$name-configtest.log" 2>&1 ||
    { cat "$TMP/$name-configtest.log" >&2; die "nginx config $TMP/$name.conf is invalid"; }
  start_bg "$name" TERM "$@" "$NGINX_BIN" -p "$TMP" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
}

wait_ready() {  # name url   -- poll until HTTP 200, max READY_TIMEOUT s; fail fast if the process died
  local name="$1" url="$2" pid code deadline
  pid="$(pid_of "$name")"
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    kill -0 "$pid" 2>/dev/null || die "$name (pid $pid) exited before becoming ready (log: $TMP/$name.log)"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)"
    [[ "$code" == 200 ]] && break
    (( SECONDS < deadline )) || die "$name not ready: $url answered '${code:-nothing}' for ${READY_TIMEOUT}s"
    sleep 0.05
  done
  log "$name ready at $url"
}

check_body() {  # url [curl args...]  -- must answer 200 with the bench upstream's body
  local url="$1" out code body; shift
  out="$(curl -s --max-time 2 -w '\n%{http_code}' "$@" "$url" 2>/dev/null || true)"
  code="${out##*$'\n'}"; body="${out%$'\n'*}"
  [[ "$code" == 200 && "$body" == "$EXPECTED_BODY" ]] ||
    die "$url answered ${code:-nothing} '$body', expected 200 '$EXPECTED_BODY'"
}
check_status() {  # code url [curl args...]  -- portcullis only; skipped for the nginx stand-in
  local want="$1" url="$2" code; shift 2
  [[ "$DEBUG_STANDIN" == 1 ]] && return
  code="$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$@" "$url" 2>/dev/null || true)"
  [[ "$code" == "$want" ]] || die "$url answered ${code:-nothing}, expected $want"
  log "$url answers $want as expected"
}
check_header() {  # url header [curl args...]  -- portcullis only; the response must carry it
  local url="$1" h="$2"; shift 2
  [[ "$DEBUG_STANDIN" == 1 ]] && return
  curl -s -o /dev/null -D - --max-time 2 "$@" "$url" 2>/dev/null | grep -qi "^$h:" ||
    die "$url answered without a $h header"
  log "$url answers with a $h header as expected"
}

# ---------------------------------------------------------------- wrk + parsing
WRK_ARGS=(-t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency)

run_wrk() {  # outfile duration url [wrk args...]   -- in background so traps fire promptly
  local out="$1" dur="$2"; shift 2
  "${PIN_LOAD[@]}" "$WRK_BIN" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${dur}s" --latency "$@" >"$out" 2>&1 </dev/null &
  WRK_PID=$!
  if ! wait "$WRK_PID"; then WRK_PID=""; cat "$out" >&2; die "wrk failed: $*"; fi
  WRK_PID=""
}

# prints: rps p50_ms p99_ms errors  (errors = non-2xx/3xx responses + socket errors)
parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s")  return n * 1000
      if (u == "m")  return n * 60000
      bad = 1; return -1
    }
    /^ *50% / { p50 = ms($2) }
    /^ *99% / { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { for (i = 3; i <= NF; i++) { v = $i; gsub(/,/, "", v); if (v ~ /^[0-9]+$/) err += v } }
    END {
      if (bad || rps == "" || p50 == "" || p99 == "") exit 1
      printf "%.2f %.3f %.3f %d\n", rps, p50, p99, err
    }' "$1"
}

# table row: label proxy "rps p50 p99 errors"
row() { local v; read -ra v <<<"$3"; printf '%-8s %-14s %10.0f %9.3f %9.3f %7s\n' "$1" "$2" "${v[@]}"; }

# ---------------------------------------------------------------- results
declare -A RES=()      # "scenario|proxy|round" -> "rps p50 p99 errors"
RUN_SCENARIOS=()
WRK_EXTRA_DESC=()      # per scenario: extra wrk args, for the report
SUT_LABEL="portcullis"
[[ "$DEBUG_STANDIN" == 1 ]] && SUT_LABEL="nginx-standin"

bench_one() {  # scenario proxy round url [wrk args...]
  local sc="$1" px="$2" r="$3" url="$4" out vals; shift 4
  out="$TMP/wrk-$sc-$px-$r.txt"
  run_wrk "$out" "$DURATION" "$@" "$url"
  vals="$(parse_wrk "$out")" || { cat "$out" >&2; die "could not parse wrk output ($out)"; }
  RES["$sc|$px|$r"]="$vals"
  local a; read -ra a <<<"$vals"
  log "$(printf '%-10s round %d %-14s %10s req/s  p50 %7s ms  p99 %7s ms  errors %s' "$sc" "$r" "$px" "${a[@]}")"
  (( a[3] == 0 )) || log "WARNING: $px had ${a[3]} errors (non-2xx or socket errors) in round $r of $sc"
}

bench_pair() {  # name url_nginx url_portcullis [wrk args...]
  local name="$1" un="$2" up="$3" r; shift 3
  RUN_SCENARIOS+=("$name")
  local desc="" a curl_h=() i
  (( $# == 0 )) || desc="$(printf '%q ' "$@")"
  desc="$(sed -E 's/(Bearer\\ )[A-Za-z0-9._-]+/\1<token>/g' <<<"$desc")"   # keep tokens out of reports
  WRK_EXTRA_DESC+=("$desc")
  a=("$@")
  for ((i = 0; i < ${#a[@]}; i++)); do   # wrk's -H/--header also go to the body check
    case "${a[i]}" in
      -H|--header) curl_h+=(-H "${a[i + 1]:-}"); i=$((i + 1)) ;;
      --header=*) curl_h+=(-H "${a[i]#--header=}") ;;
    esac
  done
  if (( ${BODY_CHECK:-1} )); then check_body "$un" "${curl_h[@]}"; check_body "$up" "${curl_h[@]}"; fi
  if (( WARMUP > 0 )); then
    log "$name: warm-up ${WARMUP}s each"
    run_wrk "$TMP/warmup-$name-nginx.txt" "$WARMUP" "$@" "$un"
    run_wrk "$TMP/warmup-$name-$SUT_LABEL.txt" "$WARMUP" "$@" "$up"
  fi
  for ((r = 1; r <= ROUNDS; r++)); do
    if (( r % 2 )); then
      bench_one "$name" nginx "$r" "$un" "$@"
      bench_one "$name" "$SUT_LABEL" "$r" "$up" "$@"
    else
      bench_one "$name" "$SUT_LABEL" "$r" "$up" "$@"
      bench_one "$name" nginx "$r" "$un" "$@"
    fi
  done
}

# ---------------------------------------------------------------- start everything
write_upstream_conf
write_proxy_conf nginx-proxy "$NGINX_PORT"
start_nginx upstream "${PIN_LOAD[@]}"
wait_ready upstream "http://127.0.0.1:$UPSTREAM_PORT/"

start_nginx nginx-proxy "${PIN_SUT[@]}"
NGINX_URL="http://127.0.0.1:$NGINX_PORT"

if [[ "$DEBUG_STANDIN" == 1 ]]; then
  log "DEBUG_STANDIN=1: a second nginx proxy stands in for portcullis"
  write_proxy_conf "$SUT_LABEL" "$PORTCULLIS_PORT"
  start_nginx "$SUT_LABEL" "${PIN_SUT[@]}"
  SUT_VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
else
  write_portcullis_conf
  if ! timeout 10 "$PORTCULLIS_BIN" -t -c "$TMP/portcullis.yaml" >"$TMP/portcullis-configtest.log" 2>&1; then
    cat "$TMP/portcullis-configtest.log" >&2
    die "'$PORTCULLIS_BIN -t -c $TMP/portcullis.yaml' failed"
  fi
  start_bg "$SUT_LABEL" INT env RUST_LOG=warn "${PIN_SUT[@]}" "$PORTCULLIS_BIN" -c "$TMP/portcullis.yaml"
  SUT_VERSION="$(timeout 5 "$PORTCULLIS_BIN" -V 2>/dev/null | head -n1 || true)"
  SUT_VERSION="${SUT_VERSION#portcullis }"
  SUT_GIT="$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo "(no commit)")"
  if [[ "$PORTCULLIS_BIN" == "$REPO_ROOT/$DEFAULT_PORTCULLIS_BIN" ]]; then
    SUT_VERSION="${SUT_VERSION:-(no -V)}, git $SUT_GIT"
  else   # an explicit binary need not be built from the checkout
    SUT_VERSION="${SUT_VERSION:-(no -V)}, binary $PORTCULLIS_BIN ($(date -u -r "$PORTCULLIS_BIN" '+%Y-%m-%d %H:%M UTC')); checkout at git $SUT_GIT"
  fi
fi
PORTCULLIS_URL="http://127.0.0.1:$PORTCULLIS_PORT"
wait_ready nginx-proxy "$NGINX_URL/"
wait_ready "$SUT_LABEL" "$PORTCULLIS_URL/"

for s in $SCENARIOS; do "scenario_${s}_run"; done

# ---------------------------------------------------------------- report
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
MACHINE="nproc=$(nproc), kernel $(uname -r), cpu: ${CPU_MODEL:-unknown}, cpu busy at start: ${BUSY_PCT}%"
NGINX_VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
WRK_VERSION="$("$WRK_BIN" -v 2>&1 | head -n1 | awk '{ print $1, $2 }' || true)"
PIN_DESC="no CPU pinning"
[[ "$PIN_CPUS" == 1 ]] && PIN_DESC="pinned: upstream+wrk on CPU 0, proxy under test on CPU 1"
WRK_CMD="wrk ${WRK_ARGS[*]} URL"

field() { local a; read -ra a <<<"$1"; echo "${a[$2]}"; }   # "rps p50 p99 err" index

declare -A MED=()      # "scenario|proxy" -> "rps p50 p99 errors_total"
for sc in "${RUN_SCENARIOS[@]}"; do
  for px in nginx "$SUT_LABEL"; do
    rs=(); p5=(); p9=(); et=0
    for ((r = 1; r <= ROUNDS; r++)); do
      rv="${RES["$sc|$px|$r"]}"
      rs+=("$(field "$rv" 0)"); p5+=("$(field "$rv" 1)"); p9+=("$(field "$rv" 2)"); et=$((et + $(field "$rv" 3)))
    done
    MED["$sc|$px"]="$(median "${rs[@]}") $(median "${p5[@]}") $(median "${p9[@]}") $et"
  done
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
HAVE_BASELINE=0
for sc in "${RUN_SCENARIOS[@]}"; do [[ "$sc" == baseline ]] && HAVE_BASELINE=1; done
# A feature's cost is its scenario against baseline on the SAME proxy: median req/s of the
# scenario / median req/s of baseline. nginx does the same work in both, so its own ratio
# shows how much the machine drifted between the two windows.
vs_baseline() {  # scenario px -> ratio (or n/a)
  local a b
  if (( ! HAVE_BASELINE )) || [[ "$1" == baseline ]]; then echo n/a; return; fi
  read -ra a <<<"${MED["$1|$2"]}"; read -ra b <<<"${MED["baseline|$2"]}"
  ratio "${a[0]}" "${b[0]}"
}

{
  echo
  echo "machine:   $MACHINE"
  echo "versions:  nginx $NGINX_VERSION, $WRK_VERSION, $SUT_LABEL $SUT_VERSION"
  echo "setup:     upstream nginx (1 worker) <- proxy (1 worker / threads: 1) <- wrk; $PIN_DESC"
  echo "command:   $WRK_CMD   (rounds: $ROUNDS, alternating order, warm-up ${WARMUP}s)"
  for i in "${!RUN_SCENARIOS[@]}"; do
    sc="${RUN_SCENARIOS[$i]}"
    [[ -n "${WRK_EXTRA_DESC[$i]}" ]] && echo "           $sc extra wrk args: ${WRK_EXTRA_DESC[$i]}"
  done
  for sc in "${RUN_SCENARIOS[@]}"; do
    echo
    echo "scenario: $sc"
    printf '%-8s %-14s %10s %9s %9s %7s\n' round proxy req/s "p50 ms" "p99 ms" errors
    for ((r = 1; r <= ROUNDS; r++)); do
      for px in nginx "$SUT_LABEL"; do
        row "$r" "$px" "${RES["$sc|$px|$r"]}"
      done
    done
    for px in nginx "$SUT_LABEL"; do
      row median "$px" "${MED["$sc|$px"]}"
    done
    read -ra n <<<"${MED["$sc|nginx"]}"; read -ra p <<<"${MED["$sc|$SUT_LABEL"]}"
    echo "ratio $SUT_LABEL/nginx: median req/s $(ratio "${p[0]}" "${n[0]}"), median p99 $(ratio "${p[2]}" "${n[2]}")"
    if (( HAVE_BASELINE )) && [[ "$sc" != baseline ]]; then
      echo "vs baseline (median req/s, same proxy): $SUT_LABEL $(vs_baseline "$sc" "$SUT_LABEL"), nginx $(vs_baseline "$sc" nginx) (nginx: drift check)"
    fi
    (( n[3] + p[3] == 0 )) || echo "WARNING: errors were recorded (see errors column); the numbers above are suspect"
  done
} | tee "$TMP/report.txt"

if [[ -n "$RESULT_FILE" ]]; then
  {
    echo "### portcullis vs nginx ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- machine: $MACHINE"
    echo "- versions: nginx $NGINX_VERSION, $WRK_VERSION, $SUT_LABEL $SUT_VERSION"
    echo "- command: \`$WRK_CMD\`, $ROUNDS rounds alternating, warm-up ${WARMUP}s, $PIN_DESC"
    for sc in "${RUN_SCENARIOS[@]}"; do
      read -ra n <<<"${MED["$sc|nginx"]}"; read -ra p <<<"${MED["$sc|$SUT_LABEL"]}"
      echo
      echo "| $sc | req/s (median) | p50 ms | p99 ms | errors |"
      echo "|---|---:|---:|---:|---:|"
      printf '| %s | %.0f | %.3f | %.3f | %s |\n' nginx "${n[@]}" "$SUT_LABEL" "${p[@]}"
      echo
      echo "$SUT_LABEL/nginx median req/s: **$(ratio "${p[0]}" "${n[0]}")**"
      if (( HAVE_BASELINE )) && [[ "$sc" != baseline ]]; then
        echo
        echo "vs baseline, median req/s on the same proxy: $SUT_LABEL **$(vs_baseline "$sc" "$SUT_LABEL")**, nginx $(vs_baseline "$sc" nginx) (drift check)"
      fi
    done
  } >"$RESULT_FILE"
  log "wrote $RESULT_FILE"
fi

if [[ -n "$RESULT_JSON" ]]; then
  json_esc() { local s="${1//\\/\\\\}"; s="${s//\"/\\\"}"; printf '%s' "$s"; }
  {
    printf '{\n  "machine": "%s",\n  "nginx_version": "%s",\n  "wrk_command": "%s",\n' \
      "$(json_esc "$MACHINE")" "$(json_esc "$NGINX_VERSION")" "$(json_esc "$WRK_CMD")"
    printf '  "proxy_under_test": "%s",\n  "rounds": %d,\n  "duration_s": %d,\n  "connections": %d,\n  "cpu_pinning": %s,\n  "scenarios": {' \
      "$SUT_LABEL" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$([[ "$PIN_CPUS" == 1 ]] && echo true || echo false)"
    sep=""
    for sc in "${RUN_SCENARIOS[@]}"; do
      read -ra n <<<"${MED["$sc|nginx"]}"; read -ra p <<<"${MED["$sc|$SUT_LABEL"]}"
      printf '%s\n    "%s": {\n' "$sep" "$sc"
      for px in nginx "$SUT_LABEL"; do
        read -ra m <<<"${MED["$sc|$px"]}"
        printf '      "%s": {"median": {"rps": %s, "p50_ms": %s, "p99_ms": %s}, "errors": %s, "rounds": [' "$px" "${m[@]}"
        rsep=""
        for ((r = 1; r <= ROUNDS; r++)); do
          read -ra v <<<"${RES["$sc|$px|$r"]}"
          printf '%s{"rps": %s, "p50_ms": %s, "p99_ms": %s, "errors": %s}' "$rsep" "${v[@]}"
          rsep=", "
        done
        printf ']},\n'
      done
      printf '      "ratio_rps": %s,\n' "$(ratio "${p[0]}" "${n[0]}" | sed 's/^n\/a$/null/')"
      printf '      "vs_baseline_rps": {"%s": %s, "nginx": %s}\n    }' "$SUT_LABEL" \
        "$(vs_baseline "$sc" "$SUT_LABEL" | sed 's/^n\/a$/null/')" "$(vs_baseline "$sc" nginx | sed 's/^n\/a$/null/')"
      sep=","
    done
    printf '\n  }\n}\n'
  } >"$RESULT_JSON"
  log "wrote $RESULT_JSON"
fi
