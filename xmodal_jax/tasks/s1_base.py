"""What S1's stages share: the query vocabulary (from the train split), per-split query/label annotations
and the image backbone."""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from xmodal_jax.data import query_annotations
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.tasks.base import Task


class S1TaskBase(Task):
  """Base of the S1 stages that read images and/or queries (not the fusion stage, which reads features)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self.queries = query_annotations.query_vocabulary(config.data, self.split("train"))
    self._annotations: dict[str, query_annotations.QueryAnnotations] = {}

  def annotations(self, name: str) -> query_annotations.QueryAnnotations:
    if name not in self._annotations:
      self._annotations[name] = query_annotations.annotate(self.config.data, self.split(name), self.queries)
    return self._annotations[name]

  def backbone(self) -> ResNetEncoder:
    return ResNetEncoder(**self.config.model.image, dtype=jnp.dtype(self.config.model.dtype))

  def init_params(self, rng):
    return self.model.init(rng, self.dummy_images())["params"]

  def dummy_images(self) -> jnp.ndarray:
    size = self.config.data.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32)
