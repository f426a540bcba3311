"""S1's claim over several seeds: accuracy of each classifier as mean +- std, and fusion minus pixel-only paired
by seed (the same seed's runs share the data, the partition and the features' models).

  python -m xmodal_jax.systems.classifier.seed_table WORKDIR_seed0 WORKDIR_seed1 WORKDIR_seed2 [--split=test]

Each WORKDIR is a finished S1 pipeline run (its fusion / pixel_only / text_only stages' results.json). The paired
comparison gives the mean difference, its standard deviation over seeds, how many seeds favour fusion, and a
two-sided paired t-test (scipy.stats.ttest_rel; with 3 seeds it can detect only large effects: say so when
quoting it).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np
from scipy import stats

from xmodal_jax import errors
from xmodal_jax.evaluation import tables

ROWS = (("pixel only", "pixel_only"), ("text only", "text_only"), ("text + pixel (fusion)", "fusion"))
METRICS = (("accuracy", "accuracy"), ("mean class acc.", "mean_class_accuracy"))


def read_metrics(workdir: str, stage: str) -> dict[str, float]:
  path = os.path.join(workdir, stage, "results.json")
  if not os.path.exists(path):
    raise errors.MissingError(f"{path} not found: the S1 run in {workdir} has not finished stage {stage!r}; "
                              "run `xmodal train` with its config to the end first.")
  with open(path) as f:
    return json.load(f)["metrics"]


def seed_table(workdirs: Sequence[str], split: str) -> str:
  """Markdown: per classifier, per-seed values and mean (std); then fusion - pixel only, paired by seed."""
  if len(workdirs) < 2:
    raise errors.ConfigError("seed_table needs the runs of at least 2 seeds (3 or more to say anything).")
  values = {(stage, key): np.asarray([read_metrics(w, stage)[f"{split}/{key}"] for w in workdirs])
            for _, stage in ROWS for _, key in METRICS}
  headers = ["classifier"] + [h for name, _ in METRICS for h in (f"{split} {name} per seed", "mean (std)")]

  def cells(v):
    return [" / ".join(f"{x:.2f}" for x in v), f"{v.mean():.2f} ({v.std(ddof=1):.2f})"]

  body = [[title] + [c for _, key in METRICS for c in cells(values[(stage, key)])] for title, stage in ROWS]
  paired = ["fusion - pixel only, paired by seed"]
  for _, key in METRICS:
    diff = values[("fusion", key)] - values[("pixel_only", key)]
    pvalue = stats.ttest_rel(values[("fusion", key)], values[("pixel_only", key)]).pvalue
    paired += [" / ".join(f"{x:+.2f}" for x in diff),
               f"{diff.mean():+.2f} ({diff.std(ddof=1):.2f}); {int(np.sum(diff > 0))}/{len(diff)} > 0; p = {pvalue:.3f}"]
  body.append(paired)
  return tables.markdown_table(headers, body)


def main(argv: Sequence[str]) -> int:
  split = "test"
  dirs = []
  for arg in argv:
    if arg.startswith("--split="):
      split = arg.split("=", 1)[1]
    else:
      dirs.append(arg)
  try:
    print(seed_table(dirs, split))
  except (errors.UserError, KeyError) as e:
    print(f"seed_table: error: {e}", file=sys.stderr)
    return errors.EXIT_ERROR
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
