"""What S1's stages share: the query vocabulary (from the train split), per-split query/label annotations,
the image backbone and cached evaluation crops."""
from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax.data import query_annotations
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.tasks.base import Task

QUERIES_FILE = "queries.json"


class S1TaskBase(Task):
  """Base of the S1 stages that read images and/or queries (not the fusion stage, which reads features)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self.queries = query_annotations.query_vocabulary(config.data, self.split("train"))
    self._annotations: dict[str, query_annotations.QueryAnnotations] = {}
    self._eval_images: dict[str, np.ndarray] = {}
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, QUERIES_FILE), "w") as f:
        json.dump(self.queries, f)

  def annotations(self, name: str) -> query_annotations.QueryAnnotations:
    if name not in self._annotations:
      self._annotations[name] = query_annotations.annotate(self.config.data, self.split(name), self.queries)
    return self._annotations[name]

  def backbone(self) -> ResNetEncoder:
    return ResNetEncoder(**self.config.model.image, dtype=jnp.dtype(self.config.model.dtype))

  def eval_images(self, name: str) -> np.ndarray:
    """uint8 [N, size, size, 3] centre crops of the whole split (decoded once)."""
    if name not in self._eval_images:
      data = self.split(name)
      self._eval_images[name] = data.load_images(np.arange(len(data)), self.config.data.image_size)
    return self._eval_images[name]

  def image_iterator(self, rows: np.ndarray, targets: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
                     *, process_index: int, process_count: int) -> EpochBatchIterator:
    """Training batches over the train images `rows`: random crops as "images", plus `targets(image indices,
    keys)` (e.g. labels, or queries drawn from the keys)."""
    cfg = self.config.data
    data = self.split("train")
    if len(rows) == 0:
      raise ValueError(f"No usable train image in {cfg.source} for config.task={self.config.task!r} (no labels or "
                       "queries); check the config.data query / taxonomy fields.")

    def load(indices, keys):
      images = rows[indices]
      return {"images": data.load_images(images, cfg.image_size, keys=keys, flip=cfg.flip), **targets(images, keys)}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count,
                              num_threads=cfg.num_threads, prefetch=cfg.prefetch)

  def init_params(self, rng):
    return self.model.init(rng, self.dummy_images())["params"]

  def dummy_images(self) -> jnp.ndarray:
    size = self.config.data.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32)
