"""The input sequence of S4's single-stream transformer (seed EP 3 889 830 A1 [0050]-[0057], [0149]-[0152]).

One sequence per image-text pair, in this order:

  index 0          the matching identifier (learnable, CLS-like; its output feeds the matching head)
  1 .. R           objects: FC([pooled region feature; box geometry]) to the width ("spliced" = concatenated, then
                   compressed when wider, [0054])
  R+1 .. R+L       text units: token embeddings

To each element's feature are added a position embedding and a modal-identifier (type) embedding:

  element              position id                        type id
  matching identifier  0                                  0  (MATCH)
  every object         1, the same for all ([0051]:        1  ([IMG])
                       objects have no order)
  text unit t          2 + t  (positions start at 2, [0053]) 2  ([Text])

Our reading: the seed's "object-order feature" and the text's position feature share one position table
(index 1 for objects, 2.. for text), and the matching identifier takes position 0 and its own type.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models import layers

MATCH_TYPE, IMAGE_TYPE, TEXT_TYPE = 0, 1, 2
OBJECT_POSITION, FIRST_TEXT_POSITION = 1, 2


def sequence_ids(num_objects: int, text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(position ids, type ids), int32 [1 + num_objects + text_len] each, as in the module docstring."""
  positions = np.concatenate([[0], np.full(num_objects, OBJECT_POSITION),
                              FIRST_TEXT_POSITION + np.arange(text_len)]).astype(np.int32)
  types = np.concatenate([[MATCH_TYPE], np.full(num_objects, IMAGE_TYPE),
                          np.full(text_len, TEXT_TYPE)]).astype(np.int32)
  return positions, types


class SingleStreamInputs(nn.Module):
  """object features [B, R, F], object mask [B, R], tokens [B, L], token mask [B, L] ->
  (embeddings [B, 1 + R + L, width], attention mask bool [B, 1 + R + L]); the matching identifier is always valid.

  Optional keyword inputs:
    object_geometry [B, R, G]: concatenated to the features after masking (a masked object keeps its box).
    masked_objects bool [B, R]: these objects' features become zeros before the FC and a learnt image-mask
      embedding is added ([0063]: "replace their features with the image mask"); so are their additions.
    object_additions [B, R, width] / token_additions [B, L, width]: fused into the elements (the seed library's
      label text / standard images, systems/single_stream/single_stream_transformer.py); a masked object's are dropped here, a
      masked word's are zero by construction (they are looked up from the mask token).
  """
  vocab_size: int
  width: int
  max_text_len: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, object_features, object_mask, tokens, token_mask, *, object_geometry=None, masked_objects=None,
               object_additions=None, token_additions=None):
    if tokens.shape[1] > self.max_text_len:
      raise ValueError(f"SingleStreamInputs: {tokens.shape[1]} text units, the position table holds "
                       f"{self.max_text_len}.")
    batch, num_objects = object_features.shape[:2]
    features = object_features.astype(self.dtype)
    hidden = None if masked_objects is None else masked_objects.astype(bool)[..., None]
    if hidden is not None:
      features = jnp.where(hidden, 0.0, features)
    if object_geometry is not None:
      features = jnp.concatenate([features, object_geometry.astype(self.dtype)], -1)
    objects = layers.dense(self.width, ("region_in", "embed"), dtype=self.dtype, name="object_fc")(features)
    if object_additions is not None:
      objects = objects + (object_additions if hidden is None else jnp.where(hidden, 0.0, object_additions))
    if hidden is not None:
      image_mask = self.param("image_mask", nn.initializers.normal(0.02), (self.width,), jnp.float32)
      objects = objects + hidden * image_mask.astype(self.dtype)
    words = layers.embed(layers.padded_vocab_size(self.vocab_size), self.width, dtype=self.dtype,
                         name="token_embed")(tokens)
    if token_additions is not None:
      words = words + token_additions
    match = self.param("match_identifier", nn.initializers.normal(0.02), (self.width,), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(match.astype(self.dtype), (batch, 1, self.width)), objects, words], 1)
    positions, types = sequence_ids(num_objects, tokens.shape[1])
    x = x + layers.embed(FIRST_TEXT_POSITION + self.max_text_len, self.width, dtype=self.dtype,
                         name="position_embed")(jnp.asarray(positions))[None]
    x = x + layers.embed(3, self.width, dtype=self.dtype, name="type_embed")(jnp.asarray(types))[None]
    mask = jnp.concatenate([jnp.ones((batch, 1), bool), object_mask.astype(bool), token_mask.astype(bool)], 1)
    return nn.LayerNorm(dtype=self.dtype, name="input_norm")(x), mask
