#!/usr/bin/env bash
# Installs headless Chromium + ChromeDriver (Debian packages `chromium`, `chromium-driver`) for the search page test
# (tests/test_search_page.py), which skips with a reason where they are absent. Used by .ci/run; about 45 s and
# 120 MB from the Debian mirror. Needs root (or passwordless sudo) and apt-get; otherwise it says so and exits 0.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "[chromium] already installed: $(chromium --version 2>/dev/null)"; exit 0
fi
source "$(dirname "$0")/apt_install.sh"
apt_install chromium "tests/test_search_page.py will skip" chromium chromium-driver
exit 0
