"""GRU text encoder (VSE++ style): word embeddings -> GRU -> last valid hidden state (or masked mean)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


class GRUTextEncoder(nn.Module):
  """tokens [batch, length] int32, mask [batch, length] bool -> features [batch, hidden_dim].

  `pooling="last"` returns the hidden state at each sequence's last valid token (VSE++);
  `pooling="mean"` averages the hidden states over valid tokens. The embedding table has
  `padded_vocab_size(vocab_size)` rows (so it shards evenly); ids >= vocab_size never occur.
  """
  vocab_size: int
  embed_dim: int = 128
  hidden_dim: int = 256
  pooling: str = "last"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    if self.pooling not in ("last", "mean"):
      raise ValueError(f"GRUTextEncoder.pooling={self.pooling!r}: use 'last' or 'mean'.")
    x = layers.embed(layers.padded_vocab_size(self.vocab_size), self.embed_dim, dtype=self.dtype, name="token_embed")(tokens)
    cell = nn.GRUCell(
        self.hidden_dim, dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "hidden")),
        recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(), ("hidden_in", "hidden")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("hidden",)))
    lengths = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1), 1)
    last, states = nn.RNN(cell, return_carry=True, name="gru")(x, seq_lengths=lengths)
    if self.pooling == "last":
      return last
    weights = mask.astype(states.dtype)[..., None]
    return jnp.sum(states * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
