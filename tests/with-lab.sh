#!/usr/bin/env bash
# Runs a command with the test control plane and the two-node lab up, then
# stops whichever of them it started. With KEEP set (non-empty, not 0) both
# stay up. Usage: tests/with-lab.sh COMMAND [ARGS...]
set -uo pipefail
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

"$here/control-plane/up.sh" && "$here/lab/lab.sh" up && "$@"
rc=$?
trap - INT TERM
teardown
exit $rc
