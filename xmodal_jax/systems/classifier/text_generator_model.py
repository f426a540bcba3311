"""S1's text generator: image -> 64-d embedding x, and the query matrix W [K, 64] it is scored against.

p(q_c | x) = softmax_c(-s * d(x, w_c)), d the cosine distance (seed eq. 1); the scores themselves are computed
by `systems/classifier/sampled_softmax.py` (training) and `systems/classifier/phrase_lookup.py` (top-k phrases), so this module
only holds the parameters. W carries the logical axes ("queries", "query_embed"): the rule table shards the
K rows over the `model` mesh axis. Rows >= num_queries are padding (so K divides the mesh) and never scored.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal_jax.models import layers


class TextGenerator(nn.Module):
  """images [batch, H, W, 3] (normalised) -> (x [batch, embed_dim], W [padded K, embed_dim])."""
  backbone: nn.Module
  num_queries: int
  embed_dim: int = 64

  @property
  def padded_queries(self) -> int:
    return layers.padded_vocab_size(self.num_queries)

  def setup(self):
    self.bottleneck = layers.dense(self.embed_dim, ("embed", "query_embed"), name="bottleneck")
    init = nn.initializers.normal(stddev=self.embed_dim ** -0.5)
    self.queries = self.param("queries", nn.with_logical_partitioning(init, ("queries", "query_embed")),
                              (self.padded_queries, self.embed_dim), jnp.float32)

  def embed_image(self, images: jnp.ndarray) -> jnp.ndarray:
    """[batch, H, W, 3] -> x [batch, embed_dim] (not normalised; the cosine normalises)."""
    return self.bottleneck(jnp.mean(self.backbone(images), axis=(1, 2))).astype(jnp.float32)

  def query_table(self) -> jax.Array:
    """W [num_queries, embed_dim]: the real rows only."""
    return self.queries[:self.num_queries]

  def __call__(self, images: jnp.ndarray) -> tuple[jnp.ndarray, jax.Array]:
    return self.embed_image(images), self.queries
