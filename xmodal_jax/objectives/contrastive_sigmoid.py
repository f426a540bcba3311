"""SigLIP pairwise sigmoid loss over the global batch (Zhai et al., "Sigmoid Loss for Language Image
Pre-Training", ICCV 2023, eq. 1).

  z_ij = exp(t') <x_i, y_j> + b
  loss = -(1/B) sum_i sum_j log sigmoid(label_ij z_ij),   label_ij = +1 for a positive pair, -1 otherwise

with x the image and y the text embeddings, t' the log temperature and b the bias. Positives are the
diagonal and, with `image_ids`, every (i, j) whose image ids agree: two captions of one image in the batch
are both positives of that image (SigLIP's loss is per pair, so nothing has to be masked out).

Everything is plain `jnp` on the full `[B, D]` arrays (global-batch semantics); under `jax.jit` with
batch-sharded inputs XLA inserts the collectives. `objectives/ring_contrastive.py` has the chunked form,
which never holds more than a `[B/n, B/n]` block of logits per device.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Keys of `sigmoid_block_terms`: sums over a block of pairs, added up over blocks.
BLOCK_TERMS = ("nll", "pos_sum", "pos_count", "neg_sum", "neg_count")


def pair_labels(image_ids: jax.Array, text_ids: jax.Array, image_index: jax.Array,
                text_index: jax.Array) -> jax.Array:
  """+1 / -1 labels of a block of pairs: [rows] image and [cols] text ids and global indices -> [rows, cols].

  A pair is positive on the diagonal (same global index) or when the two image ids agree.
  """
  positive = (image_index[:, None] == text_index[None, :]) | (image_ids[:, None] == text_ids[None, :])
  return jnp.where(positive, 1.0, -1.0).astype(jnp.float32)


def sigmoid_block_terms(image_emb: jax.Array, text_emb: jax.Array, scale: jax.Array, logit_bias: jax.Array,
                        labels: jax.Array) -> dict[str, jax.Array]:
  """Sums over one block of pairs (eq. 1 before the 1/B), float32.

  Args:
    image_emb: `[rows, D]` image embeddings.
    text_emb: `[cols, D]` text embeddings.
    scale: scalar exp(t').
    logit_bias: scalar b.
    labels: `[rows, cols]` +1 / -1 pair labels.

  Returns:
    Scalars: "nll" (sum of -log sigmoid(label z)), "pos_sum" / "pos_count" and "neg_sum" / "neg_count"
    (sum and number of the positive and negative logits; not differentiated).
  """
  sim = jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32), text_emb.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  logits = scale * sim + logit_bias
  nll = -jnp.sum(jax.nn.log_sigmoid(labels * logits))
  z, pos = jax.lax.stop_gradient(logits), labels > 0
  return {"nll": nll, "pos_sum": jnp.sum(jnp.where(pos, z, 0.0)), "pos_count": jnp.sum(pos.astype(jnp.float32)),
          "neg_sum": jnp.sum(jnp.where(pos, 0.0, z)), "neg_count": jnp.sum((~pos).astype(jnp.float32))}


def sigmoid_metrics(terms: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Block sums (over the whole batch) -> {"pos_logit", "neg_logit"}: mean logit of the positive / negative pairs
  (0 when there are none)."""
  return {"pos_logit": terms["pos_sum"] / jnp.maximum(terms["pos_count"], 1.0),
          "neg_logit": terms["neg_sum"] / jnp.maximum(terms["neg_count"], 1.0)}


def check_pairs(image_emb: jax.Array, text_emb: jax.Array, image_ids: jax.Array | None, name: str) -> None:
  """Raises ValueError unless image_emb / text_emb are paired `[B, D]` arrays and image_ids is None or `[B]`."""
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(f"{name} expects paired [batch, dim] embeddings of the same shape, got image_emb "
                     f"{image_emb.shape} and text_emb {text_emb.shape}.")
  if image_ids is not None and jnp.shape(image_ids) != (image_emb.shape[0],):
    raise ValueError(f"{name}: image_ids must have shape [batch] = ({image_emb.shape[0]},), "
                     f"got {jnp.shape(image_ids)}.")


def sigmoid_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array,
                 image_ids: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SigLIP loss (eq. 1), mean over the B images of the sum over all B texts.

  Args:
    image_emb: `[B, D]` image embeddings (L2-normalised by the caller), any float dtype.
    text_emb: `[B, D]` text embeddings; row i pairs with image i.
    logit_scale: scalar t', the log of the temperature (SigLIP init log 10); clamp it in the caller.
    logit_bias: scalar b (SigLIP init -10).
    image_ids: optional `[B]` integer image ids; pairs of equal ids are positives too.

  Returns:
    `(loss, metrics)`: float32 scalar loss and {"pos_logit", "neg_logit"} (mean logit of the positive /
    negative pairs).
  """
  check_pairs(image_emb, text_emb, image_ids, "sigmoid_loss")
  batch = image_emb.shape[0]
  index = jnp.arange(batch)
  ids = index if image_ids is None else jnp.asarray(image_ids)
  scale = jnp.exp(jnp.asarray(logit_scale, jnp.float32))
  terms = sigmoid_block_terms(image_emb, text_emb, scale, jnp.asarray(logit_bias, jnp.float32),
                              pair_labels(ids, ids, index, index))
  return terms["nll"] / batch, sigmoid_metrics(terms)
