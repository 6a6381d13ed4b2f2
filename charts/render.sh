#!/usr/bin/env bash
# Renders the plain manifests in config/ from the Helm chart, for clusters
# installed without helm and for the tests, which apply config/rbac/.
# Usage: charts/render.sh [OUT_DIR]   (default: the repository's config/)
#
# The output depends only on the chart and the helm version, so the pinned
# helm of the test control plane is used (built when missing; HELM overrides
# it): a test renders again and fails when config/ drifts from the chart.
set -euo pipefail
. "$(dirname "$0")/../tests/control-plane/lib.sh"

out=${1:-$REPO_ROOT/config}
chart=$REPO_ROOT/charts/kvmotion
if [ -z "${HELM:-}" ]; then
  [ -x "$HELM_BIN/helm" ] || "$CP_DIR/build.sh" helm
  HELM=$HELM_BIN/helm
fi
export LC_ALL=C

# The release every file in config/ describes: the names the agent's defaults
# and the tests expect (kvmotion-controller, kvmotion-agent in
# kvmotion-system), with the Namespace rendered so the files stand alone.
render() { # render <description> <dest> [helm template flags...]
  local description=$1 dest=$out/$2; shift 2
  mkdir -p "$(dirname "$dest")"
  {
    printf '# Generated from the Helm chart charts/kvmotion by charts/render.sh: do\n'
    printf '# not edit. Change the chart, then run `make manifests`.\n'
    printf '# %s\n' "$description"
    "$HELM" template kvmotion "$chart" --namespace kvmotion-system \
      --set namespace.create=true "$@"
  } >"$dest.tmp"
  mv "$dest.tmp" "$dest"
}

render "kvmotion's namespace." \
  rbac/namespace.yaml --show-only templates/namespace.yaml
render "The controller's ServiceAccount and RBAC." \
  rbac/controller.yaml --show-only templates/controller-rbac.yaml
render "The agents' ServiceAccount and RBAC." \
  rbac/agent.yaml --show-only templates/agent-rbac.yaml
render "Everything but the CRDs, with the chart's defaults. Install the CRDs first: kubectl apply -f crds/" \
  install/kvmotion.yaml
