"""Checks of config values before any array is made: each error names the field, its value and the rule.

`check_values` walks every numeric field of every section (model, data, evals, cache, loss, optimizer, ... and
a pipeline's stages) and applies the rule its name implies (`_RULES`: sizes, counts and batch sizes positive;
`every`, seeds, optional caps >= 0; rates and fractions in [0, 1]; temperatures and learning rates > 0;
weights and margins >= 0); every number must be finite. `validate` adds the rules of a training run (the global
batch against the mesh, the optimiser's names). Tasks and evaluators still check their own combinations when
they are built.
"""
from __future__ import annotations

import math
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


def _finite(v) -> bool:
  return _number(v) and math.isfinite(v)


_POSITIVE_INT = (_positive_int, "must be a positive integer")
_NON_NEGATIVE_INT = (_non_negative_int, "must be an integer >= 0")
_POSITIVE = (lambda v: _finite(v) and v > 0, "must be a finite number > 0")
_NON_NEGATIVE = (lambda v: _finite(v) and v >= 0, "must be a finite number >= 0")
_UNIT = (lambda v: _finite(v) and 0 <= v <= 1, "must be a number in [0, 1]")
_UNIT_OPEN = (lambda v: _finite(v) and 0 <= v < 1, "must be a number in [0, 1)")
_POSITIVE_UNIT = (lambda v: _finite(v) and 0 < v <= 1, "must be a number in (0, 1]")

# The rule of a numeric field, by its name (the last part of its dotted path). Names not here must be finite.
_RULES = {
    **dict.fromkeys((
        "batch_size", "pair_batch_size", "cache_batch_size", "width", "depth", "num_heads", "heads", "embed_dim",
        "dim", "hidden_dim", "modal_dim", "semantic_dim", "specific_dim", "word_dim", "text_hidden", "bottleneck_dim",
        "base_width", "stem_width", "stem_stride", "norm_groups", "patch_size", "image_size",
        "prepare_size", "num_layers", "max_len", "num_threads", "prefetch", "num_train", "num_val",
        "num_test", "count", "grid_columns", "beam_size", "train_views", "max_span", "samples", "num_samples",
        "grad_accum_steps", "top_n", "chunk", "per_label", "negatives_per_positive", "max_ngrams",
        "roi_bins", "query_max_n", "query_min_images", "label_min_votes", "vocab_min_count",
        "min_count", "num_steps", "log_every", "checkpoint_every", "max_to_keep"), _POSITIVE_INT),
    **dict.fromkeys((
        "every", "seed", "eval_seed", "relation_dim", "relation_regions", "folds",
        "view_seed", "jitter_seed", "mlp_dim", "vocab_size", "max_regions", "top_k", "input_size",
        "fold_size", "max_images", "max_items", "rerank_k", "max_tags", "labelled_images", "query_max_count",
        "warmup_steps", "max_violation_warmup_steps", "profile_steps"), _NON_NEGATIVE_INT),
    **dict.fromkeys(("dropout_rate",), _UNIT_OPEN),
    **dict.fromkeys(("b1", "b2", "momentum"), _UNIT_OPEN),
    **dict.fromkeys(("aligned_fraction", "suffix_fraction", "max_bad_fraction", "grammar_threshold",
                     "eval_jitter"), _UNIT),
    **dict.fromkeys(("text_ratio", "query_max_fraction", "top_p"), _POSITIVE_UNIT),
    **dict.fromkeys(("temperature", "hard_temperature", "attention_temperature", "lse_temperature", "learning_rate",
                     "query_learning_rate", "scale", "layer_norm_eps", "step_factor"), _POSITIVE),
    **dict.fromkeys(("weight", "margin", "weight_decay", "grad_clip_norm", "alpha", "consistency_weight",
                     "reward_weight", "grammar_weight"), _NON_NEGATIVE),
}
_WEIGHT_SECTIONS = ("loss_weights", "weights")  # every field of these sections is a weight >= 0


def _rule(path: tuple[str, ...]):
  name = path[-1]
  if name in _RULES:
    return _RULES[name]
  if len(path) > 1 and path[-2] in _WEIGHT_SECTIONS or name.endswith("_weight"):
    return _NON_NEGATIVE
  return (_finite, "must be a finite number")


def check_values(config: ml_collections.ConfigDict) -> None:
  """Every numeric field of every section against the rule its name implies (module docstring)."""

  def visit(node, path: tuple[str, ...]) -> None:
    if isinstance(node, (ml_collections.ConfigDict, dict)):
      for key in node.keys():
        visit(node[key], path + (str(key),))
    elif _number(node):
      ok, rule = _rule(path)
      if not ok(node):
        raise errors.ConfigError(f"config.{'.'.join(path)}={node!r}: {rule}.")

  visit(config, ())


def validate(config: ml_collections.ConfigDict, *, data_parallel: int = 1, process_count: int = 1) -> None:
  """Every rule for the sections a training run has; `data_parallel` is the mesh's `data` size."""
  check_values(config)
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
