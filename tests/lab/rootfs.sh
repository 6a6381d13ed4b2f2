#!/usr/bin/env bash
# Builds the root filesystem the lab's libvirtd and QEMU run from: Debian
# trixie with libvirt and QEMU from trixie-backports. The host's own libvirt
# (11.3 on bookworm-backports) crashes when asked to resume a failed
# post-copy migration, which libvirt 11.4 fixed; the lab's hypervisors run a
# release with the fix while the agent keeps the host's client library, as
# an agent image would against a newer node.
#
# Cached under ~/.cache/kvmotion/lab keyed by the package versions the
# mirror serves; prints the directory. Idempotent.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "lab: rootfs.sh must run as root" >&2; exit 1; }
MIRROR=${KVMOTION_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${KVMOTION_CACHE:-$HOME/.cache/kvmotion}/lab
PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils)

# The versions trixie-backports serves now name the cache entry, so a
# newer release builds a new root instead of reusing a stale one.
index=$(curl -sSf --retry 3 "$MIRROR/dists/trixie-backports/main/binary-amd64/Packages.xz" | xz -dc)
version() {
  awk -v want="$1" '/^Package: /{p=$2} /^Version: /{if (p == want) {print $2; exit}}' <<<"$index"
}
libvirt=$(version libvirt-daemon)
qemu=$(version qemu-system-x86)
[ -n "$libvirt" ] && [ -n "$qemu" ] || { echo "lab: trixie-backports lists no libvirt/qemu" >&2; exit 1; }
key="trixie-libvirt-${libvirt}-qemu-${qemu#*:}"
dir="$CACHE/rootfs-${key//[^A-Za-z0-9.+-]/_}"
if [ -x "$dir/usr/sbin/libvirtd" ]; then echo "$dir"; exit 0; fi

command -v mmdebstrap >/dev/null || {
  echo "lab: installing mmdebstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
}
echo "lab: building the hypervisor root filesystem (libvirt $libvirt, QEMU $qemu)" >&2
mkdir -p "$CACHE"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
include=$(printf '%s,' "${PKGS[@]}")
mmdebstrap --quiet --variant=apt --mode=root --format=directory \
  --aptopt='APT::Default-Release "trixie-backports"' \
  --include="${include%,}" \
  trixie "$tmp" "deb $MIRROR trixie main" "deb $MIRROR trixie-backports main" >&2
# Mount points the nodes bind their own directories onto.
mkdir -p "$tmp/var/lib/kvmotion-lab" "$tmp/var/lib/kvmotion-local" "$tmp$CACHE"
printf 'libvirt %s\nqemu %s\n' "$libvirt" "$qemu" >"$tmp/KVMOTION-LAB-VERSIONS"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
