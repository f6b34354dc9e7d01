#!/bin/bash
# Interleaved portcullis-only A/B: / vs /rl vs /jwt-hs vs /jwt-es in one process, rotating order.
# CPU per request from /proc/PID/stat (utime+stime, all threads) over each wrk window.
set -u
D="$1"; CYCLES="${2:-6}"; out=/tmp/pbench2/ab/ab.tsv
cd "$D"
HS=$(/tmp/mint_token-bin HS256 "$D/hs.key"); ES=$(/tmp/mint_token-bin ES256 /work/main/tests/fixtures/jwt/ec256.der ec256)
setsid /usr/sbin/nginx -p "$D" -e "$D/upstream-error.log" -c "$D/upstream.conf" >"$D/up.log" 2>&1 </dev/null & UP=$!
setsid env RUST_LOG=warn /tmp/portcullis-bench-bin -c "$D/portcullis.yaml" >"$D/pc.log" 2>&1 </dev/null & PC=$!
trap 'kill -INT $PC 2>/dev/null; kill -TERM $UP 2>/dev/null; sleep 1; kill -KILL -- -$PC -$UP 2>/dev/null' EXIT
for i in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18083/ && break; sleep 0.1; done
P=http://127.0.0.1:18083
curl -s -D - -o /dev/null $P/ >"$D/hdr-base.txt"; curl -s -D - -o /dev/null $P/rl >"$D/hdr-rl.txt"
curl -s -D - -o /dev/null -H "Authorization: Bearer $HS" $P/jwt-hs >"$D/hdr-hs.txt"
ticks() { awk '{print $14+$15}' /proc/$PC/stat; }
hz=$(getconf CLK_TCK)
run() { # name path [hdr]
  local t0 t1 rps
  t0=$(ticks)
  if [[ -n "${3:-}" ]]; then wrk -t1 -c32 -d4s --latency -H "Authorization: Bearer $3" "$P$2" >"$D/w.txt"; else wrk -t1 -c32 -d4s --latency "$P$2" >"$D/w.txt"; fi
  t1=$(ticks)
  rps=$(awk '/^Requests\/sec/{print $2}' "$D/w.txt"); reqs=$(awk '/requests in/{print $1}' "$D/w.txt")
  p50=$(awk '$1=="50%"{print $2}' "$D/w.txt"); p99=$(awk '$1=="99%"{print $2}' "$D/w.txt")
  err=$(grep -c 'Non-2xx\|Socket errors' "$D/w.txt")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\n' "$(date -u +%T)" "$1" "$rps" "$p50" "$p99" "$reqs" "$(awk -v d=$((t1-t0)) -v h=$hz -v n=$reqs 'BEGIN{print d/h*1e6/n}')" "$err" | tee -a $out
}
# warm-up
wrk -t1 -c32 -d1s $P/ >/dev/null; wrk -t1 -c32 -d1s $P/rl >/dev/null
wrk -t1 -c32 -d1s -H "Authorization: Bearer $HS" $P/jwt-hs >/dev/null; wrk -t1 -c32 -d1s -H "Authorization: Bearer $ES" $P/jwt-es >/dev/null
names=(baseline ratelimit jwt_hs256 jwt_es256); paths=(/ /rl /jwt-hs /jwt-es); toks=("" "" "$HS" "$ES")
for ((c = 0; c < CYCLES; c++)); do
  for ((k = 0; k < 4; k++)); do j=$(( (k + c) % 4 )); run "${names[j]}" "${paths[j]}" "${toks[j]}"; done
done
