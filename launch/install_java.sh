#!/usr/bin/env bash
# Installs a headless Java runtime (Debian package `default-jre-headless`) for the COCO caption metrics
# (xmodal_jax/evaluation/caption_metrics.py: pycocoevalcap's PTB tokeniser and METEOR are Java programs); without
# it coco_metrics raises MissingError and tests/test_caption_metrics.py skips its coco_metrics tests. About 40 s and
# 200 MB from the Debian mirror. Needs root (or passwordless sudo) and apt-get; otherwise it says so and exits 0.
set -uo pipefail
if command -v java >/dev/null 2>&1; then
  echo "[java] already installed: $(java -version 2>&1 | head -n 1)"; exit 0
fi
source "$(dirname "$0")/apt_install.sh"
apt_install java "the COCO caption metrics need \`java\` (tests/test_caption_metrics.py skips them)" default-jre-headless
exit 0
