"""optax optimiser built from `config.optimizer` (one place for every task), with parameter groups.

Parameter groups (`config.optimizer.groups`): pairs (regex, learning-rate multiplier), matched with `re.fullmatch`
against each parameter's path ("image_backbone/stage0_block0/conv1/kernel"; `xmodal train` logs the table of
paths at start); the first match wins. Multiplier 0 freezes the matched params (`optax.set_to_zero`: no
optimiser state, never changed, still checkpointed with the others); any other multiplier scales the learning
rate schedule of the group (and so, for adamw, its decoupled weight decay). Gradient clipping sees the global
norm of the trainable dense params. Tasks may add `sparse` groups: a table updated row-sparsely by its own
transformation (`train/sparse_rows.py`). All of it goes through `optax.multi_transform`.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from xmodal_jax import errors
from xmodal_jax.train import sparse_rows

SCHEDULES = ("constant", "cosine", "linear", "step")
OPTIMIZERS = ("adam", "adamw", "sgd")
DEFAULT, FROZEN = "default", "frozen"


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then `schedule`: constant, cosine or linear decay to 0, or "step":
  multiplied by `step_factor` at each step of `step_boundaries` (VSE++'s 2e-4 -> 2e-5 after 15 epochs)."""
  if cfg.schedule not in SCHEDULES:
    raise errors.ConfigError(f"config.optimizer.schedule={cfg.schedule!r}; choose one of {SCHEDULES}.")
  warmup = min(int(cfg.warmup_steps), max(num_steps - 1, 0))
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  elif cfg.schedule == "step":
    boundaries = [int(b) for b in cfg.get("step_boundaries", ())]
    if not boundaries or sorted(boundaries) != boundaries or boundaries[0] <= 0:
      raise errors.ConfigError(f"config.optimizer.step_boundaries={tuple(boundaries)}: the step schedule needs "
                               "increasing positive steps, e.g. (3000,).")
    factor = float(cfg.get("step_factor", 0.1))
    # The boundaries count training steps (warm-up included); optax's piecewise schedule counts from its start.
    main = optax.piecewise_constant_schedule(cfg.learning_rate, {max(b - warmup, 1): factor for b in boundaries})
  else:
    main = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), main], [warmup])


def _decay_mask(params):
  """Weight decay on matrices/kernels only (ndim >= 2), not on biases or norm scales."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def _base(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  if cfg.name == "adam":
    return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
  if cfg.name == "adamw":
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask)
  return optax.sgd(schedule, momentum=cfg.momentum or None)


def _groups(cfg: ml_collections.ConfigDict) -> list[tuple[re.Pattern, float, int]]:
  out = []
  for entry in tuple(cfg.get("groups", ()) or ()):
    if len(entry) not in (2, 3):
      raise errors.ConfigError(f"config.optimizer.groups entry {entry!r}: use (regex, learning-rate multiplier) or "
                               "(regex, multiplier, first step), e.g. ('image_tower/.*', 0.1, 2000); multiplier 0 "
                               "freezes.")
    pattern, multiplier = entry[:2]
    start = int(entry[2]) if len(entry) == 3 else 0
    try:
      compiled = re.compile(str(pattern))
    except re.error as e:
      raise errors.ConfigError(f"config.optimizer.groups: {pattern!r} is not a regular expression ({e}).") from None
    if float(multiplier) < 0 or start < 0:
      raise errors.ConfigError(f"config.optimizer.groups: multiplier {multiplier} and first step {start} for "
                               f"{pattern!r} must be >= 0.")
    out.append((compiled, float(multiplier), start))
  return out


def param_labels(patterns: list[tuple[re.Pattern, str]], default: str = DEFAULT) -> Callable[[Any], Any]:
  """fn(params or updates) -> same-structure tree of group names: the label of the first pattern that
  fullmatches the leaf's "a/b/c" path, else `default`. Row-sparse gradients count as one leaf."""

  def labels(tree: Any) -> Any:
    flat = traverse_util.flatten_dict(tree, keep_empty_nodes=True, sep="/")
    out = {}
    for path, leaf in flat.items():
      if leaf is traverse_util.empty_node:
        out[path] = leaf
        continue
      out[path] = next((label for pattern, label in patterns if pattern.fullmatch(path)), default)
    return traverse_util.unflatten_dict(out, sep="/")

  return labels


def _check_all_match(patterns: list[tuple[re.Pattern, str]], params: Any) -> None:
  paths = [p for p, leaf in traverse_util.flatten_dict(params, sep="/").items()]
  for pattern, label in patterns:
    if not any(pattern.fullmatch(p) for p in paths):
      raise errors.ConfigError(f"config.optimizer.groups: {pattern.pattern!r} matches no parameter (group {label}); "
                       f"parameter paths look like {paths[:4]} (all {len(paths)} are logged at start).")


def create_optimizer(cfg: ml_collections.ConfigDict, num_steps: int, *,
                     sparse: dict[str, optax.GradientTransformation] | None = None) -> optax.GradientTransformation:
  """config.optimizer: name (adam|adamw|sgd), learning_rate, schedule, warmup_steps, weight_decay,
  grad_clip_norm (0 = off), b1, b2, momentum (sgd), groups ((regex, lr multiplier), ...).

  sparse: {path regex: transformation} for tables whose gradients are `sparse_rows.RowSparseGrad`s (the
  task's step makes them); they bypass clipping and the dense optimiser.
  """
  if cfg.name not in OPTIMIZERS:
    raise errors.ConfigError(f"config.optimizer.name={cfg.name!r}; choose one of {OPTIMIZERS}.")
  schedule = learning_rate_schedule(cfg, num_steps)
  groups, sparse = _groups(cfg), dict(sparse or {})
  clip = optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm and cfg.grad_clip_norm > 0 else None
  if not groups and not sparse:  # the plain optimiser, exactly as without groups
    opt = _base(cfg, schedule)
    return optax.chain(clip, opt) if clip else opt

  transforms: dict[str, optax.GradientTransformation] = {DEFAULT: _base(cfg, schedule), FROZEN: optax.set_to_zero()}
  patterns: list[tuple[re.Pattern, str]] = []
  for i, (pattern, transform) in enumerate(sparse.items()):
    transforms[f"sparse{i}"] = transform
    patterns.append((re.compile(pattern), f"sparse{i}"))
  for i, (pattern, multiplier, start) in enumerate(groups):
    if multiplier == 0:
      patterns.append((pattern, FROZEN))
      continue
    # A group with a first step trains from that step on (e.g. the tower after a phase of heads only).
    scaled = (lambda step, m=multiplier, s=start: jnp.where(step >= s, m * schedule(step), 0.0)) if start else (
        lambda step, m=multiplier: m * schedule(step))
    transforms[f"lr{i}"] = _base(cfg, scaled)
    patterns.append((pattern, f"lr{i}"))
  labels = param_labels(patterns)
  partitioned = optax.multi_transform(transforms, labels)

  def init(params):
    _check_all_match([(p, l) for p, l in patterns if not l.startswith("sparse")], params)
    return partitioned.init(params)

  tx = optax.GradientTransformation(init, partitioned.update)
  if clip is None:
    return tx
  trainable_dense = lambda tree: jax.tree.map(lambda label: label not in (FROZEN,) and not label.startswith("sparse"),
                                              labels(tree))
  return optax.chain(optax.masked(clip, trainable_dense), tx)


def gradient_norm(grads: Any) -> jax.Array:
  """Global L2 norm of a gradient tree (row-sparse leaves contribute their values)."""
  return optax.tree.norm(sparse_rows.dense_values(grads))
