#!/usr/bin/env bash
# `make images`: builds the OCI images of kvmotion-controller and
# kvmotion-agent without a registry. Each image is its committed
# Containerfile (controller/, agent/) built by buildah FROM a base that
# tests/images/base.sh makes from Debian packages, with the release binary
# as the only thing in the build context.
#
# Writes target/images/kvmotion-NAME-VERSION-COMMIT.tar (an OCI archive,
# what `ctr images import` and `skopeo copy oci-archive:...` take) and
# target/images/images.json (references and sizes). Tag: VERSION-COMMIT
# (`-dirty` when the tree has uncommitted changes). Root.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/target/images"
CARGO=${CARGO:-cargo}
target_dir=${CARGO_TARGET_DIR:-$root/target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
commit=$(git -C "$root" rev-parse --short=12 HEAD)
git -C "$root" diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
tag="$version-$commit"
# --tag: print the tag this tree's images get, build nothing.
[ "${1:-}" = --tag ] && { echo "$tag"; exit 0; }
[ "$(id -u)" = 0 ] || { echo "images: build.sh must run as root" >&2; exit 1; }
names=("${@:-controller agent}")
read -r -a names <<<"${names[*]}"

for tool in buildah jq; do
  command -v "$tool" >/dev/null || {
    echo "images: installing $tool" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  }
done

echo "images: building the release binaries" >&2
"$CARGO" build --release -q -p kvmotion-controller -p kvmotion-agent

# buildah keeps its storage here, not in /var/lib/containers; what it still
# creates outside (a blob-info cache, a network config dir) is removed
# after, when it was not there before.
store="$out/buildah"
mkdir -p "$out" "$store/tmp"
created=()
for d in /var/lib/containers /run/containers; do [ -e "$d" ] || created+=("$d"); done
# buildah names an image it reads from a layout after the layout's path,
# which must then be a valid reference (lowercase, no dot-directories such
# as ~/.cache, wherever the tree is): the layouts are linked from a
# directory whose path is one.
bases="/tmp/kvmotion-image-bases-$$"
cleanup() { rm -rf "$store" "$out/context" "$bases"; for d in "${created[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
bah() {
  TMPDIR="$store/tmp" buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs "$@"
}

report="[]"
for name in "${names[@]}"; do
  image="kvmotion-$name"
  base=$("$root/tests/images/base.sh" "$name")
  mkdir -p "$bases"
  layout=${base#oci:}
  ln -sfn "${layout%:base}" "$bases/$name"
  base="oci:$bases/$name:base"
  ctx="$out/context/$name"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # Symbols stay in the cargo target, not in the image.
  strip -o "$ctx/$image" "$target_dir/release/$image"
  ref="localhost/$image:$tag"
  echo "images: $ref FROM ${base#oci:}" >&2
  bah bud --quiet --network none --build-arg "BASE=$base" \
    --build-arg "VERSION=$version" --build-arg "COMMIT=$commit" \
    -f "$root/$name/Containerfile" -t "$ref" "$ctx" >/dev/null
  archive="$out/$image-$tag.tar"
  # One archive per image: the one of this tree.
  rm -f "$out/$image"-*.tar
  bah push --quiet "$ref" "oci-archive:$archive:$ref"
  # Sizes: what a registry stores (compressed layers) and what a node
  # unpacks (the layers' contents).
  manifest=$(tar -xOf "$archive" index.json | jq -r '.manifests[0].digest | sub("sha256:"; "")')
  compressed=$(tar -xOf "$archive" "blobs/sha256/$manifest" | jq '[.layers[].size] | add')
  mnt=$(bah from --quiet --pull-never "$ref")
  unpacked=$(du -sb "$(bah mount "$mnt")" | cut -f1)
  bah rm "$mnt" >/dev/null
  awk -v r="$ref" -v c="$compressed" -v u="$unpacked" -v a="${archive#"$root"/}" \
    'BEGIN {printf "images: %s: %.1f MiB compressed, %.1f MiB unpacked -> %s\n", r, c / 1048576, u / 1048576, a}' >&2
  report=$(jq -c --arg n "$image" --arg r "$ref" --arg a "${archive#"$root"/}" \
    --argjson c "$compressed" --argjson u "$unpacked" \
    '. + [{name: $n, ref: $r, archive: $a, compressedBytes: $c, unpackedBytes: $u}]' <<<"$report")
done
jq . <<<"$report" >"$out/images.json"
echo "$out/images.json"
