"""Captions of a split, tokenised once into flat arrays (any number of captions per image)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from absl import logging

from xmodal_jax.data.text import pad_token_ids
from xmodal_jax.data.tokenizers import Tokenizer, TokenizerBase

_PAD = TokenizerBase.pad_id


@dataclasses.dataclass(frozen=True)
class TokenizedCaptions:
  """tokens int32 [M, L], mask bool [M, L], text_to_image int32 [M]; image i owns rows offsets[i]:offsets[i+1]."""
  tokens: np.ndarray
  mask: np.ndarray
  text_to_image: np.ndarray
  offsets: np.ndarray

  def sample_one_per_image(self, image_indices: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row index of one caption per image, chosen by the per-example random `keys` (uint32)."""
    counts = self.offsets[image_indices + 1] - self.offsets[image_indices]
    return self.offsets[image_indices] + (keys.astype(np.int64) % counts)


def tokenize_captions(captions: Sequence[Sequence[str]], vocab: Tokenizer, max_len: int,
                      name: str = "", *, words_only: bool = False) -> TokenizedCaptions:
  """Flatten per-image caption lists and encode them; warns with a count when captions are cut at max_len.

  words_only: the captions' tokens without special tokens (`encode_words`: a captioner's targets, cut at max_len),
  else a text encoder's input (`encode_batch`: e.g. WordPiece's [CLS] .. [SEP], [SEP] kept when cut)."""
  flat, owner, offsets = [], [], [0]
  for i, caps in enumerate(captions):
    if not caps:
      raise ValueError(f"Image {i} of {name or 'the split'} has no captions; every image needs at least one.")
    flat.extend(caps)
    owner.extend([i] * len(caps))
    offsets.append(len(flat))
  ids = [(vocab.encode_words if words_only else vocab.encode)(c) for c in flat]
  lengths = np.array([len(i) for i in ids])
  cut = int(np.sum(lengths > max_len))
  if cut:
    logging.warning("%d of %d captions of %s are longer than config.data.max_len=%d tokens and are truncated "
                    "(longest: %d).", cut, len(flat), name or "the split", max_len, int(lengths.max()))
  tokens, mask = pad_token_ids(ids, max_len) if words_only else vocab.encode_batch(flat, max_len)
  return TokenizedCaptions(tokens, mask, np.asarray(owner, np.int32), np.asarray(offsets, np.int64))


def teacher_forcing(tokens: np.ndarray, seq_len: int, *, bos_id: int = TokenizerBase.bos_id,
                    eos_id: int = TokenizerBase.eos_id) -> dict[str, np.ndarray]:
  """Caption word ids [b, max_len] (right-padded, no special tokens) -> decoder inputs <bos> w_1 .. and targets
  w_1 .. <eos> [b, seq_len] (a caption cut at max_len: its first max_len tokens, then <eos>). bos_id / eos_id: the tokenizer's
  (WordPiece: [CLS] / [SEP], so <bos> + targets is the text tower's input)."""
  b, max_len = tokens.shape
  if seq_len != max_len + 1:
    raise ValueError(f"teacher_forcing: seq_len {seq_len} != max_len {max_len} + 1.")
  lengths = np.sum(tokens != _PAD, axis=1)
  targets = np.zeros((b, seq_len), np.int32)
  targets[:, :max_len] = tokens
  targets[np.arange(b), lengths] = eos_id
  inputs = np.concatenate([np.full((b, 1), bos_id, np.int32), np.where(targets == eos_id, _PAD, targets)[:, :-1]],
                          axis=1)
  return {"inputs": inputs, "targets": targets}
