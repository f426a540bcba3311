"""The one transformer block of the library (ViT, text transformer, BERT/MiniLM, and the later S2/S4/S5 models),
and a stack of them.

Pre-LayerNorm (GPT-2 / ViT / CLIP; Xiong et al. 2020), for a block input x:
  x = x + Drop(SelfAttn(LN(x)));  [x = x + Drop(CrossAttn(LN(x), context))];  x = x + Drop(MLP(LN(x)))
Post-LayerNorm (the original transformer, BERT):
  x = LN(x + Drop(SelfAttn(x)));  [x = LN(x + Drop(CrossAttn(x, context)))];  x = LN(x + Drop(MLP(x)))
MLP(x) = W_2 act(W_1 x + b_1) + b_2 with W_1 [embed, mlp], W_2 [mlp, embed].

Parameter names inside a block: attention, attention_norm, cross_attention, cross_attention_norm, mlp/{fc1,fc2},
mlp_norm; logical axes embed / heads / kv / mlp. `Transformer` names its blocks layer_0 .. layer_{n-1}; with
`remat=True` each block is rematerialised in the backward pass (`nn.remat`: activations of one block at a time).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal_jax.models.attention import MultiHeadAttention, causal_mask, combine_masks

Dtype = Any
_partitioned = nn.with_logical_partitioning

ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),          # erf GELU (BERT, ViT, open_clip's nn.GELU)
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),      # tanh approximation (GPT-2, big_vision)
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),    # OpenAI CLIP
    "relu": nn.relu,
}
NORM_POSITIONS = ("pre", "post")


def layer_norm(epsilon: float, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
  """LayerNorm over the last (embed) axis; scale and bias annotated ("embed",). Statistics in float32."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=_partitioned(nn.initializers.ones_init(), ("embed",)),
                      bias_init=_partitioned(nn.initializers.zeros_init(), ("embed",)))


class MlpBlock(nn.Module):
  """[..., embed] -> [..., embed]: fc1 (embed -> mlp_dim), activation, dropout, fc2 (mlp_dim -> embed)."""
  mlp_dim: int
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"MlpBlock.activation={self.activation!r}; use one of {sorted(ACTIVATIONS)}.")
    dense = lambda features, axes, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision, name=name,
        kernel_init=_partitioned(nn.initializers.xavier_uniform(), axes),
        bias_init=_partitioned(nn.initializers.normal(stddev=1e-6), axes[-1:]))
    h = ACTIVATIONS[self.activation](dense(self.mlp_dim, ("embed", "mlp"), "fc1")(x))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense(x.shape[-1], ("mlp", "embed"), "fc2")(h)


class TransformerBlock(nn.Module):
  """x [batch, len, embed] -> [batch, len, embed].

  Call args: mask (bool, broadcastable to [batch, heads, len, len]: True = attend; the causal mask is added when
  `causal`), context [batch, ctx_len, embed] and context_mask (same convention, over ctx_len) for cross attention,
  deterministic (False: dropout on).

  Attributes:
    num_heads, mlp_dim: sizes (head_dim = embed // num_heads).
    norm: "pre" or "post" LayerNorm (see the module docstring); layer_norm_eps: its epsilon.
    activation: one of ACTIVATIONS. causal: self-attention sees only earlier positions.
    cross_attention: add a cross-attention sub-layer over `context`.
    dropout_rate: dropout on each sub-layer's output and inside the MLP; attention_dropout_rate: on the attention
      probabilities.
    decode: key/value cache for incremental decoding (see models/attention.py); implies causal self-attention.
    dtype / param_dtype: compute and storage dtypes (bfloat16 / float32 for mixed precision).
  """
  num_heads: int
  mlp_dim: int
  norm: str = "pre"
  layer_norm_eps: float = 1e-6
  activation: str = "gelu"
  causal: bool = False
  cross_attention: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  decode: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, context: jnp.ndarray | None = None,
               context_mask: jnp.ndarray | None = None, deterministic: bool = True) -> jnp.ndarray:
    if self.norm not in NORM_POSITIONS:
      raise ValueError(f"TransformerBlock.norm={self.norm!r}; use one of {NORM_POSITIONS}.")
    if self.cross_attention and context is None:
      raise ValueError("TransformerBlock(cross_attention=True) needs a context [batch, ctx_len, embed].")
    if self.causal and not self.decode:
      mask = combine_masks(mask, causal_mask(x.shape[1]))
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda name: layer_norm(self.layer_norm_eps, name=name, **common)
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    attention = lambda name, decode: MultiHeadAttention(
        self.num_heads, dropout_rate=self.attention_dropout_rate, decode=decode, precision=self.precision,
        name=name, **common)

    def sublayer(x, name, fn):
      if self.norm == "pre":
        return x + drop(fn(norm(f"{name}_norm")(x)))
      return norm(f"{name}_norm")(x + drop(fn(x)))

    x = sublayer(x, "attention", lambda y: attention("attention", self.decode)(
        y, mask=mask, deterministic=deterministic))
    if self.cross_attention:
      x = sublayer(x, "cross_attention", lambda y: attention("cross_attention", False)(
          y, context, mask=context_mask, deterministic=deterministic))
    mlp = MlpBlock(self.mlp_dim, self.activation, self.dropout_rate, precision=self.precision, name="mlp", **common)
    return sublayer(x, "mlp", lambda y: mlp(y, deterministic=deterministic))


class Transformer(nn.Module):
  """A stack of `num_layers` TransformerBlocks named layer_0 ..; [batch, len, embed] -> [batch, len, embed].

  `block` holds the TransformerBlock attributes shared by all layers (num_heads, mlp_dim, norm, causal, ...).
  start / stop run only the layers [start, stop) (caching the activations of frozen lower layers).
  remat: rematerialise each block in the backward pass (less memory, one more forward).
  """
  num_layers: int
  block: dict
  remat: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None, context: jnp.ndarray | None = None,
               context_mask: jnp.ndarray | None = None, *, deterministic: bool = True, start: int = 0,
               stop: int | None = None) -> jnp.ndarray:
    block_cls = nn.remat(TransformerBlock, static_argnums=(5,)) if self.remat else TransformerBlock
    for i in range(start, self.num_layers if stop is None else stop):
      x = block_cls(**self.block, name=f"layer_{i}")(x, mask, context, context_mask, deterministic)
    return x
