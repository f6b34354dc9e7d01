#!/usr/bin/env bash
# User-space instructions per request of a portcullis binary, counted by callgrind: a
# deterministic measure of a change's CPU cost (req/s on two shared cores swings 8-25%
# between rounds; this number repeats to within a fraction of a percent).
#
# usage: D=DIR [BIN=...] [CONF=portcullis.yaml] [PATHQ=/] [N=3000] instructions.sh [oha header args]
#   D      a bench directory kept by `KEEP_TMP=1 load-tests/run.sh`: its upstream.conf (nginx on
#          the upstream port) and the portcullis config CONF, whose listener is 127.0.0.1:18083
#   BIN    the portcullis binary (default: target/release/portcullis)
#   N      measured requests, after 300 of warm-up; 4 connections (oha -c 4)
# example (the chain: JWT HS256 + a rate limit):
#   D=/tmp/portcullis-bench.X CONF=chain.yaml PATHQ=/chain \
#     instructions.sh -H "Authorization: Bearer $(target/release/examples/mint_token HS256 $D/hs.key)"
# Needs valgrind, nginx and oha. Prints the instructions per request and writes the callgrind
# profile of the measured requests (callgrind_annotate reads it) next to the binary's name.
set -euo pipefail
: "${D:?set D to a bench directory (KEEP_TMP=1 load-tests/run.sh)}"
BIN="${BIN:-$(cd "$(dirname "$0")/../../.." && pwd)/target/release/portcullis}"
CONF="${CONF:-portcullis.yaml}"
PATHQ="${PATHQ:-/}"
N="${N:-3000}"
OHA="${OHA_BIN:-$(command -v oha || echo /opt/bench-tools/bin/oha)}"
OUT="${OUT:-/tmp/instructions-$(basename "$BIN").callgrind}"
URL="http://127.0.0.1:18083$PATHQ"

started_nginx=""
if ! pgrep -f "nginx.*$D/upstream.conf" >/dev/null; then
  setsid nginx -p "$D" -e "$D/up-err.log" -c "$D/upstream.conf" &
  started_nginx=1
fi
rm -f "$OUT" "$OUT".*
# Names written in full in every dump: the dump after zeroing must stand alone.
setsid env RUST_LOG=warn valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
  --callgrind-out-file="$OUT" "$BIN" -c "$D/$CONF" >"$OUT.log" 2>&1 &
vg=$!
cleanup() {
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  if [[ -n "$started_nginx" ]]; then pkill -f "nginx.*$D/upstream.conf" || true; fi
}
trap cleanup EXIT
deadline=$((SECONDS + 60))
until curl -s -o /dev/null "http://127.0.0.1:18083/"; do
  (( SECONDS < deadline )) || { echo "portcullis did not start under valgrind: $OUT.log" >&2; exit 1; }
  sleep 0.2
done
"$OHA" --no-tui -n 300 -c 4 "$URL" "$@" >/dev/null
callgrind_control -z "$vg" >/dev/null
"$OHA" --no-tui -n "$N" -c 4 "$URL" "$@" | grep -E "Success rate" || true
callgrind_control -d "$vg" >/dev/null
ir=$(awk '/^summary:/{print $2}' "$OUT.1")
echo "$(basename "$BIN"): $ir instructions for $N requests, $((ir / N)) per request (profile: $OUT.1)"
