#!/usr/bin/env bash
# Make a local Debian base image for FishEye's images when no image registry is reachable
# (tests, air-gapped build hosts): Debian bookworm's minimal system with Python 3.11, built
# from Debian packages by mmdebstrap and loaded with `docker import`.
#
#   dockerfiles/debian-base.sh [TAG]        # default tag: fisheye-base:bookworm
#   docker build --build-arg BASE_IMAGE=fisheye-base:bookworm -f dockerfiles/serve.Dockerfile .
#
# The image carries this host's CA bundle and points pip at it (PIP_CERT), so builds behind
# a TLS-inspecting proxy can install from PyPI. The tag is a cache: an existing image is kept
# (REBUILD=1 makes it again).
set -euo pipefail

TAG="${1:-fisheye-base:bookworm}"
HOST_CA="${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}"

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "base image $TAG exists (REBUILD=1 to make it again)"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "needs mmdebstrap (apt-get install mmdebstrap)" >&2; exit 1; }
[[ -r "$HOST_CA" ]] || { echo "no CA bundle at $HOST_CA (set HOST_CA)" >&2; exit 1; }

# Documentation, manual pages and translations are of no use in a server image.
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="cp '$HOST_CA' \"\$1/usr/local/share/host-ca-certificates.crt\"" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm - \
  | docker import \
        --change 'ENV PIP_CERT=/usr/local/share/host-ca-certificates.crt' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$TAG"
echo "made base image $TAG ($(docker image inspect --format '{{.Size}}' "$TAG" | numfmt --to=iec))"
