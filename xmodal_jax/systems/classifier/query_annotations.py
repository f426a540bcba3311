"""Search queries and class labels per image, for the multimodal classifier (S1).

Shapes world has both built in (3-5 true queries per image, a 10-way label). Captioned real data gets them
from its captions by documented rules: queries are the frequent n-grams of `systems/classifier/query_mining.py` (vocabulary
built on the train split only), labels the majority concept of `data/taxonomy.py` (-1 = no majority). Or from
the user's own inputs (the seed's data): a click log (config.data.query_clicks, systems/classifier/query_clicks.py) instead of
mined queries, and labels with a declared label set (config.data.label_set + labels_file / labels_field,
systems/classifier/image_labels.py) instead of the taxonomy.

Query ids are sorted by decreasing train frequency (id 0 = most frequent), which is what the log-uniform
sampler of the sampled softmax assumes.
"""
from __future__ import annotations

import collections
import dataclasses

import ml_collections
import numpy as np

from xmodal_jax import errors
from xmodal_jax.data import shapes_world, sources, taxonomy
from xmodal_jax.systems.classifier import image_labels, query_clicks, query_mining


@dataclasses.dataclass
class QueryAnnotations:
  """One split's targets. query_ids[i] int32 [q_i] / query_weights[i] float32 [q_i] (sum 1): image i's queries;
  labels int32 [N] (-1 = unlabelled); label_names index the labels."""
  query_ids: list[np.ndarray]
  query_weights: list[np.ndarray]
  labels: np.ndarray
  label_names: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.labels)

  def images_with_queries(self, minimum: int = 1) -> np.ndarray:
    """int64 indices of the images that have at least `minimum` queries."""
    return np.asarray([i for i, ids in enumerate(self.query_ids) if len(ids) >= minimum], np.int64)

  def labelled_images(self) -> np.ndarray:
    return np.flatnonzero(self.labels >= 0).astype(np.int64)

  def sample_queries(self, indices: np.ndarray, keys: np.ndarray, count: int = 1) -> np.ndarray:
    """int32 [n, count]: `count` distinct queries per image, drawn by weight from each example's key.

    Deterministic in the keys. Images must have at least `count` queries."""
    out = np.empty((len(indices), count), np.int32)
    for row, (index, key) in enumerate(zip(indices, keys)):
      ids, weights = self.query_ids[int(index)], self.query_weights[int(index)]
      rng = np.random.default_rng(int(key))
      out[row] = rng.choice(ids, size=count, replace=False, p=weights)
    return out

  def query_sets(self) -> list[set[int]]:
    return [set(ids.tolist()) for ids in self.query_ids]


def query_vocabulary(data_config: ml_collections.ConfigDict, train: sources.SplitData) -> list[str]:
  """The query phrases (id order), built from the train split only."""
  if _is_shapes(data_config):
    counts = collections.Counter(q for queries in train.extras.queries for q in queries)
    return sorted(shapes_world.all_queries(), key=lambda q: (-counts[q], q))
  if data_config.get("query_clicks", ""):
    vocab = query_clicks.load(data_config).vocabulary(train.image_ids, int(data_config.query_min_images))
    if not vocab:
      raise errors.DataError(f"No query of {data_config.query_clicks} is clicked for >= {data_config.query_min_images} "
                             "train images; lower config.data.query_min_images (1 keeps every query).")
    return vocab
  vocab = query_mining.build_query_vocab(
      train.captions, min_images=data_config.query_min_images, max_image_fraction=data_config.query_max_fraction,
      max_n=data_config.query_max_n, max_queries=data_config.query_max_count)
  if not vocab:
    raise errors.DataError(f"No search query appears in >= {data_config.query_min_images} train images of "
                     f"{data_config.source}; lower config.data.query_min_images.")
  return vocab


def label_names(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The class names (index = label): the declared label set, else the taxonomy's."""
  if _is_shapes(data_config):
    _no_user_inputs(data_config)
    return shapes_world.LABEL_NAMES
  if image_labels.declared(data_config):
    return image_labels.declared(data_config)
  if data_config.taxonomy != "flickr8k":
    raise errors.ConfigError(f"config.data.taxonomy={data_config.taxonomy!r}: the only caption taxonomy is 'flickr8k' "
                     "(data/taxonomy.py); add a concept list there for another data set.")
  return taxonomy.class_names(taxonomy.FLICKR8K_CONCEPTS)


def annotate(data_config: ml_collections.ConfigDict, split: sources.SplitData, vocab: list[str]) -> QueryAnnotations:
  """Queries (ids into `vocab`) and labels of every image of `split`."""
  if _is_shapes(data_config):
    index = {q: i for i, q in enumerate(vocab)}
    ids = [np.asarray(sorted(index[q] for q in queries), np.int32) for queries in split.extras.queries]
    weights = [np.full(len(i), 1.0 / len(i), np.float32) for i in ids]
    return QueryAnnotations(ids, weights, split.extras.label.astype(np.int32), label_names(data_config))
  names = label_names(data_config)
  if data_config.get("query_clicks", ""):
    ids, weights = query_clicks.load(data_config).annotate(split.image_ids, vocab)
  else:
    pairs = query_mining.image_queries(split.captions, vocab, max_n=data_config.query_max_n)
    ids, weights = [p[0] for p in pairs], [p[1] for p in pairs]
  if image_labels.declared(data_config):
    labels = image_labels.load(data_config, split.image_ids)
  else:
    labels = taxonomy.caption_labels(split.captions, taxonomy.FLICKR8K_CONCEPTS, min_votes=data_config.label_min_votes)
  return QueryAnnotations(ids, weights, labels, names)


def _no_user_inputs(data_config: ml_collections.ConfigDict) -> None:
  fields = [f for f in ("query_clicks", "query_pairs", "labels_file", "labels_field", "label_set")
            if data_config.get(f, "")]
  if fields:
    raise errors.ConfigError(f"config.data.{fields[0]} is set, but shapes world has its own queries and labels; "
                             "these inputs need a folder:PATH source (or unset them).")


def _is_shapes(data_config: ml_collections.ConfigDict) -> bool:
  return str(data_config.source).partition(":")[0] == "shapes"
