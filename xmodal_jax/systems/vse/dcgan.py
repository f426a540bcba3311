"""DCGAN generator and discriminator (Radford et al. 2016), sized by the image side.

The generator maps a code vector to an image; the discriminator maps an image (or a channel-wise stack of images)
to one logit. Both use BatchNorm (DCGAN's choice) whose batch statistics live in the "batch_stats" collection:
call with `train=True` and `mutable=["batch_stats"]` in training; `train=False` uses the running averages.

Sizes: for an image side S = 4 * 2^n (16, 32, 64, ...), the generator projects the code to a 4 x 4 x (w * 2^(n-1))
map and doubles the side n times with 4x4 stride-2 transposed convolutions, halving the channels, the last to 3
channels and tanh; the discriminator mirrors it with 4x4 stride-2 convolutions (w, 2w, ... channels, leaky ReLU
0.2, no BatchNorm on the first layer, as DCGAN) down to 4 x 4, then a Dense to the logit. w = `base_width`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers

_partitioned = nn.with_logical_partitioning
_CONV_AXES = ("conv_h", "conv_w", "conv_in", "conv_out")


def upsamplings(image_size: int) -> int:
  """n with image_size == 4 * 2^n (n >= 2), else ValueError naming the valid sizes."""
  n = int(round(math.log2(max(image_size, 1) / 4)))
  if n < 2 or 4 * 2 ** n != image_size:
    raise ValueError(f"DCGAN image size {image_size}: use 4 * 2^n with n >= 2 (16, 32, 64, 128).")
  return n


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name,
                      scale_init=_partitioned(nn.initializers.ones_init(), ("conv_out",)),
                      bias_init=_partitioned(nn.initializers.zeros_init(), ("conv_out",)))


_DCGAN_INIT = nn.initializers.normal(stddev=0.02)  # DCGAN's weight initialisation


class DCGANGenerator(nn.Module):
  """code [batch, dim] -> images [batch, S, S, 3] in [-1, 1]."""
  image_size: int = 64
  base_width: int = 32

  @nn.compact
  def __call__(self, code: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    n = upsamplings(self.image_size)
    width = self.base_width * 2 ** (n - 1)
    x = nn.Dense(4 * 4 * width, use_bias=False, name="project",
                 kernel_init=_partitioned(_DCGAN_INIT, ("embed", "hidden")))(code.astype(jnp.float32))
    x = nn.relu(_batch_norm(train, "project_norm")(x.reshape(code.shape[0], 4, 4, width)))
    for i in range(n):
      last = i == n - 1
      width = 3 if last else width // 2
      x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), padding="SAME", use_bias=last, name=f"up{i}",
                           kernel_init=_partitioned(_DCGAN_INIT, _CONV_AXES),
                           bias_init=_partitioned(nn.initializers.zeros_init(), ("conv_out",)))(x)
      x = jnp.tanh(x) if last else nn.relu(_batch_norm(train, f"up{i}_norm")(x))
    return x


class DCGANDiscriminator(nn.Module):
  """images [batch, S, S, C] (C = 3, or 6 for a pair stacked on channels) -> logits [batch]."""
  image_size: int = 64
  base_width: int = 32

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    n = upsamplings(self.image_size)
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(f"DCGANDiscriminator: images {images.shape} are not {self.image_size}x{self.image_size}.")
    x = images.astype(jnp.float32)
    for i in range(n):
      x = nn.Conv(self.base_width * 2 ** i, (4, 4), strides=(2, 2), padding="SAME", use_bias=i == 0,
                  name=f"down{i}", kernel_init=_partitioned(_DCGAN_INIT, _CONV_AXES),
                  bias_init=_partitioned(nn.initializers.zeros_init(), ("conv_out",)))(x)
      if i > 0:
        x = _batch_norm(train, f"down{i}_norm")(x)
      x = nn.leaky_relu(x, 0.2)
    return layers.dense(1, ("hidden", "joint"), name="logit")(x.reshape(x.shape[0], -1))[:, 0]
