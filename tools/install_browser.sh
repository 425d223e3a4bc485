#!/usr/bin/env bash
# Headless Chromium and its driver from the distribution's packages, for the report pages'
# browser tests (tests/test_report.py). Nothing is downloaded but Debian packages; a machine
# where they cannot be installed says so, and the browser tests then skip (fail under CI).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then sudo="sudo -n"; else
        echo "tools/install_browser.sh: chromium and chromium-driver are missing and apt-get needs root;" \
             "install them (apt-get install chromium chromium-driver) for the browser tests" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null; then
    echo "tools/install_browser.sh: no apt-get here; install Chromium and chromedriver for the browser tests" >&2
    exit 0
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
