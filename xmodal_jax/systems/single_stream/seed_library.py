"""S4's seed library (seed EP 3 889 830 A1, claims 7 and 9, [0084]-[0096], [0131]-[0143]): label text -> several
"standard image" features, built from data with boxes and labels (shapes world's ground truth here; a detector's
labels elsewhere), and the per-word table of standard-image features that is fused into text units.

Our reading: a label's standard images are `per_label` of its train objects (drawn with a fixed seed), each as the
object's pooled visual feature (the same features the model reads). A word's standard images are those of every
label whose text contains the word; the table row of a word is their mean feature, zero for a word of no label
(and for the mask token: systems/single_stream/single_stream_transformer.py zeroes its row). Host side, NumPy; stored in the
workdir (library.npz) so that evaluation and resumed runs read the library the run was trained with.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from xmodal_jax import fileio


@dataclasses.dataclass
class SeedLibrary:
  """labels: the label texts (C); standard: float32 [C, K, F] their standard-image features (count [C] valid);
  word_images: float32 [V, F], the fused feature of each word id."""
  labels: tuple[str, ...]
  standard: np.ndarray
  count: np.ndarray
  word_images: np.ndarray

  def save(self, path: str) -> None:
    fileio.save_npz(path, labels=np.asarray(self.labels), standard=self.standard, count=self.count,
                    word_images=self.word_images)

  @classmethod
  def load(cls, path: str) -> "SeedLibrary":
    z = fileio.load_npz(path)
    return cls(tuple(str(x) for x in z["labels"]), z["standard"], z["count"], z["word_images"])


def build_library(object_labels: np.ndarray, features: np.ndarray, labels: Sequence[str],
                  label_word_ids: Sequence[Sequence[int]], vocab_size: int, *, per_label: int = 4,
                  seed: int = 0) -> SeedLibrary:
  """object_labels int [N, R] (index into `labels`, -1 = no object), features float [N, R, F] (pooled visual
  features), label_word_ids: the token ids of each label's text -> the library (class docstring).

  A label with no train object has no standard image (count 0, zero features)."""
  rng = np.random.default_rng([int(seed), 4243])
  flat_labels = np.asarray(object_labels).reshape(-1)
  flat = np.asarray(features, np.float32).reshape(len(flat_labels), -1)
  c, f = len(labels), flat.shape[-1]
  standard, count = np.zeros((c, per_label, f), np.float32), np.zeros(c, np.int32)
  for k in range(c):
    rows = np.flatnonzero(flat_labels == k)
    chosen = rng.permutation(rows)[:per_label]
    standard[k, :len(chosen)], count[k] = flat[chosen], len(chosen)
  sums, n = np.zeros((vocab_size, f), np.float64), np.zeros(vocab_size, np.int64)
  for k, ids in enumerate(label_word_ids):
    for w in set(int(i) for i in ids if int(i) > 0):
      sums[w] += standard[k, :count[k]].sum(0)
      n[w] += count[k]
  word_images = (sums / np.maximum(n, 1)[:, None]).astype(np.float32)
  return SeedLibrary(tuple(labels), standard, count, word_images)
