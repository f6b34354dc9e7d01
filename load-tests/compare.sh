#!/usr/bin/env bash
# One benchmark run, every peer: nginx, HAProxy, Pingap and portcullis in front of the same
# upstream, on one machine, in alternating rounds.
#
# Starts (all on 127.0.0.1, all torn down again on exit, Ctrl-C or failure):
#   - the upstream:  nginx, 1 worker, `return 200 '{"ok":true,"service":"bench"}'`
#   - nginx:         1 worker, proxy_pass with an upstream keepalive pool (the reference)
#   - HAProxy:       nbthread 1, http-reuse always                 (skipped when not installed)
#   - Pingap:        threads = 1                                    (skipped when it cannot be built)
#   - portcullis:    threads: 1
# and measures, per scenario, every proxy in each round (the order rotates from round to round):
#   plain      GET /           proxied as is
#   chain      GET /chain      JWT HS256 verification + a local rate limit that never refuses.
#                              portcullis: `auth: required` + rate_limit (store local);
#                              HAProxy: jwt_verify + a stick-table request-rate counter;
#                              Pingap: its jwt and limit plugins;
#                              nginx OSS has no JWT: nginx proxies /chain plainly (the target
#                              is portcullis chain >= 0.95x nginx plain)
#   composite  GET /composite  portcullis composite route of three parts (same upstream);
#                              the peers cannot aggregate: nginx plain (one call) is the reference
#   open_loop  GET /           fixed-rate open-loop load with oha (--latency-correction -q RATE),
#                              RATE = RATE_PCT% of nginx's peak under oha's own closed loop
#                              (RATE_PEAK), measured just before the open-loop rounds
# Closed-loop runs: wrk -t1 -c32 -dDURATION --latency (+ a Lua `done` hook for p99.9).
# Prints one table per scenario (median req/s, p50, p99, p99.9, ratios to nginx, and the
# proxy's CPU time per request from /proc: user + system µs, steadier than req/s when client,
# upstream and proxy share two cores), and can write JSON, a markdown snippet and an SVG chart
# (load-tests/chart.py).
#
# This is a benchmark, not a test: it is not part of CI. See load-tests/README.md.
#
# Usage: load-tests/compare.sh [--quick] [--help]
#   --quick (or QUICK=1): the regression guard, about one minute: nginx, HAProxy (if installed)
#   and portcullis; plain and chain; 2 rounds of 3 s; prints the ratios. No chart unless CHART
#   is set. Any knob below still overrides.
#
# Knobs (environment):
#   QUICK=0             1 = --quick
#   DURATION=4          seconds per measured run (wrk and oha)                  [quick: 3]
#   ROUNDS=3            rounds; each measures every proxy once                  [quick: 2]
#   CONNECTIONS=32      wrk -c, and oha -c in open_loop
#   WRK_THREADS=1       wrk -t
#   WARMUP=1            seconds of warm-up per proxy and scenario (0 = none)
#   PROXIES="nginx haproxy pingap portcullis"                                   [quick: no pingap]
#                       nginx, the reference, is always measured
#   SCENARIOS="plain chain composite open_loop"                                 [quick: plain chain]
#                       always run in this order (open_loop needs plain's nginx rate, or RATE)
#   RATE=               open_loop requests/s; default RATE_PCT% of nginx's peak (RATE_PEAK)
#   RATE_PCT=70         see RATE
#   RATE_PEAK=oha       whose peak RATE_PCT is taken of: oha = nginx's closed-loop req/s under
#                       oha itself (same -c and threads), measured just before the open-loop
#                       rounds; wrk = nginx's median plain req/s under wrk. oha costs more CPU
#                       per request than wrk, and on two shared cores 70% of wrk's peak is
#                       about all that oha, the upstream and a proxy can drive: the p99s
#                       then measure the queue, not the proxy.
#   PORTCULLIS_BIN      default target/release/portcullis (built with `cargo build --release` if
#                       that default path is missing; an explicit path must exist)
#   MINT_TOKEN_BIN      default target/release/examples/mint_token (built likewise with
#                       `cargo build --release --example mint_token`), signs the chain's token
#   NO_BUILD=1          never run cargo for portcullis or the token minter; fail if missing
#   BENCH_TOOLS_ROOT=/opt/bench-tools   `cargo install --root` for pingap and oha
#   PINGAP_BIN          default: pingap from PATH or $BENCH_TOOLS_ROOT/bin
#   PINGAP_INSTALL=1    0 = never `cargo install pingap` (pingap is then skipped when missing);
#                       the build needs protoc (apt-get install protobuf-compiler when root)
#   PINGAP_VERSION=     crate version to install; default the newest, and if that needs a newer
#                       rustc, the version cargo names as supported by this toolchain
#   OHA_BIN             default: oha from PATH or $BENCH_TOOLS_ROOT/bin
#   OHA_INSTALL=1       0 = never `cargo install oha` (open_loop is then skipped when missing)
#   OHA_THREADS=1       oha --worker-threads (like wrk -t1); empty = oha's default (one per core)
#   HAPROXY_BIN         default: haproxy from PATH or /usr/sbin/haproxy
#   HAPROXY_INSTALL=1   0 = never apt-get install haproxy (never in quick mode either)
#   NGINX_BIN, WRK_BIN  other binaries (default: from PATH / /usr/sbin)
#   UPSTREAM_PORT=18181 NGINX_PORT=18182 HAPROXY_PORT=18183 HAPROXY_STATS_PORT=18184
#   PINGAP_PORT=18185 PORTCULLIS_PORT=18186 ADMIN_PORT=18187
#                       an unset port whose default is busy moves to the next free one;
#                       an explicitly set port must be free
#   PIN_CPUS=0          1 = taskset: upstream + wrk/oha on CPU 0, the proxy under test on CPU 1
#   RESULT_FILE=        write a markdown snippet here
#   RESULT_JSON=        write all rounds, medians and ratios as JSON here
#   CHART=load-tests/compare.svg   SVG chart drawn by load-tests/chart.py from the JSON;
#                       CHART= (empty) for none                                 [quick: none]
#   KEEP_TMP=0          1 = keep the temp dir (configs, logs, raw wrk/oha output)
set -euo pipefail

# ---------------------------------------------------------------- settings
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=load-tests/lib.sh
source "$SCRIPT_DIR/lib.sh"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
QUICK="${QUICK:-0}"
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    -q|--quick) QUICK=1 ;;
    *) echo "unknown argument: $arg (the knobs are environment variables, see --help)" >&2; exit 2 ;;
  esac
done

ALL_PROXIES="nginx haproxy pingap portcullis"
ALL_SCENARIOS="plain chain composite open_loop"
if [[ "$QUICK" == 1 ]]; then
  DURATION="${DURATION:-3}"
  ROUNDS="${ROUNDS:-2}"
  PROXIES="${PROXIES:-nginx haproxy portcullis}"
  SCENARIOS="${SCENARIOS:-plain chain}"
  CHART="${CHART:-}"
  HAPROXY_INSTALL=0        # quick mode uses HAProxy only when it is already installed
else
  DURATION="${DURATION:-4}"
  ROUNDS="${ROUNDS:-3}"
  PROXIES="${PROXIES:-$ALL_PROXIES}"
  SCENARIOS="${SCENARIOS:-$ALL_SCENARIOS}"
  CHART="${CHART-load-tests/compare.svg}"
  HAPROXY_INSTALL="${HAPROXY_INSTALL:-1}"
fi
CONNECTIONS="${CONNECTIONS:-32}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-1}"
RATE="${RATE:-}"
RATE_PCT="${RATE_PCT:-70}"
RATE_PEAK="${RATE_PEAK:-oha}"
PIN_CPUS="${PIN_CPUS:-0}"
KEEP_TMP="${KEEP_TMP:-0}"
NO_BUILD="${NO_BUILD:-0}"
RESULT_FILE="${RESULT_FILE:-}"
RESULT_JSON="${RESULT_JSON:-}"
BENCH_TOOLS_ROOT="${BENCH_TOOLS_ROOT:-/opt/bench-tools}"
PINGAP_INSTALL="${PINGAP_INSTALL:-1}"
PINGAP_VERSION="${PINGAP_VERSION:-}"
OHA_INSTALL="${OHA_INSTALL:-1}"
OHA_THREADS="${OHA_THREADS-1}"
DEFAULT_PORTCULLIS_BIN="target/release/portcullis"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-$DEFAULT_PORTCULLIS_BIN}"
DEFAULT_MINT_TOKEN_BIN="target/release/examples/mint_token"
MINT_TOKEN_BIN="${MINT_TOKEN_BIN:-$DEFAULT_MINT_TOKEN_BIN}"
READY_TIMEOUT=15           # seconds to wait for each server to answer 200
EXPECTED_BODY='{"ok":true,"service":"bench"}'
COMPOSITE_BODY="{\"a\":$EXPECTED_BODY,\"b\":$EXPECTED_BODY,\"c\":$EXPECTED_BODY}"
RL_LIMIT=1000000000        # per minute: never reached during a run

for v in DURATION ROUNDS CONNECTIONS WRK_THREADS WARMUP RATE_PCT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer, got '${!v}'" >&2; exit 2; }
done
[[ -z "$RATE" || "$RATE" =~ ^[1-9][0-9]*$ ]] || { echo "RATE must be a positive integer, got '$RATE'" >&2; exit 2; }
(( ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1 && WRK_THREADS >= 1 && RATE_PCT >= 1 )) ||
  { echo "ROUNDS, DURATION, CONNECTIONS, WRK_THREADS and RATE_PCT must be >= 1" >&2; exit 2; }
(( CONNECTIONS >= WRK_THREADS )) || { echo "CONNECTIONS must be >= WRK_THREADS (wrk rule)" >&2; exit 2; }

log()  { printf '[compare] %s\n' "$*" >&2; }
die()  { printf '[compare] ERROR: %s\n' "$*" >&2; exit 1; }

# Proxies and scenarios in canonical order (the order of the report and of round 1).
in_list() { [[ " $2 " == *" $1 "* ]]; }
for p in $PROXIES; do in_list "$p" "$ALL_PROXIES" || die "unknown proxy '$p' (known: $ALL_PROXIES)"; done
for s in $SCENARIOS; do in_list "$s" "$ALL_SCENARIOS" || die "unknown scenario '$s' (known: $ALL_SCENARIOS)"; done
in_list nginx "$PROXIES" || log "nginx is the reference: measured even though PROXIES omits it"
PXS=(nginx)
for p in haproxy pingap portcullis; do in_list "$p" "$PROXIES" && PXS+=("$p"); done
SCS=()
for s in $ALL_SCENARIOS; do in_list "$s" "$SCENARIOS" && SCS+=("$s"); done
[[ "$RATE_PEAK" == oha || "$RATE_PEAK" == wrk ]] || { echo "RATE_PEAK must be oha or wrk, got '$RATE_PEAK'" >&2; exit 2; }
if in_list open_loop "${SCS[*]}" && ! in_list plain "${SCS[*]}" && [[ -z "$RATE" && "$RATE_PEAK" == wrk ]]; then
  die "open_loop with RATE_PEAK=wrk needs plain in SCENARIOS (for nginx's rate) or an explicit RATE"
fi

# Skips, with the reason, for the report: a whole proxy, or one proxy in one scenario.
declare -A PX_SKIP=()      # proxy -> reason
declare -A SC_SKIP=()      # "scenario|proxy" -> reason ("scenario|*" = the whole scenario)
skip_proxy() { PX_SKIP["$1"]="$2"; log "SKIP $1: $2"; }
skip_sc()    { SC_SKIP["$1|$2"]="$3"; log "SKIP $1 for $2: $3"; }
active() { local p; for p in "${PXS[@]}"; do [[ -n "${PX_SKIP[$p]:-}" ]] || printf '%s\n' "$p"; done; }

# ---------------------------------------------------------------- cleanup
TMP=""
PIDS=()            # "name:pid:signal" for every long-running process we started
LOAD_PID=""        # the running wrk/oha, if any
POLICY_RC_CREATED=0

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n "$LOAD_PID" ]]; then kill -TERM "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null; fi
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

# ---------------------------------------------------------------- dependencies
can_root() { (( EUID == 0 )) || sudo -n true 2>/dev/null; }

apt_install() {  # pkg...
  command -v apt-get >/dev/null || die "missing $*, and no apt-get to install it"
  log "installing: $*"
  # The nginx/haproxy packages must not start the distro's services: without a
  # policy-rc.d, add one that forbids service starts, for the install only.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
    POLICY_RC_CREATED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local ok=1
  if ! as_root apt-get install -y --no-install-recommends "$@" >/dev/null; then
    as_root apt-get update >/dev/null || true
    as_root apt-get install -y --no-install-recommends "$@" >/dev/null || ok=0
  fi
  if (( POLICY_RC_CREATED )); then as_root rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
  (( ok ))
}

# Output of a command without pipes (with pipefail, `cmd | head -n1` fails when cmd gets SIGPIPE).
output_of() { local out; out="$("$@" 2>&1)" || true; printf '%s\n' "$out"; }
first_line() { local out; out="$(output_of "$@")"; printf '%s\n' "${out%%$'\n'*}"; }

find_bin() {  # name extra-dirs...  -> prints the path, or nothing
  local name="$1" d; shift
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for d in "$@"; do [[ -x "$d/$name" ]] && { echo "$d/$name"; return; }; done
  return 0
}

NGINX_BIN="${NGINX_BIN:-$(find_bin nginx /usr/sbin)}"
WRK_BIN="${WRK_BIN:-$(find_bin wrk)}"
missing=()
[[ -n "$NGINX_BIN" ]] || missing+=(nginx)
[[ -n "$WRK_BIN" ]] || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if (( ${#missing[@]} )); then
  apt_install "${missing[@]}" || die "could not install ${missing[*]}"
  NGINX_BIN="${NGINX_BIN:-$(find_bin nginx /usr/sbin)}"
  WRK_BIN="${WRK_BIN:-$(find_bin wrk)}"
fi
[[ -x "$NGINX_BIN" ]] || die "nginx not found after install"
[[ -x "$WRK_BIN" ]] || die "wrk not found after install"

# -- portcullis and the token minter first: a missing binary fails before any long install.
if in_list portcullis "${PXS[*]}"; then
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
if in_list chain "${SCS[*]}"; then
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
  tok="$("$MINT_TOKEN_BIN" "$@")" || die "mint_token $* failed"
  [[ "$tok" =~ ^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$ ]] || die "mint_token $* printed '$tok', not a JWT"
  printf '%s\n' "$tok"
}

# -- HAProxy: Debian's package; installed only when missing, as root, outside quick mode.
if in_list haproxy "${PXS[*]}"; then
  HAPROXY_BIN="${HAPROXY_BIN:-$(find_bin haproxy /usr/sbin)}"
  if [[ -z "$HAPROXY_BIN" ]]; then
    if [[ "$HAPROXY_INSTALL" == 1 ]] && can_root && command -v apt-get >/dev/null; then
      apt_install haproxy || log "apt-get install haproxy failed"
      HAPROXY_BIN="$(find_bin haproxy /usr/sbin)"
    fi
  fi
  if [[ -z "$HAPROXY_BIN" || ! -x "$HAPROXY_BIN" ]]; then
    if [[ "$QUICK" == 1 ]]; then skip_proxy haproxy "not installed (quick mode does not install it)"
    elif [[ "$HAPROXY_INSTALL" != 1 ]]; then skip_proxy haproxy "not installed (HAPROXY_INSTALL=0)"
    else skip_proxy haproxy "not installed, and could not install it (needs root and apt-get)"; fi
  fi
fi

# -- cargo-installed tools (pingap, oha) under $BENCH_TOOLS_ROOT.
INSTALL_LOG_DIR="${TMPDIR:-/tmp}"
cargo_install() {  # crate [version]  -> 0 when installed; log in $INSTALL_LOG_DIR/compare-install-CRATE.log
  local crate="$1" version="${2:-}" logf="$INSTALL_LOG_DIR/compare-install-$1.log" suggested
  command -v cargo >/dev/null || { log "no cargo: cannot install $crate"; return 1; }
  log "installing $crate${version:+ $version} with cargo into $BENCH_TOOLS_ROOT (log: $logf); this can take many minutes"
  if cargo install "$crate" ${version:+--version "$version"} --locked --root "$BENCH_TOOLS_ROOT" >"$logf" 2>&1; then
    return 0
  fi
  # The newest release may need a newer rustc; cargo then names the newest one that fits:
  #   `pingap 0.13.1` supports rustc 1.88
  suggested="$(sed -n "s/^\`$crate \([0-9][^\`]*\)\` supports rustc.*/\1/p" "$logf")"; suggested="${suggested%%$'\n'*}"
  if [[ -z "$version" && -n "$suggested" ]]; then
    log "$crate: the newest release needs a newer rustc; installing $suggested instead"
    cargo install "$crate" --version "$suggested" --locked --root "$BENCH_TOOLS_ROOT" >>"$logf" 2>&1 && return 0
  fi
  log "cargo install $crate failed; last lines of $logf:"
  tail -n 5 "$logf" >&2
  return 1
}

if in_list pingap "${PXS[*]}"; then
  PINGAP_BIN="${PINGAP_BIN:-$(find_bin pingap "$BENCH_TOOLS_ROOT/bin")}"
  if [[ -z "$PINGAP_BIN" && "$PINGAP_INSTALL" == 1 ]]; then
    # pingap's etcd client compiles protobuf files at build time: it needs protoc.
    if ! command -v protoc >/dev/null; then
      if can_root && command -v apt-get >/dev/null; then
        apt_install protobuf-compiler || log "apt-get install protobuf-compiler failed; building pingap anyway"
      else
        log "no protoc (Debian: protobuf-compiler), and no root to install it: building pingap will likely fail"
      fi
    fi
    cargo_install pingap "$PINGAP_VERSION" && PINGAP_BIN="$(find_bin pingap "$BENCH_TOOLS_ROOT/bin")"
  fi
  if [[ -z "$PINGAP_BIN" || ! -x "$PINGAP_BIN" ]]; then
    if [[ "$PINGAP_INSTALL" == 1 ]]; then skip_proxy pingap "not installed, and cargo install pingap failed (see $INSTALL_LOG_DIR/compare-install-pingap.log)"
    else skip_proxy pingap "not installed (PINGAP_INSTALL=0)"; fi
  fi
fi

OHA_JSON_FLAG=()
OHA_THREAD_ARGS=()
if in_list open_loop "${SCS[*]}"; then
  OHA_BIN="${OHA_BIN:-$(find_bin oha "$BENCH_TOOLS_ROOT/bin")}"
  if [[ -z "$OHA_BIN" && "$OHA_INSTALL" == 1 ]]; then
    cargo_install oha && OHA_BIN="$(find_bin oha "$BENCH_TOOLS_ROOT/bin")"
  fi
  if [[ -z "$OHA_BIN" || ! -x "$OHA_BIN" ]]; then
    skip_sc open_loop '*' "oha not installed$( [[ "$OHA_INSTALL" == 1 ]] && echo ", and cargo install oha failed" || echo " (OHA_INSTALL=0)")"
  elif ! command -v python3 >/dev/null; then
    skip_sc open_loop '*' "python3 is needed to read oha's JSON output"
  else
    # oha >= 1.5 says --output-format json; older releases --json (-j).
    oha_help="$(output_of "$OHA_BIN" --help)"
    if [[ "$oha_help" == *--output-format* ]]; then OHA_JSON_FLAG=(--output-format json)
    else OHA_JSON_FLAG=(--json); fi
    if [[ -n "$OHA_THREADS" && "$oha_help" == *--worker-threads* ]]; then OHA_THREAD_ARGS=(--worker-threads "$OHA_THREADS"); fi
  fi
fi

if [[ "$PIN_CPUS" == 1 ]]; then
  command -v taskset >/dev/null || die "PIN_CPUS=1 needs taskset (util-linux)"
  (( $(nproc) >= 2 )) || die "PIN_CPUS=1 needs at least 2 CPUs"
  PIN_LOAD=(taskset -c 0)     # upstream + wrk/oha
  PIN_SUT=(taskset -c 1)      # proxy under test
else
  PIN_LOAD=()
  PIN_SUT=()
fi

# ---------------------------------------------------------------- busy machine?
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
pick_port UPSTREAM_PORT 18181
pick_port NGINX_PORT 18182
pick_port HAPROXY_PORT 18183
pick_port HAPROXY_STATS_PORT 18184
pick_port PINGAP_PORT 18185
pick_port PORTCULLIS_PORT 18186
pick_port ADMIN_PORT 18187
declare -A PORT=([nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [pingap]=$PINGAP_PORT [portcullis]=$PORTCULLIS_PORT)
url_of() { echo "http://127.0.0.1:${PORT[$1]}$2"; }   # proxy path

TMP="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-compare.XXXXXX")"
chmod 755 "$TMP"     # nginx workers may run as an unprivileged user
mkdir -p "$TMP/nginx-temp"

# The chain's HMAC secret: 32 random bytes as 64 hex chars. Every proxy gets these 64
# characters as its secret bytes (portcullis reads the file, minus its trailing newline).
TOKEN=""
if in_list chain "${SCS[*]}"; then
  ( umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$TMP/hs.key"; echo >>"$TMP/hs.key" )
  HS_SECRET="$(head -n1 "$TMP/hs.key")"
  TOKEN="$(mint_token HS256 "$TMP/hs.key")"
fi
AUTH_H="Authorization: Bearer $TOKEN"
# The same token with the end of its signature changed: must be refused.
if [[ "$TOKEN" == *AAAA ]]; then BAD_TOKEN="${TOKEN%????}BBBB"; else BAD_TOKEN="${TOKEN%????}AAAA"; fi

# wrk's Lua hook: latency percentiles (µs) incl. p99.9, which --latency does not print.
cat >"$TMP/pctl.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("BENCH_PCTL %d %d %d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
EOF

# ---------------------------------------------------------------- configs
# nginx: one location for everything, /chain included (nginx OSS cannot verify JWTs).
write_nginx_conf() {
  { nginx_common nginx
    cat <<EOF
http {
$(nginx_http_common nginx)
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 1000000;   # default 1000 would recycle upstream conns
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        location / {
            proxy_pass http://up;
        }
    }
}
EOF
  } >"$TMP/nginx.conf"
}

# HAProxy 2.6: chain = Bearer token -> alg must be HS256 -> jwt_verify with the secret ->
# exp checked against now -> request rate tracked per source IP in a stick table, refused
# above RL_LIMIT per minute (never reached).
write_haproxy_conf() {  # with_chain(0|1)
  cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
    stats socket ipv4@127.0.0.1:$HAPROXY_STATS_PORT level admin

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s

frontend fe
    bind 127.0.0.1:$HAPROXY_PORT
EOF
  if [[ "$1" == 1 ]]; then
    cat >>"$TMP/haproxy.cfg" <<EOF
    stick-table type ip size 100k expire 2m store http_req_rate(1m)
    acl chain path /chain
    acl chain path_beg /chain/
    http-request set-var(txn.bearer) http_auth_bearer if chain
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('\$.alg') if chain
    http-request deny deny_status 401 if chain !{ var(txn.jwt_alg) -m str HS256 }
    http-request deny deny_status 401 if chain !{ var(txn.bearer),jwt_verify(txn.jwt_alg,"$HS_SECRET") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int') if chain
    http-request set-var(txn.now) date() if chain
    http-request deny deny_status 401 if chain { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request track-sc0 src if chain
    http-request deny deny_status 429 if chain { sc_http_req_rate(0) gt $RL_LIMIT }
EOF
  fi
  cat >>"$TMP/haproxy.cfg" <<EOF
    default_backend up

backend up
    http-reuse always
    server s1 127.0.0.1:$UPSTREAM_PORT
EOF
}

# Pingap (TOML): one server, two locations; /chain carries the jwt and limit plugins.
write_pingap_conf() {  # with_chain(0|1)
  { cat <<EOF
[basic]
threads = 1
log_level = "warn"
pid_file = "$TMP/pingap.pid"
upgrade_sock = "$TMP/pingap-upgrade.sock"
grace_period = "1s"
graceful_shutdown_timeout = "1s"

[upstreams.up]
addrs = ["127.0.0.1:$UPSTREAM_PORT"]

[locations.all]
upstream = "up"
path = "/"

[servers.bench]
addr = "127.0.0.1:$PINGAP_PORT"
EOF
    if [[ "$1" == 1 ]]; then
      cat <<EOF
locations = ["all", "chain"]

[locations.chain]
upstream = "up"
path = "/chain"
plugins = ["benchJwt", "benchLimit"]

[plugins.benchJwt]
category = "jwt"
header = "Authorization"
secret = "$HS_SECRET"
algorithm = "HS256"

[plugins.benchLimit]
category = "limit"
type = "rate"
tag = "ip"
max = $RL_LIMIT
interval = "60s"
EOF
    else
      echo 'locations = ["all"]'
    fi
  } >"$TMP/pingap.toml"
}

write_portcullis_conf() {
  { cat <<EOF
server:
  listen: ["127.0.0.1:$PORTCULLIS_PORT"]
  admin_listen: "127.0.0.1:$ADMIN_PORT"
  threads: 1
  pid_file: $TMP/portcullis.pid
  upgrade_sock: $TMP/portcullis-upgrade.sock
  grace_period: 1s
  graceful_shutdown_timeout: 1s
upstreams:
  bench:
    backends: ["127.0.0.1:$UPSTREAM_PORT"]
EOF
    if in_list chain "${SCS[*]}"; then
      cat <<EOF
auth:
  jwt:
    algorithms: [HS256]
    secrets: [{ file: $TMP/hs.key }]
rate_limits:
  bench_limit: { key: client_ip, limit: $RL_LIMIT, window: 1m }
EOF
    fi
    echo "routes:"
    if in_list chain "${SCS[*]}"; then
      cat <<'EOF'
  - name: chain
    match: { path_prefix: /chain }
    upstream: bench
    auth: required
    rate_limit: [bench_limit]
EOF
    fi
    if in_list composite "${SCS[*]}"; then
      cat <<'EOF'
  - name: composite
    match: { path: /composite }
    aggregate:
      timeout: 1s
      parts:
        - { name: a, upstream: bench, path: /a, required: true }
        - { name: b, upstream: bench, path: /b }
        - { name: c, upstream: bench, path: /c }
EOF
      in_list chain "${SCS[*]}" && echo '    auth: none'
    fi
    cat <<'EOF'
  - name: all
    match: { path_prefix: / }
    upstream: bench
EOF
    in_list chain "${SCS[*]}" && echo '    auth: none'
    true
  } >"$TMP/portcullis.yaml"
}

# ---------------------------------------------------------------- process control
start_bg() {  # name stop-signal cmd...   (stdout+stderr -> $TMP/name.log)
  local name="$1" sig="$2" pid; shift 2
  # setsid: own process group (pgid == pid), so cleanup can sweep children too and
  # a Ctrl-C reaches only this script, whose trap then stops everything in order.
  setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$name:$pid:$sig")
  log "started $name (pid $pid): $*"
}
stop_named() {  # name  -- stop one started process now (and forget it)
  local i entry name pid sig
  for i in "${!PIDS[@]}"; do
    entry="${PIDS[$i]}"; name="${entry%%:*}"
    [[ "$name" == "$1" ]] || continue
    entry="${entry#*:}"; pid="${entry%%:*}"; sig="${entry#*:}"
    stop_pid "$name" "$pid" "$sig"
    unset 'PIDS[i]'; PIDS=("${PIDS[@]}")
    return
  done
}

start_nginx() {  # name pin...
  local name="$1"; shift
  "$NGINX_BIN" -t -q -p "$TMP" -e "$TMP/$name-error.log" -c "$TMP/$name.conf" >"$TMP/$name-configtest.log" 2>&1 ||
    { cat "$TMP/$name-configtest.log" >&2; die "nginx config $TMP/$name.conf is invalid"; }
  start_bg "$name" TERM "$@" "$NGINX_BIN" -p "$TMP" -e "$TMP/$name-error.log" -c "$TMP/$name.conf"
}

wait_ready() {  # name url -> 0 when it answers 200 within READY_TIMEOUT s; 1 (with a log line) if not
  local name="$1" url="$2" pid code deadline
  pid="$(pid_of "$name")"
  deadline=$((SECONDS + READY_TIMEOUT))
  while :; do
    kill -0 "$pid" 2>/dev/null || { log "$name (pid $pid) exited before becoming ready (log: $TMP/$name.log)"; return 1; }
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null || true)"
    [[ "$code" == 200 ]] && break
    (( SECONDS < deadline )) || { log "$name not ready: $url answered '${code:-nothing}' for ${READY_TIMEOUT}s"; return 1; }
    sleep 0.05
  done
  log "$name ready at $url"
}

# Checks return 1 with a message on stderr, so a peer's failing extra (HAProxy's or Pingap's
# chain) can be skipped with a note while portcullis's failures stop the run.
check_body() {  # url expected [curl args...]  -- must answer 200 with exactly this body
  local url="$1" want="$2" out code body; shift 2
  out="$(curl -s --max-time 2 -w '\n%{http_code}' "$@" "$url" 2>/dev/null || true)"
  code="${out##*$'\n'}"; body="${out%$'\n'*}"
  [[ "$code" == 200 && "$body" == "$want" ]] ||
    { log "$url answered ${code:-nothing} '$body', expected 200 '$want'"; return 1; }
}
check_status() {  # code url [curl args...]
  local want="$1" url="$2" code; shift 2
  code="$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$@" "$url" 2>/dev/null || true)"
  [[ "$code" == "$want" ]] || { log "$url answered ${code:-nothing}, expected $want"; return 1; }
}
check_header() {  # url header [curl args...]  -- the response must carry it
  local url="$1" h="$2"; shift 2
  local hdrs
  hdrs="$(curl -s -o /dev/null -D - --max-time 2 "$@" "$url" 2>/dev/null || true)"
  grep -qi "^$h:" <<<"$hdrs" || { log "$url answered without a $h header"; return 1; }
}
haproxy_tracks() {  # the stick table holds an entry for 127.0.0.1 with a request rate
  local out
  out="$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$HAPROXY_STATS_PORT; echo 'show table fe' >&3; cat <&3" 2>/dev/null || true)"
  grep -q 'key=127.0.0.1 .*http_req_rate' <<<"$out" ||
    { log "HAProxy's stick table has no entry for 127.0.0.1: '$out'"; return 1; }
}

# ---------------------------------------------------------------- start everything
write_upstream_conf
write_nginx_conf
start_nginx upstream "${PIN_LOAD[@]}"
wait_ready upstream "http://127.0.0.1:$UPSTREAM_PORT/" || die "the upstream did not start"
start_nginx nginx "${PIN_SUT[@]}"
wait_ready nginx "$(url_of nginx /)" || die "nginx did not start"
NGINX_VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
declare -A VERSION=([nginx]="$NGINX_VERSION")

# A peer that fails its config check with the chain is retried without it (chain skipped);
# one that fails without it too, or does not start, is skipped.
if [[ -z "${PX_SKIP[haproxy]:-}" ]] && in_list haproxy "${PXS[*]}"; then
  hx_chain=0; in_list chain "${SCS[*]}" && hx_chain=1
  write_haproxy_conf "$hx_chain"
  if (( hx_chain )) && ! "$HAPROXY_BIN" -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy-configtest.log" 2>&1; then
    skip_sc chain haproxy "its config with jwt_verify was refused: $(grep -m1 -E 'ALERT|error' "$TMP/haproxy-configtest.log" || head -n1 "$TMP/haproxy-configtest.log")"
    write_haproxy_conf 0
  fi
  if ! "$HAPROXY_BIN" -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy-configtest.log" 2>&1; then
    cat "$TMP/haproxy-configtest.log" >&2
    skip_proxy haproxy "its config was refused ($TMP/haproxy.cfg)"
  else
    start_bg haproxy TERM "${PIN_SUT[@]}" "$HAPROXY_BIN" -db -f "$TMP/haproxy.cfg"
    if wait_ready haproxy "$(url_of haproxy /)"; then
      VERSION[haproxy]="$(first_line "$HAPROXY_BIN" -v | awk '{ print $3 }')"
    else
      tail -n 5 "$TMP/haproxy.log" >&2 || true
      skip_proxy haproxy "did not start (the last lines of its log are above)"; stop_named haproxy
    fi
  fi
fi

if [[ -z "${PX_SKIP[pingap]:-}" ]] && in_list pingap "${PXS[*]}"; then
  pg_chain=0; in_list chain "${SCS[*]}" && pg_chain=1
  write_pingap_conf "$pg_chain"
  if (( pg_chain )) && ! timeout 20 "$PINGAP_BIN" -t -c "$TMP/pingap.toml" >"$TMP/pingap-configtest.log" 2>&1; then
    skip_sc chain pingap "its config with the jwt and limit plugins was refused: $(tail -n1 "$TMP/pingap-configtest.log")"
    write_pingap_conf 0
  fi
  if ! timeout 20 "$PINGAP_BIN" -t -c "$TMP/pingap.toml" >"$TMP/pingap-configtest.log" 2>&1; then
    cat "$TMP/pingap-configtest.log" >&2
    skip_proxy pingap "its config was refused ($TMP/pingap.toml)"
  else
    start_bg pingap INT env RUST_LOG=warn "${PIN_SUT[@]}" "$PINGAP_BIN" -c "$TMP/pingap.toml"
    if wait_ready pingap "$(url_of pingap /)"; then
      pv="$(first_line timeout 5 "$PINGAP_BIN" --version)"; pv="${pv#pingap }"
      VERSION[pingap]="${pv%% (*}"       # "pingap 0.13.1 (VERGEN_IDEMPOTENT_OUTPUT)" -> 0.13.1
    else
      tail -n 5 "$TMP/pingap.log" >&2 || true
      skip_proxy pingap "did not start (the last lines of its log are above)"; stop_named pingap
    fi
  fi
fi

if in_list portcullis "${PXS[*]}"; then
  write_portcullis_conf
  if ! timeout 10 "$PORTCULLIS_BIN" -t -c "$TMP/portcullis.yaml" >"$TMP/portcullis-configtest.log" 2>&1; then
    cat "$TMP/portcullis-configtest.log" >&2
    die "'$PORTCULLIS_BIN -t -c $TMP/portcullis.yaml' failed"
  fi
  start_bg portcullis INT env RUST_LOG=warn "${PIN_SUT[@]}" "$PORTCULLIS_BIN" -c "$TMP/portcullis.yaml"
  wait_ready portcullis "$(url_of portcullis /)" || die "portcullis did not start"
  pv="$(first_line timeout 5 "$PORTCULLIS_BIN" -V)"; pv="${pv#portcullis }"
  git_desc="$(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo "(no commit)")"
  if [[ "$PORTCULLIS_BIN" == "$REPO_ROOT/$DEFAULT_PORTCULLIS_BIN" ]]; then
    VERSION[portcullis]="${pv:-(no -V)}, git $git_desc"
  else
    VERSION[portcullis]="${pv:-(no -V)}, binary $PORTCULLIS_BIN ($(date -u -r "$PORTCULLIS_BIN" '+%Y-%m-%d %H:%M UTC')); checkout at git $git_desc"
  fi
fi
WRK_VERSION="$(first_line "$WRK_BIN" -v | awk '{ print $1, $2 }')"
OHA_VERSION=""
if [[ -n "${OHA_BIN:-}" && -x "${OHA_BIN:-}" ]]; then OHA_VERSION="$(first_line "$OHA_BIN" --version)"; fi

# ---------------------------------------------------------------- scenario definitions
# Per scenario and proxy: the path measured, what the proxy does there, and the checks.
declare -A WHAT=()
WHAT[plain|nginx]="proxy_pass, upstream keepalive 256"
WHAT[plain|haproxy]="http-reuse always"
WHAT[plain|pingap]="one location"
WHAT[plain|portcullis]="catch-all route"
WHAT[chain|nginx]="plain proxy of /chain (nginx OSS has no JWT)"
WHAT[chain|haproxy]="jwt_verify HS256 + exp check + stick-table http_req_rate"
WHAT[chain|pingap]="jwt plugin (HS256) + limit plugin (rate, ip)"
WHAT[chain|portcullis]="auth: required (HS256) + rate_limit (local, client_ip)"
WHAT[composite|nginx]="GET / plain proxy: one upstream call (no aggregation in nginx)"
WHAT[composite|portcullis]="GET /composite: three parts, one JSON answer"
WHAT[open_loop|nginx]="GET /"
WHAT[open_loop|haproxy]="GET /"
WHAT[open_loop|pingap]="GET /"
WHAT[open_loop|portcullis]="GET /"

path_of() {  # scenario proxy
  case "$1" in
    chain) echo /chain ;;
    composite) [[ "$2" == portcullis ]] && echo /composite || echo / ;;
    *) echo / ;;
  esac
}
load_args() {  # scenario -> extra wrk/oha args, one per line
  [[ "$1" == chain ]] && printf '%s\n' -H "$AUTH_H"
  return 0
}

# Verify that what is measured is what is meant: the expected body, and for the chain that
# authentication and the limiter really run. 1 = this proxy cannot do the scenario.
verify() {  # scenario proxy
  local sc="$1" px="$2" url
  url="$(url_of "$px" "$(path_of "$sc" "$px")")"
  case "$sc|$px" in
    'chain|nginx') check_body "$url" "$EXPECTED_BODY" -H "$AUTH_H" ;;
    'chain|'*)
      check_status 401 "$url" || return 1                                 # no token: refused
      check_status 401 "$url" -H "Authorization: Bearer $BAD_TOKEN" || return 1   # bad signature
      check_body "$url" "$EXPECTED_BODY" -H "$AUTH_H" || return 1
      case "$px" in
        portcullis) check_header "$url" ratelimit-policy -H "$AUTH_H" || return 1 ;;
        haproxy) haproxy_tracks || return 1 ;;
      esac ;;
    'composite|portcullis') check_body "$url" "$COMPOSITE_BODY" ;;
    *) check_body "$url" "$EXPECTED_BODY" ;;
  esac
}

# ---------------------------------------------------------------- load generators + parsing
run_load() {  # outfile cmd...   -- in background so traps fire promptly
  local out="$1"; shift
  "${PIN_LOAD[@]}" "$@" >"$out" 2>&1 </dev/null &
  LOAD_PID=$!
  if ! wait "$LOAD_PID"; then LOAD_PID=""; tail -n 20 "$out" >&2; die "load generator failed: $*"; fi
  LOAD_PID=""
}
# prints: rps p50_ms p99_ms p999_ms errors  (errors = non-2xx/3xx responses + socket errors)
parse_wrk() {
  awk '
    /^BENCH_PCTL / { p50 = $2 / 1000; p99 = $3 / 1000; p999 = $4 / 1000; have = 1 }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { for (i = 3; i <= NF; i++) { v = $i; gsub(/,/, "", v); if (v ~ /^[0-9]+$/) err += v } }
    END {
      if (!have || rps == "") exit 1
      printf "%.2f %.3f %.3f %.3f %d\n", rps, p50, p99, p999, err
    }' "$1"
}
# oha JSON -> same five fields; rps = the achieved rate of successful requests. Requests cut
# off by the end of the run ("aborted due to deadline") are not errors.
parse_oha() {
  python3 - "$1" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
data = json.loads(text[text.index("{"):])
s, lp = data["summary"], data["latencyPercentiles"]
def ms(key):
    v = lp.get(key)
    return -1.0 if v is None else v * 1000.0
p999 = lp.get("p99.9", lp.get("p999"))
err = sum(n for code, n in data.get("statusCodeDistribution", {}).items() if not re.match(r"^[23]", code))
err += sum(n for e, n in data.get("errorDistribution", {}).items() if "deadline" not in e)
ok = sum(n for code, n in data.get("statusCodeDistribution", {}).items() if re.match(r"^[23]", code))
total = s.get("total") or 0
rps = ok / total if total else s.get("requestsPerSec", 0)
print("%.2f %.3f %.3f %.3f %d" % (rps, ms("p50"), ms("p99"), -1 if p999 is None else p999 * 1000, err))
EOF
}

declare -A RES=()      # "scenario|proxy|round" -> "rps p50 p99 p999 errors"
declare -A SC_PXS=()   # scenario -> proxies measured
declare -A SC_CMD=()   # scenario -> command line, for the report
WARNINGS=()

# CPU time (user, system; clock ticks) of a started process and its children (nginx's and
# HAProxy's workers): how much CPU each request costs, which two shared cores make far
# steadier than req/s.
px_ticks() {  # name -> "user sys"
  local pid
  pid="$(pid_of "$1")"
  [[ -n "$pid" ]] || { echo "0 0"; return; }
  # shellcheck disable=SC2046
  proc_ticks "$pid" $(pgrep -P "$pid" 2>/dev/null)
}
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"

measure() {  # scenario proxy round
  local sc="$1" px="$2" r="$3" url out vals a extra=()
  url="$(url_of "$px" "$(path_of "$sc" "$px")")"
  mapfile -t extra < <(load_args "$sc")
  out="$TMP/$sc-$px-$r.txt"
  local t0 t1
  read -ra t0 <<<"$(px_ticks "$px")"
  if [[ "$sc" == open_loop ]]; then
    run_load "$out" "$OHA_BIN" -z "${DURATION}s" -c "$CONNECTIONS" -q "$RATE" --latency-correction \
      --no-tui "${OHA_JSON_FLAG[@]}" "${OHA_THREAD_ARGS[@]}" "${extra[@]}" "$url"
    vals="$(parse_oha "$out")" || { tail -n 20 "$out" >&2; die "could not parse oha output ($out)"; }
  else
    run_load "$out" "$WRK_BIN" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
      -s "$TMP/pctl.lua" "${extra[@]}" "$url"
    vals="$(parse_wrk "$out")" || { cat "$out" >&2; die "could not parse wrk output ($out)"; }
  fi
  read -ra t1 <<<"$(px_ticks "$px")"
  read -ra a <<<"$vals"
  # user and system µs of the proxy's CPU per answered request (req/s x duration answers)
  vals+=" $(awk -v u=$((t1[0] - t0[0])) -v s=$((t1[1] - t0[1])) -v hz="$CLK_TCK" -v n="$(awk -v r="${a[0]}" -v d="$DURATION" 'BEGIN { print r * d }')" \
    'BEGIN { if (n > 0) printf "%.2f %.2f", u / hz * 1e6 / n, s / hz * 1e6 / n; else print "-1 -1" }')"
  RES["$sc|$px|$r"]="$vals"
  read -ra a <<<"$vals"
  log "$(printf '%-9s round %d %-10s %9s req/s  p50 %7s  p99 %7s  p99.9 %7s ms  errors %s  cpu/req user %s sys %s us' "$sc" "$r" "$px" "${a[@]}")"
  if (( a[4] != 0 )); then
    WARNINGS+=("$px had ${a[4]} errors (non-2xx or socket errors) in round $r of $sc")
    log "WARNING: ${WARNINGS[-1]}"
  fi
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a >= 0) printf "%.3f", a / b; else print "n/a" }'; }

run_scenario() {  # scenario
  local sc="$1" px list=() r i n
  if [[ -n "${SC_SKIP[$sc|*]:-}" ]]; then return; fi
  if [[ "$sc" == open_loop && -z "$RATE" && "$RATE_PEAK" == wrk ]]; then
    local nm; read -ra nm <<<"${MED[plain|nginx]}"
    RATE="$(awk -v r="${nm[0]}" -v p="$RATE_PCT" 'BEGIN { printf "%d", r * p / 100 }')"
    RATE_SOURCE="$RATE_PCT% of nginx's median plain req/s under wrk (${nm[0]%.*})"
    log "open_loop rate: $RATE req/s ($RATE_SOURCE)"
  elif [[ "$sc" == open_loop && -z "$RATE" ]]; then
    # nginx's peak under the generator that drives the open loop: its closed loop, the same
    # connections and threads, one warm-up and one measured run.
    local peak_out="$TMP/open_loop-peak-nginx.txt" peak vals nginx_url
    nginx_url="$(url_of nginx "$(path_of open_loop nginx)")"
    if (( WARMUP > 0 )); then
      run_load "$peak_out" "$OHA_BIN" -z "${WARMUP}s" -c "$CONNECTIONS" --no-tui "${OHA_JSON_FLAG[@]}" "${OHA_THREAD_ARGS[@]}" "$nginx_url"
    fi
    run_load "$peak_out" "$OHA_BIN" -z "${DURATION}s" -c "$CONNECTIONS" --no-tui "${OHA_JSON_FLAG[@]}" "${OHA_THREAD_ARGS[@]}" "$nginx_url"
    vals="$(parse_oha "$peak_out")" || { tail -n 20 "$peak_out" >&2; die "could not parse oha output ($peak_out)"; }
    read -ra peak <<<"$vals"
    RATE="$(awk -v r="${peak[0]}" -v p="$RATE_PCT" 'BEGIN { printf "%d", r * p / 100 }')"
    RATE_SOURCE="$RATE_PCT% of nginx's closed-loop req/s under oha (${peak[0]%.*})"
    log "open_loop rate: $RATE req/s ($RATE_SOURCE)"
  fi
  for px in $(active); do
    if [[ "$sc" == composite && "$px" != nginx && "$px" != portcullis ]]; then
      skip_sc "$sc" "$px" "no response aggregation"; continue
    fi
    [[ -z "${SC_SKIP[$sc|$px]:-}" ]] || continue
    if ! verify "$sc" "$px"; then
      case "$px" in
        haproxy|pingap) skip_sc "$sc" "$px" "the pre-run check failed (see the log above)"; continue ;;
        *) die "$px failed the $sc check" ;;
      esac
    fi
    list+=("$px")
  done
  SC_PXS[$sc]="${list[*]}"
  if [[ "$sc" == open_loop ]]; then
    SC_CMD[$sc]="oha -z ${DURATION}s -c $CONNECTIONS -q $RATE --latency-correction --no-tui ${OHA_JSON_FLAG[*]}${OHA_THREAD_ARGS[*]:+ ${OHA_THREAD_ARGS[*]}} URL"
  else
    local hdr=""
    [[ "$sc" != chain ]] || hdr=" -H 'Authorization: Bearer <HS256 token>'"
    SC_CMD[$sc]="wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency -s pctl.lua$hdr URL"
  fi
  if (( WARMUP > 0 )); then
    log "$sc: warm-up ${WARMUP}s each (wrk)"
    local extra=()
    mapfile -t extra < <(load_args "$sc")
    for px in "${list[@]}"; do
      run_load "$TMP/warmup-$sc-$px.txt" "$WRK_BIN" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" \
        "${extra[@]}" "$(url_of "$px" "$(path_of "$sc" "$px")")"
    done
  fi
  n=${#list[@]}
  for ((r = 1; r <= ROUNDS; r++)); do      # round r starts with the (r-1)-th proxy: alternating
    for ((i = 0; i < n; i++)); do
      measure "$sc" "${list[(i + r - 1) % n]}" "$r"
    done
  done
  compute_medians "$sc"
}

declare -A MED=()      # "scenario|proxy" -> "rps p50 p99 p999 errors_total spread_pct cpu_us_per_req"
compute_medians() {  # scenario
  local sc="$1" px r v rs p50s p99s p999s et spread cpus
  for px in ${SC_PXS[$sc]}; do
    rs=(); p50s=(); p99s=(); p999s=(); et=0; cpus=()
    for ((r = 1; r <= ROUNDS; r++)); do
      read -ra v <<<"${RES["$sc|$px|$r"]}"
      rs+=("${v[0]}"); p50s+=("${v[1]}"); p99s+=("${v[2]}"); p999s+=("${v[3]}"); et=$((et + v[4]))
      cpus+=("$(awk -v u="${v[5]}" -v s="${v[6]}" 'BEGIN { print u + s }')")
    done
    spread="$(printf '%s\n' "${rs[@]}" | sort -g | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.1f", (m > 0) ? 100 * (a[NR] - a[1]) / m : 0 }')"
    MED["$sc|$px"]="$(median "${rs[@]}") $(median "${p50s[@]}") $(median "${p99s[@]}") $(median "${p999s[@]}") $et $spread $(median "${cpus[@]}")"
  done
}

RATE_SOURCE=""
[[ -z "$RATE" ]] || RATE_SOURCE="RATE=$RATE, set explicitly"
for sc in "${SCS[@]}"; do run_scenario "$sc"; done

# ---------------------------------------------------------------- report
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
MACHINE="nproc=$(nproc), kernel $(uname -r), cpu: ${CPU_MODEL:-unknown}, cpu busy at start: ${BUSY_PCT}%"
PIN_DESC="no CPU pinning"
[[ "$PIN_CPUS" == 1 ]] && PIN_DESC="pinned: upstream+load generator on CPU 0, proxy under test on CPU 1"
versions_line() {
  local px out="" sep=""
  for px in "${PXS[@]}"; do
    [[ -n "${VERSION[$px]:-}" ]] || continue
    out+="$sep$px ${VERSION[$px]}"; sep="; "
  done
  out+="; $WRK_VERSION"
  [[ -n "$OHA_VERSION" ]] && out+="; $OHA_VERSION"
  echo "$out"
}
VERSIONS="$(versions_line)"
sc_title() {
  case "$1" in
    plain) echo "plain: GET / proxied" ;;
    chain) echo "chain: JWT HS256 verification + local rate limit (never refusing) on GET /chain" ;;
    composite) echo "composite: portcullis composite route of three parts vs nginx plain (one call)" ;;
    open_loop) echo "open_loop: fixed rate, open loop, GET /" ;;
  esac
}
bullets() { local l; while IFS= read -r l; do echo "$1$l"; done <<<"$2"; }   # prefix text
sc_notes() {  # scenario -> note lines
  case "$1" in
    chain) echo "nginx OSS cannot verify JWTs: its row is a plain proxy of /chain, the reference for the target (portcullis chain >= 0.95x nginx plain)." ;;
    composite) echo "HAProxy and Pingap have no response aggregation; nginx's row is GET / (one upstream call) for comparison." ;;
    open_loop)
      echo "rate: $RATE req/s ($RATE_SOURCE); req/s is the achieved rate of successful responses; latencies are corrected for coordinated omission (oha --latency-correction)."
      local px m behind=()
      for px in ${SC_PXS[open_loop]:-}; do
        read -ra m <<<"${MED[open_loop|$px]}"
        awk -v a="${m[0]}" -v r="$RATE" 'BEGIN { exit !(a < 0.97 * r) }' && behind+=("$px")
      done
      if (( ${#behind[@]} )); then
        echo "below 97% of the rate (could not keep up; their latencies are mostly queueing): ${behind[*]}."
      fi
      if in_list nginx "${behind[*]}"; then
        echo "nginx itself fell behind: the machine (load generator + upstream + proxy) cannot sustain this rate, so every row is queueing; lower RATE_PCT or set RATE."
      fi ;;
  esac
  return 0
}
# x nginx: req/s ratio to nginx's median in the same scenario (for open_loop: the achieved
# rate ratio, ~1 when a proxy keeps up); p99 x nginx likewise.
ref_of() { echo "${MED[$1|nginx]:-}"; }
px_ratio() {  # scenario proxy field
  local m n
  read -ra m <<<"${MED[$1|$2]}"; read -ra n <<<"$(ref_of "$1")"
  [[ ${#n[@]} -gt 0 ]] || { echo n/a; return; }
  ratio "${m[$3]}" "${n[$3]}"
}
# The median over rounds of the proxy's value over nginx's in the same round (field 0:
# req/s, 2: p99; "cpu": user + system µs per request). Each round measures the proxies back
# to back, so a drift of the machine's speed over the run (two shared cores drift by 10-30%)
# cancels in each round's ratio, where it does not in a ratio of two medians.
paired_ratio() {  # scenario proxy field|cpu
  local sc="$1" px="$2" f="$3" r v n rs=()
  in_list nginx "${SC_PXS[$sc]:-}" || { echo n/a; return; }
  for ((r = 1; r <= ROUNDS; r++)); do
    read -ra v <<<"${RES["$sc|$px|$r"]:-}"; read -ra n <<<"${RES["$sc|nginx|$r"]:-}"
    [[ ${#v[@]} -ge 7 && ${#n[@]} -ge 7 ]] || continue
    if [[ "$f" == cpu ]]; then rs+=("$(ratio "$(awk -v u="${v[5]}" -v s="${v[6]}" 'BEGIN { print u + s }')" "$(awk -v u="${n[5]}" -v s="${n[6]}" 'BEGIN { print u + s }')")")
    else rs+=("$(ratio "${v[$f]}" "${n[$f]}")"); fi
  done
  [[ ${#rs[@]} -gt 0 ]] || { echo n/a; return; }
  median "${rs[@]}"
}
verdict() {  # ratio ge|le threshold -> met / not met / n/a
  [[ "$1" != n/a ]] || { echo n/a; return; }
  awk -v r="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == "ge") ? (r >= t) : (r <= t); print (ok ? "met" : "not met") }'
}
target_line() {  # scenario -> the issue's target, if any
  local r p
  in_list portcullis "${SC_PXS[$1]:-}" && in_list nginx "${SC_PXS[$1]:-}" || return 0
  case "$1" in
    plain) r="$(px_ratio plain portcullis 0)"; p="$(paired_ratio plain portcullis 0)"
      echo "target: portcullis plain >= 1.00x nginx req/s: $r ($(verdict "$r" ge 1.0)); paired $p ($(verdict "$p" ge 1.0))" ;;
    chain) r="$(px_ratio chain portcullis 0)"; p="$(paired_ratio chain portcullis 0)"
      echo "target: portcullis chain >= 0.95x nginx plain req/s: $r ($(verdict "$r" ge 0.95)); paired $p ($(verdict "$p" ge 0.95))" ;;
    open_loop) r="$(px_ratio open_loop portcullis 2)"; p="$(paired_ratio open_loop portcullis 2)"
      echo "target: portcullis p99 <= nginx p99 at $RATE req/s: p99 ratio $r ($(verdict "$r" le 1.0)); paired $p ($(verdict "$p" le 1.0))" ;;
  esac
  [[ "$1" == composite ]] || echo "  portcullis CPU per request / nginx's, paired by round: $(paired_ratio "$1" portcullis cpu)"
}
skipped_lines() {  # -> "what: reason" lines
  local k
  for k in "${PXS[@]}"; do [[ -n "${PX_SKIP[$k]:-}" ]] && echo "$k (all scenarios): ${PX_SKIP[$k]}"; done
  for k in "${!SC_SKIP[@]}"; do
    if [[ "${k#*|}" == '*' ]]; then echo "${k%%|*} (all proxies): ${SC_SKIP[$k]}"
    else echo "${k#*|} in ${k%%|*}: ${SC_SKIP[$k]}"; fi
  done | sort
  return 0
}
fmt_ms() { awk -v v="$1" 'BEGIN { if (v < 0) print "n/a"; else printf "%.3f", v }'; }

{
  echo
  echo "machine:   $MACHINE"
  echo "versions:  $VERSIONS"
  echo "setup:     upstream nginx (1 worker) <- proxy (1 worker / thread) <- load generator; $PIN_DESC"
  echo "rounds:    $ROUNDS x ${DURATION}s per proxy, order rotating per round, warm-up ${WARMUP}s; medians$( [[ "$QUICK" == 1 ]] && echo "; QUICK mode")"
  for sc in "${SCS[@]}"; do
    echo
    echo "== $(sc_title "$sc")"
    if [[ -n "${SC_SKIP[$sc|*]:-}" ]]; then echo "skipped: ${SC_SKIP[$sc|*]}"; continue; fi
    echo "command: ${SC_CMD[$sc]}"
    printf '%-11s %10s %9s %9s %9s %7s %8s %8s %7s %9s\n' proxy req/s "p50 ms" "p99 ms" "p99.9 ms" errors "x nginx" "p99 x" spread "cpu us/r"
    for px in ${SC_PXS[$sc]}; do
      read -ra m <<<"${MED[$sc|$px]}"
      printf '%-11s %10.0f %9s %9s %9s %7s %8s %8s %6s%% %9s\n' "$px" "${m[0]}" "$(fmt_ms "${m[1]}")" "$(fmt_ms "${m[2]}")" \
        "$(fmt_ms "${m[3]}")" "${m[4]}" "$(px_ratio "$sc" "$px" 0)" "$(px_ratio "$sc" "$px" 2)" "${m[5]}" "${m[6]}"
    done
    for px in ${SC_PXS[$sc]}; do echo "  $px: ${WHAT[$sc|$px]}"; done
    sc_notes "$sc"
    target_line "$sc"
  done
  echo
  echo "x nginx = median req/s / nginx's median req/s in the same scenario; p99 x = the same for p99;"
  echo "paired = the median over rounds of portcullis's value / nginx's in the same round (drift cancels);"
  echo "spread = (max - min) / median of the rounds' req/s; cpu us/r = median CPU time (user + system)"
  echo "of the proxy's processes per answered request, from /proc (steadier than req/s on shared cores)."
  echo
  echo "ratios to nginx (median req/s; open_loop: p99):"
  for sc in "${SCS[@]}"; do
    [[ -n "${SC_PXS[$sc]:-}" ]] || continue
    line=""
    for px in ${SC_PXS[$sc]}; do
      [[ "$px" != nginx ]] || continue
      if [[ "$sc" == open_loop ]]; then line+="  $px $(px_ratio "$sc" "$px" 2)"; else line+="  $px $(px_ratio "$sc" "$px" 0)"; fi
    done
    printf '  %-10s%s\n' "$sc" "$line"
  done
  sk="$(skipped_lines)"
  if [[ -n "$sk" ]]; then echo; echo "skipped:"; bullets '  - ' "$sk"; fi
  if (( ${#WARNINGS[@]} )); then echo; echo "WARNINGS (the numbers above are suspect):"; printf '  - %s\n' "${WARNINGS[@]}"; fi
} | tee "$TMP/report.txt"

if [[ -n "$RESULT_FILE" ]]; then
  {
    echo "### nginx vs HAProxy vs Pingap vs portcullis ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- machine: $MACHINE"
    echo "- versions: $VERSIONS"
    echo "- rounds: $ROUNDS x ${DURATION}s per proxy, order rotating, warm-up ${WARMUP}s, medians; $PIN_DESC$( [[ "$QUICK" == 1 ]] && echo "; quick mode")"
    for sc in "${SCS[@]}"; do
      echo
      echo "#### $(sc_title "$sc")"
      echo
      if [[ -n "${SC_SKIP[$sc|*]:-}" ]]; then echo "Skipped: ${SC_SKIP[$sc|*]}"; continue; fi
      echo "\`${SC_CMD[$sc]}\`"
      echo
      echo "| proxy | what | req/s | p50 ms | p99 ms | p99.9 ms | errors | x nginx | p99 x nginx | CPU µs/request |"
      echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
      for px in ${SC_PXS[$sc]}; do
        read -ra m <<<"${MED[$sc|$px]}"
        printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$px" "${WHAT[$sc|$px]}" "${m[0]}" "$(fmt_ms "${m[1]}")" \
          "$(fmt_ms "${m[2]}")" "$(fmt_ms "${m[3]}")" "${m[4]}" "$(px_ratio "$sc" "$px" 0)" "$(px_ratio "$sc" "$px" 2)" "${m[6]}"
      done
      note="$(sc_notes "$sc")"; [[ -z "$note" ]] || { echo; echo "$note"; }
      tl="$(target_line "$sc")"; [[ -z "$tl" ]] || { echo; echo "**$tl**"; }
    done
    sk="$(skipped_lines)"
    if [[ -n "$sk" ]]; then echo; echo "Skipped:"; echo; bullets '- ' "$sk"; fi
    if (( ${#WARNINGS[@]} )); then echo; echo "Warnings:"; echo; printf -- '- %s\n' "${WARNINGS[@]}"; fi
  } >"$RESULT_FILE"
  log "wrote $RESULT_FILE"
fi

json_esc() {   # a JSON string body: backslash, quote and the control characters that occur here
  local s="${1//\\/\\\\}"; s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"; s="${s//$'\r'/\\r}"; s="${s//$'\t'/\\t}"
  printf '%s' "$s"
}
json_num() { [[ "$1" == n/a ]] && echo null || echo "$1"; }
write_json() {  # path
  local sc px r v m sep psep rsep k
  {
    printf '{\n  "generated": "%s",\n  "quick": %s,\n  "machine": "%s",\n' \
      "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$([[ "$QUICK" == 1 ]] && echo true || echo false)" "$(json_esc "$MACHINE")"
    printf '  "versions": {'
    sep=""
    for px in "${PXS[@]}"; do
      [[ -n "${VERSION[$px]:-}" ]] || continue
      printf '%s"%s": "%s"' "$sep" "$px" "$(json_esc "${VERSION[$px]}")"; sep=", "
    done
    printf '%s"wrk": "%s", "oha": "%s"},\n' "$sep" "$(json_esc "$WRK_VERSION")" "$(json_esc "$OHA_VERSION")"
    printf '  "settings": {"rounds": %d, "duration_s": %d, "connections": %d, "wrk_threads": %d, "warmup_s": %d, "cpu_pinning": %s, "open_loop_rate": %s, "open_loop_rate_source": "%s"},\n' \
      "$ROUNDS" "$DURATION" "$CONNECTIONS" "$WRK_THREADS" "$WARMUP" "$([[ "$PIN_CPUS" == 1 ]] && echo true || echo false)" \
      "${RATE:-null}" "$(json_esc "$RATE_SOURCE")"
    printf '  "proxies": [%s],\n' "$(printf '"%s",' "${PXS[@]}" | sed 's/,$//')"
    printf '  "reference": "nginx",\n  "scenarios": {'
    sep=""
    for sc in "${SCS[@]}"; do
      printf '%s\n    "%s": {\n      "title": "%s",\n' "$sep" "$sc" "$(json_esc "$(sc_title "$sc")")"
      printf '      "note": "%s",\n' "$(json_esc "$(sc_notes "$sc")")"
      printf '      "command": "%s",\n' "$(json_esc "${SC_CMD[$sc]:-}")"
      printf '      "target": "%s",\n' "$(json_esc "$(target_line "$sc")")"
      printf '      "skipped": {'
      psep=""
      for k in "${!SC_SKIP[@]}"; do
        [[ "${k%%|*}" == "$sc" ]] || continue
        printf '%s"%s": "%s"' "$psep" "${k#*|}" "$(json_esc "${SC_SKIP[$k]}")"; psep=", "
      done
      for px in "${PXS[@]}"; do
        [[ -n "${PX_SKIP[$px]:-}" ]] || continue
        printf '%s"%s": "%s"' "$psep" "$px" "$(json_esc "${PX_SKIP[$px]}")"; psep=", "
      done
      printf '},\n      "results": {'
      psep=""
      for px in ${SC_PXS[$sc]:-}; do
        read -ra m <<<"${MED[$sc|$px]}"
        printf '%s\n        "%s": {"what": "%s", "median": {"rps": %s, "p50_ms": %s, "p99_ms": %s, "p999_ms": %s, "cpu_us_per_request": %s}, "errors": %s, "rps_spread_pct": %s, "ratio_rps": %s, "ratio_p99": %s, "paired_ratio_rps": %s, "paired_ratio_p99": %s, "paired_ratio_cpu": %s, "rounds": [' \
          "$psep" "$px" "$(json_esc "${WHAT[$sc|$px]}")" "${m[0]}" "${m[1]}" "${m[2]}" "${m[3]}" "${m[6]}" "${m[4]}" "${m[5]}" \
          "$(json_num "$(px_ratio "$sc" "$px" 0)")" "$(json_num "$(px_ratio "$sc" "$px" 2)")" \
          "$(json_num "$(paired_ratio "$sc" "$px" 0)")" "$(json_num "$(paired_ratio "$sc" "$px" 2)")" "$(json_num "$(paired_ratio "$sc" "$px" cpu)")"
        rsep=""
        for ((r = 1; r <= ROUNDS; r++)); do
          read -ra v <<<"${RES["$sc|$px|$r"]}"
          printf '%s{"rps": %s, "p50_ms": %s, "p99_ms": %s, "p999_ms": %s, "errors": %s, "cpu_user_us_per_request": %s, "cpu_sys_us_per_request": %s}' "$rsep" "${v[@]}"
          rsep=", "
        done
        printf ']}'
        psep=","
      done
      printf '\n      }\n    }'
      sep=","
    done
    printf '\n  },\n  "warnings": ['
    sep=""
    for k in "${WARNINGS[@]}"; do printf '%s"%s"' "$sep" "$(json_esc "$k")"; sep=", "; done
    printf ']\n}\n'
  } >"$1"
}

if [[ -n "$RESULT_JSON" ]]; then write_json "$RESULT_JSON"; log "wrote $RESULT_JSON"; fi
if [[ -n "$CHART" ]]; then
  if command -v python3 >/dev/null; then
    json_for_chart="${RESULT_JSON:-$TMP/results.json}"
    [[ -n "$RESULT_JSON" ]] || write_json "$json_for_chart"
    if python3 "$SCRIPT_DIR/chart.py" "$json_for_chart" "$CHART"; then log "wrote $CHART"
    else log "WARNING: chart.py failed; no chart written"; fi
  else
    log "no python3: no chart written"
  fi
fi
