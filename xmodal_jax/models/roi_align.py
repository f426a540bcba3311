"""ROI-Align (He et al., 2017, Mask R-CNN) on a feature map, by vectorised gathers: jit-, vmap- and grad-safe.

Boxes are (x1, y1, x2, y2) in image pixels (pixel-edge coordinates, see `xmodal_jax/data/regions.py`). A box is
mapped to feature-map coordinates by the scale (h / H, w / W) with the half-pixel ("aligned") convention:
feature coordinate = image coordinate * scale - 0.5, so feature cell centres sit at integers. Each output bin
averages sampling_ratio^2 bilinear samples at regularly spaced points of the bin. Sample coordinates are clamped
to the feature map (border values repeat outside it), and boxes thinner than one image pixel are widened about
their centre to one pixel.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from xmodal_jax.data import regions


def _sample_coords(lo: jnp.ndarray, hi: jnp.ndarray, scale: float, bins: int, sampling_ratio: int,
                   size: int) -> jnp.ndarray:
  """Box sides lo, hi [B, R] (image pixels, one axis) -> sample coordinates [B, R, bins, sampling_ratio] on a
  feature axis of `size` cells, clamped to [0, size - 1]."""
  extent = jnp.maximum(hi - lo, 1.0)
  start = ((lo + hi - extent) / 2) * scale - 0.5
  bin_size = extent * scale / bins
  offsets = jnp.arange(bins)[:, None] + (jnp.arange(sampling_ratio)[None, :] + 0.5) / sampling_ratio
  coords = start[..., None, None] + offsets * bin_size[..., None, None]
  return jnp.clip(coords, 0.0, size - 1)


def _linear_taps(coords: jnp.ndarray, size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Coordinates [...] in [0, size - 1] -> the two neighbouring cells int32 [..., 2] and their weights [..., 2]."""
  low = jnp.minimum(jnp.floor(coords), size - 1)
  frac = coords - low
  cells = jnp.stack([low, jnp.minimum(low + 1, size - 1)], axis=-1).astype(jnp.int32)
  return cells, jnp.stack([1.0 - frac, frac], axis=-1)


def roi_align(feature_map: jnp.ndarray, boxes: jnp.ndarray, image_size: tuple[int, int],
              output_size: int | Sequence[int] = (1, 1), sampling_ratio: int = 2) -> jnp.ndarray:
  """feature_map [batch, h, w, C], boxes [batch, regions, 4] -> [batch, regions, out_h, out_w, C].

  image_size (H, W) is the size of the image the boxes refer to; output_size is (out_h, out_w) bins (an int
  for square). Memory: the gather holds batch * regions * out_h * out_w * 4 sampling_ratio^2 * C values.
  """
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
  if min(out_h, out_w) < 1 or sampling_ratio < 1:
    raise ValueError(f"roi_align needs output_size >= 1 and sampling_ratio >= 1, got {output_size}, "
                     f"{sampling_ratio}.")
  if feature_map.ndim != 4 or boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != feature_map.shape[0]:
    raise ValueError(f"roi_align needs feature_map [B, h, w, C] and boxes [B, R, 4], got {feature_map.shape} "
                     f"and {boxes.shape}.")
  batch, height, width, channels = feature_map.shape
  image_height, image_width = image_size
  x1, y1, x2, y2 = jnp.moveaxis(boxes.astype(jnp.float32), -1, 0)
  ys = _sample_coords(y1, y2, height / image_height, out_h, sampling_ratio, height)  # [B, R, out_h, S]
  xs = _sample_coords(x1, x2, width / image_width, out_w, sampling_ratio, width)  # [B, R, out_w, S]
  rows, row_weights = _linear_taps(ys, height)  # [B, R, out_h, S, 2]
  cols, col_weights = _linear_taps(xs, width)  # [B, R, out_w, S, 2]
  # Flat cell index of every (row tap, column tap) pair: [B, R, out_h, S, 2, out_w, S, 2].
  index = rows[..., None, None, None] * width + cols[:, :, None, None, None]
  values = feature_map.reshape(batch, height * width, channels)[
      jnp.arange(batch)[:, None], index.reshape(batch, -1)]
  values = values.reshape(*index.shape, channels)
  pooled = jnp.einsum("nrpia,nrqjt,nrpiaqjtc->nrpqc", row_weights, col_weights, values,
                      precision=jax.lax.Precision.HIGHEST)
  return (pooled / sampling_ratio**2).astype(feature_map.dtype)


def pooled_region_features(feature_map: jnp.ndarray, boxes: jnp.ndarray, image_size: tuple[int, int],
                           sampling_ratio: int = 2) -> jnp.ndarray:
  """[batch, regions, C]: the mean of each box's sampling_ratio^2 ROI-Align samples (one bin)."""
  return roi_align(feature_map, boxes, image_size, (1, 1), sampling_ratio)[:, :, 0, 0]


def region_inputs(feature_map: jnp.ndarray, boxes: jnp.ndarray, image_size: tuple[int, int],
                  sampling_ratio: int = 2) -> jnp.ndarray:
  """[batch, regions, C + 7]: pooled features next to the normalised box geometry (regions.box_geometry)."""
  features = pooled_region_features(feature_map, boxes, image_size, sampling_ratio)
  geometry = regions.box_geometry(boxes, *image_size, xp=jnp)
  return jnp.concatenate([features, geometry.astype(features.dtype)], axis=-1)
