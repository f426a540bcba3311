"""Multi-stage configs (S1; S5's MLE -> SCST): what a stage's config and directory are.

A pipeline config has `pipeline` (stage names, in order), `stages.<name>` (a full trainer config with a
`task`, or a config with a `job`), and the sections every stage shares: `seed`, `data`, `mesh`. Those are
copied into each stage, so `--config.data.source=...` changes every stage at once; anything else is
overridden per stage, e.g. `--config.stages.text_generator.train.num_steps=100`. Stage <name> works in
WORKDIR/<name>. `xmodal_jax/pipeline.py` runs the stages.
"""
from __future__ import annotations

import os

import ml_collections

from xmodal_jax import errors

SHARED_SECTIONS = ("seed", "data", "mesh")


def is_pipeline(config: ml_collections.ConfigDict) -> bool:
  return "pipeline" in config and "stages" in config


def stage_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """The complete config of stage `name`: its own section plus the shared ones (unlocked copy)."""
  if name not in config.stages:
    raise errors.ConfigError(f"Stage {name!r} is not in config.stages ({sorted(config.stages.keys())}).")
  stage = ml_collections.ConfigDict(config.stages[name].to_dict())
  for section in SHARED_SECTIONS:
    value = config[section]
    stage[section] = ml_collections.ConfigDict(value.to_dict()) if isinstance(value, ml_collections.ConfigDict) \
        else value
  return stage


def stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, name)
