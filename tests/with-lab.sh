#!/usr/bin/env bash
# Runs a command with the test control plane and the two-node lab up, then
# stops whichever of them it started. With KEEP set (non-empty, not 0) both
# stay up. Usage: tests/with-lab.sh [--meanwhile CMD [ARGS...] --] COMMAND [ARGS...]
#
# --meanwhile runs CMD while the control plane and the lab start (they
# spend their time waiting on daemons; `make test` compiles meanwhile) and
# COMMAND only if both CMD and the start succeeded.
set -uo pipefail
meanwhile=()
if [ "${1:-}" = --meanwhile ]; then
  shift
  while [ $# -gt 0 ] && [ "$1" != -- ]; do meanwhile+=("$1"); shift; done
  [ "${1:-}" = -- ] || { echo "with-lab.sh: --meanwhile CMD needs a -- before COMMAND" >&2; exit 2; }
  shift
fi
here=$(cd "$(dirname "$0")" && pwd)
. "$here/control-plane/lib.sh"

cp_was_up=false; lab_was_up=false
if cp_ready; then cp_was_up=true; fi
if "$here/lab/lab.sh" status 2>/dev/null | grep -q 'libvirtd pid'; then lab_was_up=true; fi

# A demo left running (make demo KEEP=1) owns the lab and its release.
if [ -f "$REPO_ROOT/target/demo/kept" ]; then
  echo "a demo left running by 'make demo KEEP=1' holds the lab: run 'make demo-down' first" >&2
  exit 1
fi

teardown() {
  case "${KEEP:-}" in
    "" | 0)
      $lab_was_up || "$here/lab/lab.sh" down
      $cp_was_up || "$here/control-plane/down.sh" ;;
  esac
}
# Ctrl-C stops the command (same process group) and still tears down.
trap 'teardown; exit 130' INT TERM

up() { "$here/control-plane/up.sh" && "$here/lab/lab.sh" up; }
if [ ${#meanwhile[@]} -gt 0 ]; then
  started_log=$(mktemp)
  up >"$started_log" 2>&1 &
  up_pid=$!
  "${meanwhile[@]}"
  meanwhile_rc=$?
  wait "$up_pid"
  up_rc=$?
  cat "$started_log" >&2
  rm -f "$started_log"
  if [ "$meanwhile_rc" -ne 0 ]; then rc=$meanwhile_rc
  elif [ "$up_rc" -ne 0 ]; then rc=$up_rc
  else "$@"; rc=$?
  fi
else
  up && "$@"
  rc=$?
fi
trap - INT TERM
teardown
exit $rc
