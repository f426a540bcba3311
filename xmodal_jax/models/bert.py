"""BERT encoder (post-LN transformer, exact GELU) in Flax linen, for loading frozen pretrained checkpoints.

Mirrors Hugging Face `BertModel` without the pooler: hidden states [batch, len, hidden_size]. Parameter names follow
the checkpoint's structure (see `xmodal_jax.models.minilm.load_params` for the mapping). float32 throughout.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder; defaults are all-MiniLM-L6-v2's."""
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_hf(cls, d: dict[str, Any]) -> BertConfig:
    """From a Hugging Face `config.json` dict (model_type bert, absolute positions, gelu)."""
    if d.get("hidden_act", "gelu") != "gelu":
      raise ValueError(f"BertConfig: hidden_act={d['hidden_act']!r} unsupported (only exact 'gelu').")
    if d.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"BertConfig: position_embedding_type={d['position_embedding_type']!r} unsupported.")
    return cls(vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
               num_heads=d["num_attention_heads"], intermediate_size=d["intermediate_size"],
               max_position=d["max_position_embeddings"], type_vocab_size=d["type_vocab_size"],
               layer_norm_eps=d["layer_norm_eps"])


class BertSelfAttention(nn.Module):
  """x [batch, len, hidden], bias [batch, 1, 1, len] (0 keep / very negative drop) -> [batch, len, hidden]."""
  config: BertConfig
  precision: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    if cfg.hidden_size % cfg.num_heads:
      raise ValueError(f"hidden_size={cfg.hidden_size} is not a multiple of num_heads={cfg.num_heads}.")
    head_dim = cfg.hidden_size // cfg.num_heads

    def heads(name):  # [batch, len, hidden] -> [batch, heads, len, head_dim]
      y = nn.Dense(cfg.hidden_size, precision=self.precision, name=name)(x)
      return y.reshape(*y.shape[:2], cfg.num_heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = heads("query"), heads("key"), heads("value")
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, precision=self.precision) / jnp.sqrt(jnp.float32(head_dim))
    probs = jax.nn.softmax(scores + bias, axis=-1)
    ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v, precision=self.precision)
    ctx = ctx.transpose(0, 2, 1, 3).reshape(x.shape)
    return nn.Dense(cfg.hidden_size, precision=self.precision, name="output")(ctx)


class BertLayer(nn.Module):
  """One post-LN block: x = LN(x + attn(x)); x = LN(x + ffn(x)). [batch, len, hidden] -> same."""
  config: BertConfig
  precision: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_norm")(
        x + BertSelfAttention(cfg, self.precision, name="attention")(x, bias))
    h = nn.Dense(cfg.intermediate_size, precision=self.precision, name="intermediate")(x)
    h = nn.Dense(cfg.hidden_size, precision=self.precision, name="output")(nn.gelu(h, approximate=False))
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_norm")(x + h)


class BertEncoder(nn.Module):
  """input_ids [batch, len] int32, attention_mask [batch, len] (1 token / 0 padding) -> [batch, len, hidden].

  token_type_ids [batch, len] defaults to zeros (single-segment input). `precision` goes to every matmul
  (e.g. "highest" to keep float32 accuracy on accelerators whose default matmul precision is lower).

  Entry and exit points, for caching frozen lower layers: with `start_layer` > 0, `input_ids` is the hidden
  state [batch, len, hidden] after layer start_layer-1 (not token ids); layers [start_layer, stop_layer) run.
  """
  config: BertConfig
  precision: Any = None

  @nn.compact
  def __call__(self, input_ids: jnp.ndarray, attention_mask: jnp.ndarray,
               token_type_ids: jnp.ndarray | None = None, *, start_layer: int = 0,
               stop_layer: int | None = None) -> jnp.ndarray:
    cfg = self.config
    length = input_ids.shape[1]
    if length > cfg.max_position:
      raise ValueError(f"BertEncoder: sequence length {length} exceeds max_position={cfg.max_position}.")
    if start_layer == 0:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word_embeddings")(input_ids)
           + nn.Embed(cfg.max_position, cfg.hidden_size, name="position_embeddings")(jnp.arange(length)[None, :])
           + nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type_embeddings")(token_type_ids))
      x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="embeddings_norm")(x)
    else:
      x = input_ids.astype(jnp.float32)
    # Additive mask as in Hugging Face: 0 where attended, the most negative float32 where padding.
    keep = attention_mask.astype(bool)[:, None, None, :]
    bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    for i in range(start_layer, cfg.num_layers if stop_layer is None else stop_layer):
      x = BertLayer(cfg, self.precision, name=f"layer_{i}")(x, bias)
    return x


def mean_pool(hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over valid tokens: hidden [batch, len, dim], mask [batch, len] -> [batch, dim] (sentence-transformers)."""
  weights = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
