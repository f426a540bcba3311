"""Bidirectional GRU word encoder (SCAN / S2 style): word embeddings -> forward and backward GRUs -> one feature
per word, the mean of the two directions' hidden states (Lee et al. 2018, SCAN sec. 3.2)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


def _gru_cell(hidden_dim: int, dtype, name: str) -> nn.GRUCell:
  return nn.GRUCell(
      hidden_dim, dtype=dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "hidden")),
      recurrent_kernel_init=nn.with_logical_partitioning(nn.initializers.orthogonal(), ("hidden_in", "hidden")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("hidden",)))


class BiGRUWordEncoder(nn.Module):
  """tokens [batch, length] int32, mask [batch, length] bool -> word features [batch, length, hidden_dim].

  h_t = (h_t^fwd + h_t^bwd) / 2. The backward GRU starts at each sequence's last valid token (padding is
  skipped by `seq_lengths`), so a word's feature never depends on padding; features at padded positions are
  zeros. The embedding table has `padded_vocab_size(vocab_size)` rows (so it shards evenly).
  """
  vocab_size: int
  embed_dim: int = 300
  hidden_dim: int = 1024
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    x = layers.embed(layers.padded_vocab_size(self.vocab_size), self.embed_dim, dtype=self.dtype,
                     name="token_embed")(tokens)
    lengths = jnp.maximum(jnp.sum(mask.astype(jnp.int32), axis=-1), 1)
    forward = nn.RNN(_gru_cell(self.hidden_dim, self.dtype, "forward_cell"), name="gru_forward")(x, seq_lengths=lengths)
    backward = nn.RNN(_gru_cell(self.hidden_dim, self.dtype, "backward_cell"), reverse=True, keep_order=True,
                      name="gru_backward")(x, seq_lengths=lengths)
    return (forward + backward) / 2 * mask[..., None].astype(forward.dtype)
