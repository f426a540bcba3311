"""Symmetric InfoNCE (softmax contrastive) loss over in-batch negatives, with duplicate-aware masking."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_MASKED = -1e9


def symmetric_infonce(a: jax.Array, b: jax.Array, temperature: float, a_ids: jax.Array | None = None,
                      b_ids: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """a, b [batch, dim] unit vectors, row i of a paired with row i of b.

  loss = 1/2 [CE(a_i -> b, i) + CE(b_i -> a, i)] with logits a.b^T / temperature (van den Oord et al. 2018).
  With ids, an off-diagonal entry whose item is the same as the positive's (b_ids[j] == b_ids[i], or a_ids
  for the other direction) is a false negative and is masked out. Returns (mean loss, {"pair_accuracy"}).
  """
  logits = jnp.einsum("id,jd->ij", a.astype(jnp.float32), b.astype(jnp.float32)) / temperature
  eye = jnp.eye(a.shape[0], dtype=bool)
  logits_ab, logits_ba = logits, logits.T
  if b_ids is not None:
    logits_ab = jnp.where((b_ids[None, :] == b_ids[:, None]) & ~eye, _MASKED, logits_ab)
  if a_ids is not None:
    logits_ba = jnp.where((a_ids[None, :] == a_ids[:, None]) & ~eye, _MASKED, logits_ba)
  labels = jnp.arange(a.shape[0])
  loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits_ab, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits_ba, labels).mean())
  accuracy = jnp.mean((jnp.argmax(logits_ab, axis=1) == labels).astype(jnp.float32))
  return loss, {"pair_accuracy": accuracy}
