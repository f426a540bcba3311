"""A small ResNet-style image encoder (pre-pooling feature map), GroupNorm, basic residual blocks."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


class ResidualBlock(nn.Module):
  """Basic block: conv3x3-GN-relu-conv3x3-GN (+ projected shortcut when shape changes) -> relu."""
  features: int
  strides: int = 1
  norm_groups: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    residual = x
    y = layers.conv(self.features, (3, 3), self.strides, dtype=self.dtype)(x)
    y = nn.relu(layers.group_norm(self.norm_groups, self.features, dtype=self.dtype)(y))
    y = layers.conv(self.features, (3, 3), dtype=self.dtype)(y)
    y = layers.group_norm(self.norm_groups, self.features, zero_init=True, dtype=self.dtype)(y)
    if residual.shape != y.shape:
      residual = layers.conv(self.features, (1, 1), self.strides, dtype=self.dtype, name="shortcut")(residual)
      residual = layers.group_norm(self.norm_groups, self.features, dtype=self.dtype, name="shortcut_norm")(residual)
    return nn.relu(residual + y)


class ResNetEncoder(nn.Module):
  """images [batch, height, width, 3] (float, normalised) -> feature map [batch, h', w', widths[-1]].

  Stem: a conv with kernel max(3, stem_stride) and stride `stem_stride` (stride 4 = a 4x4 patchify stem
  that sees every pixel once and makes the rest 16x cheaper); then one stage per entry of `stage_widths`, each `blocks_per_stage[i]`
  residual blocks, the first of which downsamples by 2 (except stage 0).
  """
  stage_widths: Sequence[int] = (16, 32, 64, 128)
  blocks_per_stage: Sequence[int] = (1, 1, 1, 1)
  stem_width: int = 16
  stem_stride: int = 2
  norm_groups: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    if len(self.stage_widths) != len(self.blocks_per_stage):
      raise ValueError(f"ResNetEncoder: stage_widths {tuple(self.stage_widths)} and blocks_per_stage "
                       f"{tuple(self.blocks_per_stage)} must have the same length.")
    k = max(3, self.stem_stride)
    x = layers.conv(self.stem_width, (k, k), self.stem_stride, dtype=self.dtype, name="stem")(images)
    x = nn.relu(layers.group_norm(self.norm_groups, self.stem_width, dtype=self.dtype, name="stem_norm")(x))
    for stage, (width, num_blocks) in enumerate(zip(self.stage_widths, self.blocks_per_stage)):
      for block in range(num_blocks):
        strides = 2 if (stage > 0 and block == 0) else 1
        x = ResidualBlock(width, strides, self.norm_groups, self.dtype, name=f"stage{stage}_block{block}")(x)
    return x
