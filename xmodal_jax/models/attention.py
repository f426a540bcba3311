"""Multi-head dot-product attention with logical axes, masks and a key/value cache for incremental decoding.

Scaled dot-product attention (Vaswani et al. 2017, eq. 1): softmax(Q K^T / sqrt(d_k)) V, per head, with
Q = x W_q, K = c W_k, V = c W_v (c = x for self-attention, the context for cross attention) and the heads'
outputs combined by W_o. Kernels are [embed, heads, kv] (W_q, W_k, W_v) and [heads, kv, embed] (W_o), annotated
with the logical axes `embed`, `heads`, `kv` (train/sharding.py maps them to the mesh).

Masks are boolean, True = attend, broadcastable to [batch, heads, q_len, kv_len]; `padding_mask` and
`causal_mask` build them. Without attention dropout the product runs through `jax.nn.dot_product_attention`
(XLA's fused attention, cuDNN flash attention on GPUs where it applies); with dropout it is written out.

Decoding (`decode=True`, self-attention only): the module keeps `cache` variables `cached_key`,
`cached_value` [batch, max_len, heads, kv] and `cache_index` []. Initialise them by calling `init` with an input
of the full length (zeros are fine), then `apply` chunks of one or more new positions with
`mutable=["cache"]`: each call writes its keys/values at `cache_index` and attends causally to everything
cached so far, so decoding token by token gives the outputs of the full causal forward. Cross attention in a
decoder recomputes its keys/values from the context at each call (they do not grow with the decoded length).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_partitioned = nn.with_logical_partitioning


def padding_mask(key_mask: jnp.ndarray) -> jnp.ndarray:
  """key_mask [batch, kv_len] (1/True = a real token) -> bool [batch, 1, 1, kv_len]."""
  return key_mask.astype(bool)[:, None, None, :]


def causal_mask(length: int) -> jnp.ndarray:
  """bool [1, 1, length, length]: query position i attends to key positions <= i."""
  return jnp.tril(jnp.ones((length, length), bool))[None, None]


def combine_masks(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
  """Logical AND of the masks that are not None (None when all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


class MultiHeadAttention(nn.Module):
  """x [batch, q_len, embed] (+ context [batch, kv_len, embed] for cross attention) -> [batch, q_len, embed].

  Attributes:
    num_heads: number of heads; head_dim defaults to embed // num_heads.
    dtype: computation dtype (bfloat16 for mixed precision); param_dtype: storage dtype of the kernels.
    dropout_rate: dropout on the attention probabilities (training only).
    decode: keep a key/value cache and attend causally to it (self-attention only; see the module docstring).
    precision: matmul precision (e.g. "highest" for float32 parity tests on accelerators).
  """
  num_heads: int
  head_dim: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  use_bias: bool = True
  decode: bool = False
  precision: Any = None

  def _projection(self, features: tuple[int, int], name: str) -> nn.DenseGeneral:
    return nn.DenseGeneral(features, axis=-1, use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, precision=self.precision, name=name,
                           kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "heads", "kv")),
                           bias_init=_partitioned(nn.initializers.zeros_init(), ("heads", "kv")))

  @nn.compact
  def __call__(self, x: jnp.ndarray, context: jnp.ndarray | None = None, mask: jnp.ndarray | None = None, *,
               deterministic: bool = True) -> jnp.ndarray:
    embed = x.shape[-1]
    head_dim = self.head_dim or embed // self.num_heads
    if self.head_dim is None and embed % self.num_heads:
      raise ValueError(f"MultiHeadAttention: width {embed} is not a multiple of num_heads={self.num_heads}; "
                       "choose a width divisible by the heads or set head_dim.")
    cross = context is not None
    kv_input = context if cross else x
    shape = (self.num_heads, head_dim)
    query = self._projection(shape, "query")(x)        # [batch, q_len, heads, kv]
    key = self._projection(shape, "key")(kv_input)     # [batch, kv_len, heads, kv]
    value = self._projection(shape, "value")(kv_input)
    if self.decode and not cross:
      key, value, mask = self._update_cache(key, value, mask)
    out = self._attend(query, key, value, mask, deterministic)
    return nn.DenseGeneral(embed, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, precision=self.precision, name="out",
                           kernel_init=_partitioned(nn.initializers.lecun_normal(), ("heads", "kv", "embed")),
                           bias_init=_partitioned(nn.initializers.zeros_init(), ("embed",)))(out)

  def _update_cache(self, key, value, mask):
    """Write this call's keys/values at cache_index; return the whole cache and the causal mask over it."""
    initialised = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialised:  # the init call: the cache takes the input's (full) length; attend as a causal forward
      return key, value, combine_masks(mask, causal_mask(key.shape[1]))
    batch, max_len, heads, head_dim = cached_key.value.shape
    new = key.shape[1]
    if key.shape[0] != batch or key.shape[2:] != (heads, head_dim):
      raise ValueError(f"Decoding with a cache for [batch={batch}, heads={heads}, kv={head_dim}] but got keys "
                       f"{key.shape}; initialise the cache with the batch you decode.")
    index = cache_index.value
    key = jax.lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype), (0, index, 0, 0))
    value = jax.lax.dynamic_update_slice(cached_value.value, value.astype(cached_value.value.dtype),
                                         (0, index, 0, 0))
    cached_key.value, cached_value.value = key, value
    cache_index.value = index + new
    query_positions = index + jnp.arange(new)
    visible = jnp.arange(max_len)[None, :] <= query_positions[:, None]   # [new, max_len]
    return key, value, combine_masks(mask, visible[None, None])

  def _attend(self, query, key, value, mask, deterministic):
    """[batch, q, heads, kv] x [batch, k, heads, kv] -> [batch, q, heads, kv]."""
    if mask is not None:
      mask = jnp.broadcast_to(mask, (query.shape[0], self.num_heads, query.shape[1], key.shape[1]))
    if (self.dropout_rate == 0.0 or deterministic) and self.precision is None:
      return jax.nn.dot_product_attention(query, key, value, mask=mask)
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, precision=self.precision) / jnp.sqrt(
        jnp.asarray(query.shape[-1], jnp.float32)).astype(query.dtype)
    scores = scores.astype(jnp.float32)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    if self.dropout_rate > 0.0 and not deterministic:
      probs = nn.Dropout(self.dropout_rate)(probs, deterministic=False)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, value, precision=self.precision)
