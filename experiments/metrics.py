"""Columns the systems' tables share, with the per-item scores a claim bootstraps over.

Retrieval (the evaluator's eval_items/<split>.npz: i2t_rank [N], t2i_rank [M], text_to_image [M]): the items are
the images, each with its captions, so one draw resamples an image together with its captions (they are not
independent queries). An image's score for R@K is 100 * [its rank <= K] for image->text and 100 x the fraction of
its captions whose rank <= K for text->image; the mean over images is the split's R@K (exactly for text->image
when every image has the same number of captions, as shapes world and Flickr8k do).

Classification (eval_items/<split>.npz: correct [N]): the items are the images.
"""
from __future__ import annotations

import numpy as np

from experiments.experiment import Metric

KS = (1, 5, 10)
RETRIEVAL = tuple((f"{d}_r{k}", f"{arrow} R@{k}") for d, arrow in (("i2t", "i->t"), ("t2i", "t->i")) for k in KS)


def _image_hits(items: dict[str, np.ndarray], direction: str, k: int) -> np.ndarray:
  """[N] per image: 100 x (image->text: its rank <= k; text->image: the fraction of its captions with rank <= k)."""
  i2t = np.asarray(items["i2t_rank"])
  if direction == "i2t":
    return 100.0 * (i2t <= k)
  owner = np.asarray(items["text_to_image"])
  counts = np.bincount(owner, minlength=len(i2t))
  return 100.0 * np.bincount(owner, weights=np.asarray(items["t2i_rank"]) <= k, minlength=len(i2t)) / counts


def retrieval_item_scores(items: dict[str, np.ndarray], key: str) -> np.ndarray:
  """[N] per-image scores whose mean is metric `key` (i2t_r1 ... t2i_r10, rsum, mean_r1)."""
  if key == "rsum":
    return sum(_image_hits(items, d, k) for d in ("i2t", "t2i") for k in KS)
  if key == "mean_r1":
    return (_image_hits(items, "i2t", 1) + _image_hits(items, "t2i", 1)) / 2
  direction, _, k = key.partition("_r")
  return _image_hits(items, direction, int(k))


def retrieval_metric(split: str, key: str, label: str = "") -> Metric:
  """Column `key` of retrieval evaluator `split` (R@K, rsum, or mean_r1 = the mean of both R@1)."""
  label = label or dict(RETRIEVAL, rsum="rsum", mean_r1="mean R@1")[key]
  value = f"{split}/{key}" if key != "mean_r1" else (
      lambda m: (m[f"{split}/i2t_r1"] + m[f"{split}/t2i_r1"]) / 2)
  return Metric(label, value, items=lambda items: retrieval_item_scores(items, key), items_of=split)


def retrieval_metrics(split: str) -> tuple[Metric, ...]:
  """R@1/5/10 both ways and rsum of retrieval evaluator `split`."""
  return tuple(retrieval_metric(split, key) for key, _ in RETRIEVAL) + (retrieval_metric(split, "rsum"),)


def accuracy(split: str, label: str = "accuracy") -> Metric:
  """Classification accuracy (%) of evaluator `split`, per image from its `correct` items."""
  return Metric(label, f"{split}/accuracy", items=lambda items: 100.0 * np.asarray(items["correct"], np.float64),
                items_of=split, fmt=".2f")


def plain(label: str, key: str, fmt: str = ".1f") -> Metric:
  """A column with no per-item scores (claims on it bootstrap over seeds alone)."""
  return Metric(label, key, fmt=fmt)
