#!/usr/bin/env bash
# Installs (or upgrades) kvmotion on the lab cluster with helm, from the
# images `make images` built: the chart as an operator installs it, with
# values-lab.yaml and the agent API on TLS. The certificate is made here: a
# CA of its own and one certificate naming every agent's addresses, in the
# Secret the values name.
#
# Usage: install.sh [TAG [HELM_ARGS...]]   (TAG defaults to the one in
# target/images/images.json; HELM_ARGS go to helm, e.g. --set k=v)
# Needs the control plane, the lab and its nodes (nodes.sh up). Waits until
# every pod is Ready.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../control-plane/lib.sh"
NS=kvmotion-system
SECRET=kvmotion-agent-tls
k() { "$KUBE_BIN/kubectl" --kubeconfig "$CP_STATE/kubeconfig" "$@"; }
tag=${1:-$(jq -r '.[0].ref | sub(".*:"; "")' "$REPO_ROOT/target/images/images.json")}
shift || true
[ -n "$tag" ] && [ "$tag" != null ] || die "no image tag (make images first)"

pki=$REPO_ROOT/target/cluster/pki
if [ ! -f "$pki/tls.crt" ]; then
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kvmotion-lab-agent-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  printf 'subjectAltName=IP:10.99.0.1,IP:10.99.0.2,IP:10.98.0.1,IP:10.98.0.2\nextendedKeyUsage=serverAuth\n' >"$pki/ext"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kvmotion-agent" -keyout "$pki/tls.key" -out "$pki/tls.csr" 2>/dev/null
  openssl x509 -req -in "$pki/tls.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/ext" -out "$pki/tls.crt" 2>/dev/null
fi
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
k -n "$NS" create secret generic "$SECRET" --from-file="$pki/tls.crt" --from-file="$pki/tls.key" \
  --from-file="$pki/ca.crt" --dry-run=client -o yaml | k apply -f - >/dev/null

# The tests that run kvmotion as processes apply config/rbac (the same
# accounts and roles, without helm's ownership): they give way to the
# release, as on a cluster that never had them.
if ! "$HELM_BIN/helm" --kubeconfig "$CP_STATE/kubeconfig" status kvmotion -n "$NS" >/dev/null 2>&1; then
  k delete --ignore-not-found -f "$REPO_ROOT/config/rbac/agent.yaml" -f "$REPO_ROOT/config/rbac/controller.yaml" >/dev/null
fi
log "helm upgrade --install kvmotion (images $tag)"
"$HELM_BIN/helm" --kubeconfig "$CP_STATE/kubeconfig" upgrade --install kvmotion "$REPO_ROOT/charts/kvmotion" \
  -n "$NS" -f "$HERE/values-lab.yaml" \
  --set "controller.image.tag=$tag" --set "agent.image.tag=$tag" --wait --timeout 180s "$@"
# helm --wait counts a DaemonSet ready with maxUnavailable of its pods
# still starting: wait for every pod.
k -n "$NS" rollout status daemonset/kvmotion-agent --timeout 120s >/dev/null
k -n "$NS" rollout status deployment/kvmotion-controller --timeout 120s >/dev/null
k -n "$NS" get pods -o wide
