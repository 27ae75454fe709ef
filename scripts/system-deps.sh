#!/usr/bin/env bash
# The Debian packages the test suite needs, installed when missing (`make test` runs this first):
#   postgresql                 tests/test_tracking_server.py runs the pipeline against a throwaway cluster
#   chromium, chromium-driver  tests/test_ui.py opens the MLflow UI in headless Chromium
# Nothing is installed when everything is there already, so a second run costs nothing.
set -euo pipefail

missing=()
# Debian's postgresql keeps initdb under /usr/lib/postgresql/<version>/bin, off PATH.
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    missing+=(postgresql)
fi
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: the tests need the Debian packages ${missing[*]}; this machine has no apt-get: install them" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing Debian packages for the tests: ${missing[*]}"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
