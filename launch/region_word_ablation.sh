#!/usr/bin/env bash
# The S2 tables of docs/region_word.md (issue 16; 3 seeds, one budget for every row), through the one experiments
# runner (experiments/region_word.py names the rows, the budget, the robustness evaluations and the claims):
#   bash launch/region_word_ablation.sh shapes     # shapes world test split + compositional choice + tags + robustness
#   bash launch/region_word_ablation.sh flickr8k   # ../shared/data/flickr8k val split (300 steps per run)
# More --config.X=V flags go to every run. Workdirs: workdirs/s2_ablation_<data>/ (finished runs are kept, so the
# script resumes); PARALLEL=N runs at once (default 2); the report is report.md there.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/region_word_ablation.sh shapes|flickr8k [--config.X=V ...]}"; shift
case "$data" in shapes|flickr8k) ;; *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;; esac
python -m experiments.run "region_word:$data" --workdir="workdirs/s2_ablation_${data}" --parallel="${PARALLEL:-2}" "$@"
