#!/usr/bin/env bash
# Stops the test control plane started by up.sh and removes its state.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
quiet=false; [ "${1:-}" = --quiet ] && quiet=true

stop() { # stop <pidfile>
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}
stop "$CP_STATE/kube-controller-manager.pid"
stop "$CP_STATE/kube-scheduler.pid"
stop "$CP_STATE/kube-apiserver.pid"
stop "$CP_STATE/etcd.pid"
# Any process of this state directory whose pid file was lost or
# overwritten (a control plane started by hand): it would hold the ports
# the next one needs.
pkill -9 -f -- "$CP_STATE/" 2>/dev/null || true
rm -rf "$CP_STATE/etcd" "$CP_STATE/kubeconfig" "$CP_STATE"/*.kubeconfig "$CP_STATE/env"
$quiet || log "stopped"
