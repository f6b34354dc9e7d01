#!/usr/bin/env bash
# Memory per idle client connection, and throughput with 10,000 idle connections held open:
# nginx vs portcullis (and portcullis with Pingora's default L4 buffers, for reference).
#
# Starts (all on 127.0.0.1, all torn down again on exit, Ctrl-C or failure):
#   - the upstream:      nginx, 1 worker, `return 200 '{"ok":true,"service":"bench"}'` (as run.sh)
#   - nginx:             1 worker, proxy_pass with an upstream keepalive pool (as run.sh), plus
#                        worker_rlimit_nofile / worker_connections for the idle set and
#                        keepalive_timeout / client_header_timeout long enough (IDLE_TIMEOUT)
#   - portcullis:        threads: 1, idle_timeout / request_header_timeout IDLE_TIMEOUT,
#                        max_connections above the count; buffers at portcullis's defaults
#   - portcullis-nothp:  the same portcullis with MIMALLOC_ALLOW_THP=0 in its environment:
#                        mimalloc then neither madvise()s its arenas for transparent huge pages
#                        nor lets the kernel use them (prctl PR_SET_THP_DISABLE), so RSS grows by
#                        4 KiB pages instead of 2 MiB ones: what the connections really touch
#   - pingora-bufs:      the same portcullis with Pingora's default per-connection L4 buffers
#                        (connection_read_buffer_bytes: 65536, connection_write_buffer_bytes:
#                        1460): what "bare Pingora" holds per connection, for comparison
# `ulimit -n` is raised for all of them (and load-tests/idle_client.py raises its own).
#
# Part 1, memory per connection: for each N in NS, each proxy and each mode
#   open       connect, send nothing
#   keepalive  one GET answered 200, then idle on keep-alive
# the proxy is started fresh and warmed up (wrk -c4 for WARMUP s), its RSS is read once it is
# stable, load-tests/idle_client.py opens N connections (one after the other), the RSS is read
# again once it is stable, and (after - before) / N is the cost per connection. RSS is VmRSS
# from /proc/PID/status of the nginx worker process / the portcullis process; "stable" means:
# the listen queue is empty, VmRSS moved by at most SETTLE_TOLERANCE_KB over the last
# SETTLE_STABLE_MS (polled every 0.1 s; longer than portcullis's 100 ms buffer linger), and at
# least SETTLE_MIN_MS have passed since the warm-up / since the last connection was opened,
# within SETTLE_MIN_MS + SETTLE_TIMEOUT s (else the row is marked "unsettled"). SETTLE_MIN_MS
# gives an allocator time to hand freed memory back; portcullis's mimalloc does so only when
# the process next calls into it in a way that purges, so an idle portcullis can keep freed
# memory (e.g. the request-head buffers an `open` connection drops after 100 ms) in RSS for
# long: see load-tests/idle-memory.md. Then every connection is checked to be
# still open (a non-blocking peek on each) and CHECK_SAMPLE of them send a GET that must get
# 200, so a server that closed or reset connections cannot look frugal.
# The kernel's memory for the sockets is NOT in RSS; the report adds the machine-wide change of
# TCP buffer pages (/proc/net/sockstat "mem") and of Slab (/proc/meminfo) for information;
# both count the client's ends too, and other processes on the machine move them.
#
# Part 2, LOAD_IDLE (10,000) idle keep-alive connections plus load: for each proxy in
# LOAD_PROXIES, ROUNDS rounds of `wrk -t1 -cCONNECTIONS -dDURATIONs --latency` without and with
# the idle set open (order alternating per round, proxies rotating); req/s, p50, p99 and the
# proxy's RSS before (once stable), at its peak during (polled every 0.1 s), and after each
# wrk run. The RSS of a run without the idle set depends on what ran before: an allocator may
# keep the memory of a closed idle set (mimalloc gives it back when the process next allocates,
# e.g. during the next wrk run), so the summary reports RSS with the idle set only.
#
# Prints tables, and writes RESULT_FILE (markdown) / RESULT_JSON when set.
# This is a benchmark, not a test: it is not part of CI.
#
# Knobs (environment):
#   NS="2000 10000"     connection counts for part 1
#   MODES="open keepalive"
#   PROXIES="nginx portcullis portcullis-nothp pingora-bufs"   proxies for part 1
#   LOAD_PROXIES="nginx portcullis"  proxies for part 2 (empty: skip part 2)
#   LOAD_IDLE=10000     idle keep-alive connections held open during part 2
#   DURATION=4          seconds per wrk run (part 2)
#   ROUNDS=3            rounds of part 2 (each: without and with the idle set, per proxy)
#   CONNECTIONS=32      wrk -c
#   WRK_THREADS=1       wrk -t
#   WARMUP=1            seconds of wrk -c4 warm-up after each (re)start of a proxy (0 = none)
#   CHECK_SAMPLE=200    connections that must answer a GET with 200 after a measurement
#   SETTLE_STABLE_MS=1000 SETTLE_TOLERANCE_KB=16 SETTLE_MIN_MS=12000 SETTLE_TIMEOUT=30
#                       see "stable" above (SETTLE_MIN_MS=0: take the first stable reading)
#   IDLE_TIMEOUT=600s   idle / header timeouts of both proxies (nothing may close meanwhile)
#   HEAD_BUFFER_BYTES=  portcullis server.request_head_buffer_bytes (default: portcullis's own)
#   PORTCULLIS_ENV=     extra VAR=value words for the environment of every portcullis variant
#   PORTCULLIS_BIN      default target/release/portcullis (built with `cargo build --release`
#                       only if that default path is missing; an explicit path must exist)
#   NO_BUILD=1          never run cargo; fail if the binary is missing
#   NGINX_BIN, WRK_BIN, PYTHON   other binaries (default: from PATH / /usr/sbin; python3)
#   UPSTREAM_PORT=18281 NGINX_PORT=18282 PORTCULLIS_PORT=18283 ADMIN_PORT=18284
#   PBUFS_PORT=18285 PBUFS_ADMIN_PORT=18286 NOTHP_PORT=18287 NOTHP_ADMIN_PORT=18288
#                       an unset port whose default is busy moves to the next free one;
#                       an explicitly set port must be free
#   RESULT_FILE=        write a markdown snippet here
#   RESULT_JSON=        write all rows as JSON here
#   KEEP_TMP=0          1 = keep the temp dir (configs, logs, smaps_rollup snapshots, wrk output)
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

ALL_PROXIES="nginx portcullis portcullis-nothp pingora-bufs"
NS="${NS:-2000 10000}"
MODES="${MODES:-open keepalive}"
PROXIES="${PROXIES-nginx portcullis portcullis-nothp pingora-bufs}"
LOAD_PROXIES="${LOAD_PROXIES-nginx portcullis}"
LOAD_IDLE="${LOAD_IDLE:-10000}"
DURATION="${DURATION:-4}"
ROUNDS="${ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-32}"
WRK_THREADS="${WRK_THREADS:-1}"
WARMUP="${WARMUP:-1}"
CHECK_SAMPLE="${CHECK_SAMPLE:-200}"
SETTLE_STABLE_MS="${SETTLE_STABLE_MS:-1000}"
SETTLE_TOLERANCE_KB="${SETTLE_TOLERANCE_KB:-16}"
SETTLE_TIMEOUT="${SETTLE_TIMEOUT:-30}"
SETTLE_MIN_MS="${SETTLE_MIN_MS:-12000}"
IDLE_TIMEOUT="${IDLE_TIMEOUT:-600s}"
HEAD_BUFFER_BYTES="${HEAD_BUFFER_BYTES:-}"
PORTCULLIS_ENV="${PORTCULLIS_ENV:-}"
KEEP_TMP="${KEEP_TMP:-0}"
NO_BUILD="${NO_BUILD:-0}"
RESULT_FILE="${RESULT_FILE:-}"
RESULT_JSON="${RESULT_JSON:-}"
PYTHON="${PYTHON:-python3}"
DEFAULT_PORTCULLIS_BIN="target/release/portcullis"
PORTCULLIS_BIN="${PORTCULLIS_BIN:-$DEFAULT_PORTCULLIS_BIN}"
READY_TIMEOUT=10           # seconds to wait for each server to answer 200
CLIENT_TIMEOUT=120         # seconds for idle_client.py to open its connections / check them
EXPECTED_BODY='{"ok":true,"service":"bench"}'

for v in LOAD_IDLE DURATION ROUNDS CONNECTIONS WRK_THREADS WARMUP CHECK_SAMPLE SETTLE_STABLE_MS \
         SETTLE_TOLERANCE_KB SETTLE_TIMEOUT SETTLE_MIN_MS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer, got '${!v}'" >&2; exit 2; }
done
for n in $NS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "NS: '$n' is not a positive integer" >&2; exit 2; }; done
for m in $MODES; do [[ "$m" == open || "$m" == keepalive ]] || { echo "MODES: unknown mode '$m'" >&2; exit 2; }; done
for p in $PROXIES $LOAD_PROXIES; do
  [[ " $ALL_PROXIES " == *" $p "* ]] || { echo "unknown proxy '$p' ($ALL_PROXIES)" >&2; exit 2; }
done
[[ -z "$HEAD_BUFFER_BYTES" || "$HEAD_BUFFER_BYTES" =~ ^[0-9]+$ ]] || { echo "HEAD_BUFFER_BYTES must be an integer" >&2; exit 2; }
[[ "$IDLE_TIMEOUT" =~ ^[0-9]+s$ ]] || { echo "IDLE_TIMEOUT must be seconds like 600s, got '$IDLE_TIMEOUT'" >&2; exit 2; }
(( ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= WRK_THREADS && WRK_THREADS >= 1 && SETTLE_STABLE_MS >= 100 )) ||
  { echo "need ROUNDS, DURATION, WRK_THREADS >= 1, CONNECTIONS >= WRK_THREADS, SETTLE_STABLE_MS >= 100" >&2; exit 2; }

log()  { printf '[idle-memory] %s\n' "$*" >&2; }
die()  { printf '[idle-memory] ERROR: %s\n' "$*" >&2; exit 1; }

# Largest number of client connections open at once, and the fd limit that fits it.
MAX_N="$LOAD_IDLE"
for n in $NS; do (( n > MAX_N )) && MAX_N="$n"; done
MAX_CLIENT_CONNS=$((MAX_N + CONNECTIONS + 64))
NOFILE=$((MAX_CLIENT_CONNS * 2 + 4096))          # proxy: clients + upstream + listeners + slack

# ---------------------------------------------------------------- cleanup
TMP=""
PIDS=()            # "name:pid:signal" for every long-running server we started
LOAD_PID=""        # a running wrk, if any
CLIENT_PID=""      # a running idle_client.py, if any
CL_W=""; CL_R=""   # its command / answer FIFOs

stop_client() {  # ends idle_client.py the hard way (normal path: client_close)
  [[ -n "$CLIENT_PID" ]] || return 0
  [[ -z "$CL_W" ]] || exec {CL_W}>&- 2>/dev/null || true
  [[ -z "$CL_R" ]] || exec {CL_R}<&- 2>/dev/null || true
  CL_W=""; CL_R=""
  kill -TERM "$CLIENT_PID" 2>/dev/null || true
  wait "$CLIENT_PID" 2>/dev/null || true
  CLIENT_PID=""
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [[ -n "$LOAD_PID" ]]; then kill -TERM "$LOAD_PID" 2>/dev/null; wait "$LOAD_PID" 2>/dev/null; fi
  stop_client
  local i entry name pid sig
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do        # reverse start order: proxies before upstream
    entry="${PIDS[$i]}"; name="${entry%%:*}"; entry="${entry#*:}"; pid="${entry%%:*}"; sig="${entry#*:}"
    stop_pid "$name" "$pid" "$sig"
  done
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
find_bin() {  # name extra-dirs...
  local name="$1" d; shift
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  for d in "$@"; do [[ -x "$d/$name" ]] && { echo "$d/$name"; return; }; done
  return 0
}
NGINX_BIN="${NGINX_BIN:-$(find_bin nginx /usr/sbin)}"
WRK_BIN="${WRK_BIN:-$(find_bin wrk)}"
[[ -n "$NGINX_BIN" && -x "$NGINX_BIN" ]] || die "nginx not found (apt-get install nginx, or set NGINX_BIN)"
[[ -n "$WRK_BIN" && -x "$WRK_BIN" ]] || die "wrk not found (apt-get install wrk, or set WRK_BIN)"
command -v curl >/dev/null || die "curl not found"
command -v ss >/dev/null || die "ss (iproute2) not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null || die "$PYTHON (>= 3.8) not found"

NEED_PORTCULLIS=0
for p in $PROXIES $LOAD_PROXIES; do [[ "$p" == nginx ]] || NEED_PORTCULLIS=1; done
if (( NEED_PORTCULLIS )); then
  if [[ ! -x "$PORTCULLIS_BIN" ]]; then
    if [[ "$PORTCULLIS_BIN" == "$DEFAULT_PORTCULLIS_BIN" && "$NO_BUILD" != 1 ]]; then
      log "$PORTCULLIS_BIN missing: cargo build --release"
      cargo build --release
    fi
    [[ -x "$PORTCULLIS_BIN" ]] || die "portcullis binary not found/executable: $PORTCULLIS_BIN"
  fi
  if [[ "$PORTCULLIS_BIN" == "$DEFAULT_PORTCULLIS_BIN" ]] &&
     [[ -n "$(find src Cargo.toml Cargo.lock -newer "$PORTCULLIS_BIN" -print -quit 2>/dev/null)" ]]; then
    log "WARNING: sources are newer than $PORTCULLIS_BIN; run 'cargo build --release' to measure current code"
  fi
  case "$PORTCULLIS_BIN" in /*) ;; *) PORTCULLIS_BIN="$REPO_ROOT/$PORTCULLIS_BIN" ;; esac
fi

# -- file descriptors: for every server we start (inherited) and the client (raises its own).
hard="$(ulimit -Hn)"
if [[ "$hard" != unlimited ]] && (( hard < NOFILE )); then
  ulimit -Hn "$NOFILE" 2>/dev/null || log "could not raise the hard fd limit from $hard to $NOFILE (needs CAP_SYS_RESOURCE); using $hard"
fi
hard="$(ulimit -Hn)"
if [[ "$hard" == unlimited ]] || (( hard >= NOFILE )); then ulimit -Sn "$NOFILE"; else ulimit -Sn "$hard"; fi
(( $(ulimit -Sn) >= MAX_CLIENT_CONNS + 1024 )) ||
  die "ulimit -n is $(ulimit -Sn): too low for $MAX_N idle connections (need about $NOFILE)"
NOFILE="$(ulimit -Sn)"      # what the servers get (nginx: worker_rlimit_nofile)
log "ulimit -n $NOFILE (hard $(ulimit -Hn))"

# ---------------------------------------------------------------- busy machine?
BUSY_PCT="?"
if [[ -r /proc/stat ]]; then
  read -r t0 i0 < <(cpu_sample); sleep 0.5; read -r t1 i1 < <(cpu_sample)
  BUSY_PCT="$(awk -v dt=$((t1 - t0)) -v di=$((i1 - i0)) 'BEGIN { printf "%.0f", (dt > 0) ? 100 * (dt - di) / dt : 0 }')"
  (( BUSY_PCT <= 20 )) || log "WARNING: CPUs are ${BUSY_PCT}% busy before starting; part 2 will be noisy"
fi
if pgrep -x 'rustc|cc1|cc1plus|ld|cargo' >/dev/null 2>&1; then
  log "WARNING: a compiler (cargo/rustc/cc) is running; results will be noisy"
fi

# ---------------------------------------------------------------- ports & temp dir
USED_PORTS=" "
pick_port UPSTREAM_PORT 18281
pick_port NGINX_PORT 18282
pick_port PORTCULLIS_PORT 18283
pick_port ADMIN_PORT 18284
pick_port PBUFS_PORT 18285
pick_port PBUFS_ADMIN_PORT 18286
pick_port NOTHP_PORT 18287
pick_port NOTHP_ADMIN_PORT 18288
declare -A PORT=([nginx]=$NGINX_PORT [portcullis]=$PORTCULLIS_PORT [pingora-bufs]=$PBUFS_PORT [portcullis-nothp]=$NOTHP_PORT)

TMP="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-idle.XXXXXX")"
chmod 755 "$TMP"     # nginx workers may run as an unprivileged user
mkdir -p "$TMP/nginx-temp"

# ---------------------------------------------------------------- configs
IDLE_SECS="${IDLE_TIMEOUT%s}"
WORKER_CONNECTIONS=$((MAX_CLIENT_CONNS + 1024))   # nginx counts client + upstream connections

# lib.sh's nginx blocks, with the limits many idle connections need.
NGINX_NOFILE="$NOFILE"
NGINX_KEEPALIVE_TIMEOUT="${IDLE_SECS}s"
NGINX_HEADER_TIMEOUT="${IDLE_SECS}s"

write_nginx_conf() {
  { nginx_common nginx "$WORKER_CONNECTIONS"
    cat <<EOF
http {
$(nginx_http_common nginx)
    upstream up {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 1000000;   # default 1000 would recycle upstream conns
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
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

write_portcullis_conf() {  # name port admin_port read_buf write_buf
  { cat <<EOF
server:
  listen: ["127.0.0.1:$2"]
  admin_listen: "127.0.0.1:$3"
  threads: 1
  pid_file: $TMP/$1.pid
  upgrade_sock: $TMP/$1-upgrade.sock
  grace_period: 1s
  graceful_shutdown_timeout: 1s
  idle_timeout: $IDLE_TIMEOUT
  request_header_timeout: $IDLE_TIMEOUT
  max_connections: $((MAX_CLIENT_CONNS * 2))
EOF
    [[ -z "$4" ]] || echo "  connection_read_buffer_bytes: $4"
    [[ -z "$5" ]] || echo "  connection_write_buffer_bytes: $5"
    [[ -z "$HEAD_BUFFER_BYTES" ]] || echo "  request_head_buffer_bytes: $HEAD_BUFFER_BYTES"
    cat <<EOF
upstreams:
  bench:
    backends: ["127.0.0.1:$UPSTREAM_PORT"]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: bench
EOF
  } >"$TMP/$1.yaml"
  if ! timeout 10 "$PORTCULLIS_BIN" -t -c "$TMP/$1.yaml" >"$TMP/$1-configtest.log" 2>&1; then
    cat "$TMP/$1-configtest.log" >&2
    die "'$PORTCULLIS_BIN -t -c $TMP/$1.yaml' failed"
  fi
}

# ---------------------------------------------------------------- process control
start_bg() {  # name stop-signal cmd...   (stdout+stderr -> $TMP/name.log)
  local name="$1" sig="$2" pid; shift 2
  setsid "$@" >>"$TMP/$name.log" 2>&1 </dev/null &
  pid=$!
  PIDS+=("$name:$pid:$sig")
  log "started $name (pid $pid)"
}
stop_named() {  # name -- stop it and forget it
  local e keep=() name pid sig
  for e in "${PIDS[@]}"; do
    if [[ "${e%%:*}" == "$1" ]]; then
      name="${e%%:*}"; e="${e#*:}"; pid="${e%%:*}"; sig="${e#*:}"
      stop_pid "$name" "$pid" "$sig"
    else
      keep+=("$e")
    fi
  done
  PIDS=("${keep[@]}")
}

start_nginx() {  # name
  "$NGINX_BIN" -t -q -p "$TMP" -e "$TMP/$1-error.log" -c "$TMP/$1.conf" >"$TMP/$1-configtest.log" 2>&1 ||
    { cat "$TMP/$1-configtest.log" >&2; die "nginx config $TMP/$1.conf is invalid"; }
  start_bg "$1" TERM "$NGINX_BIN" -p "$TMP" -e "$TMP/$1-error.log" -c "$TMP/$1.conf"
}

wait_ready() {  # name url
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
}

check_body() {  # url
  local out code body
  out="$(curl -s --max-time 2 -w '\n%{http_code}' "$1" 2>/dev/null || true)"
  code="${out##*$'\n'}"; body="${out%$'\n'*}"
  [[ "$code" == 200 && "$body" == "$EXPECTED_BODY" ]] ||
    die "$1 answered ${code:-nothing} '$body', expected 200 '$EXPECTED_BODY'"
}

start_proxy() {  # proxy  -- fresh process, ready, body checked, warmed up
  local px="$1" url="http://127.0.0.1:${PORT[$1]}/"
  case "$px" in
    nginx) start_nginx nginx ;;
    portcullis-nothp) start_bg "$px" INT env RUST_LOG=warn $PORTCULLIS_ENV MIMALLOC_ALLOW_THP=0 "$PORTCULLIS_BIN" -c "$TMP/$px.yaml" ;;
    *) start_bg "$px" INT env RUST_LOG=warn $PORTCULLIS_ENV "$PORTCULLIS_BIN" -c "$TMP/$px.yaml" ;;
  esac
  wait_ready "$px" "$url"
  check_body "$url"
  if (( WARMUP > 0 )); then
    "$WRK_BIN" -t1 -c4 -d"${WARMUP}s" "$url" >"$TMP/warmup-$px.txt" 2>&1 </dev/null &
    LOAD_PID=$!
    wait "$LOAD_PID" || { cat "$TMP/warmup-$px.txt" >&2; die "warm-up of $px failed"; }
    LOAD_PID=""
  fi
}

# The process whose RSS is measured: nginx's (only) worker; portcullis itself.
rss_pid() {  # proxy
  local pid w
  pid="$(pid_of "$1")"
  if [[ "$1" == nginx ]]; then
    w="$(pgrep -P "$pid" | head -n1 || true)"
    [[ -n "$w" ]] || die "no nginx worker under master $pid"
    echo "$w"
  else
    echo "$pid"
  fi
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
anon_kb() { awk '/^RssAnon:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
huge_kb() { awk '/^AnonHugePages:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
accept_queue() {  # port -> connections waiting in the listen queue
  ss -Hltn "sport = :$1" 2>/dev/null | awk '{ q += $2 } END { print q + 0 }'
}
sock_mem_pages() { awk '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat; }
slab_kb() { awk '/^Slab:/ { print $2 }' /proc/meminfo; }
listen_overflows() { awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) c[$i] = i; h = 1 } else print $c["ListenOverflows"] }' /proc/net/netstat; }

# settle pid port min_ms -> SETTLE_RSS (KiB), SETTLE_SECS, SETTLE_OK (1, or 0 at the deadline):
# poll VmRSS every 0.1 s until the listen queue is empty, VmRSS moved by at most
# SETTLE_TOLERANCE_KB over the last SETTLE_STABLE_MS, and at least min_ms have passed.
settle() {
  local pid="$1" port="$2" min_ns=$(( ${3:-0} * 1000000 )) win=$((SETTLE_STABLE_MS / 100)) samples=() r lo hi s start=$SECONDS t0 t1
  t0="$(date +%s%N)"
  SETTLE_OK=0
  while :; do
    kill -0 "$pid" 2>/dev/null || die "the measured process (pid $pid) is gone"
    r="$(rss_kb "$pid")"
    if (( $(accept_queue "$port") > 0 )); then samples=(); else samples+=("$r"); fi
    if (( ${#samples[@]} > win )); then samples=("${samples[@]:1}"); fi
    if (( ${#samples[@]} == win )); then
      lo="${samples[0]}"; hi="${samples[0]}"
      for s in "${samples[@]}"; do
        if (( s < lo )); then lo=$s; fi
        if (( s > hi )); then hi=$s; fi
      done
      if (( hi - lo <= SETTLE_TOLERANCE_KB && $(date +%s%N) - t0 >= min_ns )); then SETTLE_OK=1; break; fi
    fi
    if (( SECONDS - start >= SETTLE_TIMEOUT + ${3:-0} / 1000 )); then break; fi
    sleep 0.1
  done
  t1="$(date +%s%N)"
  SETTLE_RSS="$r"
  SETTLE_SECS="$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e9 }')"
}

# ---------------------------------------------------------------- the idle client
# idle_client.py talks over two FIFOs: commands in, one answer line per command out.
CLIENT_N=0
client_start() {  # port n mode
  rm -f "$TMP/client.in" "$TMP/client.out"
  mkfifo "$TMP/client.in" "$TMP/client.out"
  "$PYTHON" "$SCRIPT_DIR/idle_client.py" --port "$1" --n "$2" --mode "$3" --check "$CHECK_SAMPLE" \
    <"$TMP/client.in" >"$TMP/client.out" 2>>"$TMP/idle_client.log" &
  CLIENT_PID=$!
  exec {CL_W}>"$TMP/client.in"
  exec {CL_R}<"$TMP/client.out"
  CLIENT_N="$2"
  client_expect READY
  log "idle_client.py: $REPLY_JSON"
}
client_expect() {  # TAG  -> REPLY_JSON
  local line
  if ! IFS= read -r -t "$CLIENT_TIMEOUT" -u "$CL_R" line; then
    die "idle_client.py gave no $1 line within ${CLIENT_TIMEOUT}s (log: $TMP/idle_client.log)"
  fi
  [[ "$line" == "$1 "* ]] || die "idle_client.py: expected $1, got: $line"
  REPLY_JSON="${line#"$1 "}"
}
client_check() {  # -> CHECK json in REPLY_JSON; dies unless every connection is open and the sample got 200
  echo check >&"$CL_W"
  client_expect CHECK
  local open sample ok
  read -r open sample ok < <("$PYTHON" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["open"], d["sample"], d["sample_ok"])' "$REPLY_JSON")
  CHECK_OPEN="$open"; CHECK_SAMPLE_N="$sample"; CHECK_OK="$ok"
  (( open == CLIENT_N && ok == sample )) ||
    die "connections were closed or failed: $REPLY_JSON (of $CLIENT_N)"
}
client_close() {
  echo close >&"$CL_W"
  client_expect CLOSED
  exec {CL_W}>&- {CL_R}<&-
  CL_W=""; CL_R=""
  wait "$CLIENT_PID" || die "idle_client.py exited with an error"
  CLIENT_PID=""
}
json_field() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# ---------------------------------------------------------------- wrk
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
# run_wrk out url rsspid -> WRK_VALS "rps p50 p99 err", RSS_PEAK (VmRSS polled every 0.1 s)
run_wrk() {
  local out="$1" url="$2" pid="$3" r
  "$WRK_BIN" -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1 </dev/null &
  LOAD_PID=$!
  RSS_PEAK="$(rss_kb "$pid")"
  while kill -0 "$LOAD_PID" 2>/dev/null; do
    r="$(rss_kb "$pid")"
    if (( r > RSS_PEAK )); then RSS_PEAK=$r; fi
    sleep 0.1
  done
  if ! wait "$LOAD_PID"; then LOAD_PID=""; cat "$out" >&2; die "wrk failed against $url"; fi
  LOAD_PID=""
  WRK_VALS="$(parse_wrk "$out")" || { cat "$out" >&2; die "could not parse wrk output ($out)"; }
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'; }
kib_per() { awk -v d="$1" -v n="$2" 'BEGIN { printf "%.2f", d / n }'; }

# ---------------------------------------------------------------- start
write_upstream_conf
write_nginx_conf
for px in $PROXIES $LOAD_PROXIES; do
  case "$px" in
    portcullis) [[ -s "$TMP/portcullis.yaml" ]] || write_portcullis_conf portcullis "$PORTCULLIS_PORT" "$ADMIN_PORT" "" "" ;;
    pingora-bufs) [[ -s "$TMP/pingora-bufs.yaml" ]] || write_portcullis_conf pingora-bufs "$PBUFS_PORT" "$PBUFS_ADMIN_PORT" 65536 1460 ;;
    portcullis-nothp) [[ -s "$TMP/portcullis-nothp.yaml" ]] || write_portcullis_conf portcullis-nothp "$NOTHP_PORT" "$NOTHP_ADMIN_PORT" "" "" ;;
  esac
done
start_nginx upstream
wait_ready upstream "http://127.0.0.1:$UPSTREAM_PORT/"

declare -A WHAT=(
  [nginx]="nginx, 1 worker, worker_connections $WORKER_CONNECTIONS"
  [portcullis]="portcullis, threads: 1, default buffers (request_head_buffer_bytes ${HEAD_BUFFER_BYTES:-default}, no L4 buffers)"
  [portcullis-nothp]="the same portcullis with MIMALLOC_ALLOW_THP=0 (no transparent huge pages for mimalloc's arenas)"
  [pingora-bufs]="portcullis with Pingora's default L4 buffers (read 65536, write 1460)"
)

# ---------------------------------------------------------------- part 1: memory per connection
MEM_ROWS=()    # "proxy mode n before after kib_per_conn anon_kib_per_conn settle_before settle_after settled open sample ok sockmem_pages slab_kb overflows"
for n in $NS; do
  for px in $PROXIES; do
    for mode in $MODES; do
      log "part 1: $px, $mode, N=$n"
      start_proxy "$px"
      pid="$(rss_pid "$px")"
      settle "$pid" "${PORT[$px]}" "$SETTLE_MIN_MS"; before=$SETTLE_RSS s_before=$SETTLE_SECS ok_before=$SETTLE_OK
      anon_before="$(anon_kb "$pid")"; huge_before="$(huge_kb "$pid")"
      cp "/proc/$pid/smaps_rollup" "$TMP/smaps-$px-$mode-$n-before.txt" 2>/dev/null || true
      sm0="$(sock_mem_pages)"; sl0="$(slab_kb)"; lo0="$(listen_overflows)"
      client_start "${PORT[$px]}" "$n" "$mode"
      settle "$pid" "${PORT[$px]}" "$SETTLE_MIN_MS"; after=$SETTLE_RSS s_after=$SETTLE_SECS ok_after=$SETTLE_OK
      anon_after="$(anon_kb "$pid")"; huge_after="$(huge_kb "$pid")"
      cp "/proc/$pid/smaps_rollup" "$TMP/smaps-$px-$mode-$n-after.txt" 2>/dev/null || true
      sm1="$(sock_mem_pages)"; sl1="$(slab_kb)"; lo1="$(listen_overflows)"
      client_check
      client_close
      stop_named "$px"
      settled=$(( ok_before && ok_after ))
      per="$(kib_per $((after - before)) "$n")"
      per_anon="$(kib_per $((anon_after - anon_before)) "$n")"
      per_huge="$(kib_per $((huge_after - huge_before)) "$n")"
      MEM_ROWS+=("$px $mode $n $before $after $per $per_anon $s_before $s_after $settled $CHECK_OPEN $CHECK_SAMPLE_N $CHECK_OK $((sm1 - sm0)) $((sl1 - sl0)) $((lo1 - lo0)) $per_huge")
      log "$(printf '%-16s %-9s N=%-6s RSS %s -> %s KiB: %s KiB/conn (anon %s, of it in huge pages %s), settled in %ss/%ss%s; %s/%s open, %s/%s sample 200' \
        "$px" "$mode" "$n" "$before" "$after" "$per" "$per_anon" "$per_huge" "$s_before" "$s_after" \
        "$( (( settled )) || echo ' (NOT settled)')" "$CHECK_OPEN" "$n" "$CHECK_OK" "$CHECK_SAMPLE_N")"
      (( lo1 == lo0 )) || log "note: the kernel counted $((lo1 - lo0)) listen queue overflows meanwhile (machine-wide counter; the connections were retried, all are checked open)"
    done
  done
done

# ---------------------------------------------------------------- part 2: idle set plus load
LOAD_ROWS=()   # "proxy idle round rps p50 p99 err rss_before rss_peak rss_after"
read -ra LPXS <<<"$LOAD_PROXIES"
if (( ${#LPXS[@]} )); then
  for px in "${LPXS[@]}"; do start_proxy "$px"; done
  for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < ${#LPXS[@]}; i++)); do
      px="${LPXS[(i + r - 1) % ${#LPXS[@]}]}"
      url="http://127.0.0.1:${PORT[$px]}/"
      pid="$(rss_pid "$px")"
      if (( r % 2 )); then order="0 $LOAD_IDLE"; else order="$LOAD_IDLE 0"; fi
      for idle in $order; do
        if (( idle > 0 )); then client_start "${PORT[$px]}" "$idle" keepalive; fi
        settle "$pid" "${PORT[$px]}"
        (( SETTLE_OK )) || log "WARNING: $px RSS did not settle within ${SETTLE_TIMEOUT}s ($idle idle connections)"
        rb="$(rss_kb "$pid")"
        run_wrk "$TMP/wrk-$px-$idle-$r.txt" "$url" "$pid"
        ra="$(rss_kb "$pid")"
        if (( idle > 0 )); then client_check; client_close; fi
        LOAD_ROWS+=("$px $idle $r $WRK_VALS $rb $RSS_PEAK $ra")
        read -ra v <<<"$WRK_VALS"
        log "$(printf 'part 2: %-16s idle %-6s round %d: %9s req/s  p50 %6s  p99 %6s ms  errors %s  RSS %s / peak %s / after %s KiB' \
          "$px" "$idle" "$r" "${v[@]}" "$rb" "$RSS_PEAK" "$ra")"
        (( v[3] == 0 )) || log "WARNING: $px had ${v[3]} errors (idle $idle, round $r)"
      done
    done
  done
  for px in "${LPXS[@]}"; do stop_named "$px"; done
fi

# ---------------------------------------------------------------- report
CPU_MODEL="$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
MACHINE="nproc=$(nproc), kernel $(uname -r), cpu: ${CPU_MODEL:-unknown}, cpu busy at start: ${BUSY_PCT}%"
NGINX_VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')"
WRK_VERSION="$("$WRK_BIN" -v 2>&1 | awk 'NR == 1 { print $1, $2 }' || true)"
PC_VERSION=""
if (( NEED_PORTCULLIS )); then
  PC_VERSION="$(timeout 5 "$PORTCULLIS_BIN" -V 2>/dev/null | awk 'NR == 1 { print $2 }' || true)"
  PC_VERSION="portcullis ${PC_VERSION:-?} (binary $(date -u -r "$PORTCULLIS_BIN" '+%Y-%m-%d %H:%M UTC'), checkout git $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo '?'))"
fi
WRK_CMD="wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s --latency URL"

# load part summary per proxy: "rps_without rps_with p99_without p99_with rss_before_with peak_with"
declare -A LSUM=()
for px in "${LPXS[@]}"; do
  rs0=(); rs1=(); p0=(); p1=(); k0=(); k1=()
  for row in "${LOAD_ROWS[@]}"; do
    read -ra v <<<"$row"
    [[ "${v[0]}" == "$px" ]] || continue
    if (( v[1] == 0 )); then rs0+=("${v[3]}"); p0+=("${v[5]}")
    else rs1+=("${v[3]}"); p1+=("${v[5]}"); k0+=("${v[7]}"); k1+=("${v[8]}"); fi
  done
  LSUM[$px]="$(median "${rs0[@]}") $(median "${rs1[@]}") $(median "${p0[@]}") $(median "${p1[@]}") $(median "${k0[@]}") $(median "${k1[@]}")"
done

{
  echo
  echo "machine:   $MACHINE"
  echo "versions:  nginx $NGINX_VERSION; $WRK_VERSION${PC_VERSION:+; $PC_VERSION}"
  echo "setup:     upstream nginx (1 worker) <- proxy (1 worker / threads: 1) <- idle_client.py / wrk; idle and header timeouts $IDLE_TIMEOUT"
  if (( ${#MEM_ROWS[@]} )); then
  echo
  echo "part 1: RSS growth per idle connection (VmRSS of the nginx worker / the portcullis process;"
  echo "        kernel socket memory is not in RSS: see sockmem/slab, machine-wide, both ends)"
  printf '%-16s %-9s %6s %10s %10s %9s %9s %9s %8s %11s %8s %9s\n' proxy mode N "before KiB" "after KiB" KiB/conn "anon/conn" "THP/conn" settle "open/check" "sockmem" "slab KiB"
  for row in "${MEM_ROWS[@]}"; do
    read -ra v <<<"$row"
    printf '%-16s %-9s %6s %10s %10s %9s %9s %9s %8s %11s %8s %9s\n' "${v[0]}" "${v[1]}" "${v[2]}" "${v[3]}" "${v[4]}" "${v[5]}" "${v[6]}" "${v[16]}" \
      "$( (( v[9] )) && echo "${v[8]}s" || echo unsettled)" "${v[10]}/${v[12]}" "${v[13]}p" "${v[14]}"
  done
  echo "anon/conn: RssAnon growth per connection; THP/conn: of it, AnonHugePages (smaps_rollup) growth;"
  echo "open/check: connections still open at the end / sample connections that then got 200 (of $CHECK_SAMPLE);"
  echo "sockmem: change of TCP buffer pages (/proc/net/sockstat); slab: change of Slab (/proc/meminfo)"
  for px in $PROXIES; do echo "  $px: ${WHAT[$px]}"; done
  fi
  if (( ${#LPXS[@]} )); then
    echo
    echo "part 2: $LOAD_IDLE idle keep-alive connections plus load: $WRK_CMD, $ROUNDS rounds, without/with alternating"
    printf '%-16s %6s %5s %10s %8s %8s %6s %10s %10s %10s\n' proxy idle round req/s "p50 ms" "p99 ms" errors "RSS KiB" "peak KiB" "after KiB"
    for row in "${LOAD_ROWS[@]}"; do
      read -ra v <<<"$row"
      printf '%-16s %6s %5s %10.0f %8s %8s %6s %10s %10s %10s\n' "${v[@]}"
    done
    echo
    printf '%-16s %12s %12s %8s %10s %10s %12s %12s\n' proxy "req/s no idle" "req/s idle" "ratio" "p99 no idle" "p99 idle" "RSS idle set" "peak in wrk"
    for px in "${LPXS[@]}"; do
      read -ra s <<<"${LSUM[$px]}"
      printf '%-16s %12.0f %12.0f %8s %10s %10s %12.0f %12.0f\n' "$px" "${s[0]}" "${s[1]}" "$(ratio "${s[1]}" "${s[0]}")" "${s[2]}" "${s[3]}" "${s[4]}" "${s[5]}"
    done
    echo "(medians over rounds; ratio = req/s with the idle set / without; RSS idle set = VmRSS with the idle set open"
    echo " before wrk, peak in wrk = VmRSS max during wrk with the idle set, KiB)"
  fi
} | tee "$TMP/report.txt"

if [[ -n "$RESULT_FILE" ]]; then
  {
    echo "### Memory per idle connection, and $LOAD_IDLE idle connections plus load ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "- machine: $MACHINE"
    echo "- versions: nginx $NGINX_VERSION; $WRK_VERSION${PC_VERSION:+; $PC_VERSION}"
    echo "- setup: upstream nginx (1 worker) <- proxy (1 worker / \`threads: 1\`) <- \`load-tests/idle_client.py\` / wrk; idle and header timeouts $IDLE_TIMEOUT"
    for px in $PROXIES $LOAD_PROXIES; do echo "$px"; done | awk '!s[$0]++' | while read -r px; do echo "- $px: ${WHAT[$px]}"; done
    if (( ${#MEM_ROWS[@]} )); then
    echo
    echo "RSS growth per connection: (VmRSS after - before) / N of the nginx worker / the portcullis process, each read once stable (${SETTLE_STABLE_MS} ms within ${SETTLE_TOLERANCE_KB} KiB, listen queue empty, at least ${SETTLE_MIN_MS} ms after the warm-up / the last connection); proxy restarted and warmed up (wrk -c4, ${WARMUP}s) before each row. Kernel socket memory is not in RSS (sockmem / slab: machine-wide changes, both ends of each connection)."
    echo
    echo "| proxy | mode | N | RSS before KiB | RSS after KiB | **KiB/conn** | anon KiB/conn | of it THP KiB/conn | still open | sample 200 | sockmem pages | slab KiB |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in "${MEM_ROWS[@]}"; do
      read -ra v <<<"$row"
      printf '| %s | %s | %s | %s | %s | **%s**%s | %s | %s | %s | %s/%s | %s | %s |\n' "${v[0]}" "${v[1]}" "${v[2]}" "${v[3]}" "${v[4]}" "${v[5]}" \
        "$( (( v[9] )) || echo ' (unsettled)')" "${v[6]}" "${v[16]}" "${v[10]}" "${v[12]}" "${v[11]}" "${v[13]}" "${v[14]}"
    done
    fi
    if (( ${#LPXS[@]} )); then
      echo
      echo "$LOAD_IDLE idle keep-alive connections plus load: \`$WRK_CMD\`, $ROUNDS rounds, without / with the idle set alternating; medians:"
      echo
      echo "| proxy | req/s without | req/s with $LOAD_IDLE idle | ratio | p99 ms without | p99 ms with | RSS KiB with the idle set | RSS peak KiB during wrk, with the idle set |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|"
      for px in "${LPXS[@]}"; do
        read -ra s <<<"${LSUM[$px]}"
        printf '| %s | %.0f | %.0f | %s | %s | %s | %.0f | %.0f |\n' "$px" "${s[0]}" "${s[1]}" "$(ratio "${s[1]}" "${s[0]}")" "${s[2]}" "${s[3]}" "${s[4]}" "${s[5]}"
      done
      echo
      echo "<details><summary>every run</summary>"
      echo
      echo "| proxy | idle conns | round | req/s | p50 ms | p99 ms | errors | RSS KiB before | peak during | after |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      for row in "${LOAD_ROWS[@]}"; do
        read -ra v <<<"$row"
        printf '| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "${v[@]}"
      done
      echo
      echo "</details>"
    fi
  } >"$RESULT_FILE"
  log "wrote $RESULT_FILE"
fi

if [[ -n "$RESULT_JSON" ]]; then
  {
    printf '{\n  "generated": "%s",\n  "machine": "%s",\n  "nginx_version": "%s",\n  "portcullis": "%s",\n' \
      "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$MACHINE" "$NGINX_VERSION" "$PC_VERSION"
    printf '  "settings": {"idle_timeout": "%s", "settle_min_ms": '"$SETTLE_MIN_MS"', "settle_stable_ms": %d, "settle_tolerance_kb": %d, "warmup_s": %d, "check_sample": %d, "load_idle": %d, "wrk_command": "%s", "rounds": %d, "request_head_buffer_bytes": %s},\n' \
      "$IDLE_TIMEOUT" "$SETTLE_STABLE_MS" "$SETTLE_TOLERANCE_KB" "$WARMUP" "$CHECK_SAMPLE" "$LOAD_IDLE" "$WRK_CMD" "$ROUNDS" "${HEAD_BUFFER_BYTES:-null}"
    printf '  "memory": ['
    sep=""
    for row in "${MEM_ROWS[@]}"; do
      read -ra v <<<"$row"
      printf '%s\n    {"proxy": "%s", "mode": "%s", "n": %s, "rss_before_kb": %s, "rss_after_kb": %s, "kib_per_conn": %s, "anon_kib_per_conn": %s, "settle_before_s": %s, "settle_after_s": %s, "settled": %s, "still_open": %s, "sample": %s, "sample_ok": %s, "sockstat_tcp_mem_pages_delta": %s, "slab_kb_delta": %s, "listen_overflows": %s, "anon_huge_kib_per_conn": %s}' \
        "$sep" "${v[0]}" "${v[1]}" "${v[2]}" "${v[3]}" "${v[4]}" "${v[5]}" "${v[6]}" "${v[7]}" "${v[8]}" \
        "$( (( v[9] )) && echo true || echo false)" "${v[10]}" "${v[11]}" "${v[12]}" "${v[13]}" "${v[14]}" "${v[15]}" "${v[16]}"
      sep=","
    done
    printf '\n  ],\n  "load": ['
    sep=""
    for row in "${LOAD_ROWS[@]}"; do
      read -ra v <<<"$row"
      printf '%s\n    {"proxy": "%s", "idle_conns": %s, "round": %s, "rps": %s, "p50_ms": %s, "p99_ms": %s, "errors": %s, "rss_before_kb": %s, "rss_peak_kb": %s, "rss_after_kb": %s}' \
        "$sep" "${v[@]}"
      sep=","
    done
    printf '\n  ],\n  "load_medians": {'
    sep=""
    for px in "${LPXS[@]}"; do
      read -ra s <<<"${LSUM[$px]}"
      printf '%s\n    "%s": {"rps_without": %s, "rps_with": %s, "p99_ms_without": %s, "p99_ms_with": %s, "rss_kb_with_idle_before_wrk": %s, "rss_peak_kb_with_idle": %s}' \
        "$sep" "$px" "${s[@]}"
      sep=","
    done
    printf '\n  }\n}\n'
  } >"$RESULT_JSON"
  "$PYTHON" -c 'import json,sys; json.load(open(sys.argv[1]))' "$RESULT_JSON" || log "WARNING: $RESULT_JSON is not valid JSON"
  log "wrote $RESULT_JSON"
fi
