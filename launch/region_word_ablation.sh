#!/usr/bin/env bash
# The S2 tables of docs/region_word.md (issue 16; 3 seeds, one budget for every row):
#   bash launch/region_word_ablation.sh shapes     # shapes world test split + compositional choice + tags + robustness
#   bash launch/region_word_ablation.sh flickr8k   # ../shared/data/flickr8k val split
# Workdirs: workdirs/s2_ablation_<data>/ (finished runs are kept, so the script resumes); tables in ablation.md there.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/region_word_ablation.sh shapes|flickr8k}"
# The budget: the config's own on shapes (500 steps, batch 64); on Flickr8k 300 steps (a 2-core CPU's afternoon;
# STEPS overrides it), with the warm-ups scaled.
case "$data" in
  shapes) config=configs/retrieval/region_word_shapes.py; rows=vsepp,no_sa,no_rel,no_tags,full; more=(--robustness)
    steps="${STEPS:-}" ;;
  flickr8k) config=configs/retrieval/region_word_flickr8k.py; rows=vsepp,no_sa,no_rel,no_tags,full; more=()
    steps="${STEPS:-300}" ;;
  *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;;
esac
budget=(--config.train.log_every=50)
if [ -n "$steps" ]; then
  budget+=(--config.train.num_steps="$steps" --config.train.checkpoint_every="$steps"
           --config.optimizer.warmup_steps=$(( steps / 10 )) --config.loss.max_violation_warmup_steps=$(( steps * 2 / 5 )))
fi
# One run first, alone: it builds the feature caches every other run reads.
python -m xmodal_jax.systems.region_word.ablation --config="$config" --workdir="workdirs/s2_ablation_${data}" \
  --rows=full --seeds=0 -- "${budget[@]}" > /dev/null
python -m xmodal_jax.systems.region_word.ablation --config="$config" --workdir="workdirs/s2_ablation_${data}" \
  --rows="$rows" --seeds=0,1,2 --parallel="${PARALLEL:-2}" "${more[@]}" -- "${budget[@]}"
