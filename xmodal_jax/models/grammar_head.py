"""The S5 grammar head: an MLP on a caption's text embedding giving the logit of "this caption is grammatical".

  g(c) = sigmoid(W_2 gelu(W_1 f_T(c) + b_1) + b_2)  in [0, 1]

(the seed: "an MLP + sigmoid on the text embedding"). The head returns the logit; the sigmoid is the caller's
(the binary cross-entropy takes logits).
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
    h = nn.gelu(layers.dense(self.hidden, ("joint", "hidden"), name="fc1")(text_emb.astype(jnp.float32)))
    return layers.dense(1, ("hidden", None), name="fc2")(h)[..., 0]
