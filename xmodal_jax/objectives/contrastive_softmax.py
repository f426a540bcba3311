"""Symmetric InfoNCE (softmax contrastive) loss over in-batch negatives, with duplicate-aware masking.

`symmetric_infonce` takes a fixed temperature and separate ids per side; `infonce_loss` is CLIP's form with a
learned log inverse temperature and image ids, the signature shared with `contrastive_sigmoid.sigmoid_loss` and
the chunked forms in `objectives/ring_contrastive.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_MASKED = -1e9
MASKED_LOGIT = _MASKED  # fill of masked-out logits (finite, so neither value nor gradient turns NaN)


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


def false_negative_mask(image_ids: jax.Array, text_ids: jax.Array, image_index: jax.Array,
                        text_index: jax.Array) -> jax.Array:
  """[rows] image and [cols] text ids and global batch indices -> [rows, cols] bool, True where the pair is off
  the diagonal but shares the positive's image (a false negative: masked out of both softmaxes)."""
  return (image_ids[:, None] == text_ids[None, :]) & (image_index[:, None] != text_index[None, :])


def scaled_logits(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array) -> jax.Array:
  """[rows, D], [cols, D] embeddings and scalar exp(logit_scale) -> float32 [rows, cols] logits."""
  return scale * jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32), text_emb.astype(jnp.float32),
                            precision=jax.lax.Precision.HIGHEST)


def infonce_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                 image_ids: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP's symmetric InfoNCE (Radford et al. 2021; van den Oord et al. 2018) with a learned log scale.

    z = exp(logit_scale) x y^T,   loss = 1/2 [ mean_i (lse_j z_ij - z_ii) + mean_j (lse_i z_ij - z_jj) ]

  With `image_ids`, an off-diagonal (i, j) with image_ids[i] == image_ids[j] is a false negative and is left out
  of both log-sum-exps. Same loss as `symmetric_infonce(x, y, exp(-logit_scale), image_ids, image_ids)`, in the
  signature of `sigmoid_loss` and of the ring forms (`objectives/ring_contrastive.py`).

  Args:
    image_emb: `[B, D]` image embeddings (L2-normalised by the caller), any float dtype.
    text_emb: `[B, D]` text embeddings; row i pairs with image i.
    logit_scale: scalar log inverse temperature (CLIP init log(1/0.07)); clamp it in the caller.
    image_ids: optional `[B]` integer image ids.

  Returns:
    `(loss, metrics)`: float32 scalar loss and {"i2t_loss", "t2i_loss", "pos_logit" (mean z_ii),
    "pair_accuracy" (fraction of images whose own text beats every negative)}.
  """
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(f"infonce_loss expects paired [batch, dim] embeddings of the same shape, got image_emb "
                     f"{image_emb.shape} and text_emb {text_emb.shape}.")
  batch = image_emb.shape[0]
  if image_ids is not None and jnp.shape(image_ids) != (batch,):
    raise ValueError(f"infonce_loss: image_ids must have shape [batch] = ({batch},), got {jnp.shape(image_ids)}.")
  index = jnp.arange(batch)
  ids = index if image_ids is None else jnp.asarray(image_ids)
  logits = scaled_logits(image_emb, text_emb, jnp.exp(jnp.asarray(logit_scale, jnp.float32)))
  excluded = false_negative_mask(ids, ids, index, index)
  masked = jnp.where(excluded, _MASKED, logits)
  pos = jnp.diagonal(logits)
  i2t = jnp.mean(jax.nn.logsumexp(masked, axis=1) - pos)
  t2i = jnp.mean(jax.nn.logsumexp(masked, axis=0) - pos)
  z = jax.lax.stop_gradient(logits)
  hardest = jnp.max(jnp.where(excluded | jnp.eye(batch, dtype=bool), _MASKED, z), axis=1)
  metrics = {"i2t_loss": i2t, "t2i_loss": t2i, "pos_logit": jnp.mean(jnp.diagonal(z)),
             "pair_accuracy": jnp.mean((jnp.diagonal(z) > hardest).astype(jnp.float32))}
  return 0.5 * (i2t + t2i), metrics
