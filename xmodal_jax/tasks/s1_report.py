"""S1's last stage (a job): the ablation table, pixel-only vs text-only vs fusion accuracy, from the results of
the fusion stages. Writes WORKDIR/<stage>/ablation.md and returns it as the stage report.

Config (config.stages.<stage>): job="s1_ablation", rows (stage names, in table order).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from xmodal_jax.train import pipeline


def ablation_table(config: ml_collections.ConfigDict, workdir: str, rows: tuple[str, ...]) -> str:
  """Markdown: one row per stage (its inputs), accuracy / mean class accuracy per evaluated split."""
  results = {}
  for name in rows:
    path = os.path.join(pipeline.stage_dir(workdir, name), "results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: stage {name!r} has not finished; run the pipeline first.")
    with open(path) as f:
      results[name] = json.load(f)["metrics"]
  splits = tuple(config.stages[rows[0]].eval.splits)
  head = "| classifier input | " + " | ".join(f"{s} accuracy | {s} mean class acc." for s in splits) + " |"
  lines = [head, "|---|" + "---:|" * (2 * len(splits))]
  for name in rows:
    inputs = " + ".join(config.stages[name].model.inputs)
    cells = [f"{results[name][f'{s}/{m}']:.2f}" for s in splits for m in ("accuracy", "mean_class_accuracy")]
    lines.append(f"| {inputs} ({name}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_ablation(config: ml_collections.ConfigDict, workdir: str, stage: str) -> dict:
  table = ablation_table(config, workdir, tuple(config.stages[stage].rows))
  out_dir = pipeline.stage_dir(workdir, stage)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
      f.write(table + "\n")
  return {"report": "Ablation (S1 claim: text + pixel beats pixel only)\n" + table}
