#!/usr/bin/env bash
# Debian packages the real test node needs on the host, installed when missing (needs root):
# libseccomp-dev to build runc; iptables and ipset for kube-router; nftables to snapshot and
# restore the host's packet filter exactly; busybox-static for the probe image; buildah and
# debootstrap to build our image from ./Dockerfile on a base made from Debian's packages;
# clang-19 for the Cilium agent, which compiles its BPF datapath on the node at run time.
set -euo pipefail
packages=(libseccomp-dev pkg-config iptables ipset nftables busybox-static buildah debootstrap clang-19)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "the node tests need these Debian packages: ${missing[*]} (apt-get install -y ${missing[*]}, as root)" >&2
  exit 2
fi
echo "[node-host-packages] installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
