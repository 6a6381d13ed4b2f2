#!/usr/bin/env bash
# Installs what the two-node libvirt lab needs from Debian: libvirt 11 and
# QEMU 10 from bookworm-backports (bookworm's own are older), busybox for the
# guest's initramfs, qemu-img, a compiler for the guest's heartbeat
# program, mmdebstrap for the hypervisors' root filesystem (rootfs.sh),
# openssl for the lab's certificates and tcpdump to see what crosses its
# migration link.
# Idempotent: does nothing when everything is present.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "lab: install.sh must run as root" >&2; exit 1; }

need=()
for cmd in libvirtd virsh qemu-system-x86_64 qemu-img busybox gcc ip cpio pkg-config mmdebstrap xz curl openssl tcpdump; do
  command -v "$cmd" >/dev/null || need+=("$cmd")
done
pkg-config --exists libvirt 2>/dev/null || need+=(libvirt-dev)
[ ${#need[@]} -eq 0 ] && exit 0
echo "lab: installing packages (missing: ${need[*]})" >&2

. /etc/os-release
if [ "${VERSION_CODENAME:-}" = bookworm ] &&
  ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat >/etc/apt/sources.list.d/kvmotion-backports.sources <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
backports=()
[ "${VERSION_CODENAME:-}" = bookworm ] && backports=(-t bookworm-backports)
apt-get install -y -qq --no-install-recommends "${backports[@]}" \
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
  qemu-system-x86 qemu-utils >/dev/null
apt-get install -y -qq --no-install-recommends \
  busybox-static gcc libc6-dev iproute2 cpio pkg-config kmod mmdebstrap xz-utils curl openssl tcpdump >/dev/null
echo "lab: packages installed: $(libvirtd --version), $(qemu-system-x86_64 --version | head -1)" >&2
