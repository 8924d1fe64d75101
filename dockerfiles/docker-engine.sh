#!/usr/bin/env bash
# Make a Docker engine available on a Debian host (the container tests call this): install
# Debian's docker.io, mmdebstrap (for dockerfiles/debian-base.sh) and the Compose v2 plugin
# when missing, then start dockerd when it is not running. Needs root for any install or
# start; exits non-zero with the reason on stderr when the engine cannot be had. As another
# user it only checks that an engine answers.
set -euo pipefail

log=/var/log/fisheye-dockerd.log
apt_quiet() { DEBIAN_FRONTEND=noninteractive apt-get "$@" -qq >>/tmp/fisheye-docker-apt.log 2>&1; }

if docker info >/dev/null 2>&1 && command -v mmdebstrap >/dev/null && docker compose version >/dev/null 2>&1; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    # An engine that answers is enough for prebuilt images (FISHEYE_SERVE_IMAGE).
    docker info >/dev/null 2>&1 && exit 0
    echo "not root: cannot install or start the Docker engine" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "no apt-get: install Docker by hand" >&2; exit 1; }

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if ((${#need[@]})); then
    echo "installing ${need[*]}" >&2
    { apt_quiet update && apt_quiet install -y "${need[@]}"; } \
        || { echo "apt-get install ${need[*]} failed (/tmp/fisheye-docker-apt.log)" >&2; exit 1; }
fi

# Bookworm packages only Compose v1 (`docker-compose`); the v2 plugin (`docker compose`) is
# Debian's docker-compose package from trixie, a static binary that runs on bookworm.
if ! docker compose version >/dev/null 2>&1; then
    echo "installing the Docker Compose v2 plugin (Debian trixie's docker-compose)" >&2
    tmp=$(mktemp -d)
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        >"$tmp/sources.list"
    # Lists and cache in their own folders (apt needs their partial/ subfolders); the
    # sandbox user _apt cannot read a mktemp folder, so apt fetches as root.
    opts=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
          -o APT::Sandbox::User=root)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    { apt_quiet "${opts[@]}" update \
        && (cd "$tmp" && apt_quiet "${opts[@]}" download docker-compose) \
        && dpkg -i "$tmp"/docker-compose_*.deb >>/tmp/fisheye-docker-apt.log 2>&1; } \
        || echo "could not install the Compose v2 plugin (/tmp/fisheye-docker-apt.log)" >&2
    rm -rf "$tmp"
fi

if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd (log: $log)" >&2
    setsid nohup dockerd >>"$log" 2>&1 </dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start; see $log" >&2; exit 1; }
fi
