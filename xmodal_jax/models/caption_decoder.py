"""Caption decoders: tokens so far + image context -> next-token logits, teacher-forced or one step at a time.

Two decoders with one calling convention, so the decoding algorithms (systems/captioning/sampling.py, beam_search.py) and the captioning
task never ask which one they drive:

  logits = decoder(tokens [batch, len], context [batch, ctx_len, width], context_mask [batch, ctx_len] | None,
                   positions=offset, deterministic=...)  ->  [batch, len, vocab] float32

* `TransformerCaptionDecoder`: token + learned position embeddings -> pre-LN causal blocks of the library's
  transformer (models/transformer.py) with cross attention over the image context -> LayerNorm -> a Dense to the
  vocabulary. The seed's transformer variant (ViT/CNN features + transformer decoder).
* `GRUCaptionDecoder`: the seed's CNN+RNN option (Show and Tell, Vinyals et al. 2015, with the image entering as
  the initial state): h_0 = tanh(W_h mean(context)), h_t = GRU(h_{t-1}, [E(w_{t-1}); mean(context)]), logits =
  W_o h_t. The pooled image also enters every step (Donahue et al.'s variant), so the image does not fade out.

Decoding (`decode=True`): both keep a "cache" collection. Initialise it with `init` on a full-length input
(zeros are fine: models/attention.py's convention), then `apply(..., mutable=["cache"])` with chunks of new
positions and `positions` = the index of the chunk's first token. The transformer caches its keys/values (the
cross attention recomputes them from the fixed context each call); the GRU caches its hidden state. Running the
whole caption at once or token by token gives the same logits (tests/test_captioning_decode.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xmodal_jax.models import layers
from xmodal_jax.models.transformer import Transformer, layer_norm

Dtype = Any
_partitioned = nn.with_logical_partitioning
DECODERS = ("transformer", "gru")


def _logits(x: jnp.ndarray, vocab_size: int, dtype: Dtype) -> jnp.ndarray:
  """[batch, len, width] -> float32 logits [batch, len, vocab_size] (the table is padded; extra ids masked)."""
  padded = layers.padded_vocab_size(vocab_size)
  out = nn.Dense(padded, dtype=dtype, name="logits",
                 kernel_init=_partitioned(nn.initializers.normal(stddev=0.02), ("embed", "vocab")),
                 bias_init=_partitioned(nn.initializers.zeros_init(), ("vocab",)))(x).astype(jnp.float32)
  if padded == vocab_size:
    return out
  return jnp.where(jnp.arange(padded) < vocab_size, out, -1e9)


def _mean_context(context: jnp.ndarray, context_mask: jnp.ndarray | None) -> jnp.ndarray:
  """[batch, ctx_len, width] -> [batch, width], the mean over real context positions."""
  if context_mask is None:
    return jnp.mean(context, axis=1)
  weights = context_mask.astype(context.dtype)[..., None]
  return jnp.sum(context * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class TransformerCaptionDecoder(nn.Module):
  """Causal transformer decoder with cross attention (see the module docstring).

  Attributes: vocab_size, max_len (positions), width, depth, num_heads, mlp_dim (default 4 * width),
  dropout_rate, decode (KV cache), dtype.
  """
  vocab_size: int
  max_len: int
  width: int = 256
  depth: int = 3
  num_heads: int = 4
  mlp_dim: int | None = None
  dropout_rate: float = 0.1
  decode: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, context: jnp.ndarray, context_mask: jnp.ndarray | None = None, *,
               positions: jnp.ndarray | int = 0, deterministic: bool = True) -> jnp.ndarray:
    length = tokens.shape[1]
    x = nn.Embed(layers.padded_vocab_size(self.vocab_size), self.width, dtype=self.dtype, name="token_embed",
                 embedding_init=_partitioned(nn.initializers.normal(stddev=0.02), ("vocab", "embed")))(tokens)
    pos = self.param("pos_embed", _partitioned(nn.initializers.normal(stddev=0.01), ("length", "embed")),
                     (self.max_len, self.width))
    x = x + jax.lax.dynamic_slice_in_dim(pos, jnp.asarray(positions, jnp.int32), length, axis=0)[None]
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.width, norm="pre", causal=True,
                 cross_attention=True, dropout_rate=self.dropout_rate, decode=self.decode, dtype=self.dtype)
    cross_mask = None if context_mask is None else context_mask.astype(bool)[:, None, None, :]
    x = Transformer(self.depth, block, name="decoder")(x, None, context.astype(self.dtype), cross_mask,
                                                        deterministic=deterministic)
    x = layer_norm(1e-6, dtype=self.dtype, name="final_norm")(x)
    return _logits(x, self.vocab_size, self.dtype)


class GRUCaptionDecoder(nn.Module):
  """GRU decoder started from the image (see the module docstring).

  Attributes: vocab_size, max_len (unused but kept for one constructor signature), width (embedding and hidden
  size), dropout_rate (on the inputs and outputs of the cell), decode (hidden-state cache), dtype.
  """
  vocab_size: int
  max_len: int
  width: int = 512
  dropout_rate: float = 0.1
  decode: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, context: jnp.ndarray, context_mask: jnp.ndarray | None = None, *,
               positions: jnp.ndarray | int = 0, deterministic: bool = True) -> jnp.ndarray:
    pooled = _mean_context(context.astype(jnp.float32), context_mask)
    start = jnp.tanh(layers.dense(self.width, ("embed", "hidden"), dtype=self.dtype, name="init_state")(pooled))
    x = layers.embed(layers.padded_vocab_size(self.vocab_size), self.width, dtype=self.dtype,
                     name="token_embed")(tokens)
    x = jnp.concatenate([x, jnp.broadcast_to(pooled[:, None].astype(x.dtype), (*x.shape[:2], pooled.shape[-1]))],
                        axis=-1)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    cell = nn.GRUCell(
        self.width, dtype=self.dtype, name="cell",
        kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "hidden")),
        recurrent_kernel_init=_partitioned(nn.initializers.orthogonal(), ("hidden_in", "hidden")),
        bias_init=_partitioned(nn.initializers.zeros_init(), ("hidden",)))
    if self.decode:
      initialised = self.has_variable("cache", "hidden")
      hidden = self.variable("cache", "hidden", lambda: jnp.zeros_like(start))
      carry = jnp.where(jnp.asarray(positions) == 0, start, hidden.value) if initialised else start
    else:
      carry = start
    carry, states = nn.RNN(cell, return_carry=True, name="gru")(x, initial_carry=carry)
    if self.decode and initialised:
      hidden.value = carry
    states = nn.Dropout(self.dropout_rate)(states, deterministic=deterministic)
    return _logits(states, self.vocab_size, self.dtype)


def build_decoder(kind: str, **fields) -> nn.Module:
  """The decoder `kind` (DECODERS) with the fields it takes (others are ignored: one config serves both)."""
  if kind == "transformer":
    cls, names = TransformerCaptionDecoder, ("vocab_size", "max_len", "width", "depth", "num_heads", "mlp_dim",
                                             "dropout_rate", "decode", "dtype")
  elif kind == "gru":
    cls, names = GRUCaptionDecoder, ("vocab_size", "max_len", "width", "dropout_rate", "decode", "dtype")
  else:
    raise ValueError(f"Caption decoder {kind!r}; use one of {DECODERS}.")
  return cls(**{k: v for k, v in fields.items() if k in names})
