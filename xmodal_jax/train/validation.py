"""Checks of config values before any array is made: each error names the field, its value and the rule.

Covers the generic sections (train, optimizer, checkpoint, the data section's common fields) and the global
batch against the mesh; tasks and evaluators check their own sections when they are built.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from xmodal_jax import errors
from xmodal_jax.train import optimizer as optimizer_lib


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(config: ml_collections.ConfigDict, field: str, ok, rule: str) -> None:
  """Raise ConfigError unless ok(value); `field` is dotted ("train.batch_size"); absent fields are skipped."""
  node = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return
    node = node[part]
  try:
    good = bool(ok(node))
  except TypeError:
    good = False
  if not good:
    raise errors.ConfigError(f"config.{field}={node!r}: {rule}.")


def _positive_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _non_negative_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def validate(config: ml_collections.ConfigDict, *, data_parallel: int = 1, process_count: int = 1) -> None:
  """Every rule for the sections a training run has; `data_parallel` is the mesh's `data` size."""
  for field in ("train.batch_size", "train.num_steps", "train.log_every", "train.checkpoint_every",
                "checkpoint.max_to_keep"):
    _check(config, field, _positive_int, "must be a positive integer")
  _check(config, "train.profile_steps", _non_negative_int, "must be an integer >= 0 (0 = no profile)")
  batch = config.train.batch_size
  for divisor, what in ((data_parallel, f"the mesh's data-parallel size ({data_parallel} from config.mesh.shape)"),
                        (process_count, f"the number of processes ({process_count})")):
    if divisor > 1 and batch % divisor:
      raise errors.ConfigError(f"config.train.batch_size={batch}: the global batch must be divisible by {what}; "
                               f"use a multiple of {divisor}, e.g. {max(divisor, batch // divisor * divisor)}.")
  opt = "optimizer"
  _check(config, f"{opt}.name", lambda v: v in optimizer_lib.OPTIMIZERS, f"use one of {optimizer_lib.OPTIMIZERS}")
  _check(config, f"{opt}.schedule", lambda v: v in optimizer_lib.SCHEDULES, f"use one of {optimizer_lib.SCHEDULES}")
  _check(config, f"{opt}.learning_rate", lambda v: _number(v) and v > 0, "must be a number > 0")
  _check(config, f"{opt}.warmup_steps", _non_negative_int, "must be an integer >= 0")
  for field in ("weight_decay", "grad_clip_norm", "momentum"):
    _check(config, f"{opt}.{field}", lambda v: _number(v) and v >= 0, "must be a number >= 0")
  for field in ("b1", "b2"):
    _check(config, f"{opt}.{field}", lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1)")
  data = "data"
  for field in ("image_size", "num_threads", "prefetch", "num_train", "num_val", "num_test", "max_len"):
    _check(config, f"{data}.{field}", _positive_int, "must be a positive integer")
  if "data" in config and "prepare_size" in config.data and "image_size" in config.data:
    source = str(config.data.get("source", ""))
    if not source.startswith("shapes"):
      _check(config, f"{data}.prepare_size", lambda v: _positive_int(v) and v >= config.data.image_size,
             f"must be an integer >= config.data.image_size ({config.data.image_size}): images are stored with "
             "this shorter side and cropped to image_size")
