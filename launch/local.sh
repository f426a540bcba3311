#!/usr/bin/env bash
# Main job on a fresh machine: set up the environment, train VSE++ on the built-in shapes world,
# evaluate on its val and test splits, print the R@K table and where logs/checkpoints are.
#   bash launch/local.sh                      # default config, workdir workdirs/vsepp_shapes
#   CONFIG=configs/retrieval/vsepp_shapes.py:tiny WORKDIR=/tmp/x bash launch/local.sh --config.train.num_steps=20
# Re-running with the same WORKDIR resumes (or, when finished, only re-evaluates).
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
CONFIG="${CONFIG:-configs/retrieval/vsepp_shapes.py}"
WORKDIR="${WORKDIR:-workdirs/vsepp_shapes}"
t0=$(date +%s)
xmodal train --config="$CONFIG" --workdir="$WORKDIR" --alsologtostderr "$@"
echo "[local] train + eval wall time: $(( $(date +%s) - t0 ))s"
