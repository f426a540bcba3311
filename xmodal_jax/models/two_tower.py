"""The contrastive two-tower model (CLIP, Radford et al. 2021; SigLIP, Zhai et al. 2023; LiT, Zhai et al. 2022).

An image tower and a text tower, each followed by a linear projection into a shared `embed_dim` space and L2
normalisation, plus the learnable scalars of the objective: `logit_scale` (log of the logit multiplier: CLIP's
log inverse temperature, SigLIP's log t') and, when `logit_bias_init` is set, SigLIP's `logit_bias`.

Towers are any linen modules called as `image_tower(images, deterministic=...)` -> [batch, width] and
`text_tower(tokens, mask, deterministic=...)` -> [batch, width] or [batch, len, width] (per-token states, which
are mean-pooled over the mask: BERT / MiniLM). A locked tower (LiT) can be skipped by passing its pooled output
instead (`pooled=`): its features are then computed once and cached outside the model.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models import layers
from xmodal_jax.models.bert import mean_pool

_partitioned = nn.with_logical_partitioning


class TwoTower(nn.Module):
  """images [batch, H, W, C] / tokens, mask [batch, len] -> unit [batch, embed_dim] each (float32).

  Attributes:
    image_tower, text_tower: the towers (see the module docstring).
    embed_dim: joint-space width. proj_bias: biases on the projections (CLIP has none).
    logit_scale_init: initial logit_scale (CLIP log(1/0.07); SigLIP log(10)).
    logit_bias_init: initial logit_bias (SigLIP -10); None = no bias parameter (CLIP).
    dtype: compute dtype of the projections (the towers have their own).
  """
  image_tower: nn.Module
  text_tower: nn.Module
  embed_dim: int = 512
  proj_bias: bool = False
  logit_scale_init: float = float(np.log(1 / 0.07))
  logit_bias_init: float | None = None
  dtype: Any = jnp.float32

  def setup(self):
    proj = lambda name: nn.Dense(self.embed_dim, use_bias=self.proj_bias, dtype=self.dtype, name=name,
                                 kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "joint")),
                                 bias_init=_partitioned(nn.initializers.zeros_init(), ("joint",)))
    self.image_proj = proj("image_proj")
    self.text_proj = proj("text_proj")
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(self.logit_scale_init), (), jnp.float32)
    if self.logit_bias_init is not None:
      self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), (), jnp.float32)

  def image_features(self, images: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    """The image tower's pooled output [batch, width] (what a locked tower's cache stores)."""
    return self.image_tower(images, deterministic=deterministic)

  def text_features(self, tokens: jnp.ndarray, mask: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    """The text tower's pooled output [batch, width]."""
    h = self.text_tower(tokens, mask, deterministic=deterministic)
    return mean_pool(h, mask) if h.ndim == 3 else h

  def encode_image(self, images: jnp.ndarray | None = None, *, pooled: jnp.ndarray | None = None,
                   deterministic: bool = True) -> jnp.ndarray:
    """Images, or the tower's `pooled` output [batch, width] -> unit [batch, embed_dim]."""
    x = self.image_features(images, deterministic=deterministic) if pooled is None else pooled
    return layers.l2_normalize(self.image_proj(x.astype(self.dtype)))

  def encode_text(self, tokens: jnp.ndarray | None = None, mask: jnp.ndarray | None = None, *,
                  pooled: jnp.ndarray | None = None, deterministic: bool = True) -> jnp.ndarray:
    """Tokens + mask, or the tower's `pooled` output -> unit [batch, embed_dim]."""
    x = self.text_features(tokens, mask, deterministic=deterministic) if pooled is None else pooled
    return layers.l2_normalize(self.text_proj(x.astype(self.dtype)))

  def scalars(self) -> dict[str, jnp.ndarray]:
    """{"logit_scale"[, "logit_bias"]} (float32 scalars, unclamped)."""
    out = {"logit_scale": self.logit_scale}
    if self.logit_bias_init is not None:
      out["logit_bias"] = self.logit_bias
    return out

  def __call__(self, images: jnp.ndarray, tokens: jnp.ndarray, mask: jnp.ndarray, *, deterministic: bool = True):
    """(image embeddings, text embeddings, scalars): every parameter is created (init)."""
    return (self.encode_image(images, deterministic=deterministic),
            self.encode_text(tokens, mask, deterministic=deterministic), self.scalars())
