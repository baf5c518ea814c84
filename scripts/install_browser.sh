#!/usr/bin/env bash
# The browser the UI's browser test drives: Debian's chromium (with its driver).
# Installed only where it is missing and this user can install Debian packages; elsewhere
# the test is skipped (under CI, where CI is set, it fails instead).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no apt-get; install chromium yourself to run the browser test" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "note: not root; run 'sudo apt-get install chromium' for the browser test" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q chromium chromium-driver >/dev/null
command -v chromium
