#!/usr/bin/env bash
# Makes a local stand-in for the Dockerfile's BASE_IMAGE where no registry serves base images:
#
#   docker/build-base.sh [IMAGE]          # as root; needs debootstrap and buildah
#
# The stand-in is Debian bookworm with its own Python 3.11 and venv module, which is all the
# Dockerfile asks of its base; the virtual environment there keeps Debian's Python layout out
# of the way. ROOTFS names an already bootstrapped tree to reuse instead of a fresh one.
# docker/build-local.sh then builds the serving image on it.
set -euo pipefail

image=${1:-localhost/python:3.11-bookworm-local}
mirror=${MIRROR:-http://deb.debian.org/debian}
# vfs needs no kernel overlay support, which a build inside a container often lacks.
storage=(--storage-driver "${STORAGE_DRIVER:-vfs}")

if [[ -n "${ROOTFS:-}" ]]; then
    rootfs=$ROOTFS
else
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror"
fi

# The suites of the Docker Hub image, so that apt-get in the Dockerfile gets security fixes.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/*

container=$(buildah "${storage[@]}" from scratch)
mountpoint=$(buildah "${storage[@]}" mount "$container")
tar -C "$rootfs" -c . | tar -C "$mountpoint" -x --numeric-owner
buildah "${storage[@]}" umount "$container"
# A scratch image has no environment; the Dockerfile's ENV PATH extends this one.
buildah "${storage[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$container"
buildah "${storage[@]}" commit --rm "$container" "$image"
