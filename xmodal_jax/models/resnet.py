"""A ResNet-style image encoder (pre-pooling feature map), GroupNorm, basic or bottleneck residual blocks.

Basic blocks (two 3x3 convs) make the small from-scratch encoders; bottleneck blocks (1x1 -> 3x3 -> 1x1,
expansion 4) make ResNet-50/101/152 (`blocks_per_stage` (3, 4, 6, 3) / (3, 4, 23, 3) / (3, 8, 36, 3), widths
64..512, so 256..2048 output channels).
"""
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


class BottleneckBlock(nn.Module):
  """Bottleneck block (ResNet v1.5: the stride is on the 3x3): conv1x1-GN-relu-conv3x3-GN-relu-conv1x1-GN
  (+ projected shortcut when the shape changes) -> relu. x [batch, h, w, c] -> [batch, h/s, w/s, 4 * features].
  """
  features: int
  strides: int = 1
  norm_groups: int = 8
  dtype: jnp.dtype = jnp.float32
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    out = self.features * self.expansion
    residual = x
    y = layers.conv(self.features, (1, 1), dtype=self.dtype)(x)
    y = nn.relu(layers.group_norm(self.norm_groups, self.features, dtype=self.dtype)(y))
    y = layers.conv(self.features, (3, 3), self.strides, dtype=self.dtype)(y)
    y = nn.relu(layers.group_norm(self.norm_groups, self.features, dtype=self.dtype)(y))
    y = layers.conv(out, (1, 1), dtype=self.dtype)(y)
    y = layers.group_norm(self.norm_groups, out, zero_init=True, dtype=self.dtype)(y)
    if residual.shape != y.shape:
      residual = layers.conv(out, (1, 1), self.strides, dtype=self.dtype, name="shortcut")(residual)
      residual = layers.group_norm(self.norm_groups, out, dtype=self.dtype, name="shortcut_norm")(residual)
    return nn.relu(residual + y)


BLOCKS = {"basic": ResidualBlock, "bottleneck": BottleneckBlock}


class ResNetEncoder(nn.Module):
  """images [batch, height, width, 3] (float, normalised) -> feature map [batch, h', w', C], C = widths[-1]
  (basic blocks) or 4 * widths[-1] (bottleneck blocks).

  Stem: a conv with kernel `stem_kernel` (0: max(3, stem_stride)) and stride `stem_stride` (stride 4 = a 4x4
  patchify stem that sees every pixel once and makes the rest 16x cheaper), optionally (`stem_pool`) a 3x3
  max-pool with stride 2 (torchvision's ResNets: stem_kernel=7, stem_stride=2, stem_pool=True); then one stage
  per entry of `stage_widths`, each `blocks_per_stage[i]` residual blocks (`block`: "basic" or "bottleneck"),
  the first of which downsamples by 2 (except stage 0).
  """
  stage_widths: Sequence[int] = (16, 32, 64, 128)
  blocks_per_stage: Sequence[int] = (1, 1, 1, 1)
  stem_width: int = 16
  stem_stride: int = 2
  stem_kernel: int = 0
  stem_pool: bool = False
  norm_groups: int = 8
  block: str = "basic"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    del deterministic  # no dropout: the image encoders' common call (systems/captioning/captioner_model.py)
    if self.block not in BLOCKS:
      raise ValueError(f"ResNetEncoder: block={self.block!r}; use one of {sorted(BLOCKS)}.")
    if len(self.stage_widths) != len(self.blocks_per_stage):
      raise ValueError(f"ResNetEncoder: stage_widths {tuple(self.stage_widths)} and blocks_per_stage "
                       f"{tuple(self.blocks_per_stage)} must have the same length.")
    k = self.stem_kernel or max(3, self.stem_stride)
    x = layers.conv(self.stem_width, (k, k), self.stem_stride, dtype=self.dtype, name="stem")(images)
    x = nn.relu(layers.group_norm(self.norm_groups, self.stem_width, dtype=self.dtype, name="stem_norm")(x))
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for stage, (width, num_blocks) in enumerate(zip(self.stage_widths, self.blocks_per_stage)):
      for i in range(num_blocks):
        strides = 2 if (stage > 0 and i == 0) else 1
        x = BLOCKS[self.block](width, strides, self.norm_groups, self.dtype, name=f"stage{stage}_block{i}")(x)
    return x
