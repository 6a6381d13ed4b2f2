#!/usr/bin/env bash
# Builds the base image of one kvmotion image from Debian packages, without
# a registry: the packages named on the `# base-packages:` line of
# NAME/Containerfile, with their dependencies, extracted from Debian trixie
# (mmdebstrap), trimmed of documentation, with a CA bundle and the root and
# nonroot (65532) users; then made an OCI image layout (umoci).
#
# Usage: base.sh controller|agent. Prints the OCI reference (oci:DIR:base)
# for the Containerfile's BASE. Cached under ~/.cache/kvmotion/images keyed
# by the versions the mirror serves. Idempotent; root.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "images: base.sh must run as root" >&2; exit 1; }
name=${1:?usage: base.sh controller|agent}
root=$(cd "$(dirname "$0")/../.." && pwd)
file="$root/$name/Containerfile"
[ -f "$file" ] || { echo "images: no $file" >&2; exit 1; }
MIRROR=${KVMOTION_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${KVMOTION_CACHE:-$HOME/.cache/kvmotion}/images
read -r -a pkgs <<<"$(sed -n 's/^# base-packages: *//p' "$file")"
# Paths (globs, relative to the root) the image has no use for.
read -r -a drop <<<"$(sed -n 's/^# base-drop: *//p' "$file")"
[ "${#pkgs[@]}" -gt 0 ] || { echo "images: $file names no base-packages" >&2; exit 1; }

for tool in mmdebstrap umoci; do
  command -v "$tool" >/dev/null || {
    echo "images: installing $tool" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  }
done

# The versions trixie serves now name the cache entry: a security update
# builds a new base instead of reusing a stale one.
index=$(curl -sSf --retry 3 "$MIRROR/dists/trixie/main/binary-amd64/Packages.xz" | xz -dc)
versions=$(for p in "${pkgs[@]}"; do
  awk -v want="$p" '/^Package: /{p=$2} /^Version: /{if (p == want) {print want "=" $2; exit}}' <<<"$index"
done)
[ "$(wc -l <<<"$versions")" -eq "${#pkgs[@]}" ] || { echo "images: trixie lacks one of: ${pkgs[*]}" >&2; exit 1; }
key=$(printf '%s\n' "$versions" "${drop[@]}" | sha256sum | cut -c1-12)
dir="$CACHE/base-$name-$key"
if [ -f "$dir/oci/index.json" ]; then echo "oci:$dir/oci:base"; exit 0; fi

echo "images: building the $name base from trixie ($(tr '\n' ' ' <<<"$versions"))" >&2
mkdir -p "$CACHE"
tmp="$dir.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
include=$(printf '%s,' "${pkgs[@]}")
# extract: the packages and their dependencies unpacked, nothing run, no
# dpkg or shell left behind in the image.
mmdebstrap --quiet --variant=extract --mode=root --format=directory \
  --include="${include%,}" trixie "$tmp/rootfs" "deb $MIRROR trixie main" >&2
r="$tmp/rootfs"
# Merged /usr, as an installed trixie has it: the ELF interpreter is
# /lib64/ld-linux-x86-64.so.2.
for d in bin sbin lib lib64; do
  [ -e "$r/$d" ] || [ ! -d "$r/usr/$d" ] || ln -s "usr/$d" "$r/$d"
done
# Documentation goes; the copyright files stay with what they cover.
find "$r/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
rm -rf "$r"/usr/share/{man,info,locale,lintian,bug,bash-completion} \
  "$r"/var/cache/apt "$r"/var/lib/apt "$r"/var/log/* "$r"/var/lib/dpkg
for p in "${drop[@]}"; do
  # shellcheck disable=SC2086 # globs are meant to expand
  (cd "$r" && rm -rf -- $p)
done
# update-ca-certificates would write this bundle; nothing is run here.
mkdir -p "$r/etc/ssl/certs"
cat "$r"/usr/share/ca-certificates/mozilla/*.crt >"$r/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
mkdir -p "$r/tmp" "$r/home/nonroot" "$r/root"
chmod 1777 "$r/tmp"
chown 65532:65532 "$r/home/nonroot"
printf '%s\n' "$versions" >"$r/KVMOTION-BASE-PACKAGES"

umoci init --layout "$tmp/oci"
umoci new --image "$tmp/oci:base"
umoci unpack --image "$tmp/oci:base" "$tmp/bundle" >/dev/null
rm -rf "$tmp/bundle/rootfs"
mv "$r" "$tmp/bundle/rootfs"
umoci repack --image "$tmp/oci:base" "$tmp/bundle"
umoci config --image "$tmp/oci:base" --config.workingdir / \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
umoci gc --layout "$tmp/oci"
rm -rf "$tmp/bundle"
mv "$tmp" "$dir"
trap - EXIT
echo "oci:$dir/oci:base"
