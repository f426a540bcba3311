"""Query-query association pairs for S1's siamese text embedding, independent of images (the seed: queries
issued in one session, or clicked for the same results).

File (config.data.query_pairs): JSON Lines `{"a": "red dog", "b": "puppy", "weight": 2.0}` ("weight" optional,
default 1) or a .tsv with the columns a, b[, weight]. Phrases are normalised like captions; a pair of one
phrase with itself, an empty phrase or a weight that is not a positive finite number is a bad line
(systems/classifier/line_records.py). Training draws pairs in proportion to their weight (systems/classifier/text_embedding.py).
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
from absl import logging

from xmodal_jax.systems.classifier import line_records

COLUMNS = ("a", "b", "weight")
WHAT = "query association file (config.data.query_pairs)"


@dataclasses.dataclass(frozen=True)
class QueryPairs:
  """phrases: every distinct phrase (first-seen order); a, b int32 [P] index them; weights float32 [P]."""
  phrases: list[str]
  a: np.ndarray
  b: np.ndarray
  weights: np.ndarray

  def __len__(self) -> int:
    return len(self.a)


def load(data_config: ml_collections.ConfigDict) -> QueryPairs:
  path = os.path.abspath(str(data_config.query_pairs))

  def parse(fields, where):
    a, b = line_records.phrase_field(fields["a"], where, "a"), line_records.phrase_field(fields["b"], where, "b")
    if a == b:
      raise line_records.bad(where, f"both phrases are {a!r}", "An association pairs two different phrases.")
    weight = line_records.number_field(fields.get("weight", 1.0), where, "weight", integer=False)
    return a, b, weight

  rows, summary = line_records.read(path, COLUMNS, parse, what=WHAT, required=2,
                                    skip_bad=bool(data_config.skip_bad),
                                    max_bad_fraction=float(data_config.max_bad_fraction))
  index: dict[str, int] = {}
  for a, b, _ in rows:
    index.setdefault(a, len(index))
    index.setdefault(b, len(index))
  pairs = QueryPairs(list(index), np.asarray([index[a] for a, _, _ in rows], np.int32),
                     np.asarray([index[b] for _, b, _ in rows], np.int32),
                     np.asarray([w for _, _, w in rows], np.float32))
  logging.info("Query pairs %s: %d pairs over %d phrases.", summary.describe(), len(pairs), len(pairs.phrases))
  return pairs
