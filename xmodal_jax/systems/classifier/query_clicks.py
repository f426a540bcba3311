"""Search-engine click logs for S1's text generator (the seed's training data): (image, query, clicks) records.

File (config.data.query_clicks): JSON Lines `{"image": "images/x.jpg", "query": "red dog", "clicks": 3}` or a
.tsv with the columns image, query, clicks. Images are named as in the folder's captions.jsonl
(systems/classifier/image_names.py). Queries are normalised like captions (data/text.py). Repeated (image, query) lines add
their clicks (logs are often aggregated in pieces). Bad lines: see systems/classifier/line_records.py.

From the log: the query vocabulary is every query clicked for >= config.data.query_min_images distinct train
images (1 keeps the whole long tail), ids sorted by decreasing train image count (then clicks, then text), as
the log-uniform sampler assumes; an image's queries are weighted by their clicks (weights sum to 1 per image).
An image with no click in the log has no queries (counted in the log line, and the text generator skips it).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import os

import ml_collections
import numpy as np
from absl import logging

from xmodal_jax import errors
from xmodal_jax.systems.classifier import image_names, line_records

COLUMNS = ("image", "query", "clicks")
WHAT = "click log (config.data.query_clicks)"


@dataclasses.dataclass(frozen=True)
class ClickLog:
  """clicks[image_id][query] = total clicks."""
  clicks: dict[int, dict[str, int]]

  def vocabulary(self, train_ids: np.ndarray, min_images: int) -> list[str]:
    """Queries clicked for >= min_images distinct train images, most frequent first."""
    if min_images < 1:
      raise errors.ConfigError(f"config.data.query_min_images={min_images}: use 1 or more.")
    images, clicks = collections.Counter(), collections.Counter()
    for image_id in np.asarray(train_ids).tolist():
      for query, count in self.clicks.get(image_id, {}).items():
        images[query] += 1
        clicks[query] += count
    vocab = [q for q in images if images[q] >= min_images]
    return sorted(vocab, key=lambda q: (-images[q], -clicks[q], q))

  def annotate(self, image_ids: np.ndarray, vocab: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image: query ids int32 [q_i] (vocabulary order) and click weights float32 [q_i] (sum 1, or empty)."""
    index = {q: i for i, q in enumerate(vocab)}
    ids, weights = [], []
    for image_id in np.asarray(image_ids).tolist():
      pairs = sorted((index[q], c) for q, c in self.clicks.get(image_id, {}).items() if q in index)
      counts = np.asarray([c for _, c in pairs], np.float32)
      ids.append(np.asarray([i for i, _ in pairs], np.int32))
      weights.append(counts / counts.sum() if len(counts) else counts)
    return ids, weights


def load(data_config: ml_collections.ConfigDict) -> ClickLog:
  path = os.path.abspath(str(data_config.query_clicks))
  names = image_names.image_ids_by_name(data_config, WHAT)
  return _load(path, os.path.getmtime(path) if os.path.exists(path) else 0.0, str(data_config.source),
               bool(data_config.skip_bad), float(data_config.max_bad_fraction), tuple(sorted(names.items())))


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime: float, source: str, skip_bad: bool, max_bad_fraction: float,
          names: tuple[tuple[str, int], ...]) -> ClickLog:
  del mtime  # part of the cache key only
  index = dict(names)

  def parse(fields, where):
    image = image_names.lookup(index, line_records.text_field(fields["image"], where, "image", "Name the image."),
                               where, source)
    query = line_records.phrase_field(fields["query"], where, "query")
    return image, query, int(line_records.number_field(fields["clicks"], where, "clicks", integer=True))

  rows, summary = line_records.read(path, COLUMNS, parse, what=WHAT, skip_bad=skip_bad,
                                    max_bad_fraction=max_bad_fraction)
  clicks: dict[int, dict[str, int]] = collections.defaultdict(dict)
  for image, query, count in rows:
    clicks[image][query] = clicks[image].get(query, 0) + count
  logging.info("Click log %s: %d images, %d distinct queries.", summary.describe(), len(clicks),
               len({q for per in clicks.values() for q in per}))
  return ClickLog(dict(clicks))
