"""Semantic tags for S2 (region-word alignment): content words mined from the training captions, predicted as a
multi-label task on the global image embedding.

  tags = mine_tags(train_captions, min_count=5, max_tags=1000)        # ("dog", "man", "table", ...)
  targets = tag_targets([[c] for c in captions], tags)               # float32 [N, T] multi-hot
  save_tags(os.path.join(workdir, "tags.json"), tags, {"min_count": 5, "max_tags": 1000})

Words are those the tokenizers see: `text.normalize_caption`, split on whitespace, alphabetic words only (so
"dog's", apostrophe kept, and "2" are no words, and "t-shirt" gives "t" and "shirt"). No part-of-speech
filtering is done: no offline POS tagger ships its model data through the allowed package channels (nltk's tagger
data is a separate download), so the stopword list plus the frequency threshold is the filter.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from xmodal_jax import errors, fileio
from xmodal_jax.data import text

# scikit-learn's maintained English stopword list (a frozenset of lower-case words).
STOPWORDS: frozenset[str] = frozenset(ENGLISH_STOP_WORDS)


def caption_words(caption: str) -> list[str]:
  """The alphabetic words of a caption after `text.normalize_caption` (lower-case, punctuation removed), in order.

  Raises ValueError (from normalize_caption) for a caption that is not a string or is empty.
  """
  return [w for w in text.normalize_caption(caption).split() if w.isalpha()]


def mine_tags(captions: Iterable[str], *, min_count: int, max_tags: int = 0, extra_stopwords: Sequence[str] = (),
              min_length: int = 2) -> tuple[str, ...]:
  """The content words of `captions` that occur in at least `min_count` of them, most frequent first.

  A content word is alphabetic, has at least `min_length` letters and is in neither STOPWORDS nor
  `extra_stopwords` (compared lower-case). Each word counts once per caption (document frequency). Tags are
  ordered by count, descending, then alphabetically; the first `max_tags` are kept (0 = all).

  Part-of-speech filtering is not done: no offline POS tagger ships its model data through the allowed package
  channels (nltk's tagger data is a separate download); the stopword list plus the frequency threshold is the
  filter, and `extra_stopwords` removes any frequent non-content word that remains.

  Returns:
    The tags, a tuple of T distinct words.
  Raises:
    errors.ConfigError: min_count < 1, max_tags < 0 or min_length < 1.
    errors.DataError: no word survives the filter.
  """
  if min_count < 1:
    raise errors.ConfigError(f"mine_tags: min_count={min_count}; use 1 or more (captions a word must occur in).")
  if max_tags < 0:
    raise errors.ConfigError(f"mine_tags: max_tags={max_tags}; use 0 (keep every tag) or a positive number.")
  if min_length < 1:
    raise errors.ConfigError(f"mine_tags: min_length={min_length}; use 1 or more (letters in a tag).")
  stop = STOPWORDS | {w.lower() for w in extra_stopwords}
  counts: collections.Counter[str] = collections.Counter()
  num_captions = 0
  for caption in captions:
    num_captions += 1
    counts.update({w for w in caption_words(caption) if len(w) >= min_length and w not in stop})
  ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
  if not ranked:
    best = counts.most_common(1)
    most = f"the most frequent content word, {best[0][0]!r}, is in {best[0][1]}" if best else "none has a content word"
    raise errors.DataError(f"mine_tags: no tag occurs in min_count={min_count} of the {num_captions} captions "
                           f"(min_length={min_length}, {len(extra_stopwords)} extra stopwords; {most}); "
                           "lower min_count, or give more captions.")
  return tuple(ranked[:max_tags] if max_tags else ranked)


def tag_targets(caption_lists: Sequence[Sequence[str]], tags: Sequence[str]) -> np.ndarray:
  """Multi-hot tag targets: float32 [N, T], 1 where tag t is a word of any caption of item i (the union over
  its captions). For one caption per item pass [[c] for c in captions].

  Raises errors.DataError if `tags` has a repeated tag.
  """
  index = {tag: t for t, tag in enumerate(tags)}
  if len(index) != len(tags):
    repeated = sorted(tag for tag, n in collections.Counter(tags).items() if n > 1)
    raise errors.DataError(f"tag_targets: tags {repeated} are listed more than once; give each tag once.")
  out = np.zeros((len(caption_lists), len(tags)), np.float32)
  for i, item_captions in enumerate(caption_lists):
    if isinstance(item_captions, str):
      raise errors.DataError(f"tag_targets: item {i} is a string, not a list of captions; pass [[c] for c in "
                             "captions] for one caption per item.")
    hits = {index[w] for caption in item_captions for w in caption_words(caption) if w in index}
    out[i, sorted(hits)] = 1.0
  return out


def save_tags(path: str, tags: Sequence[str], settings: dict[str, Any]) -> None:
  """Write {"tags": [...], "settings": {...}} as JSON to `path` (local or gs://), atomically."""
  record = {"tags": list(tags), "settings": dict(settings)}
  fileio.makedirs(os.path.dirname(path) or ".")
  fileio.write_atomic(path, lambda f: json.dump(record, f, indent=2, sort_keys=True))


def load_tags(path: str) -> tuple[str, ...]:
  """The tags of a file written by `save_tags`.

  Raises:
    errors.MissingError: the file does not exist.
    errors.DataError: the file is not JSON, or has no list of string "tags".
  """
  if not fileio.exists(path):
    raise errors.MissingError(f"Tag file {path} not found; mine the tags first (save_tags writes it) or point to "
                              "the run that made it.")
  try:
    with fileio.open(path) as f:
      record = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.DataError(f"Tag file {path} is unreadable ({e}); write it again with save_tags.") from e
  tags = record.get("tags") if isinstance(record, dict) else None
  if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
    raise errors.DataError(f"Tag file {path} has no list of string \"tags\"; write it with save_tags "
                           '({"tags": [...], "settings": {...}}).')
  return tuple(tags)
