"""The items of S2's relation layer (seed 002: "entities and relationships are aligned"): ordered pairs of regions
on the image side, phrases of adjacent words on the text side. Pure index / mask functions.

Our reading of the seed's "relationships" (the patent summary defines no construction): a relation is an ordered
pair of distinct regions (r, s) among the K most salient valid regions (all of them when there are at most K),
described by both regions' features and their relative geometry; its textual counterpart is a phrase of two
adjacent words (t, t + 1) of the Bi-GRU's contextual word features ("red circle", "left of", "of a"). The relation
layer aligns the two sets with the same cross attention as the entity layer (systems/region_word/region_word_similarity.py).
"""
from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def ordered_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) int32 [k (k - 1)]: every ordered pair of distinct indices in 0..k-1, row-major by first."""
  first, second = np.nonzero(~np.eye(k, dtype=bool))
  return first.astype(np.int32), second.astype(np.int32)


def select_regions(mask: jnp.ndarray, k: int, weights: jnp.ndarray | None = None) -> jnp.ndarray:
  """Region mask [B, R] (+ weights [B, R]) -> int32 [B, k] indices of the k highest-weighted valid regions (the
  first k valid ones, in order, without weights); when fewer than k are valid the rest are invalid ones (masked
  by the caller through the gathered mask). k <= R."""
  r = mask.shape[-1]
  order = -jnp.arange(r, dtype=jnp.float32) / r  # earlier first on ties (and without weights)
  key = order if weights is None else weights.astype(jnp.float32) + 1e-6 * order
  key = jnp.where(mask, key, -jnp.inf)
  return jax.lax.top_k(key, k)[1].astype(jnp.int32)


def region_pairs(mask: jnp.ndarray, k: int, weights: jnp.ndarray | None = None
                 ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Region mask [B, R] -> (first [B, P], second [B, P] region indices, pair mask bool [B, P]) with
  P = k' (k' - 1), k' = min(k, R): ordered pairs among the selected regions, valid when both regions are."""
  k = min(k, mask.shape[-1])
  chosen = select_regions(mask, k, weights)                      # [B, k]
  a, b = ordered_pairs(k)
  first, second = chosen[:, a], chosen[:, b]
  valid = jnp.take_along_axis(mask, first, axis=1) & jnp.take_along_axis(mask, second, axis=1)
  return first, second, valid


def relative_geometry(geometry: jnp.ndarray, first: jnp.ndarray, second: jnp.ndarray) -> jnp.ndarray:
  """Box geometry [B, R, 7] (regions.box_geometry: x1, y1, x2, y2, w, h, area in [0, 1]) and pair indices [B, P]
  -> [B, P, 4]: the second box's centre minus the first's (dx, dy) and log size ratios (w, h)."""
  def gather(idx):
    return jnp.take_along_axis(geometry, idx[..., None], axis=1)
  g1, g2 = gather(first), gather(second)
  centre1, centre2 = (g1[..., :2] + g1[..., 2:4]) / 2, (g2[..., :2] + g2[..., 2:4]) / 2
  ratio = jnp.log(jnp.maximum(g2[..., 4:6], 1e-3) / jnp.maximum(g1[..., 4:6], 1e-3))
  return jnp.concatenate([centre2 - centre1, ratio], axis=-1)


def adjacent_phrases(mask: jnp.ndarray) -> jnp.ndarray:
  """Word mask [B, L] -> phrase mask [B, L - 1]: phrase t = words (t, t + 1), valid when both are."""
  return mask[:, :-1] & mask[:, 1:]
