"""Data sources named by one spec string in configs (`config.data.source`), resolved here only.

Every source yields `CaptionedImages`: images, captions (several per image) and image ids, per split.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from xmodal_jax.data import shapes_world

SOURCE_KINDS = ("shapes",)


@dataclasses.dataclass(frozen=True)
class CaptionedImages:
  """images uint8 [N, H, W, 3]; captions: N lists of strings; image_ids int64 [N]; `extras` per source."""
  images: np.ndarray
  captions: list[list[str]]
  image_ids: np.ndarray
  extras: object = None

  def __len__(self) -> int:
    return len(self.images)


def load_split(data_config: ml_collections.ConfigDict, split: str) -> CaptionedImages:
  """The `split` of the source named by `data_config.source`."""
  kind = str(data_config.source).split(":", 1)[0]
  if kind == "shapes":
    sizes = {"train": data_config.num_train, "val": data_config.num_val, "test": data_config.num_test}
    if split not in sizes:
      raise ValueError(f"Shapes world has splits {sorted(sizes)}, not {split!r}.")
    world = shapes_world.generate_split(split, sizes[split], seed=data_config.seed, image_size=data_config.image_size)
    return CaptionedImages(world.images, world.captions, world.image_ids, extras=world)
  raise ValueError(f"Unknown data source {data_config.source!r} (config.data.source); supported kinds: "
                   f"{SOURCE_KINDS}.")
