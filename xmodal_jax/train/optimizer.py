"""optax optimiser built from `config.optimizer` (one place for every task)."""
from __future__ import annotations

import jax
import ml_collections
import optax

_SCHEDULES = ("constant", "cosine", "linear")
_OPTIMIZERS = ("adam", "adamw", "sgd")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then `schedule` (constant / cosine / linear decay to 0)."""
  if cfg.schedule not in _SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={cfg.schedule!r}; choose one of {_SCHEDULES}.")
  warmup = min(int(cfg.warmup_steps), max(num_steps - 1, 0))
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  else:
    main = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), main], [warmup])


def _decay_mask(params):
  """Weight decay on matrices/kernels only (ndim >= 2), not on biases or norm scales."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def create_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """config.optimizer: name (adam|adamw|sgd), learning_rate, schedule, warmup_steps, weight_decay,
  grad_clip_norm (0 = off), b1, b2, momentum (sgd)."""
  if cfg.name not in _OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={cfg.name!r}; choose one of {_OPTIMIZERS}.")
  schedule = learning_rate_schedule(cfg, num_steps)
  if cfg.name == "adam":
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
  elif cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=_decay_mask)
  else:
    opt = optax.sgd(schedule, momentum=cfg.momentum or None)
  if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
  return opt
