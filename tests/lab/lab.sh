#!/usr/bin/env bash
# The two-node libvirt lab: two libvirtd "hypervisors" on this machine, each
# in its own network, mount and UTS namespace with its own config, state,
# host UUID, address and TCP listener.
#
#   migration network  node-a 10.99.0.1 <--veth--> node-b 10.99.0.2   (cut/restore)
#   management network node-a 10.98.0.1, node-b 10.98.0.2, host 10.98.0.254 (bridge)
#
# A directory at the same path on both nodes stands in for NFS (declared
# shared to QEMU); each node also has a node-local image directory, mounted
# at the same path but backed by its own storage.
#
# Usage: lab.sh up | down | status | exec NODE CMD... | virsh NODE ARGS... |
#        cut | restore | shape MBIT | unshape | kill-libvirtd NODE |
#        start-libvirtd NODE | qemu-pid NODE NAME | remove NAME | sweep |
#        guest-dir
# `remove` stops guest NAME on both nodes and undefines it, whatever its
# state; `sweep` does so for every guest (what a failed test left behind).
# `shape` caps the migration link at MBIT megabits/s each way (tc tbf), so
# a move lasts long enough to cut it mid-phase; `unshape` lifts the cap.
set -euo pipefail
LAB_DIR=$(cd "$(dirname "$0")" && pwd)
LAB=${KVMOTION_LAB_DIR:-/var/lib/kvmotion-lab}
SHARED=$LAB/shared            # same path on both nodes
LOCAL=/var/lib/kvmotion-local # same path, different storage per node
NODES=(node-a node-b)
declare -A MIG_IP=([node-a]=10.99.0.1 [node-b]=10.99.0.2)
declare -A MGMT_IP=([node-a]=10.98.0.1 [node-b]=10.98.0.2)
declare -A UUID=([node-a]=6b0a7e2c-1d1e-4c51-9a11-0000000000a1 [node-b]=6b0a7e2c-1d1e-4c51-9a11-0000000000b2)
HOST_IP=10.98.0.254
BRIDGE=kvmlab-br0

log() { printf '[lab] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
node_dir() { echo "$LAB/nodes/$1"; }
pid_of() { cat "$(node_dir "$1")/libvirtd.pid" 2>/dev/null || true; }
# A killed daemon stays a zombie until PID 1 reaps it (here up to about a
# second), and `kill -0` still succeeds on a zombie: read its state instead.
alive() {
  local p state; p=$(pid_of "$1")
  [ -n "$p" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
  [ -n "$state" ] && [ "$state" != Z ]
}
check_node() { [[ " ${NODES[*]} " == *" $1 "* ]] || die "unknown node '$1' (node-a or node-b)"; }

# Runs a command inside NODE's namespaces (network, mount, UTS), where the
# node's libvirt dirs and local image dir are mounted.
# The PID of guest NAME's QEMU on NODE.
qemu_pid() {
  local p
  for p in $(ip netns pids "$1"); do
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "guest=$2," && { echo "$p"; return 0; }
  done
  return 1
}
# Stops guest NAME on NODE and removes its definition, whatever state a
# failed test left it in: its migration job is aborted first (a job holds
# the domain's lock, and destroy would time out waiting for it), and a
# QEMU that destroy could not stop is killed.
remove_guest() {
  local node=$1 name=$2 pid
  alive "$node" || return 0
  node_exec "$node" virsh domjobabort "$name" >/dev/null 2>&1 || true
  node_exec "$node" virsh domjobabort --postcopy "$name" >/dev/null 2>&1 || true
  if ! node_exec "$node" virsh destroy "$name" >/dev/null 2>&1 && pid=$(qemu_pid "$node" "$name"); then
    kill -9 "$pid" 2>/dev/null || true
    sleep 1
  fi
  node_exec "$node" virsh undefine "$name" >/dev/null 2>&1 || true
}
node_exec() {
  local node=$1; shift
  alive "$node" || die "$node's libvirtd is not running (lab.sh up)"
  nsenter -t "$(pid_of "$node")" -m -n -u -- "$@"
}

# The lab's certificate authority, made by the first `up` and gone with
# `down`. A second `up` keeps it: running daemons hold the certificates
# they loaded at start, and new ones from another CA would fail every TLS
# connection between them.
make_ca() {
  local ca=$LAB/pki
  [ -s "$ca/cacert.pem" ] && return 0
  mkdir -p "$ca"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout "$ca/ca-key.pem" -out "$ca/cacert.pem" \
    -subj "/O=kvmotion-lab/CN=kvmotion lab CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# NODE's certificate (server and client, its name and both addresses as
# subject names, signed by the lab CA), laid out where libvirtd and QEMU
# look by default: the node's $d/pki is the hypervisor's /etc/pki.
make_node_pki() { # make_node_pki NODE
  local node=$1 ca=$LAB/pki p; p=$(node_dir "$1")/pki
  [ -s "$p/qemu/client-key.pem" ] && return 0
  mkdir -p "$p"/{CA,libvirt/private,qemu}
  openssl req -new -newkey rsa:2048 -nodes -keyout "$p/key.pem" -out "$p/req.csr" \
    -subj "/O=kvmotion-lab/CN=$node" 2>/dev/null
  openssl x509 -req -in "$p/req.csr" -CA "$ca/cacert.pem" -CAkey "$ca/ca-key.pem" -CAcreateserial \
    -days 30 -out "$p/cert.pem" -extfile <(printf '%s\n' \
      "subjectAltName=DNS:$node,IP:${MIG_IP[$node]},IP:${MGMT_IP[$node]}" \
      "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth") 2>/dev/null
  cp "$ca/cacert.pem" "$p/CA/cacert.pem"
  cp "$p/cert.pem" "$p/libvirt/servercert.pem"; cp "$p/key.pem" "$p/libvirt/private/serverkey.pem"
  cp "$p/cert.pem" "$p/libvirt/clientcert.pem"; cp "$p/key.pem" "$p/libvirt/private/clientkey.pem"
  cp "$ca/cacert.pem" "$p/qemu/ca-cert.pem"
  cp "$p/cert.pem" "$p/qemu/server-cert.pem"; cp "$p/key.pem" "$p/qemu/server-key.pem"
  cp "$p/cert.pem" "$p/qemu/client-cert.pem"; cp "$p/key.pem" "$p/qemu/client-key.pem"
  rm -f "$p/req.csr" "$p/key.pem" "$p/cert.pem"
  chmod -R go-rwx "$p"
}

write_config() { # write_config NODE
  local node=$1 d; d=$(node_dir "$1")
  mkdir -p "$d"/{etc/libvirt,run/libvirt,var/lib/libvirt,var/cache/libvirt,var/log/libvirt/qemu,local}
  cp -rn "$ROOTFS/etc/libvirt/." "$d/etc/libvirt/"
  make_node_pki "$node"
  # TCP without authentication (any host reaching the port controls the
  # node) beside TLS with client certificates: tests use both.
  cat >"$d/etc/libvirt/libvirtd.conf" <<CONF
listen_tls = 1
listen_tcp = 1
listen_addr = "${MIG_IP[$node]}"
auth_tcp = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
host_uuid = "${UUID[$node]}"
keepalive_interval = 5
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
CONF
  cat >"$d/etc/libvirt/qemu.conf" <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
migration_address = "${MIG_IP[$node]}"
migration_host = "${MIG_IP[$node]}"
shared_filesystems = [ "$SHARED" ]
migrate_tls_x509_cert_dir = "/etc/pki/qemu"
migrate_tls_x509_verify = 1
# The peer connection of a peer-to-peer move: a dead link fails libvirt's
# job after about 3 x 3 s instead of the default 5 x 5 s, so the link-cut
# tests wait seconds, not half a minute, for what they check.
keepalive_interval = 3
keepalive_count = 3
CONF
  local guest_cache=${KVMOTION_CACHE:-$HOME/.cache/kvmotion}/lab
  cat >"$d/init.sh" <<INIT
#!/bin/sh
# Runs in $node's fresh network, mount and UTS namespaces: the node's own
# directories are bound at the usual paths, on the host side (where the
# agent and the tests look) and inside the hypervisor root filesystem
# (where libvirtd and QEMU run). Nothing here is visible outside.
set -e
hostname $node
mount --make-rslave /
R=$ROOTFS
mount --bind "\$R" "\$R" # its own mount, so the node's binds stay in this namespace
mount -t proc proc "\$R/proc"
mount --rbind /sys "\$R/sys"
mount --rbind /dev "\$R/dev"
mount -t tmpfs tmpfs "\$R/run"
mount -t tmpfs tmpfs "\$R/tmp"
for p in /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mkdir -p "\$p" "\$R\$p"; mount --bind "$d\$p" "\$p"; mount --bind "$d\$p" "\$R\$p"
done
mkdir -p $LOCAL; mount --bind "$d/local" $LOCAL; mount --bind "$d/local" "\$R$LOCAL"
mount --bind "$LAB" "\$R$LAB"
mkdir -p "\$R/etc/pki"; mount --bind "$d/pki" "\$R/etc/pki"
mkdir -p "\$R$guest_cache"; mount --bind "$guest_cache" "\$R$guest_cache"
ip link set lo up
exec chroot "\$R" libvirtd --listen --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid
INIT
  chmod +x "$d/init.sh"
}

start_libvirtd() { # start_libvirtd NODE
  local node=$1 d; d=$(node_dir "$1")
  alive "$node" && return 0
  setsid ip netns exec "$node" unshare --mount --uts --propagation slave "$d/init.sh" \
    </dev/null >"$d/libvirtd.out" 2>&1 &
  echo $! >"$d/libvirtd.pid"
  for _ in $(seq 1 100); do
    [ -S "$d/run/libvirt/libvirt-sock" ] && virsh -c "qemu+unix:///system?socket=$d/run/libvirt/libvirt-sock" version >/dev/null 2>&1 && return 0
    alive "$node" || break
    sleep 0.1
  done
  cat "$d/libvirtd.out" >&2 || true
  die "$node's libvirtd did not start"
}

kill_libvirtd() { # kill_libvirtd NODE: SIGKILL, as a crash (guests keep running)
  local p; p=$(pid_of "$1")
  [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
  for _ in $(seq 1 50); do alive "$1" || break; sleep 0.1; done
  rm -f "$(node_dir "$1")/run/libvirt/libvirt-sock"
}

net_up() {
  for node in "${NODES[@]}"; do
    ip netns list | grep -qw "$node" || ip netns add "$node"
    ip -n "$node" link set lo up
  done
  if ! ip -n node-a link show mig0 >/dev/null 2>&1; then
    ip link add mig-a type veth peer name mig-b
    ip link set mig-a netns node-a name mig0
    ip link set mig-b netns node-b name mig0
    for node in "${NODES[@]}"; do
      ip -n "$node" addr add "${MIG_IP[$node]}/24" dev mig0
      ip -n "$node" link set mig0 up
    done
  fi
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$HOST_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  for node in "${NODES[@]}"; do
    local host_end="mg-${node#node-}"
    if ! ip link show "$host_end" >/dev/null 2>&1; then
      ip link add "$host_end" type veth peer name mgmt0 netns "$node"
      ip link set "$host_end" master "$BRIDGE" up
      ip -n "$node" addr add "${MGMT_IP[$node]}/24" dev mgmt0
      ip -n "$node" link set mgmt0 up
    fi
  done
}

net_down() {
  for node in "${NODES[@]}"; do ip netns del "$node" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "the lab needs root (network namespaces, libvirtd)"
  "$LAB_DIR/install.sh"
  ROOTFS=$("$LAB_DIR/rootfs.sh")
  mkdir -p "$SHARED"
  echo "$ROOTFS" >"$LAB/rootfs"
  net_up
  make_ca
  for node in "${NODES[@]}"; do
    write_config "$node"
    start_libvirtd "$node"
  done
  "$LAB_DIR/guest/build.sh" >"$LAB/guest-dir"
  log "up: node-a ${MIG_IP[node-a]}, node-b ${MIG_IP[node-b]}; shared dir $SHARED; guest $(cat "$LAB/guest-dir")"
}

cmd_down() {
  # Kubelets and pods run inside the nodes' namespaces (cluster/nodes.sh).
  "$LAB_DIR/../cluster/nodes.sh" down
  for node in "${NODES[@]}"; do
    if alive "$node"; then
      # Destroy guests first: libvirtd's death leaves QEMU running.
      for dom in $(node_exec "$node" virsh list --name 2>/dev/null); do
        node_exec "$node" virsh destroy "$dom" >/dev/null 2>&1 || true
      done
    fi
    kill_libvirtd "$node"
    # QEMU processes of this node that outlived their libvirtd.
    pkill -9 -f "qemu-system.*$(node_dir "$node")" 2>/dev/null || true
  done
  pkill -9 -f "qemu-system.*kvmotion-lab" 2>/dev/null || true
  pkill -9 -f "qemu-system.*kvmotion/lab/guest" 2>/dev/null || true
  net_down
  rm -rf "$LAB"
  # The mount point init.sh made for the nodes' local image directories.
  rmdir "$LOCAL" 2>/dev/null || true
  log "down"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status)
    for node in "${NODES[@]}"; do
      if alive "$node"; then echo "$node: libvirtd pid $(pid_of "$node"), $(node_exec "$node" virsh list --name | grep -c . || true) running domain(s)"
      else echo "$node: down"; fi
    done ;;
  # The command replaces this shell, so a caller's signals reach it directly.
  exec) shift; check_node "${1:-}"; node=$1; shift
    alive "$node" || die "$node's libvirtd is not running (lab.sh up)"
    exec nsenter -t "$(pid_of "$node")" -m -n -u -- "$@" ;;
  virsh) shift; check_node "${1:-}"; node=$1; shift; node_exec "$node" virsh "$@" ;;
  socket) shift; check_node "${1:-}"; echo "$(node_dir "$1")/run/libvirt/libvirt-sock" ;;
  cut) ip netns exec node-a ip link set mig0 down; ip netns exec node-b ip link set mig0 down ;;
  restore) ip netns exec node-a ip link set mig0 up; ip netns exec node-b ip link set mig0 up ;;
  shape) shift; [[ "${1:-}" =~ ^[0-9]+$ ]] || die "shape needs a rate in Mbit/s"
    for node in "${NODES[@]}"; do
      ip netns exec "$node" tc qdisc replace dev mig0 root tbf rate "${1}mbit" burst 64kb latency 200ms
    done ;;
  unshape) for node in "${NODES[@]}"; do ip netns exec "$node" tc qdisc del dev mig0 root 2>/dev/null || true; done ;;
  kill-libvirtd) shift; check_node "${1:-}"; kill_libvirtd "$1" ;;
  start-libvirtd) shift; check_node "${1:-}"; start_libvirtd "$1" ;;
  # The pid of the QEMU that runs guest NAME on NODE (both nodes' QEMUs of
  # one guest carry the same name; the network namespace tells them apart).
  qemu-pid) shift; check_node "${1:-}"; [[ -n "${2:-}" ]] || die "qemu-pid needs NODE NAME"
    qemu_pid "$1" "$2" || die "no QEMU of $2 on $1" ;;
  remove) shift; [[ -n "${1:-}" ]] || die "remove needs NAME"
    for node in "${NODES[@]}"; do remove_guest "$node" "$1"; done ;;
  sweep)
    for node in "${NODES[@]}"; do
      alive "$node" || continue
      for name in $(node_exec "$node" virsh list --all --name 2>/dev/null); do
        remove_guest "$node" "$name"; echo "$node/$name"
      done
    done ;;
  guest-dir) cat "$LAB/guest-dir" ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
