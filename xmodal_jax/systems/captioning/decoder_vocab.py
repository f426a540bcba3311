"""The captioner's own output vocabulary (config.model.output_vocab="captions"): its softmax runs over the tokens of
the train captions only, not the tokenizer's whole vocabulary.

A pretrained vocabulary such as MiniLM's has 30,522 WordPiece ids, of which Flickr8k's captions use 6,642: a softmax
over all of them spends most of the decoder's compute (its output layer is width x vocab) on ids that never occur,
and a policy could sample [unusedN] or orphan "##" pieces the reward never read. The decoder's ids here are
indices into `tokenizer_ids`: 0 = <pad>, 1 = <bos> (input only), then the allowed tokenizer ids (the train
captions' tokens and <eos>), sorted. The task maps at its edges (`to_decoder` on teacher-forcing targets and given
captions, `to_tokenizer` on everything it decodes), so what leaves the captioner (`caption`, SCST's reward input,
`decode`) is tokenizer ids: with MiniLM's, [CLS] + a decoded row is the dual encoder's text input.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from xmodal_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DecoderVocab:
  """tokenizer_ids int32 [size] (decoder index -> tokenizer id), lookup int32 [tokenizer size] (tokenizer id ->
  decoder index; 0 = <pad> for ids outside), eos (the decoder index of <eos>)."""
  tokenizer_ids: np.ndarray
  lookup: np.ndarray
  eos: int

  pad: int = 0
  bos: int = 1

  @classmethod
  def build(cls, allowed_ids: Sequence[int], *, tokenizer_size: int, pad_id: int, bos_id: int,
            eos_id: int) -> "DecoderVocab":
    """`allowed_ids`: the tokenizer ids the decoder may emit (must include `eos_id`)."""
    allowed = sorted(set(int(i) for i in allowed_ids) - {pad_id, bos_id})
    if eos_id not in allowed:
      raise ValueError(f"The output vocabulary must include <eos> (id {eos_id}).")
    ids = np.asarray([pad_id, bos_id] + allowed, np.int32)
    lookup = np.zeros(tokenizer_size, np.int32)
    lookup[ids] = np.arange(len(ids), dtype=np.int32)
    return cls(ids, lookup, int(lookup[eos_id]))

  @property
  def size(self) -> int:
    return len(self.tokenizer_ids)

  def to_decoder(self, tokens):
    """Tokenizer ids (numpy or jax, any shape) -> decoder indices (ids outside the vocabulary -> <pad>)."""
    if isinstance(tokens, np.ndarray):
      return self.lookup[tokens]
    return jnp.take(jnp.asarray(self.lookup), tokens, axis=0)

  def to_tokenizer(self, tokens):
    """Decoder indices (numpy or jax) -> tokenizer ids."""
    if isinstance(tokens, np.ndarray):
      return self.tokenizer_ids[tokens]
    return jnp.take(jnp.asarray(self.tokenizer_ids), tokens, axis=0)

  def logit_bias(self, neg_inf: float) -> np.ndarray:
    """float32 [padded size]: `neg_inf` at <pad>, <bos> and the padding of the decoder's table, 0 elsewhere."""
    bias = np.full(layers.padded_vocab_size(self.size), neg_inf, np.float32)
    bias[2:self.size] = 0.0
    return bias
