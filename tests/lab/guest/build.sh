#!/usr/bin/env bash
# Builds the lab guest: a Debian kernel (downloaded as a package and
# unpacked, not installed) and an initramfs holding busybox, the virtio
# drivers and the heartbeat program. Cached under
# $KVMOTION_CACHE/lab/guest-<kernel>-<hash of the sources>/; prints that dir.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KVMOTION_CACHE=${KVMOTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvmotion}
KERNEL_PKG=${KVMOTION_GUEST_KERNEL:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')}
[ -n "$KERNEL_PKG" ] || { apt-get update -qq; KERNEL_PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
[ -n "$KERNEL_PKG" ] || { echo "guest: no linux-image package found" >&2; exit 1; }
hash=$(cat "$here/heartbeat.c" "$here/init" "$here/build.sh" | sha256sum | cut -c1-12)
out=$KVMOTION_CACHE/lab/guest-${KERNEL_PKG#linux-image-}-$hash
if [ -f "$out/kernel" ] && [ -f "$out/initramfs.img" ]; then echo "$out"; exit 0; fi

work=$(mktemp -d); chmod 755 "$work"; trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "$KERNEL_PKG" >/dev/null) || { echo "guest: apt-get download $KERNEL_PKG failed" >&2; exit 1; }
dpkg -x "$work"/"$KERNEL_PKG"_*.deb "$work/kernel"
kver=${KERNEL_PKG#linux-image-}
root=$work/initramfs
mkdir -p "$root"/{bin,proc,sys,dev,lib/modules}
cp "$(command -v busybox)" "$root/bin/busybox"
gcc -O2 -static -o "$root/bin/heartbeat" "$here/heartbeat.c"
install -m 0755 "$here/init" "$root/init"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
  f=$(find "$work/kernel/lib/modules/$kver" -name "$m.ko*" | head -1)
  [ -n "$f" ] || continue # built into the kernel
  case "$f" in
    *.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
done
mkdir -p "$out.tmp"
# The kernel the guest boots: the ELF inside the bzImage when it carries a
# PVH entry point, which QEMU enters directly. Software emulation makes the
# BIOS's real-mode setup and the in-guest decompression cost about 2.7 s a
# boot, and every lab test boots guests; the bzImage is the fallback.
bz=$work/kernel/boot/vmlinuz-$kver
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$bz" | head -1 | cut -d: -f1 || true)
if [ -n "$off" ] && xz -dc --single-stream <(tail -c +"$((off + 1))" "$bz") >"$work/vmlinux" 2>/dev/null &&
  [[ $(readelf -n "$work/vmlinux" 2>/dev/null) == *"Unknown note type: (0x00000012)"* ]]; then
  cp "$work/vmlinux" "$out.tmp/kernel"
else
  cp "$bz" "$out.tmp/kernel"
fi
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp/initramfs.img"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
