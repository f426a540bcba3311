"""S1's claim, text + pixel beats pixel only: the staged S1 pipeline (`xmodal train` of a multi-stage config,
xmodal_jax/pipeline.py) once per seed, and its fusion / pixel-only / text-only stages as the rows. A seed sets
initialisation and data order; the data, the partition and the folds stay the same, so the rows are paired by
seed and by test image (the classification evaluator saves each image's correctness).

  python -m experiments.run classifier:shapes --workdir=workdirs/s1_seeds       # today's regime, 3 seeds
  python -m experiments.run classifier:seed_regime --workdir=workdirs/s1_seed_regime
  python -m experiments.run classifier:flickr8k --workdir=workdirs/s1_flickr8k_seeds
  python -m experiments.run classifier:tiny --workdir=/tmp/s1_tiny                # seconds per stage

Each seed's pipeline is WORKDIR/pipeline/seed<k> (stages in subdirectories; the same command resumes it).
"""
from __future__ import annotations

from experiments import metrics
from experiments.experiment import Claim, Convergence, Experiment, Row, Step, Table

VARIANTS = ("shapes", "seed_regime", "flickr8k", "tiny")
STAGES = (("pixel only", "pixel_only"), ("text only", "text_only"), ("text + pixel (fusion)", "fusion"))


def get_experiment(variant: str) -> Experiment:
  split = "val" if variant == "flickr8k" else "test"
  config = {"shapes": "configs/s1/shapes.py", "seed_regime": "configs/s1/shapes.py:seed_regime",
            "flickr8k": "configs/s1/flickr8k.py", "tiny": "configs/s1/shapes.py:tiny"}[variant]
  pipeline = Step("pipeline", config=config, done=tuple(f"{stage}/stage_done.json" for _, stage in STAGES))
  columns = (metrics.accuracy(split), metrics.plain("mean class acc.", f"{split}/mean_class_accuracy", ".2f"))
  return Experiment(
      name=f"classifier:{variant}",
      title=f"S1: fusion vs pixel only vs text only, {variant} {split}",
      config=config,
      rows={stage: Row(label, step="pipeline", result=f"{stage}/results.json") for label, stage in STAGES},
      steps={"pipeline": pipeline},
      tables=(Table(f"Classifiers ({split} split):", columns),),
      claims=(Claim("text + pixel beats pixel only", "fusion", "pixel_only", "accuracy"),
              Claim("text + pixel beats pixel only (mean class accuracy)", "fusion", "pixel_only",
                    "mean class acc.")),
      convergence=Convergence(("val/accuracy",), tolerance=0.5),
      budget_note="the config's stages (fusion heads: val at half-way and at the end)",
      notes="Rows are stages of one pipeline run per seed (WORKDIR/pipeline/seed<k>/<stage>).")
