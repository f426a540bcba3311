"""What the image-text tasks share: their data splits (loaded once), centre crops for evaluation, the image
training iterator, and cached evaluation data."""
from __future__ import annotations

from typing import Callable

import ml_collections
import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import sources
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.train.task import Task


def evaluated_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits of the evaluators of `config.evals` that run at all (every > 0 or at the end), in order."""
  return tuple(dict.fromkeys(str(spec.split) for spec in config.evals.values() if spec.every or spec.at_end))


class ImageTextTask(Task):
  """A Task over `config.data` (a source of captioned images). Subclasses build `EvalData` in `make_eval_data`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self._splits: dict[str, sources.SplitData] = {}
    self._eval_images: dict[str, np.ndarray] = {}
    self._eval_data: dict[str, EvalData] = {}

  def eval_splits(self) -> tuple[str, ...]:
    """The splits `config.evals` evaluates (during or at the end of training)."""
    return evaluated_splits(self.config)

  # ---- data (read on demand: never during inference)
  def data_config(self) -> ml_collections.ConfigDict:
    """The data section this task reads its images with (config.data; a task may read them at another size)."""
    return self.config.data

  def split(self, name: str) -> sources.SplitData:
    """The split `name` of `config.data.source`, loaded once per task."""
    if name not in self._splits:
      self._splits[name] = sources.load_split(self.data_config(), name)
    return self._splits[name]

  def check_eval_splits(self) -> None:
    """Load every evaluated split now, so a missing one fails before training rather than after."""
    for name in self.eval_splits():
      self.split(name)

  def eval_images(self, name: str) -> np.ndarray:
    """uint8 [N, size, size, 3] centre crops of the whole split `name` (decoded once)."""
    if name not in self._eval_images:
      data = self.split(name)
      self._eval_images[name] = data.load_images(np.arange(len(data)), self.data_config().image_size)
    return self._eval_images[name]

  def example_extras(self, name: str, images: bool = True) -> dict:
    """EvalData extras for the evaluators' example pictures (evaluation/summary_images.py): every caption of split
    `name` in text-row order ("captions") and, for tasks whose image inputs are not pixels, the split's centre
    crops ("display_images")."""
    out = {"captions": [c for caps in self.split(name).captions for c in caps]}
    if images:
      out["display_images"] = self.eval_images(name)
    return out

  def image_iterator(self, rows: np.ndarray, targets: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
                     *, process_index: int, process_count: int) -> EpochBatchIterator:
    """Training batches over the train images `rows`: random crops (+ flips) as "images", plus
    `targets(image indices, keys)` (e.g. labels, a caption or queries drawn from the keys)."""
    cfg = self.data_config()
    data = self.split("train")
    if len(rows) == 0:
      raise errors.DataError(f"No usable train image in {cfg.source} for config.task={self.config.task!r}: nothing to train "
                       "on (S1 stages: no labels or queries; check the config.data query / taxonomy fields).")

    def load(indices, keys):
      images = rows[indices]
      return {"images": data.load_images(images, cfg.image_size, keys=keys, flip=cfg.flip), **targets(images, keys)}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count,
                              num_threads=cfg.num_threads, prefetch=cfg.prefetch)

  # ---- evaluation data
  def eval_data(self, split: str) -> EvalData:
    if split not in self._eval_data:
      self._eval_data[split] = self.make_eval_data(split)
    return self._eval_data[split]

  def make_eval_data(self, split: str) -> EvalData:
    raise NotImplementedError(f"{type(self).__name__} provides no evaluation data.")
