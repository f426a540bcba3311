"""mFSR (seed 003): VSE++'s two towers, a feature separation per modality, and the two reconstruction branches.

Parts, each optional so that every row of the paper's ablation is one model:
  * image side (eq. 1): v = FC(image features); the features are the pooled map of `image_backbone` (trained from
    scratch, e.g. the VSE++ ResNet), or, with `image_backbone=None`, pooled activations of a frozen pretrained tower
    computed outside (a feature cache), [batch, F];
  * text side (eq. 2): l = FC(last GRU state) (the FC as in our VSE++: the GRU width need not equal the joint size);
  * separation (eq. 3): `image_separation` / `text_separation` map v / l to {"mo", "se", "sp"}; without them
    (VSE++) the whole L2-normalised embedding is the semantic part and there are no modal / specific parts;
  * image reconstruction (eq. 4): `generator` G([v^mo; v^se; v^sp]) -> an image; `disc_real` D1 (real / fake) and
    `disc_content` D2 (does generated n show the content of real x? on [n; x] stacked on channels);
  * caption reconstruction (eq. 5): `caption_decoder`, a GRU decoder whose initial state comes from
    [l^mo; l^se; l^sp] (models/caption_decoder.py:GRUCaptionDecoder with that code as its one context vector).
Parameter subtrees are named by part (image_backbone, text_encoder, image_proj, text_proj, image_separation,
text_separation, generator, disc_real, disc_content, caption_decoder), so an optimiser can tell the
discriminators apart from the rest. No losses here (systems/vse/feature_separation_objective.py, systems/vse/gan_objective.py).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers

Parts = dict[str, jnp.ndarray]
DISCRIMINATORS = ("disc_real", "disc_content")


class MFSR(nn.Module):
  """See the module docstring. Embeddings are float32; `code(parts)` is [batch, mo + se + sp] (or [batch, D])."""
  text_encoder: nn.Module
  image_backbone: nn.Module | None = None
  embed_dim: int = 256
  image_separation: nn.Module | None = None
  text_separation: nn.Module | None = None
  generator: nn.Module | None = None
  disc_real: nn.Module | None = None
  disc_content: nn.Module | None = None
  caption_decoder: nn.Module | None = None
  dtype: Any = jnp.float32

  def setup(self):
    self.image_proj = layers.dense(self.embed_dim, ("embed", "joint"), dtype=self.dtype, name="image_proj")
    self.text_proj = layers.dense(self.embed_dim, ("embed", "joint"), dtype=self.dtype, name="text_proj")

  # ---- embeddings and their parts
  def image_parts(self, x: jnp.ndarray) -> Parts:
    """Normalised images [batch, H, W, 3] (with a backbone) or pooled features [batch, F] -> parts [batch, *]."""
    pooled = jnp.mean(self.image_backbone(x), axis=(1, 2)) if self.image_backbone is not None else x
    v = self.image_proj(pooled.astype(self.dtype))
    if self.image_separation is None:
      return {"se": layers.l2_normalize(v)}
    return self.image_separation(v)

  def text_parts(self, tokens: jnp.ndarray, mask: jnp.ndarray) -> Parts:
    """tokens, mask [batch, len] -> parts [batch, *]."""
    l = self.text_proj(self.text_encoder(tokens, mask))
    if self.text_separation is None:
      return {"se": layers.l2_normalize(l)}
    return self.text_separation(l)

  @staticmethod
  def code(parts: Parts) -> jnp.ndarray:
    """[mo; se; sp] (the parts present, in that order) -> [batch, sum of part sizes]."""
    return jnp.concatenate([parts[k] for k in ("mo", "se", "sp") if k in parts], axis=-1)

  # ---- reconstruction branches
  def generate(self, code: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """[batch, code] -> images [batch, S, S, 3] in [-1, 1] (eq. 4)."""
    return self.generator(code, train=train)

  def discriminate_real(self, images: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """D1: images [batch, S, S, 3] in [-1, 1] -> real-vs-generated logits [batch]."""
    return self.disc_real(images, train=train)

  def discriminate_content(self, candidate: jnp.ndarray, real: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """D2: [n; x] (two [batch, S, S, 3] images stacked on channels) -> "n shows x's content" logits [batch]."""
    return self.disc_content(jnp.concatenate([candidate, real], axis=-1), train=train)

  def caption_logits(self, code: jnp.ndarray, inputs: jnp.ndarray, *, deterministic: bool = True) -> jnp.ndarray:
    """Teacher forcing (eq. 5): code [batch, C], decoder inputs <bos> w_1 .. [batch, T] -> logits [batch, T, V]."""
    return self.caption_decoder(inputs, code[:, None, :], deterministic=deterministic)

  def __call__(self, image_inputs, tokens, mask, caption_inputs=None, *, train: bool = False):
    """Every part once (for `init`): (image parts, text parts)."""
    v, l = self.image_parts(image_inputs), self.text_parts(tokens, mask)
    if self.generator is not None:
      fake = self.generate(self.code(v), train=train)
      self.discriminate_real(fake, train=train)
      self.discriminate_content(fake, fake, train=train)
    if self.caption_decoder is not None:
      self.caption_logits(self.code(l), tokens if caption_inputs is None else caption_inputs)
    return v, l
