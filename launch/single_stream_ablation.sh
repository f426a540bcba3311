#!/usr/bin/env bash
# The S4 tables of docs/single_stream.md (issue 17; 3 seeds, one budget for every row):
#   bash launch/single_stream_ablation.sh shapes     # shapes world test split: 4 rows (coarse / single-token
#                                                    #   masking, random objects, the seed library)
#   bash launch/single_stream_ablation.sh flickr8k   # ../shared/data/flickr8k val split: coarse vs single-token
# Workdirs: workdirs/s4_ablation_<data>/ (finished runs are kept, so the script resumes); tables in ablation.md there.
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/single_stream_ablation.sh shapes|flickr8k}"
case "$data" in
  shapes) config=configs/vlp/single_stream_shapes.py; rows=coarse,token,random_objects,library ;;
  flickr8k) config=configs/vlp/single_stream_flickr8k.py; rows=coarse,token ;;
  *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2 ;;
esac
budget=()
if [ -n "${STEPS:-}" ]; then
  budget+=(--config.train.num_steps="$STEPS" --config.train.checkpoint_every="$STEPS")
fi
# One run first, alone: it builds the feature caches every other run reads.
python -m xmodal_jax.systems.single_stream.ablation --config="$config" --workdir="workdirs/s4_ablation_${data}" \
  --rows=coarse --seeds=0 -- "${budget[@]}" > /dev/null
python -m xmodal_jax.systems.single_stream.ablation --config="$config" --workdir="workdirs/s4_ablation_${data}" \
  --rows="$rows" --seeds=0,1,2 --parallel="${PARALLEL:-2}" -- "${budget[@]}"
