#!/usr/bin/env bash
# The mFSR ablation tables of docs/vse.md (seed 003, Table 3 rows; 3 seeds), one budget for every row:
#   bash launch/mfsr_ablation.sh shapes      # shapes world, test split (250 steps per run)
#   bash launch/mfsr_ablation.sh flickr8k    # ../shared/data/flickr8k, val split, frozen EfficientNet-Lite2 (150 steps)
# Each data set at batch 128 (VSE++'s default) and batch 24 (the paper's; BATCHES="24" runs one), in workdirs/mfsr_ablation_<data>_b<B>/;
# finished runs are kept, so the script resumes. Tables: workdirs/mfsr_ablation_<data>_b<B>/ablation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/mfsr_ablation.sh shapes|flickr8k}"
# The budget (a 2-core CPU's afternoon): STEPS overrides it. The semantic loss is the SUM of hinges: with max
# violation every row collapses at this budget (docs/vse.md: S3 results).
case "$data" in
  shapes) steps="${STEPS:-250}" ;;
  flickr8k) steps="${STEPS:-150}" ;;
esac
common=(--config.train.num_steps="$steps" --config.train.checkpoint_every="$steps" --config.train.log_every=50
        --config.optimizer.warmup_steps=$(( steps / 5 )) --config.loss.max_violation=False)
case "$data" in
  shapes) config=configs/retrieval/mfsr_shapes.py; common+=(--config.evals.val.every=0) ;;
  flickr8k) config=configs/retrieval/mfsr_flickr8k.py
    # One run first, alone: it builds the feature caches every other run reads.
    python -m xmodal_jax.systems.vse.mfsr_ablation --config="$config" --workdir="workdirs/mfsr_ablation_${data}_b128" \
      --rows=full --seeds=0 -- "${common[@]}" --config.train.batch_size=128 > /dev/null ;;
  *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;;
esac
for batch in ${BATCHES:-128 24}; do
  python -m xmodal_jax.systems.vse.mfsr_ablation --config="$config" --workdir="workdirs/mfsr_ablation_${data}_b${batch}" \
    --seeds=0,1,2 --parallel="${PARALLEL:-2}" -- "${common[@]}" --config.train.batch_size="$batch"
done
