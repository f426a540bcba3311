"""mFSR's feature separation (seed 003, eq. 3): an MLP maps an embedding to [modal; semantic; specific] parts.

Reading of eq. 3: as printed the whole concatenation [mo; se; sp] is L2-normalised once, while the text says each
part is normalised. Both are offered (`normalize="parts"`, the default, or "concat"). The paper gives neither the
part sizes nor the MLP depth: `depth` Dense layers (ReLU between them, hidden width `hidden_dim`), the last one
linear with modal_dim + semantic_dim + specific_dim outputs.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers

NORMALIZE = ("parts", "concat")
PARTS = ("mo", "se", "sp")


class FeatureSeparation(nn.Module):
  """x [batch, dim] -> {"mo": [batch, modal_dim], "se": [batch, semantic_dim], "sp": [batch, specific_dim]}."""
  modal_dim: int = 256
  semantic_dim: int = 256
  specific_dim: int = 256
  hidden_dim: int = 512
  depth: int = 2
  normalize: str = "parts"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
    if self.normalize not in NORMALIZE:
      raise ValueError(f"FeatureSeparation.normalize={self.normalize!r}: use one of {NORMALIZE}.")
    if self.depth < 1:
      raise ValueError(f"FeatureSeparation.depth={self.depth}: at least 1 (one linear layer).")
    h = x
    for i in range(self.depth - 1):
      h = nn.relu(layers.dense(self.hidden_dim, ("joint", "hidden"), dtype=self.dtype, name=f"hidden{i}")(h))
    sizes = (self.modal_dim, self.semantic_dim, self.specific_dim)
    out = layers.dense(sum(sizes), ("hidden", "joint"), dtype=self.dtype, name="out")(h).astype(jnp.float32)
    if self.normalize == "concat":
      out = layers.l2_normalize(out)
    parts = jnp.split(out, [sizes[0], sizes[0] + sizes[1]], axis=-1)
    if self.normalize == "parts":
      parts = [layers.l2_normalize(p) for p in parts]
    return dict(zip(PARTS, parts))
