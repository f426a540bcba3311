#!/usr/bin/env bash
# Installs a headless Java runtime (Debian package `default-jre-headless`) for the COCO caption metrics
# (xmodal_jax/evaluation/caption_metrics.py: pycocoevalcap's PTB tokeniser and METEOR are Java programs); without
# it coco_metrics raises MissingError and tests/test_caption_metrics.py skips its coco_metrics tests. About 40 s and
# 200 MB from the Debian mirror. Needs root (or passwordless sudo) and apt-get; otherwise it says so and exits 0.
set -uo pipefail
if command -v java >/dev/null 2>&1; then
  echo "[java] already installed: $(java -version 2>&1 | head -n 1)"; exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[java] no apt-get here: install a Java runtime (>= 8) yourself for the COCO caption metrics."; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "[java] not root and no passwordless sudo: run \`sudo apt-get install -y default-jre-headless\`."; exit 0
  fi
fi
t0=$(date +%s)
if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless \
     >/tmp/xmodal-java-install.log 2>&1 ||
   { $SUDO apt-get update -q >>/tmp/xmodal-java-install.log 2>&1 &&
     $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends default-jre-headless \
       >>/tmp/xmodal-java-install.log 2>&1; }; then
  echo "[java] installed $(java -version 2>&1 | head -n 1) in $(( $(date +%s) - t0 ))s."
else
  echo "[java] apt-get failed (log: /tmp/xmodal-java-install.log): the COCO caption metrics need \`java\`."
fi
exit 0
