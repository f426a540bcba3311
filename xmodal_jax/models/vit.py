"""Vision Transformer (Dosovitskiy et al. 2021) on the library's transformer block.

images [batch, H, W, C] (normalised floats) -> non-overlapping p x p patches -> a linear map to `width` (eq. 1's
E, written as a Dense over the flattened (py, px, c) patch: the same as a stride-p convolution) -> optional
class token -> + position embeddings (learned, or fixed 2-D sin-cos as in big_vision) -> optional LayerNorm
(CLIP's ln_pre) -> pre-LN transformer blocks -> LayerNorm -> pooling:
  "cls":  the class token's output (ViT, CLIP);
  "gap":  the mean over patch tokens;
  "map":  multihead attention pooling with a learned probe (big_vision's MAPHead, Lee et al. 2019's PMA):
          y = MHA(probe, tokens); y = y + MLP(LN(y));
  "none": no pooling: every patch token [batch, num_patches, width] (a captioner's cross-attention context).
Output: [batch, width] (pooled) or [batch, num_patches, width] ("none"). Projection into a joint space is the
caller's (models/two_tower.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models.attention import MultiHeadAttention
from xmodal_jax.models.transformer import MlpBlock, Transformer, layer_norm

Dtype = Any
POOLS = ("cls", "gap", "map", "none")
POSEMBS = ("learn", "sincos2d")
_partitioned = nn.with_logical_partitioning


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings [height * width, dim] (row-major patches; dim divisible by 4):
  for each of the y and x coordinates, sin and cos of coord * temperature^(-k / (dim/4)), k = 0 .. dim/4-1."""
  if dim % 4:
    raise ValueError(f"sincos_2d needs a width divisible by 4, got {dim}.")
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4))
  y = y.reshape(-1)[:, None] * omega[None, :]
  x = x.reshape(-1)[:, None] * omega[None, :]
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def patchify(images: jnp.ndarray, patch: int) -> jnp.ndarray:
  """[batch, H, W, C] -> [batch, (H/p) * (W/p), p * p * C], patches row-major, each flattened (py, px, c)."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"Image size {h}x{w} is not a multiple of the patch size {patch}; use an image size divisible "
                     "by config.model.image.patch_size.")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MAPHead(nn.Module):
  """Multihead attention pooling: tokens [batch, len, width] -> [batch, width]."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = x.shape[-1]
    probe = self.param("probe", _partitioned(nn.initializers.xavier_uniform(), (None, None, "embed")),
                       (1, 1, width), self.param_dtype)
    probe = jnp.broadcast_to(probe, (x.shape[0], 1, width)).astype(self.dtype)
    y = MultiHeadAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype, name="attention")(
        probe, x)
    norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name="mlp_norm")
    y = y + MlpBlock(self.mlp_dim, self.activation, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp")(
        norm(y))
    return y[:, 0]


class ViT(nn.Module):
  """images [batch, H, W, C] -> pooled [batch, width] (see the module docstring).

  Attributes: patch_size, width, depth, num_heads, mlp_dim (default 4 * width); pool (POOLS); posemb (POSEMBS);
  pre_norm (LayerNorm before the blocks, CLIP's ln_pre); patch_bias (the patch projection's bias; open_clip has
  none); layer_norm_eps; activation; dropout_rate; remat; dtype / param_dtype.
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int | None = None
  pool: str = "cls"
  posemb: str = "learn"
  pre_norm: bool = True
  patch_bias: bool = False
  layer_norm_eps: float = 1e-5
  activation: str = "gelu"
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    if self.pool not in POOLS:
      raise ValueError(f"ViT.pool={self.pool!r}; use one of {POOLS}.")
    if self.posemb not in POSEMBS:
      raise ValueError(f"ViT.posemb={self.posemb!r}; use one of {POSEMBS}.")
    common = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    patches = patchify(images.astype(self.dtype), self.patch_size)
    x = nn.Dense(self.width, use_bias=self.patch_bias, name="patch_embed", **common,
                 kernel_init=_partitioned(nn.initializers.lecun_normal(), ("patch", "embed")),
                 bias_init=_partitioned(nn.initializers.zeros_init(), ("embed",)))(patches)
    grid = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
    scale = self.width ** -0.5
    if self.posemb == "learn":
      pos = self.param("pos_embed", _partitioned(nn.initializers.normal(stddev=scale), ("length", "embed")),
                       (grid[0] * grid[1], self.width), self.param_dtype)
    else:
      pos = jnp.asarray(sincos_2d(grid[0], grid[1], self.width))
    x = x + pos[None].astype(self.dtype)
    if self.pool == "cls":  # the class token gets its own learned position (folded into the token itself)
      cls = self.param("cls_token", _partitioned(nn.initializers.normal(stddev=scale), (None, None, "embed")),
                       (1, 1, self.width), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(self.dtype), x], axis=1)
    if self.pre_norm:
      x = layer_norm(self.layer_norm_eps, name="pre_norm", **common)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    mlp_dim = self.mlp_dim or 4 * self.width
    block = dict(num_heads=self.num_heads, mlp_dim=mlp_dim, norm="pre", layer_norm_eps=self.layer_norm_eps,
                 activation=self.activation, dropout_rate=self.dropout_rate, **common)
    x = Transformer(self.depth, block, remat=self.remat, name="encoder")(x, deterministic=deterministic)
    x = layer_norm(self.layer_norm_eps, name="post_norm", **common)(x)
    if self.pool == "cls":
      return x[:, 0]
    if self.pool == "gap":
      return jnp.mean(x, axis=1)
    if self.pool == "none":
      return x
    return MAPHead(self.num_heads, mlp_dim, self.layer_norm_eps, self.activation, name="map_head", **common)(x)
