#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing (`make test` runs this first):
#   postgresql                 tests/test_tracking_server.py runs the pipeline against a throwaway cluster
#   chromium, chromium-driver  tests/test_ui.py opens the MLflow UI in headless Chromium
#   docker.io, debootstrap     tests/test_container.py builds the Kubernetes image on a Debian base made here and
#                              runs steps in it; the Docker engine is started when it is not running
# Nothing is installed when everything is there already, so a second run costs nothing.
set -euo pipefail

missing=()
# Debian's postgresql keeps initdb under /usr/lib/postgresql/<version>/bin, off PATH.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: the tests need the Debian packages ${missing[*]}; this machine has no apt-get: install them" >&2
        exit 1
    fi
    echo "installing Debian packages for the tests: ${missing[*]}"
    $sudo apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Docker engine: through systemd where it runs; elsewhere (a container, a CI runner without systemd) dockerd
# itself, in the background (log: /var/log/docker.log). Debian's SysV script is not used: it fails where the
# open-files limit cannot be raised, as in containers.
if ! docker info >/dev/null 2>&1; then
    echo "starting the Docker engine"
    if [ -d /run/systemd/system ]; then
        $sudo systemctl start docker
    else
        $sudo sh -c 'nohup setsid dockerd >>/var/log/docker.log 2>&1 </dev/null &'
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "error: the Docker engine did not start within 60 s; see /var/log/docker.log" >&2
        exit 1
    fi
fi
