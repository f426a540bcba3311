"""Multi-stage configs (S1; S5's MLE -> SCST): what a stage's config and directory are.

A pipeline config has `pipeline` (stage names, in order), `stages.<name>` (a full trainer config with a
`task`, or a config with a `job`), and the sections every stage shares: `seed`, `data`, `mesh` (and
`partition`, where a pipeline has one). Those are copied into each stage, so `--config.data.source=...` changes every stage at once; anything else is
overridden per stage, e.g. `--config.stages.text_generator.train.num_steps=100`. Stage <name> works in
WORKDIR/<name>. `xmodal_jax/pipeline.py` runs the stages.

Cross-fitting: with `partition.folds = K >= 2`, every stage named in `partition.crossfit_stages` is trained K
times, once per fold, as stage variants in WORKDIR/<name>_fold<j> whose config has `fold = j` (what a fold
leaves out is the task's business); a stage trained once has `fold = -1`. A later stage that reads rows'
features picks, per row, the variant that never trained on that row.
"""
from __future__ import annotations

import os

import ml_collections

from xmodal_jax import errors

SHARED_SECTIONS = ("seed", "data", "mesh", "partition")  # "partition" is optional


def is_pipeline(config: ml_collections.ConfigDict) -> bool:
  return "pipeline" in config and "stages" in config


def stage_config(config: ml_collections.ConfigDict, name: str, fold: int = -1) -> ml_collections.ConfigDict:
  """The complete config of stage `name` (fold variant `fold`, -1 = the one trained on every row): its own
  section plus the shared ones (unlocked copy)."""
  if name not in config.stages:
    raise errors.ConfigError(f"Stage {name!r} is not in config.stages ({sorted(config.stages.keys())}).")
  stage = ml_collections.ConfigDict(config.stages[name].to_dict())
  if "task" in stage:
    stage.fold = int(fold)
  for section in SHARED_SECTIONS:
    if section not in config:
      continue
    value = config[section]
    stage[section] = ml_collections.ConfigDict(value.to_dict()) if isinstance(value, ml_collections.ConfigDict) \
        else value
  return stage


def stage_dir(workdir: str, name: str, fold: int = -1) -> str:
  return os.path.join(workdir, name if fold < 0 else f"{name}_fold{fold}")


def num_folds(config: ml_collections.ConfigDict) -> int:
  """K, the cross-fitting folds of a pipeline (0: none)."""
  folds = int(config.partition.folds) if "partition" in config else 0
  if folds == 1 or folds < 0:
    raise errors.ConfigError(f"config.partition.folds={folds}: use 0 (no cross-fitting) or K >= 2.")
  return folds


def stage_folds(config: ml_collections.ConfigDict, name: str) -> list[int]:
  """The variants stage `name` is trained as: [0..K-1] if it is cross-fitted, else [-1]."""
  folds = num_folds(config)
  if folds and name in tuple(config.partition.crossfit_stages):
    return list(range(folds))
  return [-1]
