"""Search queries mined from captions, for data sets (Flickr8k) that have captions but no search logs.

The rule, in plain words:
- Words are `normalize_caption(caption).split()` (lower case, punctuation removed, apostrophes kept).
- A candidate query of a caption is any run of 1 to `max_n` consecutive words that does not start or end with a
  function word (`STOPWORDS`) or a one-character word, and contains no word with a digit. So
  "a black dog runs into the water" gives "black", "dog", "black dog", "black dog runs", "water", ... but not
  "the water", "into the" or "runs into".
- The query vocabulary (built on the TRAIN split only) is the candidates found in at least `min_images` distinct
  images and in at most `max_image_fraction` of all images (too generic otherwise), sorted by decreasing number of
  images, ties alphabetically, optionally cut to the first `max_queries`.
- An image's queries are the vocabulary entries found in its captions; a query's weight is the number of the
  image's captions that contain it, divided by that sum over the image's queries (weights sum to 1).
"""
from __future__ import annotations

import collections
from typing import Sequence

import numpy as np

from xmodal_jax.data.text import normalize_caption

_DETERMINERS = ("a an the this that these those some any each every another other others both all either neither no "
                "such several many much few more most one two three four five six seven eight nine ten")
_PREPOSITIONS = ("about above across after against along alongside amid among around as at atop before behind below "
                 "beneath beside besides between beyond by down during for from in inside into near of off on onto out "
                 "outside over past through throughout to toward towards under underneath up upon via with within "
                 "without")
_PRONOUNS = ("i me my mine you your yours he him his she her hers it its we us our ours they them their theirs myself "
             "yourself himself herself itself ourselves themselves who whom whose which what something someone "
             "somebody anything anyone everything everyone nothing")
_AUXILIARIES = "is are was were be been being am has have had having do does did doing can could will would shall " \
               "should may might must 's n't"
_CONJUNCTIONS = "and or but nor so yet while whilst if because although though than then when where whereas until since"
_OTHER = "there here not very just also too only how why"

STOPWORDS: frozenset[str] = frozenset(
    " ".join((_DETERMINERS, _PREPOSITIONS, _PRONOUNS, _AUXILIARIES, _CONJUNCTIONS, _OTHER)).split())


def _can_edge(word: str) -> bool:
  """Whether a word may start or end a query: not a function word and longer than one character."""
  return len(word) > 1 and word not in STOPWORDS


def _has_digit(word: str) -> bool:
  return any(ch.isdigit() for ch in word)


def caption_ngrams(caption: str, max_n: int = 3) -> set[str]:
  """The candidate queries (space-joined word n-grams, n = 1..max_n) of one caption; see the module rule."""
  if max_n < 1:
    raise ValueError(f"max_n must be >= 1, got {max_n}.")
  words = normalize_caption(caption).split()
  out = set()
  for start, first in enumerate(words):
    if not _can_edge(first):
      continue
    for end in range(start, min(start + max_n, len(words))):
      if _has_digit(words[end]):
        break  # Every longer n-gram from this start contains the digit word too.
      if _can_edge(words[end]):
        out.add(" ".join(words[start:end + 1]))
  return out


def _image_ngrams(captions: Sequence[str], max_n: int) -> list[set[str]]:
  return [caption_ngrams(c, max_n) for c in captions]


def build_query_vocab(captions_per_image: Sequence[Sequence[str]], *, min_images: int = 20,
                      max_image_fraction: float = 0.5, max_n: int = 3, max_queries: int = 0) -> list[str]:
  """Queries found in >= min_images images and <= max_image_fraction of them, most images first (ties A-Z).

  Call on the training split only. `max_queries > 0` keeps the first that many.
  """
  if not captions_per_image:
    raise ValueError("build_query_vocab needs at least one image's captions.")
  if not 0 < max_image_fraction <= 1:
    raise ValueError(f"max_image_fraction must be in (0, 1], got {max_image_fraction}.")
  counts: collections.Counter[str] = collections.Counter()
  for captions in captions_per_image:
    counts.update(set().union(*_image_ngrams(captions, max_n)))
  limit = max_image_fraction * len(captions_per_image)
  kept = sorted((q for q, n in counts.items() if min_images <= n <= limit), key=lambda q: (-counts[q], q))
  return kept[:max_queries] if max_queries > 0 else kept


def image_queries(captions_per_image: Sequence[Sequence[str]], vocab: Sequence[str],
                  max_n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per image: (query ids int32 [q] ascending, weights float32 [q] summing to 1); empty arrays if no query.

  A query's weight is the number of the image's captions containing it, over the sum of those numbers.
  """
  index = {q: i for i, q in enumerate(vocab)}
  if len(index) != len(vocab):
    raise ValueError("Query vocabulary entries must be unique.")
  out = []
  for captions in captions_per_image:
    hits: collections.Counter[int] = collections.Counter()
    for grams in _image_ngrams(captions, max_n):
      hits.update(index[g] for g in grams if g in index)
    ids = np.array(sorted(hits), np.int32)
    counts = np.array([hits[i] for i in ids], np.float32)
    weights = counts / counts.sum() if len(ids) else counts
    out.append((ids, weights.astype(np.float32)))
  return out
