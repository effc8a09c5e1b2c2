#!/usr/bin/env bash
# Build the local Docker images for the compose testnet, reusing what already exists.
#
#   bash testnet/images.sh            # base (if missing) + wheels + node + prometheus images
#   bash testnet/images.sh base       # just the local Debian base image
#   bash testnet/images.sh wheels     # just the wheels in testnet/.wheels
#   bash testnet/images.sh node       # wheels + medledger-node:dev
#   bash testnet/images.sh prometheus # medledger-prometheus:dev
#
# Why a local base: the machines this project is built on reach Debian's package
# mirror but no container registry, so `FROM python:3.11-slim-bookworm` cannot be
# pulled. We make a minimal Debian bookworm root with debootstrap (Debian's
# python3 is 3.11, the same ABI as the host's), import it as an image, and pass it
# to both Dockerfiles as BASE_IMAGE. With a registry, skip this script's base step
# and build with the Dockerfiles' defaults instead:
#   docker build -f testnet/Dockerfile testnet            # on python:3.11-slim-bookworm
#   (and use prom/prometheus instead of medledger-prometheus:dev, see Dockerfile.prometheus)
#
# Python packages are built into wheels on the host and installed offline in the
# image (`pip install --no-index`), so the image build needs no network at all.
# Every step prints how long it took.
#
# Environment:
#   MEDLEDGER_BASE_IMAGE   local base tag            (default medledger-base:bookworm)
#   MEDLEDGER_NODE_IMAGE   node image tag            (default medledger-node:dev)
#   MEDLEDGER_PROMETHEUS_IMAGE  prometheus image tag (default medledger-prometheus:dev)
#   DEBIAN_MIRROR          debootstrap mirror        (default http://deb.debian.org/debian)
#   PYTHON                 python that builds wheels (default $MEDLEDGER_VENV/bin/python,
#                          MEDLEDGER_VENV defaulting to .venv; else python3)
#   REBUILD_BASE=1         rebuild the base image even if it exists
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT_DIR="$PWD"

BASE_IMAGE="${MEDLEDGER_BASE_IMAGE:-medledger-base:bookworm}"
NODE_IMAGE="${MEDLEDGER_NODE_IMAGE:-medledger-node:dev}"
PROM_IMAGE="${MEDLEDGER_PROMETHEUS_IMAGE:-medledger-prometheus:dev}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
WHEELS="$ROOT_DIR/testnet/.wheels"
CACHE="$WHEELS/cache"
if [ -z "${PYTHON:-}" ]; then
    VENV="${MEDLEDGER_VENV:-.venv}"
    if [ -x "$VENV/bin/python" ]; then PYTHON="$PWD/$VENV/bin/python"; else PYTHON=python3; fi
fi

log() { printf '[images] %s\n' "$*" >&2; }
now() { date +%s.%N; }
# timed LABEL CMD...: run CMD, then print how long it took (also when it fails).
# The command runs in a subshell with errexit on: under `cmd || ...` bash would
# silently ignore `set -e` inside cmd.
timed() {
    local label="$1" start rc
    shift
    start="$(now)"
    set +e
    (set -e; "$@")
    rc=$?
    set -e
    awk -v s="$start" -v e="$(now)" -v l="$label" -v rc="$rc" \
        'BEGIN { printf "[images] %-34s %7.1f s%s\n", l, e - s, (rc ? "  (FAILED)" : "") }' >&2
    return "$rc"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root for: $*"; return 1; fi
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_debootstrap() {
    command -v debootstrap >/dev/null && return 0
    log "installing debootstrap"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}

# The root filesystem: Debian bookworm minbase with Debian's python3 and venv.
make_base() {
    local root
    root="$(mktemp -d /tmp/medledger-base.XXXXXX)"
    # shellcheck disable=SC2064
    trap "as_root rm -rf '$root'; trap - RETURN" RETURN
    if ! as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" "$MIRROR" >"$root.log" 2>&1; then
        tail -20 "$root.log" >&2
        rm -f "$root.log"
        return 1
    fi
    rm -f "$root.log"
    # apt inside image builds: security and point-release updates too, and services
    # never started by package scripts (there is no init in a container).
    as_root sh -c "
        printf 'deb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' '$MIRROR' \
            >> '$root/etc/apt/sources.list'
        printf '#!/bin/sh\nexit 101\n' > '$root/usr/sbin/policy-rc.d'
        chmod 0755 '$root/usr/sbin/policy-rc.d'
        rm -rf '$root'/var/cache/apt/archives/*.deb '$root'/var/lib/apt/lists/*
    "
    as_root tar -C "$root" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
}

build_base() {
    if [ "${REBUILD_BASE:-0}" != 1 ] && image_exists "$BASE_IMAGE"; then
        log "reusing $BASE_IMAGE"
        return 0
    fi
    ensure_debootstrap
    timed "base image ($BASE_IMAGE)" make_base
}

# Wheels for the project and every runtime dependency, in three directories:
#   .wheels/cache/    every wheel fetched or built so far: the offline source
#   .wheels/deps/     exactly the runtime dependencies of this checkout
#   .wheels/project/  the medledger wheel
# The split lets the image install the dependencies in a layer that stays cached
# while only the project's sources change. The project is built from a copy of
# its sources so that no build/ directory appears in the checkout. The first
# attempt is offline; only when it fails does pip go to the package index.
make_wheels() {
    local src out f
    src="$(mktemp -d /tmp/medledger-src.XXXXXX)"
    out="$(mktemp -d /tmp/medledger-wheels.XXXXXX)"
    # shellcheck disable=SC2064
    trap "rm -rf '$src' '$out'; trap - RETURN" RETURN
    mkdir -p "$CACHE" "$WHEELS/deps" "$WHEELS/project"
    local extra=()
    for f in LICENSE LICENSE.txt; do [ -e "$f" ] && extra+=("$f"); done
    tar --exclude=__pycache__ --exclude='*.pyc' -c pyproject.toml README.md "${extra[@]}" \
        ledger node consensus storage | tar -x -C "$src"
    local pipw=(env PIP_FIND_LINKS= "$PYTHON" -m pip wheel -q --disable-pip-version-check
        --find-links "$CACHE")
    # The project's build backend, for pip's isolated build environment.
    if ! "${pipw[@]}" --no-index -w "$CACHE" "setuptools>=68" wheel >/dev/null 2>&1; then
        "${pipw[@]}" -w "$CACHE" "setuptools>=68" wheel
    fi
    # A fixed SOURCE_DATE_EPOCH makes the project wheel a function of the sources
    # alone, so unchanged sources hit the image build cache.
    pipw=(env SOURCE_DATE_EPOCH=315532800 "${pipw[@]:1}")
    if "${pipw[@]}" --no-index -w "$out" "$src" >/dev/null 2>&1; then
        log "wheels: all dependencies found in testnet/.wheels/cache (offline)"
    else
        log "wheels: fetching missing ones from the package index"
        "${pipw[@]}" -w "$out" "$src"
    fi
    for f in "$out"/*.whl; do
        case "${f##*/}" in medledger-*) continue ;; esac
        [ -e "$CACHE/${f##*/}" ] || cp -p "$f" "$CACHE/"
        [ -e "$WHEELS/deps/${f##*/}" ] || cp -p "$CACHE/${f##*/}" "$WHEELS/deps/"
    done
    for f in "$WHEELS"/deps/*.whl; do
        [ -e "$out/${f##*/}" ] || rm -f "$f"
    done
    rm -f "$WHEELS"/project/*.whl
    mv "$out"/medledger-*.whl "$WHEELS/project/"
    log "wheels: $(find "$WHEELS/deps" -name '*.whl' | wc -l) dependencies + $(cd "$WHEELS/project" && echo medledger-*.whl)"
}

build_wheels() { timed "wheels (testnet/.wheels)" make_wheels; }

# A build context holding only what the Dockerfiles read, so that .venv, .git and
# node data never travel to the daemon.
# The build's output is shown only when it fails (the classic builder also warns
# on every run that it is deprecated; BuildKit is not installed here). When the
# build moves the tag to a new image, the old one is removed (unless a container
# still uses it), so that repeated builds do not fill the disk.
docker_build() {
    local tag="$1" dockerfile="$2" out old new rc=0
    shift 2
    old="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
    out="$(mktemp)"
    docker build -f "$dockerfile" -t "$tag" "$@" "$ROOT_DIR/testnet" >"$out" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || tail -40 "$out" >&2
    rm -f "$out"
    [ "$rc" -eq 0 ] || return "$rc"
    new="$(docker image inspect -f '{{.Id}}' "$tag")"
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

build_node() {
    # The dependency stage gets its own tag, so that it is kept as the build cache
    # and replaced (not leaked) when the dependencies change.
    timed "node deps stage (${NODE_IMAGE%%:*}-deps)" docker_build "${NODE_IMAGE%%:*}-deps:${NODE_IMAGE##*:}" \
        "$ROOT_DIR/testnet/Dockerfile" --target deps --build-arg "BASE_IMAGE=$BASE_IMAGE"
    timed "node image ($NODE_IMAGE)" docker_build "$NODE_IMAGE" "$ROOT_DIR/testnet/Dockerfile" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE"
}

build_prometheus() {
    timed "prometheus image ($PROM_IMAGE)" docker_build "$PROM_IMAGE" \
        "$ROOT_DIR/testnet/Dockerfile.prometheus" --build-arg "BASE_IMAGE=$BASE_IMAGE"
}

main() {
    command -v docker >/dev/null || { log "docker is not installed"; exit 1; }
    docker info >/dev/null 2>&1 || { log "the Docker engine does not answer (docker info)"; exit 1; }
    case "${1:-all}" in
        base) build_base ;;
        wheels) build_wheels ;;
        node) build_base; build_wheels; build_node ;;
        prometheus) build_base; build_prometheus ;;
        all) local t0; t0="$(now)"
             build_base; build_wheels; build_node; build_prometheus
             awk -v s="$t0" -v e="$(now)" 'BEGIN { printf "[images] %-34s %7.1f s\n", "all images", e - s }' >&2 ;;
        *) echo "usage: $0 [all|base|wheels|node|prometheus]" >&2; exit 2 ;;
    esac
}

main "$@"
