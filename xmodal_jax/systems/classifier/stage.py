"""What S1's image stages share: the query vocabulary (an asset: built from the train split on the first
training run, saved as WORKDIR/queries.json, read from there by inference), per-split query / label
annotations, and the image backbone."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax import errors, fileio
from xmodal_jax.models.resnet import ResNetEncoder
from xmodal_jax.systems.classifier import partition as partition_lib, query_annotations
from xmodal_jax.task_bases.base import ImageTextTask

QUERIES_FILE = "queries.json"
TRAIN_IMAGES_FILE = "train_images.npz"  # the record of which train images a stage trained on (image ids)


def load_or_build_queries(task: ImageTextTask, training: bool) -> list[str]:
  """The query phrases (id order) of the run in `task.workdir`."""
  path = os.path.join(task.workdir, QUERIES_FILE)
  if fileio.exists(path):
    with fileio.open(path) as f:
      return list(json.load(f)["queries"])
  if not training:
    raise errors.MissingError(f"{path} not found: the run in {task.workdir} did not finish setting up; train it "
                            "(`xmodal train` writes its query vocabulary there).")
  queries = query_annotations.query_vocabulary(task.config.data, task.split("train"))
  if jax.process_index() == 0:
    fileio.makedirs(task.workdir)
    with fileio.open(path, "w") as f:
      json.dump({"queries": queries, "source": str(task.config.data.source)}, f)
  return queries


class S1Stage(ImageTextTask):
  """Base of the S1 stages that read images and/or queries (not the fusion stage, which reads features).
  Subclasses build `self.model` in `build_model` once the queries are known, and say which train images they
  learn from by ROLE ("queries": the image-query set, "labelled": the labelled set; systems/classifier/partition.py)."""
  ROLE = "queries"

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self.queries: list[str] | None = None
    self.model = None
    self._annotations: dict[str, query_annotations.QueryAnnotations] = {}

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    self.queries = load_or_build_queries(self, training)
    if training:
      for name in self.eval_splits():
        self.annotations(name)
    self.model = self.build_model()

  def build_model(self):
    raise NotImplementedError

  def annotations(self, name: str) -> query_annotations.QueryAnnotations:
    if name not in self._annotations:
      self._annotations[name] = query_annotations.annotate(self.config.data, self.split(name), self.queries)
    return self._annotations[name]

  def train_partition(self) -> partition_lib.TrainPartition:
    return partition_lib.train_partition(self.config.get("partition"), self.annotations("train").labels)

  def train_rows(self, candidates: np.ndarray) -> np.ndarray:
    """The rows of `candidates` (train row indices) this stage (its fold variant) trains on; recorded as image
    ids in WORKDIR/train_images.npz, which the features stage checks against."""
    rows = np.intersect1d(candidates, self.train_partition().rows(self.ROLE, int(self.config.get("fold", -1))))
    if jax.process_index() == 0:
      fileio.makedirs(self.workdir)
      fileio.save_npz(os.path.join(self.workdir, TRAIN_IMAGES_FILE), image_ids=self.split("train").image_ids[rows],
               role=self.ROLE, fold=int(self.config.get("fold", -1)))
    return rows

  def label_names(self) -> tuple[str, ...]:
    return query_annotations.label_names(self.config.data)

  def backbone(self) -> ResNetEncoder:
    return ResNetEncoder(**self.config.model.image, dtype=jnp.dtype(self.config.model.dtype))

  def init_variables(self, rng):
    return {"params": self.model.init(rng, self.dummy_images())["params"]}

  def dummy_images(self) -> jnp.ndarray:
    size = self.data_config().image_size
    return jnp.zeros((1, size, size, 3), jnp.float32)
