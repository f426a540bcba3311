"""A user's image file read as a run's data was (`xmodal caption` / `classify` image files, `xmodal export
--images=DIR`): `records.load_image` (upright by EXIF, 16-bit scaled, alpha over white, greyscale to RGB; a corrupt,
truncated or extreme file is a `records.BadInputError` naming it), the shorter side resized as the data was
(`resize_size`), then the centre crop at data.image_size, as evaluation takes it.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from xmodal_jax.data import prepared, preprocess, records


def resize_size(data_config: ml_collections.ConfigDict) -> int:
  """The shorter side an image is resized to before its centre crop: shapes world is generated at `image_size`;
  prepared data sets hold images at `prepare_size` (>= image_size)."""
  size = int(data_config.image_size)
  if str(data_config.source).startswith("shapes"):
    return size
  return max(size, int(data_config.get("prepare_size", size)))


def load_image_file(path: str, data_config: ml_collections.ConfigDict) -> np.ndarray:
  """One image file -> uint8 [size, size, 3] at data_config.image_size; errors name the file."""
  image = prepared.resize_shorter_side(records.load_image(path), resize_size(data_config))
  return preprocess.center_crop(image, int(data_config.image_size))
