#!/usr/bin/env bash
# Prints the libvirt XML of a lab guest. Usage:
#   domain.sh NAME GUEST_DIR [--memory MiB] [--dirty-mib N] [--dirty-rate R]
#             [--disk PATH [--stamp-disk]]
# TCG (no KVM here), direct kernel boot, serial console appended to
# /var/log/libvirt/qemu/NAME-serial.log on whichever node runs it.
set -euo pipefail
name=$1 dir=$2; shift 2
mem=256 dirty=0 rate=0 disk="" stamp=""
while [ $# -gt 0 ]; do
  case "$1" in
    --memory) mem=$2; shift 2 ;;
    --dirty-mib) dirty=$2; shift 2 ;;
    --dirty-rate) rate=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    --stamp-disk) stamp=" hb.disk=/dev/vda"; shift ;;
    *) echo "domain.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# Boot-time work this guest does not need, each a fraction of a second
# under software emulation.
fast="mitigations=off apparmor=0 security=none audit=0 cryptomgr.notests"
disk_xml=""
if [ -n "$disk" ]; then
  fmt=raw; case "$disk" in *.qcow2) fmt=qcow2 ;; esac
  disk_xml="<disk type='file' device='disk'><driver name='qemu' type='$fmt' cache='none'/><source file='$disk'/><target dev='vda' bus='virtio'/></disk>"
fi
cat <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>$mem</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$dir/kernel</kernel>
    <initrd>$dir/initramfs.img</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 $fast hb.dirty_mib=$dirty hb.dirty_rate=$rate$stamp</cmdline>
  </os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    $disk_xml
    <serial type='file'><source path='/var/log/libvirt/qemu/$name-serial.log' append='on'/><target port='0'/></serial>
    <console type='file'><source path='/var/log/libvirt/qemu/$name-serial.log' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
XML
