#!/usr/bin/env bash
# S5 end to end on one data set: the reward and judge two-tower models, the reward models with a grammar head (and
# attribute negatives), the MLE captioner and its three SCST fine-tunes (in parallel), in dependency order, then the
# caption databases of the MLE and SCST captioners (val) for caption-based search, and the report. A step whose workdir
# already has results.json is skipped, so the script resumes where it stopped. Logs: workdirs/<run>.log.
#   bash launch/s5_pipeline.sh shapes                 # the built-in shapes world
#   bash launch/s5_pipeline.sh flickr8k [extra flags]  # ../shared/data/flickr8k (config default); extra flags go to
#                                                      # every captioner run, e.g. --config.data.source=folder:DIR
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/env.sh
data="${1:?usage: bash launch/s5_pipeline.sh shapes|flickr8k [extra flags]}"; shift
case "$data" in shapes|flickr8k) ;; *) echo "unknown data set '$data'; use shapes or flickr8k" >&2; exit 2;; esac
extra=("$@")
mkdir -p workdirs
run() {  # run <workdir name> <config> [flags...]
  local name="$1" config="$2"; shift 2
  if [ -f "workdirs/$name/results.json" ]; then echo "[s5] $name: done (workdirs/$name/results.json)"; return; fi
  echo "[s5] $name: xmodal train --config=$config $* (log: workdirs/$name.log)"
  local t0; t0=$(date +%s)
  xmodal train --config="$config" --workdir="workdirs/$name" "$@" > "workdirs/$name.log" 2>&1 ||
    { echo "[s5] $name failed; see workdirs/$name.log" >&2; tail -5 "workdirs/$name.log" >&2; exit 1; }
  echo "[s5] $name: finished in $(( $(date +%s) - t0 ))s"
}
d="configs/captioning"
run "s5_${data}_clip" "$d/clip_${data}.py:reward"
run "s5_${data}_judge" "$d/clip_${data}.py:judge"
run "s5_${data}_reward_grammar" "$d/reward_${data}.py:grammar"
run "s5_${data}_reward_grammar_attribute" "$d/reward_${data}.py:grammar_attribute"
run "s5_${data}_mle" "$d/captioner_${data}.py" "${extra[@]}"   # evaluated by all three scorers above
# The three SCST fine-tunes depend only on the MLE run and their reward models: in parallel (about 3.3 GB each).
run "s5_${data}_scst" "$d/captioner_${data}.py:scst" "${extra[@]}" & p1=$!
run "s5_${data}_scst_grammar" "$d/captioner_${data}.py:scst_grammar" "${extra[@]}" & p2=$!
run "s5_${data}_scst_attribute" "$d/captioner_${data}.py:scst_attribute" "${extra[@]}" & p3=$!
wait $p1 && wait $p2 && wait $p3 || { echo "[s5] an SCST run failed (logs above)" >&2; exit 1; }
# Caption databases of the val split for caption-based search (the report's R@K of MLE vs SCST captions).
for run_name in mle scst; do
  if [ ! -f "workdirs/s5_${data}_${run_name}/caption_db/meta.json" ]; then
    xmodal caption --workdir="workdirs/s5_${data}_${run_name}" --all --split=val > "workdirs/s5_${data}_${run_name}_caption.log" 2>&1
  fi
done
python -m xmodal_jax.systems.captioning.report "$data"
