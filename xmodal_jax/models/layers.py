"""Layer constructors whose parameters carry logical axis names (see `train/sharding.py` for the rules).

Models build their Dense/Conv/Embed/GroupNorm layers through these helpers, so that every parameter
is annotated once, in one way, and the mesh layout is decided by the rule table alone.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
_partitioned = nn.with_logical_partitioning


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """Dense layer; kernel [in, out] annotated with `axes` = (in_axis, out_axis), bias with out_axis."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=_partitioned(nn.initializers.lecun_normal(), axes),
                  bias_init=_partitioned(nn.initializers.zeros_init(), axes[-1:]))


def conv(features: int, kernel_size: Sequence[int], strides: Sequence[int] | int = 1, *,
         use_bias: bool = False, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
  """2D conv; kernel [kh, kw, in, out] annotated (conv_h, conv_w, conv_in, conv_out). He-normal init."""
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  return nn.Conv(features, tuple(kernel_size), strides=strides, padding="SAME", use_bias=use_bias, dtype=dtype,
                 name=name,
                 kernel_init=_partitioned(nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
                                          ("conv_h", "conv_w", "conv_in", "conv_out")),
                 bias_init=_partitioned(nn.initializers.zeros_init(), ("conv_out",)))


def group_norm(num_groups: int, features: int, *, zero_init: bool = False, dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.GroupNorm:
  """GroupNorm over channels (stateless, so it behaves the same for any batch size or mesh).

  `zero_init` starts the scale at 0: the last norm of a residual branch then makes the block an identity
  at initialisation (Goyal et al. 2017), which trains small ResNets from scratch faster.
  """
  groups = min(num_groups, features)
  while features % groups:
    groups -= 1
  scale_init = nn.initializers.zeros_init() if zero_init else nn.initializers.ones_init()
  return nn.GroupNorm(num_groups=groups, dtype=dtype, name=name,
                      scale_init=_partitioned(scale_init, ("conv_out",)),
                      bias_init=_partitioned(nn.initializers.zeros_init(), ("conv_out",)))


def embed(num_embeddings: int, features: int, *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Embed:
  """Token embedding table [vocab, embed]."""
  return nn.Embed(num_embeddings, features, dtype=dtype, name=name,
                  embedding_init=_partitioned(nn.initializers.normal(stddev=0.1), ("vocab", "embed")))


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """Embedding-table rows: the vocabulary rounded up to `multiple`, so the `vocab` axis divides evenly over
  any mesh axis that is a power of two up to `multiple` (and matmuls tile well). Extra rows are never used."""
  return -(-vocab_size // multiple) * multiple


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-6) -> jnp.ndarray:
  """x / max(||x||, eps) along `axis`, computed in float32. The max is taken before the square root, so the
  gradient stays finite at x = 0 (padded set items are zero vectors)."""
  x32 = x.astype(jnp.float32)
  return x32 / jnp.sqrt(jnp.maximum(jnp.sum(x32 * x32, axis=axis, keepdims=True), eps * eps))
