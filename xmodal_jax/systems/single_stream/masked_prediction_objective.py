"""Losses of masked prediction (S4's masked text units and masked objects; BERT's MLM, UNITER's MRC / MRFR).

Targets hold IGNORE (-1) where nothing was masked: only masked positions count, and a batch without any masked
position has loss 0 (the mean over max(count, 1)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE = -1


def masked_cross_entropy(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """logits [..., C], int targets [...] (IGNORE = not masked) -> (mean CE over masked positions,
  {"accuracy": argmax == target over them, "count": their number})."""
  valid = targets != IGNORE
  safe = jnp.where(valid, targets, 0)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
  count = jnp.sum(valid)
  denom = jnp.maximum(count, 1)
  correct = (jnp.argmax(logits, -1) == safe) & valid
  return jnp.sum(ce * valid) / denom, {"accuracy": jnp.sum(correct) / denom, "count": count.astype(jnp.float32)}


def masked_regression(predictions: jax.Array, targets: jax.Array, masked: jax.Array) -> jax.Array:
  """predictions / targets [..., F], masked bool [...] -> the mean over masked positions of the squared L2 error
  per feature ((1/F) ||p - t||^2; UNITER's masked region feature regression)."""
  err = jnp.mean(jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32)), -1)
  return jnp.sum(err * masked) / jnp.maximum(jnp.sum(masked), 1)
