"""S1's last stage (a job): this run's table of its classifiers, pixel-only vs text-only vs fusion accuracy, from
the results of the fusion stages. Writes WORKDIR/<stage>/ablation.md and returns it as the stage report. One run
decides no claim: the seed's claim (fusion beats pixel only) is judged over seeds, with a CI, by the experiments
runner outside the package (`python -m experiments.run classifier:shapes`, experiments/classifier.py).

Config (config.stages.<stage>): job="s1_ablation", rows (stage names, in table order).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator, tables
from xmodal_jax.train import stages


def ablation_table(config: ml_collections.ConfigDict, workdir: str, rows: tuple[str, ...]) -> str:
  """Markdown: one row per stage (its inputs), accuracy / mean class accuracy per evaluator of the first row."""
  results = {}
  for name in rows:
    path = os.path.join(stages.stage_dir(workdir, name), "results.json")
    if not os.path.exists(path):
      raise errors.MissingError(f"{path} not found: stage {name!r} has not finished; run the pipeline first.")
    with open(path) as f:
      results[name] = json.load(f)["metrics"]
  prefixes = [e.prefix for e in evaluator.create_all(config.stages[rows[0]].evals) if e.at_end]
  headers = ["classifier input"] + [f"{p} {m}" for p in prefixes for m in ("accuracy", "mean class acc.")]
  body = [[f"{' + '.join(config.stages[name].model.inputs)} ({name})"]
          + [results[name][f"{p}/{m}"] for p in prefixes for m in ("accuracy", "mean_class_accuracy")]
          for name in rows]
  return tables.markdown_table(headers, body)


def write_ablation(config: ml_collections.ConfigDict, workdir: str, stage: str) -> dict:
  table = ablation_table(config, workdir, tuple(config.stages[stage].rows))
  out_dir = stages.stage_dir(workdir, stage)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
      f.write(table + "\n")
  return {"report": "Ablation (this run's classifiers; the claim over seeds: python -m experiments.run "
                    "classifier)\n" + table}
