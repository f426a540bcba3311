"""Bag-of-n-grams vocabulary (unigrams + bigrams) for the siamese query embedding of S1.

A phrase's features are its words and its adjacent word pairs ("large red circle" -> large, red, circle,
"large red", "red circle"), after `normalize_caption`. Ids: 0 = padding, 1 = unknown n-gram, then the
n-grams of the training phrases by decreasing count (ties alphabetically).
"""
from __future__ import annotations

import collections
import json
import os
from typing import Iterable, Sequence

import numpy as np

from xmodal_jax import fileio
from xmodal_jax.data.text import normalize_caption, pad_token_ids

PAD_ID, UNK_ID = 0, 1


def phrase_ngrams(phrase: str, max_n: int = 2) -> list[str]:
  """Unigrams, then bigrams (... up to `max_n`-grams) of a phrase, in order."""
  words = normalize_caption(phrase).split()
  return [" ".join(words[i:i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1)]


class NgramVocab:
  """n-gram -> id; `encode_batch` gives the padded id bags a `BagOfNgramsEncoder` reads."""

  def __init__(self, grams: Sequence[str], max_n: int = 2):
    self.grams, self.max_n = list(grams), max_n
    self._index = {g: i + 2 for i, g in enumerate(self.grams)}

  @classmethod
  def build(cls, phrases: Iterable[str], max_n: int = 2) -> "NgramVocab":
    counts = collections.Counter(g for p in phrases for g in phrase_ngrams(p, max_n))
    return cls(sorted(counts, key=lambda g: (-counts[g], g)), max_n)

  def __len__(self) -> int:
    """Table rows needed (including padding and unknown)."""
    return len(self.grams) + 2

  def encode(self, phrase: str) -> list[int]:
    return [self._index.get(g, UNK_ID) for g in phrase_ngrams(phrase, self.max_n)]

  def known_ids(self, phrase: str) -> list[int]:
    """The ids of the phrase's n-grams that are in the vocabulary, in order (unknown ones left out)."""
    return [i for i in self.encode(phrase) if i != UNK_ID]

  def encode_batch(self, phrases: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """phrases -> (ids int32 [n, max_len], mask bool [n, max_len]); bags longer than max_len are cut."""
    return pad_token_ids([self.encode(p) for p in phrases], max_len)

  def encode_known_batch(self, phrases: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Like `encode_batch`, but unknown n-grams are left out of a phrase that has a known one (a new phrase of
    known words is then its words' and bigrams' bag); a phrase with none keeps the unknown id alone."""
    return pad_token_ids([self.known_ids(p) or [UNK_ID] for p in phrases], max_len)

  def save(self, path: str) -> None:
    fileio.makedirs(os.path.dirname(fileio.absolute(path)))
    with fileio.open(path, "w") as f:
      json.dump({"kind": "ngrams", "max_n": self.max_n, "grams": self.grams}, f)

  @classmethod
  def load(cls, path: str) -> "NgramVocab":
    with fileio.open(path) as f:
      data = json.load(f)
    return cls(data["grams"], data["max_n"])
