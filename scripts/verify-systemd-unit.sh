#!/usr/bin/env bash
# Checks systemd/portcullis.service with `systemd-analyze verify`, on a machine (CI, a
# container) where the gateway is not installed and the portcullis user does not exist.
#
#   scripts/verify-systemd-unit.sh [BINARY] [UNIT]
#
# BINARY: a built portcullis (default: target/release/portcullis in this repository).
# UNIT:   the unit file (default: systemd/portcullis.service in this repository).
#
# systemd-analyze verify checks that every Exec*= command exists and is executable, so the
# unit is copied to a temporary directory with /usr/local/bin/portcullis pointing at BINARY.
# (It does not look up User=/Group=.) Fails on any line of its output that names the unit,
# and on a non-zero exit status. Lines about other units of this machine (a container's
# half-configured units, for example) are shown but ignored; --recursive-errors=no keeps
# their problems out of the exit status.
#
# Exit status: 0 clean (or systemd-analyze is not installed: skipped, with a message),
# 1 the unit has problems, 2 usage (missing binary or unit).

set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
installed_path=/usr/local/bin/portcullis

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "SKIP: systemd-analyze is not installed; the unit was NOT verified."
    exit 0
fi

bin=${1:-$repo/target/release/portcullis}
unit=${2:-$repo/systemd/portcullis.service}
# Absolute, resolved paths: the rewritten unit is read from another directory.
bin=$(realpath -- "$bin" 2>/dev/null || true)
unit=$(realpath -- "$unit" 2>/dev/null || true)
if [[ -z $bin || ! -f $bin || ! -x $bin ]]; then
    echo "error: no executable portcullis binary at ${1:-$repo/target/release/portcullis} (build it first: cargo build --release)" >&2
    exit 2
fi
if [[ -z $unit || ! -f $unit ]]; then
    echo "error: no unit file at ${2:-$repo/systemd/portcullis.service}" >&2
    exit 2
fi
name=$(basename -- "$unit")

if ! grep -qF "$installed_path" "$unit"; then
    echo "error: $unit does not mention $installed_path; this script rewrites that path, update it" >&2
    exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/verify-unit.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
# A symlink with a plain path: BINARY's own path may hold characters that would need quoting
# in an Exec line (spaces, %, $).
mkdir "$tmp/bin"
ln -s -- "$bin" "$tmp/bin/portcullis"
# The unit keeps its name: systemd-analyze prints it in every message about it.
repl=$(printf '%s' "$tmp/bin/portcullis" | sed 's/[&|\\]/\\&/g')
sed "s|$installed_path|$repl|g" "$unit" >"$tmp/$name"

opts=()
help=$(systemd-analyze --help 2>&1 || true)
[[ $help == *--recursive-errors=* ]] && opts+=(--recursive-errors=no)
[[ $help == *--man* ]] && opts+=(--man=no)

echo "systemd-analyze verify ${opts[*]} $name  ($(systemd-analyze --version | head -n 1))"
echo "  unit:   $unit"
echo "  binary: $bin (as $installed_path)"
set +e
out=$(SYSTEMD_LOG_COLOR=0 SYSTEMD_PAGER=cat LC_ALL=C systemd-analyze verify "${opts[@]}" "$tmp/$name" 2>&1)
rc=$?
set -e

about_unit=()
noise=()
while IFS= read -r line; do
    [[ -z $line ]] && continue
    line=${line//$tmp\/bin\/portcullis/$installed_path}
    line=${line//$tmp\//}
    if [[ $line == *"$name"* ]]; then
        about_unit+=("$line")
    else
        noise+=("$line")
    fi
done <<<"$out"

if ((${#noise[@]})); then
    echo "ignored (not about $name):"
    printf '  %s\n' "${noise[@]}"
fi
if ((${#about_unit[@]})); then
    echo "FAIL: systemd-analyze reports problems in $name:"
    printf '  %s\n' "${about_unit[@]}"
    exit 1
fi
if ((rc != 0)); then
    echo "FAIL: systemd-analyze verify exited with status $rc (output above)"
    exit 1
fi
echo "OK: $name verifies cleanly"

# For information only: systemd's own exposure score of the sandboxing.
if [[ $help == *--offline=* ]]; then
    score=$(SYSTEMD_LOG_COLOR=0 LC_ALL=C systemd-analyze security --offline=yes --no-pager "$tmp/$name" 2>/dev/null |
        grep -F 'Overall exposure level' || true)
    [[ -n $score ]] && echo "info: overall${score#*Overall}"
fi
exit 0
