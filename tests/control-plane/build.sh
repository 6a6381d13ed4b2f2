#!/usr/bin/env bash
# Builds kube-apiserver, kube-scheduler, kube-controller-manager, kubelet,
# kubectl, etcd and helm at the pinned versions from
# upstream Go modules, into a cache outside the clone. A tool whose cached
# binary exists is not rebuilt. Usage: build.sh [kubernetes|etcd|helm ...]
set -euo pipefail
. "$(dirname "$0")/lib.sh"

command -v go >/dev/null || die "go is required (Go >= 1.26 builds Kubernetes v$K8S_VERSION)"
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# Builds into a scratch dir and renames it into place, so an interrupted
# build never leaves a half-filled cache entry that later runs would trust.
finish() { # finish <scratch-dir> <dest-dir>
  rm -rf "$2"; mkdir -p "$(dirname "$2")"; mv "$1" "$2"
}

build_kubernetes() {
  local b missing=()
  for b in "${KUBE_TOOLS[@]}"; do [ -x "$KUBE_BIN/$b" ] || missing+=("$b"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "building ${missing[*]} v$K8S_VERSION (takes a while, cached afterwards)"
  local work out minor modfile
  work=$(mktemp -d); out="$work/out"; mkdir -p "$out"
  minor=$(cut -d. -f2 <<<"$K8S_VERSION")
  (cd "$work" && go mod init kvmotion.io/build-kubernetes >/dev/null 2>&1)
  modfile=$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$modfile" ] || die "could not download k8s.io/kubernetes@v$K8S_VERSION"
  {
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    # k8s.io/kubernetes points its staging modules at local paths; a module
    # that requires it must name their published v0.<minor>.<patch> versions.
    sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#replace \1 => \1 v0.'"${K8S_VERSION#1.}"'#p' "$modfile"
  } >>"$work/go.mod"
  local vpkg=k8s.io/component-base/version
  local ldflags="-s -w -X $vpkg.gitVersion=v$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  mkdir -p "$KUBE_BIN"
  for b in "${missing[@]}"; do
    (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out/$b" "k8s.io/kubernetes/cmd/$b")
    # Renamed into place from the same directory: a cached binary is
    # always a whole one, whatever interrupts the build.
    cp "$out/$b" "$KUBE_BIN/.$b.tmp" && mv "$KUBE_BIN/.$b.tmp" "$KUBE_BIN/$b"
  done
  rm -rf "$work"
}

build_etcd() {
  [ -x "$ETCD_BIN/etcd" ] && return 0
  log "building etcd v$ETCD_VERSION"
  local work out; work=$(mktemp -d); out="$work/out"; mkdir -p "$out"
  # etcd's own main module carries replace lines that `go install` refuses,
  # so a two-line main wraps the server module's entry point instead.
  cat >"$work/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$work" && go mod init kvmotion.io/build-etcd >/dev/null 2>&1 \
    && go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null \
    && go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
  finish "$out" "$ETCD_BIN"; rm -rf "$work"
}

build_helm() {
  [ -x "$HELM_BIN/helm" ] && return 0
  log "building helm v$HELM_VERSION"
  local work out; work=$(mktemp -d); out="$work/out"; mkdir -p "$out"
  (cd "$work" && go mod init kvmotion.io/build-helm >/dev/null 2>&1 \
    && go get "helm.sh/helm/v3@v$HELM_VERSION" >/dev/null \
    && go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" -o "$out/helm" helm.sh/helm/v3/cmd/helm)
  finish "$out" "$HELM_BIN"; rm -rf "$work"
}

targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(etcd kubernetes helm)
for t in "${targets[@]}"; do
  case "$t" in
    kubernetes) build_kubernetes ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    *) die "unknown tool '$t' (kubernetes, etcd or helm)" ;;
  esac
done
log "binaries ready in $KVMOTION_CACHE/bin"
