r"""S2's ablation and claims (issue 16): VSE++ (global), S2 without self-attention, without the relation layer,
without tags and full S2, trained with one budget over several seeds (task_bases/ablation.py), then

  the retrieval table (R@1/5/10 both ways, rsum, paired rsum differences to VSE++) of evaluator `--split`;
  the claims table: mean R@1, the compositional choice accuracy (colour / relation foils; evaluator
    "composition", shapes world), the tag head's micro-F1 (evaluator "tags");
  robustness (with --robustness): every run of the rows `full` and `no_sa_tags` (S2 without self-attention and
    tags) evaluated again with its boxes jittered by 20% and with grid regions (`xmodal eval` overrides), and
    the drop of mean R@1 from the regions it was trained with.

  python -m xmodal_jax.systems.region_word.ablation --config=configs/retrieval/region_word_shapes.py \
      --workdir=workdirs/s2_ablation_shapes [--seeds=0,1,2] [--rows=vsepp,...] [--parallel=2] [--robustness] \
      [-- --config.train.num_steps=500 ...]

Tables: WORKDIR/ablation.md. Finished runs and evaluations are reused, so the command resumes.
"""
from __future__ import annotations

import sys

import numpy as np

from xmodal_jax.evaluation import tables
from xmodal_jax.task_bases import ablation


def _flags(**overrides) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


_VSEPP = _flags(**{"similarity.weights.entity": 0.0, "similarity.weights.relation": 0.0,
                   "model.salient_attention": False, "model.relation": False, "model.global_pool": "image",
                   "tags.enabled": False})
_NO_SA = _flags(**{"model.salient_attention": False})
_NO_REL = _flags(**{"model.relation": False, "similarity.weights.relation": 0.0})
_NO_TAGS = _flags(**{"tags.enabled": False})


def _no_tag_evals(config) -> list[str]:
  return [f"--config.evals.{n}.at_end=False" for n, s in config.evals.items() if s.type == "multilabel"]


ROWS = {
    "vsepp": ablation.Row("VSE++ (global)", lambda c: _VSEPP + _no_tag_evals(c)),
    "no_sa": ablation.Row("S2 w/o self-attention", lambda c: _NO_SA),
    "no_rel": ablation.Row("S2 w/o relation layer", lambda c: _NO_REL),
    "no_tags": ablation.Row("S2 w/o tags", lambda c: _NO_TAGS + _no_tag_evals(c)),
    "full": ablation.Row("full S2", lambda c: []),
    "no_sa_tags": ablation.Row("S2 w/o self-attention, w/o tags", lambda c: _NO_SA + _NO_TAGS + _no_tag_evals(c)),
}
ROBUSTNESS_ROWS = ("full", "no_sa_tags")
PERTURBATIONS = {"jitter20": ["--config.regions.eval_jitter=0.2"], "grid": ["--config.regions.eval_method=grid"]}


def mean_r1(metrics: dict[str, float], split: str) -> float:
  return (metrics[f"{split}/i2t_r1"] + metrics[f"{split}/t2i_r1"]) / 2


def claims_table(per_row: dict[str, list[dict[str, float]]], labels: dict[str, str], split: str) -> str:
  """Mean R@1, composition accuracy (all / colour / relation) and tag micro-F1, mean +- std over seeds."""
  columns = [("mean R@1", lambda m: mean_r1(m, split)),
             ("choice acc.", lambda m: m.get("composition/accuracy")),
             ("colour foils", lambda m: m.get("composition/accuracy_colour")),
             ("relation foils", lambda m: m.get("composition/accuracy_relation")),
             ("tag micro-F1", lambda m: m.get("tags/micro_f1"))]
  body = []
  for row, runs in per_row.items():
    line = [labels[row]]
    for _, get in columns:
      values = [get(m) for m in runs]
      line.append("–" if any(v is None for v in values) else ablation.mean_std(values))
    body.append(line)
  return tables.markdown_table(["row"] + [name for name, _ in columns], body)


def robustness_table(args, config, rows: list[str], seeds: list[int], split: str, extra: list[str]) -> str:
  """Mean R@1 with the training regions and under each perturbation, and the drops (mean +- std over seeds).
  Each evaluation runs the row's own config (its overrides and the run's extra flags) plus the perturbation."""
  body = []
  for row in rows:
    base = [mean_r1(ablation.results(args.workdir, row, s), split) for s in seeds]
    line = [ROWS[row].label, ablation.mean_std(base)]
    own = ROWS[row].flags(config) + extra
    for name, flags in PERTURBATIONS.items():
      got = [mean_r1(ablation.evaluate(args.config, args.workdir, row, s, name,
                                       own + flags + _no_tag_evals(config), splits=(split,)), split)
             for s in seeds]
      line += [ablation.mean_std(got), ablation.mean_std(np.asarray(base) - np.asarray(got))]
    body.append(line)
  headers = ["row", "mean R@1"] + [h for name in PERTURBATIONS for h in (f"{name}", f"drop ({name})")]
  return tables.markdown_table(headers, body)


def main(argv: list[str]) -> int:
  robustness = "--robustness" in argv
  trained = ablation.train_rows("region_word_ablation", __doc__, ROWS, [a for a in argv if a != "--robustness"],
                                more_rows=ROBUSTNESS_ROWS if robustness else ())
  if isinstance(trained, int):
    return trained
  args, rows, seeds, extra, config = trained
  run_rows = list(dict.fromkeys(rows + (list(ROBUSTNESS_ROWS) if robustness else [])))
  per_row = {row: [ablation.results(args.workdir, row, s) for s in seeds] for row in run_rows}
  labels = {row: ROWS[row].label for row in run_rows}
  parts = [ablation.retrieval_table({r: per_row[r] for r in rows}, labels, args.split),
           claims_table(per_row, labels, args.split)]
  if robustness:
    try:
      parts.append("Robustness to poor detection (mean R@1; trained with the config's regions):\n\n"
                   + robustness_table(args, config, list(ROBUSTNESS_ROWS), seeds, args.split, extra))
    except RuntimeError as e:
      print(f"region_word_ablation: {e}", file=sys.stderr)
      return 1
  ablation.write_report(args, seeds, extra, parts)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
