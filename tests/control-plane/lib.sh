# Shared settings for the control-plane scripts; sourced, never run.
# Binaries are cached outside the clone so a fresh clone (or CI) rebuilds
# nothing unless a pinned version changes.
CP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CP_DIR/../.." && pwd)
# shellcheck source=versions.env
. "$CP_DIR/versions.env"
KVMOTION_CACHE=${KVMOTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmotion}
KUBE_BIN=$KVMOTION_CACHE/bin/kubernetes-v$K8S_VERSION
# What build.sh builds from k8s.io/kubernetes: the control plane, a kubelet
# for each lab node, and the client.
KUBE_TOOLS=(kube-apiserver kube-scheduler kube-controller-manager kubelet kubectl)
ETCD_BIN=$KVMOTION_CACHE/bin/etcd-v$ETCD_VERSION
HELM_BIN=$KVMOTION_CACHE/bin/helm-v$HELM_VERSION
# State of a running control plane: certificates, etcd data, logs, kubeconfig.
CP_STATE=${CP_STATE:-$REPO_ROOT/target/control-plane}

# True when the control plane whose state is in $CP_STATE answers.
cp_ready() {
  [ -f "$CP_STATE/kubeconfig" ] && [ -x "$KUBE_BIN/kubectl" ] &&
    "$KUBE_BIN/kubectl" --kubeconfig "$CP_STATE/kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1
}

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
