"""Text transformer (GPT-2 / CLIP text tower) on the library's transformer block.

tokens [batch, len] -> token + learned position embeddings -> pre-LN blocks (causal, as CLIP, or bidirectional)
-> LayerNorm -> pooling -> [batch, width]:
  "eot":    the output at each sequence's last real token (CLIP pools at the end-of-text token, which ends every
            sequence; here "last real token" is read from the mask, so it works for any tokenizer);
  "argmax": the output at the position of the largest token id (CLIP's literal rule: EOT has the highest id;
            for converted CLIP vocabularies);
  "mean":   the mean over real tokens; "first": the first position (a [CLS]-style token).
Padding is at the end (the library's tokenizers right-pad). With causal attention a real token never sees
padding, so no padding mask is needed; bidirectional attention masks the padded keys.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers
from xmodal_jax.models.attention import padding_mask
from xmodal_jax.models.transformer import Transformer, layer_norm

Dtype = Any
POOLS = ("eot", "argmax", "mean", "first")
_partitioned = nn.with_logical_partitioning


def pool_tokens(x: jnp.ndarray, tokens: jnp.ndarray, mask: jnp.ndarray, pool: str) -> jnp.ndarray:
  """x [batch, len, width], tokens / mask [batch, len] -> [batch, width] by the rule `pool` (POOLS)."""
  if pool == "eot":
    last = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=1) - 1, 0)
    return jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
  if pool == "argmax":
    return jnp.take_along_axis(x, jnp.argmax(tokens, axis=1)[:, None, None], axis=1)[:, 0]
  if pool == "mean":
    weights = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  if pool == "first":
    return x[:, 0]
  raise ValueError(f"Text pooling {pool!r}; use one of {POOLS}.")


class TextTransformer(nn.Module):
  """tokens, mask [batch, len] -> pooled [batch, width] (see the module docstring).

  Attributes: vocab_size (the table is padded to a multiple of 128 rows), max_len, width, depth, num_heads,
  mlp_dim (default 4 * width), causal, pool (POOLS), layer_norm_eps, activation, dropout_rate, remat,
  dtype / param_dtype.
  """
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int | None = None
  causal: bool = True
  pool: str = "eot"
  layer_norm_eps: float = 1e-5
  activation: str = "gelu"
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    if self.pool not in POOLS:
      raise ValueError(f"TextTransformer.pool={self.pool!r}; use one of {POOLS}.")
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"TextTransformer: {length} tokens but max_len={self.max_len}; raise config.model.text.max_len "
                       "or config.data.max_len.")
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Embed(layers.padded_vocab_size(self.vocab_size), self.width, name="token_embed", **common,
                 embedding_init=_partitioned(nn.initializers.normal(stddev=0.02), ("vocab", "embed")))(tokens)
    pos = self.param("pos_embed", _partitioned(nn.initializers.normal(stddev=0.01), ("length", "embed")),
                     (self.max_len, self.width), self.param_dtype)
    x = x + pos[None, :length].astype(self.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.width, norm="pre",
                 layer_norm_eps=self.layer_norm_eps, activation=self.activation, causal=self.causal,
                 dropout_rate=self.dropout_rate, **common)
    attention_mask = None if self.causal else padding_mask(mask)
    x = Transformer(self.depth, block, remat=self.remat, name="encoder")(x, attention_mask,
                                                                         deterministic=deterministic)
    x = layer_norm(self.layer_norm_eps, name="final_norm", **common)(x)
    return pool_tokens(x, tokens, mask, self.pool)
