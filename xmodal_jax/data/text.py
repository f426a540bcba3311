"""Caption normalisation and the word vocabulary used by GRU text encoders.

`normalize_caption` is THE one normalisation used everywhere (training, evaluation, serving).
"""
from __future__ import annotations

import collections
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np
import tokenizers

from xmodal_jax import fileio

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
_PUNCT = re.compile(r"[^\w\s']+|_")
_SPACES = re.compile(r"\s+")


def normalize_caption(text: str) -> str:
  """Lower-case, punctuation removed (apostrophes kept), whitespace collapsed. Raises on empty/non-text."""
  if not isinstance(text, str):
    raise ValueError(f"Caption must be a string, got {type(text).__name__}: {text!r}.")
  out = _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()
  if not out:
    raise ValueError(f"Caption {text!r} is empty after normalisation; fix or remove it in the data.")
  return out


def pad_token_ids(ids: Sequence[Sequence[int]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Id lists -> (tokens int32 [n, max_len], mask bool [n, max_len]), cut at max_len, padded with id 0.

  Shared by every tokenizer; id 0 is <pad> and never a real token, so the mask is `tokens != 0`.
  """
  tokens = np.zeros((len(ids), max_len), np.int32)
  for row, row_ids in enumerate(ids):
    row_ids = row_ids[:max_len]
    tokens[row, :len(row_ids)] = row_ids
  return tokens, tokens != 0


class TokenizerBase:
  """What every tokenizer shares: the special ids (<pad>=0, <unk>=1, <bos>=2, <eos>=3; a pretrained vocabulary
  may name its own bos / eos, e.g. WordPiece's [CLS] / [SEP]) and batch encoding.

  `encode` is a text encoder's input; `encode_words` the caption's tokens alone (a captioner's targets, before its
  <eos>). They differ only for a tokenizer whose `encode` frames the words with bos / eos
  (`encode_adds_specials`): then encode(t) == [bos_id] + encode_words(t) + [eos_id].
  """
  pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
  encode_adds_specials = False

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode_words(self, text: str) -> list[int]:
    """The text's tokens without any special token (here: `encode`)."""
    return self.encode(text)

  def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (tokens int32 [n, max_len], mask bool [n, max_len]); longer texts are cut at max_len."""
    return pad_token_ids([self.encode(t) for t in texts], max_len)


class WordVocab(TokenizerBase):
  """Word-level vocabulary: id 0 = <pad>, 1 = <unk>, 2 = <bos>, 3 = <eos>, then words by frequency.

  Built on the training captions only (`build`), saved as JSON next to the run (`save` / `load`), so
  evaluation and serving tokenise exactly as training did. Encoding is a `tokenizers` WordLevel model over
  whitespace-split `normalize_caption` output. `build` counts words itself (ties broken by the word) rather
  than with tokenizers' WordLevelTrainer, whose order among equally frequent words is not specified.
  """

  def __init__(self, words: Sequence[str]):
    words = list(words)
    if tuple(words[:len(SPECIALS)]) != SPECIALS:
      raise ValueError(f"A WordVocab must start with the special tokens {SPECIALS}.")
    if len(set(words)) != len(words):
      raise ValueError("WordVocab words must be unique.")
    self.words = words
    self._tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)},
                                                                       unk_token=UNK))
    self._tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()

  @classmethod
  def build(cls, captions: Iterable[str], min_count: int = 1) -> "WordVocab":
    counts = collections.Counter(w for c in captions for w in normalize_caption(c).split())
    kept = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIALS),
                  key=lambda w: (-counts[w], w))
    if not kept:
      raise ValueError(f"No word occurs at least min_count={min_count} times in the training captions.")
    return cls(list(SPECIALS) + kept)

  def __len__(self) -> int:
    return len(self.words)

  def __reduce__(self):
    return type(self), (self.words,)

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(normalize_caption(text), add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (tokens int32 [n, max_len], mask bool [n, max_len]); longer texts are cut at max_len."""
    encoded = self._tokenizer.encode_batch([normalize_caption(t) for t in texts], add_special_tokens=False)
    return pad_token_ids([e.ids for e in encoded], max_len)

  def decode(self, ids: Iterable[int]) -> str:
    return " ".join(self.words[i] for i in ids if i >= len(SPECIALS))

  def save(self, path: str) -> None:
    fileio.makedirs(os.path.dirname(path) or ".")
    with fileio.open(path, "w") as f:
      json.dump({"kind": "word_vocab", "words": self.words}, f)

  @classmethod
  def load(cls, path: str) -> "WordVocab":
    if not fileio.exists(path):
      raise FileNotFoundError(f"Vocabulary file {path} not found; train in this workdir first "
                              "(training writes it) or point --workdir at the run that made it.")
    with fileio.open(path) as f:
      return cls(json.load(f)["words"])
