r"""S4's table and claims (issue 17): coarse-grained (span) vs single-token masking, overlap-group vs random object
masking, and with vs without the seed library, each trained with one budget over several seeds (the generic
runner of task_bases/ablation.py), then

  the retrieval table of the matching score (evaluator `--split`, re-ranking the dual encoder's top-k), and the
    dual encoder alone;
  the masked-prediction table: masked-word accuracy under both fixed protocols (span and single-token masks,
    every model scored on both) and masked-object label accuracy (labelled data);
  convergence: the first validation step at which each run's masked-word accuracy (the mean of the two
    protocols, evaluator masked_curve) reaches a target, the lower of the coarse and single-token rows' final
    means for that seed (so both reach it);
  the claims, each stated as holding or not.

  python -m xmodal_jax.systems.single_stream.ablation --config=configs/vlp/single_stream_shapes.py \
      --workdir=workdirs/s4_ablation_shapes [--seeds=0,1,2] [--rows=coarse,token,random_objects,library] \
      [--parallel=2] [-- --config.train.num_steps=600 ...]

Tables: WORKDIR/ablation.md. Finished runs are reused, so the command resumes. A run's later evaluations
(`xmodal eval` of evaluators added after it ran, stored as WORKDIR/<row>/seed<k>.<name>.json by
task_bases/ablation.evaluate) count as its metrics where results.json lacks them.
"""
from __future__ import annotations

import sys

import numpy as np

from xmodal_jax.evaluation import tables
from xmodal_jax.task_bases import ablation
from xmodal_jax.train import workdir as workdir_lib

EXTRA_EVALS = ("_full", "_by_objects", "_captions")  # evaluator name parts run for the first row only


def _main_evals_only(config) -> list[str]:
  """The other rows skip the costly extras (full scoring of a fold, retrieval by objects, captions)."""
  return [f"--config.evals.{name}.at_end=False" for name in config.evals
          if any(part in name for part in EXTRA_EVALS)]


ROWS = {
    "coarse": ablation.Row("coarse spans, overlap groups", lambda c: []),
    "token": ablation.Row("single tokens, overlap groups",
                          lambda c: ["--config.masking.text_mode=token"] + _main_evals_only(c)),
    "random_objects": ablation.Row("coarse spans, random objects",
                                   lambda c: ["--config.masking.object_mode=random"] + _main_evals_only(c)),
    "library": ablation.Row("coarse spans, overlap groups + seed library",
                            lambda c: ["--config.library.enabled=True"] + _main_evals_only(c)),
}
PROTOCOLS = ("words_span", "words_token")


def mean_r1(metrics: dict[str, float], split: str) -> float:
  return (metrics[f"{split}/i2t_r1"] + metrics[f"{split}/t2i_r1"]) / 2


def _get(metrics, key):
  return metrics.get(key)


def _cell(values) -> str:
  return "–" if any(v is None for v in values) else ablation.mean_std(values)


def masked_table(per_row, labels, split: str) -> str:
  columns = [("mean R@1 (matching)", lambda m: mean_r1(m, split)),
             ("mean R@1 (dual)", lambda m: mean_r1(m, f"{split}_dual") if f"{split}_dual/i2t_r1" in m else None),
             ("masked words, span masks %", lambda m: _get(m, f"{split}_masked/words_span_accuracy")),
             ("masked words, single masks %", lambda m: _get(m, f"{split}_masked/words_token_accuracy")),
             ("masked object labels %", lambda m: _get(m, f"{split}_masked/objects_accuracy"))]
  body = [[labels[row]] + [_cell([get(m) for m in runs]) for _, get in columns] for row, runs in per_row.items()]
  return tables.markdown_table(["row"] + [name for name, _ in columns], body)


CURVE_EVALUATORS = ("masked_curve", "val_masked")  # the periodic evaluator's name (val_masked: earlier runs)


def validation_curve(run: str) -> list[tuple[int, float]]:
  """(step, mean of the two protocols' val masked-word accuracy) of one run (evaluator masked_curve)."""
  for name in CURVE_EVALUATORS:
    curves = [dict(workdir_lib.scalar_history(run, f"{name}/{p}_accuracy")) for p in PROTOCOLS]
    if curves[0]:
      break
  steps = sorted(set(curves[0]) & set(curves[1]))
  return [(s, (curves[0][s] + curves[1][s]) / 2) for s in steps]


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
  return next((s for s, v in curve if v >= target - 1e-9), None)


def convergence(workdir: str, seeds: list[int]) -> tuple[str, list[int], list[int]]:
  """Per seed: the target (the lower final accuracy of coarse / token) and the steps each row took to reach it."""
  body, coarse_steps, token_steps = [], [], []
  for s in seeds:
    curves = {row: validation_curve(ablation.run_dir(workdir, row, s)) for row in ("coarse", "token")}
    if not all(curves.values()):
      continue
    target = min(curves["coarse"][-1][1], curves["token"][-1][1])
    got = {row: steps_to(c, target) for row, c in curves.items()}
    coarse_steps.append(got["coarse"])
    token_steps.append(got["token"])
    body.append([s, f"{target:.2f}", got["coarse"], got["token"], f"{curves['coarse'][-1][1]:.2f}",
                 f"{curves['token'][-1][1]:.2f}"])
  table = tables.markdown_table(["seed", "target val acc. %", "steps (coarse)", "steps (single tokens)",
                                 "final (coarse)", "final (single tokens)"], body)
  return table, coarse_steps, token_steps


def _holds(ok: bool) -> str:
  return "**holds**" if ok else "**does not hold**"


def claims(per_row, split: str, coarse_steps, token_steps) -> list[str]:
  r1 = {row: np.asarray([mean_r1(m, split) for m in runs]) for row, runs in per_row.items()}
  out = []
  if "coarse" in r1 and "token" in r1:
    a, b = r1["coarse"].mean(), r1["token"].mean()
    out.append(f"- coarse masking's mean R@1 >= single-token masking's ({a:.1f} vs {b:.1f}): {_holds(a >= b)}")
    if coarse_steps:
      a_s, b_s = np.mean(coarse_steps), np.mean(token_steps)
      out.append(f"- coarse masking needs no more steps to reach the same validation masked-word accuracy "
                 f"(mean {a_s:.0f} vs {b_s:.0f} steps; per seed {coarse_steps} vs {token_steps}): {_holds(a_s <= b_s)}")
  if "coarse" in r1 and "random_objects" in r1:
    a, b = r1["coarse"].mean(), r1["random_objects"].mean()
    objects = [np.mean([m.get(f"{split}_masked/objects_accuracy", np.nan) for m in per_row[row]])
               for row in ("coarse", "random_objects")]
    out.append(f"- overlap-group object masking is not worse than random (mean R@1 {a:.1f} vs {b:.1f}; masked-object "
               f"accuracy {objects[0]:.1f} vs {objects[1]:.1f}): {_holds(a >= b)}")
  if "coarse" in r1 and "library" in r1:
    a, b = r1["coarse"].mean(), r1["library"].mean()
    out.append(f"- the seed library does not lower R@1 ({b:.1f} with vs {a:.1f} without, {b - a:+.1f}): "
               f"{_holds(b >= a)}")
  if "coarse" in r1 and "test" in split:
    i2t = np.mean([m[f"{split}/i2t_r1"] for m in per_row["coarse"]])
    out.append(f"- shapes test i->t R@1 >= 50 by matching score ({i2t:.1f}): {_holds(i2t >= 50)}")
  return out


def main(argv: list[str]) -> int:
  trained = ablation.train_rows("single_stream_ablation", __doc__, ROWS, argv)
  if isinstance(trained, int):
    return trained
  args, rows, seeds, extra, _ = trained
  per_row = {row: [ablation.results(args.workdir, row, s, with_evaluations=True) for s in seeds] for row in rows}
  labels = {row: ROWS[row].label for row in rows}
  table, coarse_steps, token_steps = convergence(args.workdir, seeds) if {"coarse", "token"} <= set(rows) else (
      "", [], [])
  parts = ["Retrieval by the matching score:\n\n" + ablation.retrieval_table(per_row, labels, args.split),
           masked_table(per_row, labels, args.split)]
  if table:
    parts.append("Convergence (validation masked-word accuracy, mean of both protocols):\n\n" + table)
  parts.append("\n".join(claims(per_row, args.split, coarse_steps, token_steps)))
  ablation.write_report(args, seeds, extra, parts)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
