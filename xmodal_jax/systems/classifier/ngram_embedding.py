"""S1's text embedding: a bag of unigrams + bigrams -> 200-d unit vector, used as a siamese (twin) model."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


class BagOfNgramsEncoder(nn.Module):
  """ids [batch, len] (0 = padding), mask [batch, len] -> [batch, dim], unit norm.

  Mean of the n-gram embeddings, then a linear map (so the bag's scale and the output space are learnt apart).
  """
  vocab_size: int
  dim: int = 200
  embed_dim: int = 200

  @nn.compact
  def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    table = layers.embed(layers.padded_vocab_size(self.vocab_size), self.embed_dim, name="ngrams")
    mask = mask.astype(jnp.float32)[..., None]
    bag = jnp.sum(table(ids) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return layers.l2_normalize(layers.dense(self.dim, ("embed", "joint"), name="proj")(bag))


class SiameseQueryEmbedding(nn.Module):
  """Twin towers with ONE set of weights: (a_ids, a_mask, b_ids, b_mask) -> (a [batch, dim], b [batch, dim])."""
  vocab_size: int
  dim: int = 200
  embed_dim: int = 200

  def setup(self):
    self.encoder = BagOfNgramsEncoder(self.vocab_size, self.dim, self.embed_dim)

  def embed(self, ids: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    return self.encoder(ids, mask)

  def __call__(self, a_ids, a_mask, b_ids, b_mask):
    return self.encoder(a_ids, a_mask), self.encoder(b_ids, b_mask)
