"""S2's ablation (issue 16): VSE++ (global), S2 without self-attention, without the relation layer, without tags,
and full S2, one budget for every row; R@K of the test split (shapes) or val (Flickr8k), the compositional choice
(colour / relation foils, shapes), the tag head's micro-F1; and robustness to poor detection (shapes): every run
of `full` and `no_sa_tags` evaluated again (`xmodal eval`) with its boxes jittered by 20% and with grid regions.

  python -m experiments.run region_word:shapes --workdir=workdirs/s2_ablation_shapes --parallel=2
  python -m experiments.run region_word:flickr8k --workdir=workdirs/s2_ablation_flickr8k --parallel=2
  python -m experiments.run region_word:tiny --workdir=/tmp/s2_tiny     # VSE++ vs full S2, seconds per run
"""
from __future__ import annotations

from experiments import metrics
from experiments.experiment import (
  Claim,
  Convergence,
  Evaluation,
  Experiment,
  Row,
  Table,
)

VARIANTS = ("shapes", "flickr8k", "tiny")


def _flags(**overrides) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


_VSEPP = _flags(**{"similarity.weights.entity": 0.0, "similarity.weights.relation": 0.0,
                   "model.salient_attention": False, "model.relation": False, "model.global_pool": "image",
                   "tags.enabled": False})
_NO_SA = _flags(**{"model.salient_attention": False})
_NO_REL = _flags(**{"model.relation": False, "similarity.weights.relation": 0.0})
_NO_TAGS = _flags(**{"tags.enabled": False})


def no_tag_evals(config) -> list[str]:
  return [f"--config.evals.{n}.at_end=False" for n, s in config.evals.items() if s.type == "multilabel"]


ROWS = {
    "vsepp": Row("VSE++ (global)", lambda c: _VSEPP + no_tag_evals(c.config())),
    "no_sa": Row("S2 w/o self-attention", _NO_SA),
    "no_rel": Row("S2 w/o relation layer", _NO_REL),
    "no_tags": Row("S2 w/o tags", lambda c: _NO_TAGS + no_tag_evals(c.config())),
    "full": Row("full S2", ()),
    "no_sa_tags": Row("S2 w/o self-attention, w/o tags", lambda c: _NO_SA + _NO_TAGS + no_tag_evals(c.config())),
}
ROBUSTNESS_ROWS = ("full", "no_sa_tags")
PERTURBATIONS = {"jitter20": (["--config.regions.eval_jitter=0.2"], "boxes jittered 20%"),
                 "grid": (["--config.regions.eval_method=grid"], "grid regions")}


def _evaluation(flags: list[str], split: str) -> Evaluation:
  return Evaluation(lambda c: flags + no_tag_evals(c.config()), splits=(split,))


def get_experiment(variant: str) -> Experiment:
  split = "val" if variant == "flickr8k" else "test"
  config = {"shapes": "configs/retrieval/region_word_shapes.py", "flickr8k": "configs/retrieval/region_word_flickr8k.py",
            "tiny": "configs/retrieval/region_word_shapes.py:tiny"}[variant]
  rows = dict(ROWS)
  robustness = variant == "shapes"
  if robustness:
    for row in ROBUSTNESS_ROWS:
      for name, (_, what) in PERTURBATIONS.items():
        rows[f"{row}@{name}"] = Row(f"{ROWS[row].label}, {what}", step=row, evaluation=name)
  mean_r1 = metrics.retrieval_metric(split, "mean_r1")
  tables = [Table(f"Retrieval, {split} split (pairwise scores re-ranking the global vectors' top-k):",
                  metrics.retrieval_metrics(split)),
            Table("Claims' metrics:", (mean_r1, metrics.plain("choice acc.", "composition/accuracy"),
                                       metrics.plain("colour foils", "composition/accuracy_colour"),
                                       metrics.plain("relation foils", "composition/accuracy_relation"),
                                       metrics.plain("tag micro-F1", "tags/micro_f1")))]
  claims = [Claim("full S2 beats VSE++ (global)", "full", "vsepp", "mean R@1"),
            Claim("self-attention helps", "full", "no_sa", "mean R@1"),
            Claim("the relation layer helps", "full", "no_rel", "mean R@1"),
            Claim("the tags help", "full", "no_tags", "mean R@1")]
  if variant != "flickr8k":
    claims.append(Claim("full S2 tells true captions from colour / relation foils better than VSE++", "full",
                        "vsepp", "choice acc."))
  if robustness:
    tables.append(Table("Robustness to poor detection (trained with the config's regions, evaluated with others):",
                        (mean_r1,), rows=tuple(r for row in ROBUSTNESS_ROWS for r in (row, *(
                            f"{row}@{p}" for p in PERTURBATIONS)))))
    claims += [Claim("full S2 loses under 5 points of mean R@1 with boxes jittered by 20%", "full@jitter20", "full",
                     "mean R@1", threshold=-5.0)]
  budget = {"shapes": ("--config.train.log_every=50", "--config.evals.val.every=250"),
            "flickr8k": ("--config.train.log_every=50", "--config.train.num_steps=300",
                         "--config.train.checkpoint_every=300", "--config.optimizer.warmup_steps=30",
                         "--config.loss.max_violation_warmup_steps=120", "--config.evals.val.every=150"),
            "tiny": ("--config.evals.val.every=2",)}[variant]
  return Experiment(
      name=f"region_word:{variant}",
      title=f"S2: region-word alignment ablation, {variant} {split}",
      config=config,
      rows=rows,
      tables=tuple(tables),
      claims=tuple(claims),
      convergence=Convergence(("val/rsum",), tolerance=3.0),
      budget=budget,
      budget_note={"shapes": "the config's 500 steps at batch 64, val every 250 steps",
                   "flickr8k": "300 steps, val every 150 steps",
                   "tiny": "the :tiny config's 4 steps, val at steps 2 and 4"}[variant],
      evaluations={name: _evaluation(flags, split) for name, (flags, _) in PERTURBATIONS.items()},
      default_rows=(("vsepp", "full") if variant == "tiny" else
                    tuple(r for r in rows if r != "no_sa_tags" and (robustness or "@" not in r))),
      warmup="full" if variant != "tiny" else "")
