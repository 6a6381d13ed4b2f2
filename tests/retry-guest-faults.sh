#!/usr/bin/env bash
# Runs a `cargo test` command; when every test that failed failed because a
# guest's kernel faulted on the node it had been moved to (the lab checks
# print GUEST KERNEL FAULT AFTER THE MOVE: software-emulated QEMU now and
# then loses a write of the guest's kernel during a move, see
# docs/failure-behaviour.md), runs each of those tests again on its own,
# up to KVMOTION_GUEST_FAULT_RETRIES times (2) while each run ends in
# another such fault, and passes only if every one of them then passes in
# full. Any other failure, in the suite or in a run again, fails the run,
# and so does a test that faulted in every run. What was run again is
# printed at the end and kept in target/test-logs/retried.txt.
# Usage: tests/retry-guest-faults.sh cargo test --workspace --no-fail-fast
set -uo pipefail
marker="GUEST KERNEL FAULT AFTER THE MOVE"
# Further runs a faulted test gets, each only after another fault.
attempts=${KVMOTION_GUEST_FAULT_RETRIES:-2}
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
echo "=== a guest's kernel faulted after a move (docs/failure-behaviour.md): running those tests again ==="
: > "$logs/retried.txt"
result=0
again=$(mktemp)
trap 'rm -f "$out" "$again"' EXIT
while IFS=$'\t' read -r bin name _; do
  [ -n "$bin" ] || continue
  # Another run, up to $attempts, only while each ends in a guest fault
  # again: any other failure stops it at once.
  verdict="faulted in all $((attempts + 1)) runs"
  for try in $(seq 1 "$attempts"); do
    echo "=== again ($try of $attempts): --test $bin $name"
    # --workspace, as the suite ran: the same feature set as its build.
    if "$1" test --workspace --test "$bin" -- --exact "$name" 2>&1 | tee "$again"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
      verdict="passed in run $((try + 1)) after a guest kernel fault"
      break
    fi
    if ! grep -q "$marker" "$again"; then
      verdict="failed in run $((try + 1)) without a guest kernel fault"
      break
    fi
  done
  case "$verdict" in passed*) ;; *) result=1 ;; esac
  echo "$bin $name: $verdict" | tee -a "$logs/retried.txt"
done <<< "$failed"
echo "=== run again after a guest kernel fault:"
cat "$logs/retried.txt"
exit "$result"
