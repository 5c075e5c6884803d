#!/bin/sh
# Install Debian's Chromium for the browser tests (tests/e2e) and scripts/screenshots.py,
# unless /usr/bin/chromium is already there. Never `playwright install`: CI has no access to
# Playwright's CDN, while Debian's package comes from the distribution mirror.
set -eu
if [ -x /usr/bin/chromium ]; then
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
