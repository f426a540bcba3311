#!/usr/bin/env bash
# The mFSR ablation tables of docs/vse.md (seed 003, Table 3 rows; 3 seeds), one budget for every row, through the
# one experiments runner (experiments/mfsr.py names the rows, the budget and the claims):
#   bash launch/mfsr_ablation.sh shapes      # shapes world, test split (250 steps per run)
#   bash launch/mfsr_ablation.sh flickr8k    # ../shared/data/flickr8k, val split, frozen EfficientNet-Lite2 (150 steps)
#   bash launch/mfsr_ablation.sh shapes --config.train.num_steps=500   # more flags: every run (one budget)
# Each data set at batch 128 (VSE++'s default) and batch 24 (the paper's; BATCHES="24" runs one), in
# workdirs/mfsr_ablation_<data>_b<B>/; finished runs are kept, so the script resumes. PARALLEL=N runs at once
# (default 2). Reports (tables, claims with 95% CIs and verdicts): workdirs/mfsr_ablation_<data>_b<B>/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/mfsr_ablation.sh shapes|flickr8k [--config.X=V ...]}"; shift
case "$data" in shapes|flickr8k) ;; *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;; esac
for batch in ${BATCHES:-128 24}; do
  python -m experiments.run "mfsr:$data" --workdir="workdirs/mfsr_ablation_${data}_b${batch}" \
    --parallel="${PARALLEL:-2}" --config.train.batch_size="$batch" "$@"
done
