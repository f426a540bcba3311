r"""Benchmark: S2's retrieval cost, every image x caption pair scored by cross attention vs re-ranking the global
vectors' top-k, on a trained run's evaluation split (the retrieval evaluator's own code paths).

  python bench/region_word_scoring.py --workdir=workdirs/s2_ablation_shapes/full/seed0 [--split=test] \
      [--rerank_ks=10,20,50] [--pair_batch_size=1024]

For each setting it prints the wall time of the whole evaluation (per-item sets, shortlists, pair scoring, ranks),
the pairs scored, pairs per second, R@1 both ways and rsum; then the time ratio full / re-ranked. On shapes test
(1,000 images, 5,000 captions) full scoring is 5 M pairs; re-ranking with k scores (1,000 + 5,000) k pairs.
The global vectors' plain dot-product ranking (what a dual encoder costs) is the first line.
"""
from __future__ import annotations

import argparse
import time

from peak_rss import peak_rss_mb  # bench/peak_rss.py
from xmodal_jax import systems
from xmodal_jax.evaluation import evaluator as evaluator_lib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", default="test")
  parser.add_argument("--rerank_ks", default="10,20,50")
  parser.add_argument("--pair_batch_size", type=int, default=1024)
  args = parser.parse_args()
  loaded = systems.load_run(args.workdir, mesh_shape=(-1, 1))
  task = loaded.task
  data = task.eval_data(args.split)
  n_texts = len(data.text_to_image)
  base = [spec for spec in task.config.evals.values() if spec.type == "retrieval"][0]
  settings = [("global vectors only", dict(scorer="embeddings", rerank_k=0))]
  settings += [(f"re-rank top-{k}", dict(scorer="pairwise", rerank_k=k)) for k in map(int, args.rerank_ks.split(","))]
  settings += [("every pair", dict(scorer="pairwise", rerank_k=0))]
  times = {}
  print(f"{args.workdir}: {args.split} split, {len(data.image_inputs['boxes'])} images x {n_texts} captions")
  for name, fields in settings:
    spec = base.copy_and_resolve_references()
    spec.update(pair_batch_size=args.pair_batch_size, split=args.split, **fields)
    ev = evaluator_lib.create(name, spec)
    start = time.perf_counter()
    metrics = ev.evaluate(task.predict_fns(), loaded.variables, data, loaded.runtime)
    seconds = time.perf_counter() - start
    images = len(data.image_inputs["boxes"])
    pairs = (0 if fields["scorer"] == "embeddings" else
             (images + n_texts) * fields["rerank_k"] if fields["rerank_k"] else images * n_texts + n_texts)
    times[name] = seconds
    rate = f"{pairs / seconds:,.0f} pairs/s" if pairs else "-"
    print(f"  {name:22s} {seconds:8.1f} s  {pairs:>10,} pairs  {rate:>16s}  i2t R@1 {metrics['i2t_r1']:.1f}  "
          f"t2i R@1 {metrics['t2i_r1']:.1f}  rsum {metrics['rsum']:.1f}  peak RSS {peak_rss_mb():,.0f} MB (so far)",
          flush=True)
  full = times["every pair"]
  for name, seconds in times.items():
    if name != "every pair":
      print(f"  every pair / {name}: {full / seconds:.1f}x the time")


if __name__ == "__main__":
  main()
