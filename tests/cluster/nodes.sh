#!/usr/bin/env bash
# The lab's hypervisors as Kubernetes nodes. On node-a and node-b,
# containerd and a kubelet run inside that node's network, mount and UTS
# namespaces (the ones its libvirtd runs in) and register with the test
# control plane as Node node-a / node-b, labelled kvmotion.io/hypervisor=true.
# A hostNetwork pod there sees the node's addresses, its libvirt socket, its
# local image directory and the shared one, as an agent on a real hypervisor
# does.
#
# Usage: nodes.sh up | down | status | import TAR... | tag SOURCE TARGET
#   up      start both nodes (after control-plane/up.sh and lab.sh up);
#           idempotent; imports the pause image and target/images/*.tar
#   import  import OCI archives into both nodes' containerd (k8s.io)
#   tag     tag an image anew in both nodes' containerd
#   down    stop both nodes and remove everything they made
#
# Nothing on the host stays changed: each node's processes run in a private
# mount namespace where the sysctls the kubelet writes are ordinary files
# and the host paths it and containerd insist on (/var/lib/kubelet,
# /var/log/containers, /var/lib/cni, /run/containerd) are the node's own
# directories; cgroups live under /kvmotion-NODE in every hierarchy; pod
# networks are bridges inside the node's network namespace. `down` (and
# lab.sh down) kills every process, removes the cgroups, the routes and the
# mount points it had to create.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../control-plane/lib.sh"
LAB=${KVMOTION_LAB_DIR:-/var/lib/kvmotion-lab}
NODES=(node-a node-b)
declare -A MGMT_IP=([node-a]=10.98.0.1 [node-b]=10.98.0.2)
declare -A POD_CIDR=([node-a]=10.244.1.0/24 [node-b]=10.244.2.0/24)
declare -A POD_GW=([node-a]=10.244.1.1 [node-b]=10.244.2.1)
HOST_IP=10.98.0.254
BRIDGE=kvmlab-br0
APISERVER_PORT=${KVMOTION_APISERVER_PORT:-26443}
# Host paths the kubelet or containerd use whatever they are told; each
# node gets its own directory bound over them.
HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd /var/lib/kvmotion-agent)
# Bound to the node's own directories (lab.sh makes these mount points).
NODE_PATHS=(/run/libvirt /var/lib/kvmotion-local)
# Sysctls the kubelet sets at start (vm.overcommit_memory=1, kernel.panic=10,
# ...): covered, so the host keeps its values.
SYSCTLS=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)
# Mount points this script had to create on the host, removed by `down`.
CREATED=$LAB/cluster-created-paths
CACHE_DIR=$KVMOTION_CACHE/cluster

log() { printf '[nodes] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
kdir() { echo "$LAB/nodes/$1/k8s"; }
libvirtd_pid() { cat "$LAB/nodes/$1/libvirtd.pid" 2>/dev/null || true; }
sock() { echo "$(kdir "$1")/containerd/containerd.sock"; }
ctr_on() { local n=$1; shift; ctr --address "$(sock "$n")" -n k8s.io "$@"; }
kubectl_() { "$KUBE_BIN/kubectl" --kubeconfig "$CP_STATE/kubeconfig" "$@"; }
running() { local p; p=$(cat "$(kdir "$1")/kubelet.pid" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }

install_packages() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v umoci >/dev/null || need+=(umoci)
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The sandbox image, built from pause.c: containerd pulls nothing.
pause_image() {
  local key dir
  key=$(sha256sum "$HERE/pause.c" | cut -c1-12)
  dir="$CACHE_DIR/pause-$key"
  if [ ! -f "$dir/pause.tar" ]; then
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp/rootfs"
    gcc -static -Os -s -o "$dir.tmp/rootfs/pause" "$HERE/pause.c"
    (
      cd "$dir.tmp"
      umoci init --layout oci
      umoci new --image oci:1
      umoci unpack --image oci:1 bundle >/dev/null
      cp rootfs/pause bundle/rootfs/pause
      umoci repack --image oci:1 bundle
      umoci config --image oci:1 --config.entrypoint /pause --config.user 65535:65535
      umoci gc --layout oci
      tar -C oci -cf pause.tar .
      rm -rf bundle oci rootfs
    )
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir/pause.tar"
}

# A client certificate of the control plane's client CA.
client_cert() { # client_cert NAME SUBJECT -> $pki/NAME.{crt,key}
  local pki=$CP_STATE/pki
  # Kept only while the control plane's client CA is the one that signed
  # it: up.sh makes new CAs each time it starts.
  openssl verify -CAfile "$pki/client-ca.crt" "$pki/$1.crt" >/dev/null 2>&1 && return 0
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/$1.ext"
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/client-ca.crt" -CAkey "$pki/client-ca.key" \
    -CAcreateserial -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}

kubeconfig_for() { # kubeconfig_for NAME FILE: the apiserver as the lab nodes reach it
  local pki=$CP_STATE/pki k=(--kubeconfig "$2")
  "$KUBE_BIN/kubectl" config set-cluster lab "${k[@]}" --server "https://$HOST_IP:$APISERVER_PORT" \
    --certificate-authority "$pki/serving-ca.crt" --embed-certs >/dev/null
  "$KUBE_BIN/kubectl" config set-credentials "$1" "${k[@]}" --client-certificate "$pki/$1.crt" \
    --client-key "$pki/$1.key" --embed-certs >/dev/null
  "$KUBE_BIN/kubectl" config set-context lab "${k[@]}" --cluster lab --user "$1" >/dev/null
  "$KUBE_BIN/kubectl" config use-context lab "${k[@]}" >/dev/null
}

# cgroup v1 hierarchies (and the v2 one mounted beside them), each given a
# /kvmotion-NODE of its own as the kubelet's cgroupRoot.
hierarchies() {
  for h in /sys/fs/cgroup/*/; do [ -f "$h/cgroup.procs" ] && echo "${h%/}"; done
}
cgroups_up() {
  local n=$1 h
  for h in $(hierarchies); do
    mkdir -p "$h/kvmotion-$n"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/kvmotion-$n/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/kvmotion-$n/cpuset.mems"
    fi
  done
}
cgroups_down() {
  local n=$1 h pid
  for h in $(hierarchies); do
    [ -d "$h/kvmotion-$n" ] || continue
    for _ in 1 2 3 4 5; do
      for pid in $(find "$h/kvmotion-$n" -name cgroup.procs -exec cat {} + 2>/dev/null); do
        kill -9 "$pid" 2>/dev/null || true
      done
      find "$h/kvmotion-$n" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$h/kvmotion-$n" ] || break
      sleep 0.2
    done
  done
}

write_node() { # write_node NODE: configs and the init script the node runs
  local n=$1 d pki=$CP_STATE/pki
  d=$(kdir "$n")
  mkdir -p "$d"/{containerd,kubelet,cni/net.d,cni/ipam,pod-logs,sysctl,host,pki}
  client_cert "kubelet-$n" "/O=system:nodes/CN=system:node:$n"
  kubeconfig_for "kubelet-$n" "$d/kubeconfig"
  cat >"$d/containerd.toml" <<TOML
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$d/containerd/containerd.sock"
[ttrpc]
  address = "$d/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "local.test/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$d/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
TOML
  # Pods of a node share a bridge in the node's network namespace; the
  # other node's pods and the host are reached by routes (no NAT, no
  # iptables).
  cat >"$d/cni/net.d/10-lab.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "lab", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": "$d/cni/ipam",
            "ranges": [[{"subnet": "${POD_CIDR[$n]}", "gateway": "${POD_GW[$n]}"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "loopback"}
]}
JSON
  cat >"$d/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 on this machine: refused by default since 1.35.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /kvmotion-$n
failSwapOn: false
containerRuntimeEndpoint: unix://$d/containerd/containerd.sock
podLogsDir: $d/pod-logs
makeIPTablesUtilChains: false
address: ${MGMT_IP[$n]}
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/client-ca.crt}
authorization: {mode: AlwaysAllow}
# The images are imported, never pulled: they must never be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
YAML
  local binds="" p s
  for p in "${HOST_PATHS[@]}"; do
    binds+="mkdir -p '$d/host$p'; mount --bind '$d/host$p' '$p'"$'\n'
  done
  # The node's libvirt sockets and local image directory, where its
  # libvirtd has them (lab.sh).
  binds+="mount --bind '$LAB/nodes/$n/run/libvirt' /run/libvirt"$'\n'
  binds+="mount --bind '$LAB/nodes/$n/local' /var/lib/kvmotion-local"$'\n'
  for s in "${SYSCTLS[@]}"; do
    f="$d/sysctl/${s//\//.}"
    cat "/proc/sys/$s" >"$f"
    binds+="mount --bind '$f' '/proc/sys/$s'"$'\n'
  done
  cat >"$d/init.sh" <<INIT
#!/bin/sh
# $n's containerd and kubelet, in $n's network and UTS namespaces and a
# private mount namespace made from the host's (libvirtd's own lacks the
# cgroup mounts: ip netns exec remounts /sys): nothing mounted here is
# seen outside.
set -e
$binds
containerd --config '$d/containerd.toml' >'$d/containerd.log' 2>&1 &
echo \$! >'$d/containerd.pid'
for _ in \$(seq 1 100); do [ -S '$d/containerd/containerd.sock' ] && break; sleep 0.1; done
'$KUBE_BIN/kubelet' --config '$d/kubelet.yaml' --kubeconfig '$d/kubeconfig' \\
  --hostname-override $n --node-ip ${MGMT_IP[$n]} --root-dir '$d/kubelet' --cert-dir '$d/pki' \\
  --node-labels kvmotion.io/hypervisor=true --v 1 >'$d/kubelet.log' 2>&1 &
echo \$! >'$d/kubelet.pid'
wait
INIT
  chmod +x "$d/init.sh"
}

mount_points() { # the host paths the nodes bind over; missing ones are created and recorded
  local p
  for p in "${HOST_PATHS[@]}" "${NODE_PATHS[@]}"; do
    if [ ! -e "$p" ]; then
      # The topmost missing ancestor is what `down` removes.
      local top=$p
      while [ ! -e "$(dirname "$top")" ]; do top=$(dirname "$top"); done
      mkdir -p "$p"
      echo "$top" >>"$CREATED"
    fi
  done
}

routes_up() {
  local n m
  for n in "${NODES[@]}"; do
    ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
    for m in "${NODES[@]}"; do
      [ "$n" = "$m" ] || ip -n "$n" route replace "${POD_CIDR[$m]}" via "${MGMT_IP[$m]}"
    done
    # The host reaches pods (and answers them) through the lab's bridge;
    # the routes go with it.
    ip route replace "${POD_CIDR[$n]}" via "${MGMT_IP[$n]}" dev "$BRIDGE"
  done
}

import() { # import TAR...: into both nodes
  local n t
  for n in "${NODES[@]}"; do
    for t in "$@"; do
      # The archives name their images in full (localhost/kvmotion-...:TAG).
      ctr_on "$n" images import "$t" >/dev/null
    done
  done
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "the nodes need root"
  cp_ready || die "the control plane is not up (tests/control-plane/up.sh)"
  for n in "${NODES[@]}"; do
    [ -n "$(libvirtd_pid "$n")" ] || die "the lab is not up (tests/lab/lab.sh up)"
  done
  install_packages
  local pause started=()
  pause=$(pause_image)
  mount_points
  routes_up
  for n in "${NODES[@]}"; do
    running "$n" && continue
    cgroups_up "$n"
    write_node "$n"
    setsid nsenter -t "$(libvirtd_pid "$n")" -n -u -- unshare -m --propagation private \
      "$(kdir "$n")/init.sh" </dev/null >"$(kdir "$n")/init.log" 2>&1 &
    started+=("$n")
  done
  for n in "${started[@]}"; do
    for _ in $(seq 1 100); do [ -S "$(sock "$n")" ] && break; sleep 0.1; done
    ctr_on "$n" images import --base-name local.test/pause "$pause" >/dev/null
  done
  local tars=("$REPO_ROOT"/target/images/*.tar)
  [ -e "${tars[0]}" ] && import "${tars[@]}"
  for n in "${NODES[@]}"; do
    kubectl_ wait --for=condition=Ready "node/$n" --timeout=60s >/dev/null 2>&1 ||
      { tail -n 20 "$(kdir "$n")/kubelet.log" >&2; die "$n did not become Ready"; }
  done
  log "up: nodes ${NODES[*]} Ready"
}

cmd_down() {
  local n p d
  for n in "${NODES[@]}"; do
    d=$(kdir "$n")
    for p in kubelet containerd; do
      [ -f "$d/$p.pid" ] && kill -9 "$(cat "$d/$p.pid")" 2>/dev/null || true
    done
    # Containers and sandboxes live in the node's cgroups; the shims are
    # found by the socket they serve.
    cgroups_down "$n"
    pkill -9 -f "containerd-shim.*-address $d/" 2>/dev/null || true
    pkill -9 -f "$d/init.sh" 2>/dev/null || true
    kubectl_ delete node "$n" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    ip route del "${POD_CIDR[$n]}" 2>/dev/null || true
  done
  if [ -f "$CREATED" ]; then
    sort -ru "$CREATED" | while read -r p; do rm -rf --one-file-system "$p"; done
    rm -f "$CREATED"
  fi
  for n in "${NODES[@]}"; do rm -rf "$(kdir "$n")"; done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  import) shift; import "$@" ;;
  tag) shift; [ $# -eq 2 ] || die "tag needs SOURCE TARGET"
    for n in "${NODES[@]}"; do ctr_on "$n" images tag --force "$1" "$2" >/dev/null; done ;;
  status) for n in "${NODES[@]}"; do
      if running "$n"; then echo "$n: kubelet pid $(cat "$(kdir "$n")/kubelet.pid")"; else echo "$n: down"; fi
    done ;;
  *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
