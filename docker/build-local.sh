#!/usr/bin/env bash
# Builds the serving image with buildah on a machine whose pip uses local package indexes and
# reaches PyPI only through a TLS-inspecting proxy:
#
#   docker/build-local.sh [BASE_IMAGE] [TAG]     # as root, after docker/build-base.sh
#
# The local indexes (/opt/wheels, /opt/pypi, /opt/pypi-more) stand in for PyTorch's CPU index,
# which is unreachable here, and the host's CA bundle lets pip in the build trust the proxy; all
# are mounted read-only. The torch of these indexes is PyPI's CUDA build, so the image is
# gigabytes larger than one built with internet. chroot isolation and vfs storage work inside an
# unprivileged container; the build keeps no intermediate layers, which vfs stores whole.
set -euo pipefail

base=${1:-localhost/python:3.11-bookworm-local}
tag=${2:-localhost/smoke-serve}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
cd "$(dirname "$0")/.."

buildah --storage-driver "${STORAGE_DRIVER:-vfs}" bud --isolation chroot --format docker \
    --build-arg BASE_IMAGE="$base" \
    --build-arg PIP_EXTRA_INDEX_URL="file:///opt/pypi/simple file:///opt/pypi-more/simple" \
    --build-arg PIP_FIND_LINKS=/opt/wheels \
    --build-arg PIP_CERT=/run/host-ca.crt \
    --volume /opt/wheels:/opt/wheels:ro \
    --volume /opt/pypi:/opt/pypi:ro \
    --volume /opt/pypi-more:/opt/pypi-more:ro \
    --volume "$ca_bundle":/run/host-ca.crt:ro \
    --tag "$tag" .
