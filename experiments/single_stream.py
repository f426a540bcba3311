"""S4's table and claims (issue 17): coarse-grained (span) vs single-token masking, overlap-group vs random object
masking, and with vs without the seed library, one budget for every row:

  retrieval by the matching score (the test evaluator re-ranks the dual encoder's top-k), and the dual encoder
    alone; masked-word accuracy under both fixed protocols (span and single-token masks, every model scored on
    both) and masked-object label accuracy;
  convergence speed: per seed, the first validation step at which each run's masked-word accuracy (the mean of
    the two protocols, evaluator masked_curve) reaches a target, the lower of the coarse and single-token rows'
    final values for that seed (so both reach it).

  python -m experiments.run single_stream:shapes --workdir=workdirs/s4_ablation_shapes --parallel=2
  python -m experiments.run single_stream:flickr8k --workdir=workdirs/s4_ablation_flickr8k --parallel=2
  python -m experiments.run single_stream:tiny --workdir=/tmp/s4_tiny   # coarse vs single tokens, seconds per run

A run's later evaluations (`xmodal eval` of evaluators added after it ran, stored as <run>.<name>.json) count as
its metrics where results.json lacks them.
"""
from __future__ import annotations

from experiments import metrics, report
from experiments.experiment import Claim, Convergence, Experiment, Metric, Row, Table
from xmodal_jax.evaluation.tables import markdown_table

VARIANTS = ("shapes", "flickr8k", "tiny")
EXTRA_EVALS = ("_full", "_by_objects", "_captions")  # evaluator name parts run for the first row only
PROTOCOLS = ("words_span", "words_token")
CURVE = tuple(f"masked_curve/{p}_accuracy" for p in PROTOCOLS)


def _main_evals_only(config) -> list[str]:
  """The other rows skip the costly extras (full scoring of a fold, retrieval by objects, captions)."""
  return [f"--config.evals.{name}.at_end=False" for name in config.evals
          if any(part in name for part in EXTRA_EVALS)]


ROWS = {
    "coarse": Row("coarse spans, overlap groups", ()),
    "token": Row("single tokens, overlap groups",
                 lambda c: ["--config.masking.text_mode=token"] + _main_evals_only(c.config())),
    "random_objects": Row("coarse spans, random objects",
                          lambda c: ["--config.masking.object_mode=random"] + _main_evals_only(c.config())),
    "library": Row("coarse spans, overlap groups + seed library",
                   lambda c: ["--config.library.enabled=True"] + _main_evals_only(c.config())),
}


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
  return next((s for s, v in curve if v >= target - 1e-9), None)


def convergence_steps(data: report.ReportData) -> tuple[str, dict[int, int], dict[int, int]]:
  """Per seed: the target (the lower final accuracy of coarse / token) and the steps each row took to reach it:
  (markdown table, {seed: coarse steps}, {seed: token steps})."""
  body, coarse_steps, token_steps = [], {}, {}
  for s in data.seeds:
    curves = {row: data.curve(row, s) for row in ("coarse", "token")}
    if not all(curves.values()):
      continue
    target = min(curves["coarse"][-1][1], curves["token"][-1][1])
    got = {row: steps_to(c, target) for row, c in curves.items()}
    coarse_steps[s], token_steps[s] = got["coarse"], got["token"]
    body.append([s, f"{target:.2f}", got["coarse"], got["token"], f"{curves['coarse'][-1][1]:.2f}",
                 f"{curves['token'][-1][1]:.2f}"])
  table = markdown_table(["seed", "target val acc. %", "steps (coarse)", "steps (single tokens)",
                          "final (coarse)", "final (single tokens)"], body)
  return table, coarse_steps, token_steps


def sections(data: report.ReportData):
  if not {"coarse", "token"} <= set(data.rows):
    return [], []
  table, coarse, token = convergence_steps(data)
  parts = ["Convergence speed (validation masked-word accuracy, mean of both protocols):\n\n" + table]
  judged = report.compare_values("coarse masking reaches the target in fewer steps than single-token masking",
                                 "steps (token - coarse)", {s: float(v) for s, v in token.items()},
                                 {s: float(v) for s, v in coarse.items()},
                                 converged=data.converged("coarse", sorted(coarse))
                                 and data.converged("token", sorted(coarse)))
  return parts, [judged]


def get_experiment(variant: str) -> Experiment:
  split = "val" if variant == "flickr8k" else "test"
  config = {"shapes": "configs/vlp/single_stream_shapes.py", "flickr8k": "configs/vlp/single_stream_flickr8k.py",
            "tiny": "configs/vlp/single_stream_shapes.py:tiny"}[variant]
  mean_r1 = metrics.retrieval_metric(split, "mean_r1", "mean R@1 (matching)")
  masked = (mean_r1,
            Metric("mean R@1 (dual)", lambda m: (m[f"{split}_dual/i2t_r1"] + m[f"{split}_dual/t2i_r1"]) / 2,
                   items=lambda items: metrics.retrieval_item_scores(items, "mean_r1"), items_of=f"{split}_dual"),
            metrics.plain("masked words, span masks %", f"{split}_masked/words_span_accuracy"),
            metrics.plain("masked words, single masks %", f"{split}_masked/words_token_accuracy"),
            metrics.plain("masked object labels %", f"{split}_masked/objects_accuracy"))
  claims = [Claim("coarse masking's mean R@1 beats single-token masking's", "coarse", "token",
                  "mean R@1 (matching)")]
  if variant != "flickr8k":
    claims += [Claim("overlap-group object masking is not worse than random (within 1 point of mean R@1)", "coarse",
                     "random_objects", "mean R@1 (matching)", threshold=-1.0),
               Claim("the seed library does not lower mean R@1 (by more than 1 point)", "library", "coarse",
                     "mean R@1 (matching)", threshold=-1.0),
               Claim("shapes test i->t R@1 by matching score > 50", "coarse", "",
                     metrics.RETRIEVAL[0][1], threshold=50.0)]
  return Experiment(
      name=f"single_stream:{variant}",
      title=f"S4: single-stream pretraining ablation, {variant} {split}",
      config=config,
      rows=ROWS,
      tables=(Table(f"Retrieval by the matching score, {split} split:", metrics.retrieval_metrics(split)),
              Table("Matching, dual encoder and masked prediction:", masked)),
      claims=tuple(claims),
      convergence=Convergence(CURVE, tolerance=1.0),
      # The curve's evaluator runs every N steps, not at the end: :tiny gets 6 steps, so two evaluations (2, 4).
      budget=("--config.train.num_steps=6",) if variant == "tiny" else (),
      budget_note={"shapes": "the config's 400 steps at batch 64, masked-word val curve every 100 steps",
                   "flickr8k": "the config's 250 steps at batch 64",
                   "tiny": "the :tiny config at 6 steps, val curve at steps 2 and 4"}[variant],
      default_rows=("coarse", "token") if variant in ("flickr8k", "tiny") else tuple(ROWS),
      warmup="coarse" if variant != "tiny" else "",
      merge_evaluations=True,
      sections=sections)
