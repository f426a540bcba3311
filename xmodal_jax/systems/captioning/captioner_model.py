"""An image captioner: an image encoder giving a grid of features, a projection to the decoder's width, a decoder.

  context = LN(W_c encoder(images))  [batch, ctx_len, width]     (or from cached encoder features)
  logits  = decoder(tokens, context) [batch, len, vocab]         (models/caption_decoder.py)

Image encoders (any linen module called as `encoder(images, deterministic=...)` returning [batch, h, w, C] or
[batch, n, C]): a ViT without pooling (its patch tokens; the seed's transformer variant), a small ResNet from
scratch (the shapes world), or the frozen pretrained EfficientNet-Lite without its pooling (grid features; with a
feature cache the encoder is skipped in training and `features=` is given instead).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers
from xmodal_jax.models.transformer import layer_norm


class Captioner(nn.Module):
  """images [batch, H, W, C] (normalised) + tokens [batch, len] -> logits [batch, len, vocab].

  Attributes: encoder (None: the caller always passes features), decoder (a caption decoder), width (the
  decoder's), dtype, encoder_call (extra keyword arguments of the encoder's call as (name, value) pairs, e.g.
  (("pool", False),) for EfficientNet-Lite's grid).
  """
  encoder: nn.Module | None
  decoder: nn.Module
  width: int
  dtype: Any = jnp.float32
  encoder_call: tuple = ()

  def setup(self):
    self.context_proj = layers.dense(self.width, ("conv_in", "embed"), dtype=self.dtype, name="context_proj")
    self.context_norm = layer_norm(1e-6, dtype=self.dtype, name="context_norm")

  def features(self, images: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    """The encoder's output as a sequence [batch, ctx_len, C] (what a feature cache stores, flattened)."""
    x = self.encoder(images, deterministic=deterministic, **dict(self.encoder_call))
    return x.reshape(x.shape[0], -1, x.shape[-1])

  def encode(self, images: jnp.ndarray | None = None, *, features: jnp.ndarray | None = None,
             deterministic: bool = True) -> jnp.ndarray:
    """Images, or encoder `features` [batch, ctx_len, C] -> context [batch, ctx_len, width]."""
    x = self.features(images, deterministic=deterministic) if features is None else features
    x = x.reshape(x.shape[0], -1, x.shape[-1]).astype(self.dtype)
    return self.context_norm(self.context_proj(x))

  def logits(self, tokens: jnp.ndarray, context: jnp.ndarray, *, positions: jnp.ndarray | int = 0,
             deterministic: bool = True) -> jnp.ndarray:
    """tokens [batch, len] (the decoder's inputs: <bos> w_1 .. w_{len-1}) -> float32 [batch, len, vocab]."""
    return self.decoder(tokens, context, None, positions=positions, deterministic=deterministic)

  def __call__(self, images: jnp.ndarray | None, tokens: jnp.ndarray, *, features: jnp.ndarray | None = None,
               deterministic: bool = True) -> jnp.ndarray:
    return self.logits(tokens, self.encode(images, features=features, deterministic=deterministic),
                       deterministic=deterministic)
