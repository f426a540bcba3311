#!/usr/bin/env bash
# S5 end to end on one data set, through the one experiments runner (experiments/captioning.py names the chain):
# the reward and judge two-tower models, the reward models with a grammar head (and attribute negatives), the MLE
# captioner and its three SCST fine-tunes, in dependency order, PARALLEL at a time (default 1: three Flickr8k SCST runs at once measured ~12 GiB RSS, over the 8 GB bound), then the caption
# databases of the MLE and SCST captioners (val) for caption-based search, and the report (tables, claims with 95%
# CIs and verdicts). The reward / judge / reward-model runs are shared by every seed (SEEDS, default 0,1,2: the
# captioners'). A run whose workdir already has results.json is skipped, so the script resumes where it stopped.
#   bash launch/s5_pipeline.sh shapes                 # the built-in shapes world
#   bash launch/s5_pipeline.sh flickr8k [extra flags]  # ../shared/data/flickr8k (config default); extra flags go to
#                                                      # every captioner run, e.g. --config.data.source=folder:DIR
# Workdir: workdirs/s5_<data>/<run>/seed<k> (logs beside them); report: workdirs/s5_<data>/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/s5_pipeline.sh shapes|flickr8k [extra flags]}"; shift
case "$data" in shapes|flickr8k) ;; *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2;; esac
python -m experiments.run "captioning:$data" --workdir="workdirs/s5_${data}" --seeds="${SEEDS:-0,1,2}" \
  --parallel="${PARALLEL:-1}" "$@"
