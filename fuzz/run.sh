#!/usr/bin/env bash
# Runs every fuzz target for a while (not part of CI).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 60 s, every target
#
# Needs the nightly toolchain and cargo-fuzz (installed here when missing). Each target starts
# from its committed corpus (fuzz/corpus/<target>/, which grows as the fuzzer finds new
# coverage: commit what is worth keeping) and writes any crash to fuzz/artifacts/<target>/.
# A crash becomes a regression test by copying its input to fuzz/regressions/<target>/:
# tests/fuzz_regressions.rs replays that folder on stable in every CI run.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(config path_routing jwt jwks template)
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

status=0
for t in "${targets[@]}"; do
  echo "== $t: ${secs}s"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 2>&1 | tail -n 4; then
    echo "!! $t crashed: see fuzz/artifacts/$t/ and copy the input to fuzz/regressions/$t/"
    status=1
  fi
done
exit "$status"
