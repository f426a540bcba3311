#!/usr/bin/env bash
# The S4 tables of docs/single_stream.md (issue 17; 3 seeds, one budget for every row), through the one experiments
# runner (experiments/single_stream.py names the rows, the budget and the claims):
#   bash launch/single_stream_ablation.sh shapes     # shapes world test split: 4 rows (coarse / single-token
#                                                    #   masking, random objects, the seed library)
#   bash launch/single_stream_ablation.sh flickr8k   # ../shared/data/flickr8k val split: coarse vs single-token
# More --config.X=V flags go to every run (e.g. --config.train.num_steps=600). Workdirs: workdirs/s4_ablation_<data>/
# (finished runs are kept, so the script resumes); PARALLEL=N runs at once (default 2); the report is report.md there.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/single_stream_ablation.sh shapes|flickr8k [--config.X=V ...]}"; shift
case "$data" in shapes|flickr8k) ;; *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;; esac
python -m experiments.run "single_stream:$data" --workdir="workdirs/s4_ablation_${data}" --parallel="${PARALLEL:-2}" "$@"
