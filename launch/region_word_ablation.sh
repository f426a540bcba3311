#!/usr/bin/env bash
# The S2 tables of README.md (issue 16; 3 seeds, one budget for every row):
#   bash launch/region_word_ablation.sh shapes     # shapes world test split + compositional choice + tags + robustness
#   bash launch/region_word_ablation.sh flickr8k   # ../shared/data/flickr8k val split
# Workdirs: workdirs/s2_ablation_<data>/ (finished runs are kept, so the script resumes); tables in ablation.md there.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/region_word_ablation.sh shapes|flickr8k}"
case "$data" in
  shapes) config=configs/retrieval/region_word_shapes.py; rows=vsepp,no_sa,no_rel,no_tags,full; more=(--robustness) ;;
  flickr8k) config=configs/retrieval/region_word_flickr8k.py; rows=vsepp,no_sa,no_rel,no_tags,full; more=() ;;
  *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;;
esac
# One run first, alone: it builds the feature caches every other run reads.
python -m xmodal_jax.tasks.retrieval.region_word_ablation --config="$config" --workdir="workdirs/s2_ablation_${data}" \
  --rows=full --seeds=0 > /dev/null
python -m xmodal_jax.tasks.retrieval.region_word_ablation --config="$config" --workdir="workdirs/s2_ablation_${data}" \
  --rows="$rows" --seeds=0,1,2 --parallel="${PARALLEL:-2}" "${more[@]}"
