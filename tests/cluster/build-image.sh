#!/usr/bin/env bash
# Build our image from the project's own Dockerfile, on a machine that reaches no image
# registry (issue 11), and write it as an OCI archive that containerd imports.
#
# 1. The base. The Dockerfile's default base (python:3.11-slim-bookworm) cannot be pulled here,
#    so an equivalent one is made from Debian's packages: debootstrap of bookworm (minbase) with
#    python3.11 and its venv module, committed as an image. Cached; its package list is kept
#    beside it (base/packages.txt) so what it holds can be compared with the official image.
# 2. The image. `buildah bud` of ./Dockerfile with BASE_IMAGE set to that base: the same file
#    users build, with a real image builder. chroot isolation and the vfs storage driver: no
#    container runtime and no mounts left on the host. The machine's CA bundle and pip.conf
#    are mounted into the build's RUN steps only (pip reaches PyPI through this machine's TLS
#    interception); nothing of the host is copied into the image. Cached by the content of
#    the files the Dockerfile copies.
#
# Usage: build-image.sh        # prints the path of the OCI archive, then the image name
# Env:   SORTIE_K8S_CACHE (default ~/.cache/sortie-egress)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_root="${SORTIE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sortie-egress}"
suite=bookworm
mirror="${SORTIE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base_packages="python3.11,python3.11-venv,python3-venv,python-is-python3,ca-certificates"
base_key="$(printf '%s %s' "$suite" "$base_packages" | sha256sum | cut -c1-12)"
base_dir="$cache_root/image-base-$base_key"
base_name="registry.invalid/sortie/python-base:3.11-$suite-$base_key"
storage="$cache_root/buildah"

# shellcheck source=build-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/build-lib.sh"
log() { log_line build-image "$@"; }

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || {
    log "$tool is needed to build our image: apt-get install -y buildah debootstrap (scripts/node-host-packages.sh)"
    exit 2
  }
done
buildah_() { buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs "$@"; }
started=$SECONDS

# --- 1. the base ------------------------------------------------------------------------------
if ! [[ -f "$base_dir/.complete" ]] || ! buildah_ inspect --type image "$base_name" >/dev/null 2>&1; then
  log "building the base from Debian's $suite packages ($base_packages)"
  rm -rf "$base_dir"
  mkdir -p "$base_dir"
  debootstrap --variant=minbase --include="$base_packages" "$suite" "$base_dir/rootfs" "$mirror" >"$base_dir/debootstrap.log" 2>&1 ||
    { tail -20 "$base_dir/debootstrap.log" >&2; exit 1; }
  chroot "$base_dir/rootfs" dpkg-query -W -f '${Package} ${Version}\n' > "$base_dir/packages.txt"
  # What the official slim image leaves out too: package caches, documentation.
  rm -rf "$base_dir"/rootfs/var/cache/apt/archives/*.deb "$base_dir"/rootfs/var/lib/apt/lists/* \
    "$base_dir"/rootfs/usr/share/doc/* "$base_dir"/rootfs/usr/share/man/*
  tar --numeric-owner -C "$base_dir/rootfs" -cf "$base_dir/rootfs.tar" .
  rm -rf "$base_dir/rootfs"
  container="$(buildah_ from scratch)"
  buildah_ add "$container" "$base_dir/rootfs.tar" / >/dev/null
  buildah_ config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env LANG=C.UTF-8 \
    --cmd python3 "$container"
  buildah_ commit -q --rm "$container" "$base_name" >/dev/null
  rm -f "$base_dir/rootfs.tar"
  touch "$base_dir/.complete"
  log "base $base_name ready (elapsed $((SECONDS - started)) s)"
fi

# --- 2. our image -------------------------------------------------------------------------------
# Keyed by what the Dockerfile reads (its COPY sources: the whole package, every file of it) and the
# base. (Until session 14 the key read webhook/ only, the shim left after the package's rename, so a
# warm cache kept an image of older code: node runs then judged a controller that was not this one.)
cd "$root"
image_key="$( { echo "$base_name"; cat Dockerfile .dockerignore pyproject.toml README.md;
                find sortie_egress webhook -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort | xargs cat; } \
              | sha256sum | cut -c1-12)"
image_name="registry.invalid/sortie/sortie-egress:$image_key"
archive="$cache_root/images/sortie-egress-$image_key.tar"
if ! [[ -f "$archive" ]]; then
  log "building $image_name from ./Dockerfile (buildah bud)"
  mounts=()
  for host_file in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [[ -f "$host_file" ]] && mounts+=(--volume "$host_file:$host_file:ro")
  done
  buildah_ bud --quiet --isolation chroot --network host --layers=false "${mounts[@]}" \
    --build-arg "BASE_IMAGE=$base_name" --tag "$image_name" . >&2
  mkdir -p "$(dirname "$archive")"
  buildah_ push --quiet "$image_name" "oci-archive:$archive.part:$image_name" >&2
  mv "$archive.part" "$archive"
  buildah_ rmi "$image_name" >/dev/null 2>&1 || true
  log "image ready in $((SECONDS - started)) s: $archive"
fi
echo "$archive"
echo "$image_name"
