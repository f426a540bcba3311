"""S3: the mFSR ablation (seed 003, Table 3): VSE++ and mFSR with its losses added one by one, one budget for
every row, R@1/5/10 both ways and rsum of the test split (shapes) or val (Flickr8k), at the checkpoint the
config's final evaluation reports (config.checkpoint.final_from = "best": best val rsum).

  python -m experiments.run mfsr:shapes --workdir=workdirs/mfsr_ablation_shapes_b128 --parallel=2 \
      --config.train.batch_size=128          # and 24, the paper's (launch/mfsr_ablation.sh runs both)
  python -m experiments.run mfsr:flickr8k --workdir=workdirs/mfsr_ablation_flickr8k_b128 --parallel=2
  python -m experiments.run mfsr:tiny --workdir=/tmp/mfsr_tiny   # VSE++ vs full mFSR, seconds per run

Budget: the semantic loss is the SUM of hinges (with max violation every row collapses at these budgets:
docs/vse.md), the validation set evaluated twice (half-way and at the end) to tell whether training converged;
the table reports the last step (as the earlier runs, whose only val evaluation was at the end).
"""
from __future__ import annotations

from experiments import metrics
from experiments.experiment import Claim, Convergence, Experiment, Row, Table

VARIANTS = ("shapes", "flickr8k", "tiny")

_OFF = {"modal": 0, "specific": 0, "image": 0, "caption": 0}
# Row name -> (label in the paper's Table 3, loss weights != 1, separation on).
TABLE3 = {
    "vsepp": ("VSE++", _OFF, False),
    "mo": ("+mo", dict(_OFF, modal=1), True),
    "sp": ("+sp", dict(_OFF, specific=1), True),
    "mo_sp": ("+mo+sp", dict(_OFF, modal=1, specific=1), True),
    "mo_sp_img": ("+mo+sp+img-re", dict(_OFF, modal=1, specific=1, image=1), True),
    "mo_sp_cap": ("+mo+sp+cap-re", dict(_OFF, modal=1, specific=1, caption=1), True),
    "full": ("full mFSR", dict(_OFF, modal=1, specific=1, image=1, caption=1), True),
}


def row_flags(row: str, reconstruction_evals: list[str]) -> list[str]:
  """The overrides of a row; rows without image reconstruction turn its evaluators off."""
  _, weights, separation = TABLE3[row]
  flags = [f"--config.model.separation.enabled={separation}"]
  flags += [f"--config.loss_weights.{k}={float(v)}" for k, v in weights.items()]
  return flags + ([f"--config.evals.{name}.at_end=False" for name in reconstruction_evals] if not weights["image"]
                  else [])


def _reconstruction_evals(config) -> list[str]:
  return [name for name, spec in config.evals.items() if spec.type == "image_reconstruction"]


ROWS = {name: Row(label, lambda context, name=name: row_flags(name, _reconstruction_evals(context.config())))
        for name, (label, _, _) in TABLE3.items()}


def _budget(steps: int) -> tuple[str, ...]:
  return (f"--config.train.num_steps={steps}", f"--config.train.checkpoint_every={steps}",
          "--config.train.log_every=50", f"--config.optimizer.warmup_steps={steps // 5}",
          "--config.loss.max_violation=False", f"--config.evals.val.every={steps // 2}",
          # The val curve only tells convergence: report the last step, as when val ran at the end only.
          "--config.checkpoint.final_from=latest")


def get_experiment(variant: str) -> Experiment:
  split = {"shapes": "test", "flickr8k": "val", "tiny": "test"}[variant]
  config = {"shapes": "configs/retrieval/mfsr_shapes.py", "flickr8k": "configs/retrieval/mfsr_flickr8k.py",
            "tiny": "configs/retrieval/mfsr_shapes.py:tiny"}[variant]
  steps = {"shapes": 250, "flickr8k": 150}.get(variant)
  claims = [Claim("full mFSR beats VSE++", "full", "vsepp", "rsum"),
            Claim("separation (+mo+sp) beats VSE++", "mo_sp", "vsepp", "rsum"),
            Claim("the reconstructions add to +mo+sp", "full", "mo_sp", "rsum")]
  return Experiment(
      name=f"mfsr:{variant}",
      title=f"S3: mFSR ablation (Table 3 rows), {variant} {split}",
      config=config,
      rows=ROWS,
      tables=(Table(f"Retrieval, {split} split:", metrics.retrieval_metrics(split)),),
      claims=tuple(claims),
      convergence=Convergence(("val/rsum",), tolerance=3.0),
      budget=_budget(steps) if steps else (),
      budget_note=(f"{steps} steps, sum of hinges, val every {steps // 2} steps" if steps
                   else "the :tiny config's 6 steps (val at steps 3 and 6)"),
      default_rows=("vsepp", "full") if variant == "tiny" else (),
      warmup="full" if variant == "flickr8k" else "")
