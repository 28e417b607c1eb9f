#!/usr/bin/env bash
# Build a stand-in for python:3.11-slim-bookworm with debootstrap and import it as an image, for
# machines that reach Debian's mirrors but no container registry (docker/smoke.sh calls this).
# Debian bookworm's python3 is 3.11 at /usr/bin/python3; the Dockerfile only relies on `python3`
# with venv, so both bases build the same image. Meant for CI, not for production images.
#
#   docker/local-base.sh podman localhost/dynadapter-base:bookworm-py311
set -euo pipefail

engine=${1:?usage: local-base.sh ENGINE TAG}
tag=${2:?usage: local-base.sh ENGINE TAG}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ $(id -u) != 0 ]] || ! command -v debootstrap >/dev/null; then
  echo "local-base.sh: needs root and debootstrap (apt-get install debootstrap)" >&2
  exit 1
fi
rootfs=$(mktemp -d /var/tmp/dynadapter-base.XXXXXX)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
# What python:*-slim leaves out too: package caches and lists, documentation; and this host's name.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/etc/hostname
tar -C "$rootfs" --numeric-owner -c . \
  | "$engine" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$tag" >"$rootfs.log" 2>&1 \
  || { cat "$rootfs.log" >&2; exit 1; }
echo "local-base.sh: built $tag from Debian bookworm ($mirror)" >&2
