#!/usr/bin/env bash
# Installs headless Chromium + ChromeDriver (Debian packages `chromium`, `chromium-driver`) for the search page test
# (tests/test_search_page.py), which skips with a reason where they are absent. Used by .ci/run; about 45 s and
# 120 MB from the Debian mirror. Needs root (or passwordless sudo) and apt-get; otherwise it says so and exits 0.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "[chromium] already installed: $(chromium --version 2>/dev/null)"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[chromium] no apt-get here: tests/test_search_page.py will skip (install chromium + chromedriver yourself)."; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "[chromium] not root and no passwordless sudo: tests/test_search_page.py will skip."; exit 0
  fi
fi
t0=$(date +%s)
if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver \
     >/tmp/xmodal-chromium-install.log 2>&1 ||
   { $SUDO apt-get update -q >>/tmp/xmodal-chromium-install.log 2>&1 &&
     $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver \
       >>/tmp/xmodal-chromium-install.log 2>&1; }; then
  echo "[chromium] installed $(chromium --version 2>/dev/null) in $(( $(date +%s) - t0 ))s."
else
  echo "[chromium] apt-get failed (log: /tmp/xmodal-chromium-install.log): tests/test_search_page.py will skip."
fi
exit 0
