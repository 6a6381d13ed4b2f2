#!/usr/bin/env bash
# Runs a `cargo test` command; when every test that failed failed because a
# guest's kernel faulted on the node it had been moved to (the lab checks
# print GUEST KERNEL FAULT AFTER THE MOVE: software-emulated QEMU now and
# then loses a write of the guest's kernel during a move, see
# docs/failure-behaviour.md), runs each of those tests once more on its
# own, and passes only if all of them pass then. Any other failure, or a
# second fault, fails the run. What was run again is printed at the end and
# kept in target/test-logs/retried.txt.
# Usage: tests/retry-guest-faults.sh cargo test --workspace --no-fail-fast
set -uo pipefail
marker="GUEST KERNEL FAULT AFTER THE MOVE"
root=$(cd "$(dirname "$0")/.." && pwd)
logs="$root/target/test-logs"
mkdir -p "$logs"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

"$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] && exit 0

# Lines "bin<TAB>test<TAB>faulted" for every failed test, the integration
# test binary read from cargo's "Running tests/<bin>.rs" line before it.
failed=$(awk -v marker="$marker" '
  /^ *Running / { bin = ($2 ~ /^tests\//) ? $2 : "-"; sub(/^tests\//, "", bin); sub(/\.rs$/, "", bin); next }
  /^test .* \.\.\. FAILED$/ { name = $2; failed[bin "\t" name] = 1; next }
  /^---- .* stdout ----$/ { current = bin "\t" $2; next }
  index($0, marker) { faulted[current] = 1 }
  END { for (k in failed) print k "\t" ((k in faulted) ? 1 : 0) }
' "$out")
# Targets cargo says failed, to catch a binary that died without a FAILED line.
targets=$(grep -oE '`-p [^ ]+ --test [^`]+`' "$out" | awk '{print $4}' | tr -d '`' | sort -u)
failed_bins=$(printf '%s\n' "$failed" | awk -F'\t' 'NF { print $1 }' | sort -u)

if [ -z "$failed" ] || printf '%s\n' "$failed" | awk -F'\t' 'NF && ($1 == "-" || $3 == 0) { bad = 1 } END { exit !bad }' \
   || [ "$(printf '%s\n' "$targets")" != "$(printf '%s\n' "$failed_bins")" ]; then
  exit "$rc"
fi

echo
echo "=== a guest's kernel faulted after a move (docs/failure-behaviour.md): running those tests once more ==="
: > "$logs/retried.txt"
result=0
while IFS=$'\t' read -r bin name _; do
  [ -n "$bin" ] || continue
  echo "=== again: --test $bin $name"
  if "$1" test -p kvmotion-tests --test "$bin" -- --exact "$name"; then
    echo "$bin $name: guest kernel fault, passed when run again" | tee -a "$logs/retried.txt"
  else
    echo "$bin $name: failed again" | tee -a "$logs/retried.txt"
    result=1
  fi
done <<< "$failed"
echo "=== run again after a guest kernel fault:"
cat "$logs/retried.txt"
exit "$result"
