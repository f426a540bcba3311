"""Which objects of an image to mask for masked-object pretraining (S4, seed EP 3 889 830 A1 [0063]-[0064]):
either at least two objects whose boxes overlap, or one object that overlaps no other. Host side, NumPy.

Reading of the seed: boxes "overlap" when their intersection has a positive area; the overlap graph's connected
components are the candidate units: a component of two or more objects is masked whole (masking only one of two
overlapping objects would let the model copy the hidden one from its visible partner's region), a component of
one object is an isolated object. One unit is drawn uniformly per image. The "random" baseline masks the same
number of objects drawn uniformly from all valid ones.
"""
from __future__ import annotations

import numpy as np

from xmodal_jax.data import regions

MODES = ("overlap", "random")


def overlap_groups(boxes: np.ndarray, valid: np.ndarray) -> list[np.ndarray]:
  """xyxy boxes [R, 4] and valid bool [R] -> the connected components of the overlap graph of the valid boxes
  (each an int array of object indices, ascending), ordered by their first index."""
  index = np.flatnonzero(valid)
  if not len(index):
    return []
  b = np.asarray(boxes, np.float32)[index]
  lo, hi = np.maximum(b[:, None, :2], b[None, :, :2]), np.minimum(b[:, None, 2:], b[None, :, 2:])
  touching = np.all(hi - lo > 0, axis=-1) | np.eye(len(index), dtype=bool)  # a degenerate box is its own group
  label = np.arange(len(index))
  for _ in range(len(index)):  # label propagation: each box takes the smallest label among its neighbours
    new = np.min(np.where(touching, label[None, :], len(index)), axis=1)
    if np.array_equal(new, label):
      break
    label = new
  return [index[label == g] for g in sorted(set(label.tolist()))]


def select_masked_objects(boxes: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                          mode: str = "overlap") -> np.ndarray:
  """bool [R]: the objects to mask in one image (none when it has no valid object)."""
  if mode not in MODES:
    raise ValueError(f"select_masked_objects: mode={mode!r}; use one of {MODES}.")
  groups = overlap_groups(boxes, valid)
  out = np.zeros(len(valid), bool)
  if not groups:
    return out
  chosen = groups[int(rng.integers(len(groups)))]
  if mode == "random":
    chosen = rng.choice(np.flatnonzero(valid), size=len(chosen), replace=False)
  out[chosen] = True
  return out


def box_overlaps(boxes: np.ndarray) -> np.ndarray:
  """bool [R, R]: pairs of xyxy boxes with a positive-area intersection (IoU > 0), the diagonal included."""
  return regions.box_iou(boxes, boxes) > 0


def referring_positions(tokens: np.ndarray, valid: np.ndarray, label_tokens: np.ndarray) -> np.ndarray:
  """bool [L]: the caption units that name an object, for masking a text span with the object it refers to
  (aligned joint masking, Fig. 3 of the seed).

  tokens int [L], valid bool [L]; label_tokens int [Lb] (the object's label text, e.g. "small red circle"; 0 =
  padding). Our reading of "the text the object corresponds to": every maximal run of consecutive valid units that
  are all words of the label and contain its last word (the noun: "red circle", "circle"); every such run is marked,
  so an object named twice is hidden twice. An object with no label text refers to nothing.
  """
  words = np.asarray(label_tokens)[np.asarray(label_tokens) > 0]
  out = np.zeros(len(tokens), bool)
  if not len(words):
    return out
  inside = np.isin(tokens, words) & np.asarray(valid, bool)
  start = None
  for i in range(len(tokens) + 1):
    if i < len(tokens) and inside[i]:
      start = i if start is None else start
      continue
    if start is not None and np.any(tokens[start:i] == words[-1]):
      out[start:i] = True
    start = None
  return out
