"""Two-tower image/text model into one L2-normalised joint space (VSE++, and the CLIP-style family)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


class DualEncoder(nn.Module):
  """Wraps an image backbone (-> feature map) and a text encoder (-> vector) with linear projections.

  encode_image: images [batch, H, W, 3] float -> [batch, embed_dim], unit norm.
  encode_text:  tokens [batch, length], mask [batch, length] -> [batch, embed_dim], unit norm.
  """
  image_backbone: nn.Module
  text_encoder: nn.Module
  embed_dim: int = 256

  def setup(self):
    self.image_proj = layers.dense(self.embed_dim, ("embed", "joint"), name="image_proj")
    self.text_proj = layers.dense(self.embed_dim, ("embed", "joint"), name="text_proj")

  def encode_image(self, images: jnp.ndarray) -> jnp.ndarray:
    feature_map = self.image_backbone(images)
    pooled = jnp.mean(feature_map, axis=(1, 2))
    return layers.l2_normalize(self.image_proj(pooled))

  def encode_text(self, tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    return layers.l2_normalize(self.text_proj(self.text_encoder(tokens, mask)))

  def __call__(self, images, tokens, mask):
    return self.encode_image(images), self.encode_text(tokens, mask)
