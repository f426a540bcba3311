"""Cross-attention similarity between a set of image items (regions, region pairs) and a set of text items (words,
phrases): attend, compare, aggregate (Lee et al. 2018, SCAN, eqs. 1-4 and 8-10; an engineering reading of S2's
"entity alignment", seed 002 [0004]). Pure functions, no parameters.

For an image set x_1..x_R and a text set y_1..y_L (unit vectors, with validity masks) and cosines c_rl = x_r . y_l:

  text-to-image (words attend to regions):  b_lr = softmax_r(lambda_1 c_lr),  a_l = sum_r b_lr x_r,
                                            R_l = cos(y_l, a_l),              S_t2i = agg_l R_l
  image-to-text (regions attend to words):  a_rl = softmax_l(lambda_1 c_rl),  a_r = sum_l a_rl y_l,
                                            R_r = cos(x_r, a_r),              S_i2t = agg_r R_r

agg is "lse", (1 / lambda_2) log sum_q w_q exp(lambda_2 R_q) (SCAN's LogSumExp pooling, eq. 10), or "mean",
sum_q w_q R_q; the weights w_q are uniform over the valid queries, or given (S2's saliency weights over regions:
the salient regions count more in S_i2t). With weights summing to one, "lse" goes from the weighted mean
(lambda_2 -> 0) to the max (lambda_2 -> inf). Differences from SCAN, chosen here: the softmax is over raw cosines
(SCAN first clips and l2-normalises them over the other set), and both directions are averaged (SCAN trains
one direction per model and averages two models).

No [.., R, L, D] tensor is formed: cos(x_r, a_r) = (sum_l a_rl c_rl) / ||sum_l a_rl y_l|| and
||sum_l a_rl y_l||^2 = a_r^T G a_r with the text set's Gram matrix G = [y_l . y_m], so one image-text pair costs
O(R L (D + L + R)) and all B_i x B_t pairs of a batch share the per-item Gram matrices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

AGGREGATIONS = ("lse", "mean")
DIRECTIONS = ("t2i", "i2t")
_NEG = -1e9


def gram(items: jnp.ndarray) -> jnp.ndarray:
  """[..., N, D] -> [..., N, N] inner products."""
  return jnp.einsum("...nd,...md->...nm", items, items)


def cosines(image_items: jnp.ndarray, text_items: jnp.ndarray, *, all_pairs: bool) -> jnp.ndarray:
  """Unit image items [Bi, R, D] and text items [Bt, L, D] -> c [Bi, Bt, R, L] (all_pairs) or, for aligned pairs
  (Bi = Bt = P), [P, R, L]."""
  spec = "ird,tld->itrl" if all_pairs else "prd,pld->prl"
  return jnp.einsum(spec, image_items, text_items)


def _attended_cosines(c: jnp.ndarray, key_gram: jnp.ndarray, key_mask: jnp.ndarray, temperature: float,
                      gram_spec: str) -> jnp.ndarray:
  """c [..., Q, K] (queries x keys), the keys' Gram matrices and mask [..., K] -> R_q = cos(query q, attended keys).
  gram_spec: the einsum of weights [..., Q, K] with the Gram matrices, naming the batch axis they share (an
  explicit batch axis keeps XLA's dot a few large products instead of B x B tiny ones)."""
  weights = jax.nn.softmax(jnp.where(key_mask[..., None, :], temperature * c, _NEG), axis=-1)  # [..., Q, K]
  weights = weights * key_mask[..., None, :]
  numerator = jnp.sum(weights * c, axis=-1)                                                   # [..., Q]
  norm_sq = jnp.sum(weights * jnp.einsum(gram_spec, weights, key_gram), axis=-1)               # [..., Q]
  return numerator / jnp.sqrt(jnp.maximum(norm_sq, 1e-8))


def aggregate(scores: jnp.ndarray, mask: jnp.ndarray, *, how: str, lse_temperature: float,
              weights: jnp.ndarray | None = None) -> jnp.ndarray:
  """Per-query scores [..., Q] and their mask -> [...]; `weights` [..., Q] (>= 0; renormalised over the valid
  queries) or uniform. A set without a valid query scores 0."""
  if how not in AGGREGATIONS:
    raise ValueError(f"aggregate: how={how!r}; use one of {AGGREGATIONS}.")
  w = mask.astype(scores.dtype) if weights is None else weights * mask
  total = jnp.sum(w, axis=-1)
  w = w / jnp.maximum(total, 1e-9)[..., None]
  if how == "mean":
    out = jnp.sum(w * scores, axis=-1)
  else:
    logits = jnp.where(mask & (w > 0), lse_temperature * scores + jnp.log(jnp.maximum(w, 1e-30)), _NEG)
    out = jax.nn.logsumexp(logits, axis=-1) / lse_temperature
  return jnp.where(total > 0, out, 0.0)


def cross_attention_similarity(image_items: jnp.ndarray, image_mask: jnp.ndarray, text_items: jnp.ndarray,
                               text_mask: jnp.ndarray, *, all_pairs: bool, directions=DIRECTIONS,
                               attention_temperature: float = 9.0, aggregation: str = "lse",
                               lse_temperature: float = 6.0, image_weights: jnp.ndarray | None = None
                               ) -> dict[str, jnp.ndarray]:
  """The module docstring's S_t2i / S_i2t and their mean.

  Args:
    image_items: unit [Bi, R, D] (regions or region pairs); image_mask bool [Bi, R].
    text_items: unit [Bt, L, D] (words or phrases); text_mask bool [Bt, L].
    all_pairs: score every image with every text -> [Bi, Bt]; else aligned pairs (Bi = Bt = P) -> [P].
    directions: a subset of ("t2i", "i2t").
    attention_temperature: lambda_1. aggregation / lse_temperature: agg and lambda_2.
    image_weights: optional [Bi, R] weights of the image items in S_i2t (saliency).

  Returns:
    {"t2i": ..., "i2t": ... (those asked), "mean": their mean}, each [Bi, Bt] or [P].
  """
  unknown = [d for d in directions if d not in DIRECTIONS]
  if unknown or not directions:
    raise ValueError(f"cross_attention_similarity: directions={tuple(directions)}; use a non-empty subset of "
                     f"{DIRECTIONS}.")
  c = cosines(image_items, text_items, all_pairs=all_pairs)             # [.., R, L]
  image_gram, text_gram = gram(image_items), gram(text_items)           # [Bi, R, R], [Bt, L, L]
  if all_pairs:  # broadcast the per-item masks over the other side
    image_mask, text_mask = image_mask[:, None], text_mask[None]
    image_weights = None if image_weights is None else image_weights[:, None]
    image_spec, text_spec = "itqk,ikm->itqm", "itqk,tkm->itqm"
  else:
    image_spec = text_spec = "pqk,pkm->pqm"
  out = {}
  if "t2i" in directions:
    scores = _attended_cosines(jnp.swapaxes(c, -1, -2), image_gram, image_mask, attention_temperature, image_spec)
    mask = jnp.broadcast_to(text_mask, scores.shape)
    out["t2i"] = aggregate(scores, mask, how=aggregation, lse_temperature=lse_temperature)
  if "i2t" in directions:
    scores = _attended_cosines(c, text_gram, text_mask, attention_temperature, text_spec)
    mask = jnp.broadcast_to(image_mask, scores.shape)
    weights = None if image_weights is None else jnp.broadcast_to(image_weights, scores.shape)
    out["i2t"] = aggregate(scores, mask, how=aggregation, lse_temperature=lse_temperature, weights=weights)
  out["mean"] = sum(out[d] for d in directions) / len(directions)
  return out
