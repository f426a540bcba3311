"""Classifiers of S1: the pixel-embedding CNN (its bottleneck is the pixel feature) and the fusion MLP."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers


class BottleneckClassifier(nn.Module):
  """images [batch, H, W, 3] -> logits [batch, num_classes]; `embed` gives the bottleneck [batch, bottleneck_dim].

  backbone feature map -> global mean pool -> dense(bottleneck_dim) -> relu (= the pixel embedding) -> dense.
  A backbone that pools itself (features [batch, C]) is used as it is.
  """
  backbone: nn.Module
  num_classes: int
  bottleneck_dim: int = 1024

  def setup(self):
    self.bottleneck = layers.dense(self.bottleneck_dim, ("embed", "mlp"), name="bottleneck")
    self.head = layers.dense(self.num_classes, ("mlp", None), name="head")

  def features(self, images: jnp.ndarray) -> jnp.ndarray:
    """The backbone's pooled features [batch, C] (what `PrecomputedFeatures` takes the place of)."""
    features = self.backbone(images)
    return jnp.mean(features, axis=(1, 2)) if features.ndim == 4 else features

  def embed(self, images: jnp.ndarray) -> jnp.ndarray:
    return nn.relu(self.bottleneck(self.features(images))).astype(jnp.float32)

  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    return self.head(self.embed(images)).astype(jnp.float32)


class PrecomputedFeatures(nn.Module):
  """A backbone whose output was computed beforehand (a feature cache): pooled features [batch, C] pass through.
  A BottleneckClassifier on it has the same parameters as one on the real backbone, minus the backbone's."""

  @nn.compact
  def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
    return features


class FusionClassifier(nn.Module):
  """features [batch, F] (e.g. concat [text 200; pixel 1024]) -> logits [batch, num_classes].

  Fully-connected layers of widths `hidden` (relu, dropout) then the output layer: with one hidden layer
  this is the seed's "two fully-connected layers -> softmax". Inputs are layer-normalised first, so text
  and pixel features of different scales start on an equal footing.
  """
  num_classes: int
  hidden: Sequence[int] = (512,)
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, features: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    x = nn.LayerNorm(name="input_norm")(features.astype(jnp.float32))
    for i, width in enumerate(self.hidden):
      x = nn.relu(layers.dense(width, ("embed", "mlp"), name=f"hidden{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return layers.dense(self.num_classes, ("mlp", None), name="out")(x)
