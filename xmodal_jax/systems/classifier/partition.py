"""Which train images each S1 model learns from: the image-query set, the labelled set, and cross-fitting folds.

S1 has two kinds of training data (seed, ../shared/DESIGN.md): image-query data for the text generator and the
text embedding (the seed: a search engine's click logs, far more images than the labelled set), and labelled
images for the pixel embedding and the fusion classifier. `config.partition` says how the train split provides
them:

  labelled_images = 0   today's regime: every train image is both (the two sets are the same images)
  labelled_images = N   the seed's regime: N labelled train images drawn with `seed`, disjoint from the
                        image-query set (every other train image); the labelled set is small, the other large
  folds = K >= 2        cross-fitting: the labelled set is cut into K folds; a cross-fitted stage
                        (crossfit_stages) is trained K times, variant j without the labelled images of fold j,
                        and the features of a labelled image in fold j come from variant j. So no fusion
                        training row's features come from a model that trained on that row.
  folds = 0             no cross-fitting (in-sample features: the earlier behaviour, kept to show its effect)

Evaluation images (val / test) are seen by no variant; image i of an evaluation split takes its features from
variant i mod K, so evaluation features come from the same mix of models as training features.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from xmodal_jax import errors

ROLES = ("queries", "labelled")  # what a stage trains on: the image-query set or the labelled set


def partition_config(labelled_images: int = 0, folds: int = 2,
                     crossfit_stages: tuple[str, ...] = ("text_generator", "text_embedding", "pixel_embedding"),
                     seed: int = 0) -> ml_collections.ConfigDict:
  """The `partition` section of an S1 pipeline config (module docstring)."""
  return ml_collections.ConfigDict(dict(labelled_images=labelled_images, folds=folds,
                                        crossfit_stages=tuple(crossfit_stages), seed=seed))


@dataclasses.dataclass(frozen=True)
class TrainPartition:
  """The train split's rows by role. labelled int64 [L] and queries int64 [Q] (sorted row indices of the
  train split); fold int32 [N] (per train row: its labelled fold, -1 outside the labelled set); folds = K."""
  labelled: np.ndarray
  queries: np.ndarray
  fold: np.ndarray
  folds: int

  def rows(self, role: str, fold: int = -1) -> np.ndarray:
    """The rows a model of `role` trains on; fold j >= 0 leaves out the labelled rows of fold j."""
    if role not in ROLES:
      raise errors.ConfigError(f"train_rows={role!r}: use one of {ROLES}.")
    rows = self.labelled if role == "labelled" else self.queries
    if fold >= 0:
      rows = rows[self.fold[rows] != fold]
    return rows


def train_partition(partition: ml_collections.ConfigDict | None, labels: np.ndarray) -> TrainPartition:
  """The partition of a train split with `labels` int [N] (-1 = unlabelled) under `partition` (None: the
  earlier behaviour, no partition section: every image in both sets, no folds)."""
  n = len(labels)
  labelled = np.flatnonzero(np.asarray(labels) >= 0).astype(np.int64)
  if partition is None:
    return TrainPartition(labelled, np.arange(n, dtype=np.int64), np.full(n, -1, np.int32), 0)
  rng = np.random.default_rng(int(partition.seed))
  wanted = int(partition.labelled_images)
  if wanted < 0 or wanted > len(labelled):
    raise errors.ConfigError(f"config.partition.labelled_images={wanted}, but the train split has {len(labelled)} "
                             "labelled images; use 0 (all of them, shared with the image-query set) or 1.."
                             f"{len(labelled)}.")
  if wanted:
    labelled = np.sort(rng.choice(labelled, wanted, replace=False))
    queries = np.setdiff1d(np.arange(n, dtype=np.int64), labelled)
  else:
    queries = np.arange(n, dtype=np.int64)
  folds = int(partition.folds)
  if folds == 1 or folds < 0 or folds > max(len(labelled), 2):
    raise errors.ConfigError(f"config.partition.folds={folds}: use 0 (no cross-fitting) or 2..{len(labelled)}.")
  fold = np.full(n, -1, np.int32)
  if folds:
    order = np.random.default_rng(int(partition.seed) + 1).permutation(labelled)
    fold[order] = np.arange(len(order)) % folds
  return TrainPartition(labelled, queries, fold, folds)


def eval_folds(count: int, folds: int) -> np.ndarray:
  """int32 [count]: the variant whose features evaluation image i uses (i mod K; 0 without folds)."""
  return (np.arange(count) % folds).astype(np.int32) if folds else np.zeros(count, np.int32)
