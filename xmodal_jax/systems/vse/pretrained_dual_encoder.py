"""Two pretrained towers, EfficientNet-Lite (ImageNet) and a BERT sentence encoder (all-MiniLM-L6-v2),
projected into one L2-normalised joint space.

Each tower has a cut: its part below the cut is frozen (and can be cached: `lower_image` / `lower_text` give the
activations at the cut), its part above is trained with the projections. `encode_image` / `encode_text` take
either raw inputs (start at the bottom) or activations at the cut (`start` = the cut):

  image cut: a block index of EfficientNet-Lite (0 = train it all; `stage_starts` names them), num_blocks = only
    the head conv trains, num_blocks + 1 ("pooled") = the whole tower is frozen.
  text cut: a layer index of BERT (0 = train it all, embeddings included), num_layers + 1 ("pooled") = the whole
    tower is frozen and its mean-pooled output is the input of the projection.

A learnable `logit_scale` (CLIP's log inverse temperature, started at log(1/0.07); SigLIP's log t', log 10) is there
for InfoNCE and the sigmoid loss, and `logit_bias` (SigLIP's b, -10) when `logit_bias_init` is set.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models import efficientnet_lite, layers
from xmodal_jax.models.bert import BertConfig, BertEncoder, mean_pool
from xmodal_jax.models.efficientnet_lite import EfficientNetLite


class PretrainedDualEncoder(nn.Module):
  """images [batch, H, W, 3] (normalised) / tokens, mask [batch, len] -> unit [batch, embed_dim] each."""
  image_variant: str
  text_config: BertConfig
  embed_dim: int = 512
  image_cut: int = 0
  text_cut: int = 0
  train_bn: bool = False
  logit_scale_init: float = float(np.log(1 / 0.07))
  logit_bias_init: float | None = None   # SigLIP's bias (-10); None: no bias parameter

  def setup(self):
    self.image_tower = EfficientNetLite(self.image_variant, name="image_tower")
    self.text_tower = BertEncoder(self.text_config, name="text_tower")
    self.image_proj = layers.dense(self.embed_dim, ("embed", "joint"), name="image_proj")
    self.text_proj = layers.dense(self.embed_dim, ("embed", "joint"), name="text_proj")
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)
    if self.logit_bias_init is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), (), jnp.float32)

  @property
  def image_pooled_cut(self) -> int:
    return len(efficientnet_lite.block_specs(efficientnet_lite.variant(self.image_variant))) + 1

  @property
  def text_pooled_cut(self) -> int:
    return self.text_config.num_layers + 1

  # ---- frozen lower parts (what a feature cache stores)
  def lower_image(self, images: jnp.ndarray) -> jnp.ndarray:
    """Activations at the image cut: [batch, h, w, c] (a block output), or [batch, 1280] (pooled)."""
    cut = self.image_cut
    if cut >= self.image_pooled_cut:
      return self.image_tower(images)
    return self.image_tower(images, stop=cut, head=False)

  def lower_text(self, tokens: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Activations at the text cut: [batch, len, hidden] (a layer output), or [batch, hidden] (pooled)."""
    if self.text_cut >= self.text_pooled_cut:
      return mean_pool(self.text_tower(tokens, mask), mask)
    return self.text_tower(tokens, mask, stop_layer=self.text_cut)

  # ---- the rest
  def encode_image(self, x: jnp.ndarray, *, from_cut: bool = False) -> jnp.ndarray:
    """Raw normalised images, or (from_cut) `lower_image` activations -> unit [batch, embed_dim]."""
    if from_cut and self.image_cut >= self.image_pooled_cut:
      pooled = x.astype(jnp.float32)
    else:
      pooled = self.image_tower(x, start=self.image_cut if from_cut else 0, train_bn=self.train_bn)
    return layers.l2_normalize(self.image_proj(pooled))

  def encode_text(self, x: jnp.ndarray, mask: jnp.ndarray, *, from_cut: bool = False) -> jnp.ndarray:
    """Token ids, or (from_cut) `lower_text` activations, + mask [batch, len] -> unit [batch, embed_dim]."""
    if from_cut and self.text_cut >= self.text_pooled_cut:
      pooled = x.astype(jnp.float32)
    else:
      pooled = mean_pool(self.text_tower(x, mask, start_layer=self.text_cut if from_cut else 0), mask)
    return layers.l2_normalize(self.text_proj(pooled))

  def __call__(self, images: jnp.ndarray, tokens: jnp.ndarray, mask: jnp.ndarray):
    scalars = (self.logit_scale,) if self.logit_bias_init is None else (self.logit_scale, self.logit_bias)
    return self.encode_image(images), self.encode_text(tokens, mask), scalars
