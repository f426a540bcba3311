"""BERT encoder (post-LN transformer, exact GELU) in Flax linen, for loading pretrained checkpoints (MiniLM).

Mirrors Hugging Face `BertModel` without the pooler: hidden states [batch, len, hidden_size]. Its layers are the
library's `TransformerBlock` (models/transformer.py) with norm="post", activation "gelu" (erf) and BERT's
LayerNorm epsilon; `xmodal_jax.models.minilm` maps the checkpoint's tensor names onto these parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models.attention import padding_mask
from xmodal_jax.models.transformer import TransformerBlock, layer_norm


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
               stop_layer: int | None = None, deterministic: bool = True) -> jnp.ndarray:
    del deterministic  # fine-tuned without dropout: the argument is the towers' common call (models/two_tower.py)
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
      x = layer_norm(cfg.layer_norm_eps, name="embeddings_norm")(x)
    else:
      x = input_ids.astype(jnp.float32)
    mask = padding_mask(attention_mask)
    for i in range(start_layer, cfg.num_layers if stop_layer is None else stop_layer):
      x = TransformerBlock(num_heads=cfg.num_heads, mlp_dim=cfg.intermediate_size, norm="post",
                           layer_norm_eps=cfg.layer_norm_eps, activation="gelu", precision=self.precision,
                           name=f"layer_{i}")(x, mask)
    return x


def mean_pool(hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Mean over valid tokens: hidden [batch, len, dim], mask [batch, len] -> [batch, dim] (sentence-transformers)."""
  weights = mask.astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
