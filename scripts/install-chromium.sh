#!/usr/bin/env bash
# Install Debian's Chromium (headless browser for the report test) if it is not there yet.
# Needs root (or sudo) and Debian's package mirrors; prints the browser's path.
set -euo pipefail
for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null; then
        command -v "$name"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq --no-install-recommends chromium >&2
command -v chromium
