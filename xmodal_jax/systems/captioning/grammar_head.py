"""The S5 grammar head: an MLP on a caption's text embedding giving the logit of "this caption is grammatical".

  g(c) = sigmoid(W_2 gelu(W_1 sqrt(D) f_T(c) + b_1) + b_2)  in [0, 1]

(the seed: "an MLP + sigmoid on the text embedding"). f_T(c) is a unit vector [D]: scaled by sqrt(D) its entries
have about unit size, so the MLP's first layer learns at the usual rate (on the raw unit vector it barely moved
in a few hundred steps). The head returns the logit; the sigmoid is the caller's (the binary cross-entropy takes
logits).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


class GrammarHead(nn.Module):
  """text embeddings [batch, D] -> logits [batch]. Attributes: hidden (the MLP's width)."""
  hidden: int = 256

  @nn.compact
  def __call__(self, text_emb: jnp.ndarray) -> jnp.ndarray:
    x = text_emb.astype(jnp.float32) * jnp.sqrt(float(text_emb.shape[-1]))
    h = nn.gelu(layers.dense(self.hidden, ("joint", "hidden"), name="fc1")(x))
    return layers.dense(1, ("hidden", None), name="fc2")(h)[..., 0]
