"""Image preprocessing: host-side crops/flips (numpy, per example) and device-side normalisation (jnp)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def normalize_images(images: jnp.ndarray, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 [batch, H, W, 3] in [0, 255] -> `dtype` in [-1, 1]. Images travel to devices as uint8 (4x less)."""
  return (images.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] with min(H, W) >= size -> the central [size, size, 3] (identity when already that size)."""
  h, w = image.shape[:2]
  if min(h, w) < size:
    raise ValueError(f"Image of {h}x{w} is smaller than the crop size {size}; prepare the data with "
                     f"--image_size >= {size} (config.data.prepare_size).")
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


def random_crop_flip(image: np.ndarray, size: int, key: int, flip: bool) -> np.ndarray:
  """Training crop: a [size, size] window at a position drawn from `key` (uint32), mirrored if `flip` and the
  key's draw says so. Deterministic in the key, so a resumed run crops exactly as the first run did."""
  h, w = image.shape[:2]
  if min(h, w) < size:
    raise ValueError(f"Image of {h}x{w} is smaller than the crop size {size}; prepare the data with "
                     f"--image_size >= {size} (config.data.prepare_size).")
  rng = np.random.default_rng(int(key))
  top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
  out = image[top:top + size, left:left + size]
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return out
