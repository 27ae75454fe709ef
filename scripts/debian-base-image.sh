#!/usr/bin/env bash
# A Debian base image made from Debian's own packages, for machines that reach no container registry:
# debootstrap builds a minimal bookworm root file system, `docker import` turns it into an image.
#
#   sudo scripts/debian-base-image.sh [TAG]        (default llmflow/debian:bookworm-python3.11)
#   docker build -f deploy/kubernetes/Dockerfile --build-arg BASE_IMAGE=<TAG> -t llmflow-base:latest .
#
# It holds Python 3.11 with its venv module, git and CA certificates: what deploy/kubernetes/Dockerfile needs
# from its base. The image is labelled with this script's sha256; when an image of that tag and label exists,
# it is kept and nothing is built (set REBUILD=1 to build it again).
# Needs root (debootstrap), debootstrap and a running Docker engine. DEBIAN_MIRROR picks the mirror.
set -euo pipefail

tag="${1:-llmflow/debian:bookworm-python3.11}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
packages=python3,python3-venv,git,ca-certificates
recipe="$(sha256sum "$0" | cut -c1-16)"

for tool in debootstrap docker; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is not installed (Debian: apt-get install debootstrap docker.io)" >&2
        exit 1
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "error: debootstrap needs root: run this script as root or with sudo" >&2
    exit 1
fi
if [ -z "${REBUILD:-}" ] \
    && [ "$(docker image inspect -f '{{ index .Config.Labels "org.llmflow.recipe" }}' "$tag" 2>/dev/null)" = "$recipe" ]; then
    echo "$tag is up to date (recipe $recipe)"
    exit 0
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite (minbase + $packages) from $mirror into $root ..."
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror"
# What an image needs no copy of: downloaded packages and package lists.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
echo "docker import -> $tag"
tar -C "$root" -c . | docker import \
    --change "LABEL org.llmflow.recipe=$recipe" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    - "$tag"
docker image ls "$tag"
