"""Captions of a split, tokenised once into flat arrays (any number of captions per image)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from absl import logging

from xmodal_jax.data.tokenizers import Tokenizer


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
                      name: str = "") -> TokenizedCaptions:
  """Flatten per-image caption lists and encode them; warns with a count when captions are cut at max_len."""
  flat, owner, offsets = [], [], [0]
  for i, caps in enumerate(captions):
    if not caps:
      raise ValueError(f"Image {i} of {name or 'the split'} has no captions; every image needs at least one.")
    flat.extend(caps)
    owner.extend([i] * len(caps))
    offsets.append(len(flat))
  lengths = np.array([len(vocab.encode(c)) for c in flat])
  cut = int(np.sum(lengths > max_len))
  if cut:
    logging.warning("%d of %d captions of %s are longer than config.data.max_len=%d tokens and are truncated "
                    "(longest: %d).", cut, len(flat), name or "the split", max_len, int(lengths.max()))
  tokens, mask = vocab.encode_batch(flat, max_len)
  return TokenizedCaptions(tokens, mask, np.asarray(owner, np.int32), np.asarray(offsets, np.int64))
