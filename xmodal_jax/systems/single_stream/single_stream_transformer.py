"""S4's single-stream transformer (seed EP 3 889 830 A1): one stack of the library's transformer blocks over the
spliced sequence [matching identifier; objects; text units] (systems/single_stream/single_stream_inputs.py), and its heads.

Heads (all read the last layer's outputs h [B, 1 + R + L, width]):
  word_logits  [B, L, V]   masked text units: MLP(h_text) -> vocabulary ([0067])
  label_logits [B, R, C]   masked objects: their label text, as one of the C label strings of the data ([0066])
  feature_pred [B, R, F]   masked objects: their pooled visual feature (regression; the option of [0068])
  itm_logit    [B]         image-text matching from the matching identifier's output h_0 ([0149]-[0152])
and, for the shortlists that the matching score re-ranks, the same stack run on one modality alone
([identifier; objects] or [identifier; text]): embed_image / embed_text = l2(W h_0) [B, embed_dim].

The seed library (claims 7 and 9; `library=True`): each object gets the embedding of its label text
(the mean of its label tokens' library embeddings, projected to the width) added to its projected feature, and
each text unit the projected mean feature of its word's standard images (rows of a [V, F] table gathered by the
unit's input id). Fusion = project-then-add (width kept). A masked object's label addition is dropped with its
feature (SingleStreamInputs), and a masked unit is the mask token, whose table row is forced to zero here: masking
removes the fused information too (tests/test_single_stream.py checks both).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xmodal_jax.models import layers
from xmodal_jax.models.transformer import Transformer, layer_norm
from xmodal_jax.systems.single_stream.single_stream_inputs import SingleStreamInputs


class _PredictionHead(nn.Module):
  """[..., width] -> [..., outputs]: dense, GELU, LayerNorm, dense (BERT's prediction head)."""
  outputs: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(layers.dense(x.shape[-1], ("embed", "mlp"), dtype=self.dtype, name="transform")(x))
    x = layer_norm(1e-6, dtype=self.dtype, name="norm")(x)
    return layers.dense(self.outputs, ("mlp", "vocab"), dtype=self.dtype, name="out")(x)


class SingleStreamTransformer(nn.Module):
  """See the module docstring. vocab_size counts the mask token (`mask_id`, the last id)."""
  vocab_size: int
  mask_id: int
  max_text_len: int
  num_labels: int = 0           # 0: no label head
  feature_dim: int = 0          # 0: no feature-regression head
  width: int = 128
  num_layers: int = 3
  num_heads: int = 4
  mlp_dim: int = 512
  embed_dim: int = 128
  library: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.inputs = SingleStreamInputs(self.vocab_size, self.width, self.max_text_len, dtype=self.dtype)
    self.encoder = Transformer(self.num_layers, dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm="pre",
                                                     dropout_rate=self.dropout_rate, dtype=self.dtype))
    self.final_norm = layer_norm(1e-6, dtype=self.dtype)
    self.word_head = _PredictionHead(self.vocab_size, dtype=self.dtype)
    if self.num_labels:
      self.label_head = _PredictionHead(self.num_labels, dtype=self.dtype)
    if self.feature_dim:
      self.feature_head = layers.dense(self.feature_dim, ("embed", "region_in"), dtype=self.dtype)
    self.itm_head = layers.dense(1, ("embed", None), dtype=self.dtype)
    self.image_proj = layers.dense(self.embed_dim, ("embed", "joint"), dtype=self.dtype)
    self.text_proj = layers.dense(self.embed_dim, ("embed", "joint"), dtype=self.dtype)
    if self.library:
      self.label_text_embed = layers.embed(layers.padded_vocab_size(self.vocab_size), self.width, dtype=self.dtype)
      self.label_fuse = layers.dense(self.width, ("embed", "embed_out"), dtype=self.dtype)
      self.image_fuse = layers.dense(self.width, ("region_in", "embed"), dtype=self.dtype)

  # ---- the seed library's additions
  def _label_additions(self, label_tokens):
    """label_tokens int [B, R, Lb] (0 = padding) -> [B, R, width]: the projected mean label-token embedding."""
    valid = (label_tokens > 0)[..., None]
    emb = self.label_text_embed(label_tokens) * valid
    return self.label_fuse(emb.sum(-2) / jnp.maximum(valid.sum(-2), 1))

  def _word_additions(self, tokens, word_images):
    """tokens [B, L], word_images [V, F] (the standard images' mean feature per word id) -> [B, L, width]."""
    table = word_images.astype(self.dtype).at[self.mask_id].set(0.0)  # a masked unit shows no standard image
    return self.image_fuse(table[tokens])

  # ---- the stack
  def encode(self, features, geometry, object_mask, tokens, token_mask, *, masked_objects=None, label_tokens=None,
             word_images=None, deterministic=True):
    """-> (outputs [B, 1 + R + L, width], attention mask [B, 1 + R + L])."""
    if masked_objects is None:
      masked_objects = jnp.zeros(object_mask.shape, bool)
    object_additions = token_additions = None
    if self.library:
      if label_tokens is None or word_images is None:
        raise ValueError("SingleStreamTransformer(library=True) needs label_tokens and word_images.")
      object_additions = self._label_additions(label_tokens)
      token_additions = self._word_additions(tokens, word_images)
    x, mask = self.inputs(features, object_mask, tokens, token_mask, object_geometry=geometry,
                          masked_objects=masked_objects, object_additions=object_additions,
                          token_additions=token_additions)
    attention_mask = mask[:, None, None, :]
    h = self.encoder(x, attention_mask, deterministic=deterministic)
    return self.final_norm(h), mask

  def __call__(self, features, geometry, object_mask, tokens, token_mask, *, masked_objects=None, label_tokens=None,
               word_images=None, deterministic=True):
    """features [B, R, F], geometry [B, R, G], object_mask [B, R], tokens / token_mask [B, L] -> the heads' outputs
    (module docstring)."""
    h, _ = self.encode(features, geometry, object_mask, tokens, token_mask, masked_objects=masked_objects,
                       label_tokens=label_tokens, word_images=word_images, deterministic=deterministic)
    r = features.shape[1]
    objects, text = h[:, 1:1 + r], h[:, 1 + r:]
    out = {"itm_logit": self.itm_head(h[:, 0])[:, 0], "word_logits": self.word_head(text)}
    if self.num_labels:
      out["label_logits"] = self.label_head(objects)
    if self.feature_dim:
      out["feature_pred"] = self.feature_head(objects)
    return out

  def embed_image(self, features, geometry, object_mask, *, label_tokens=None, word_images=None,
                  deterministic=True):
    """[identifier; objects] alone -> unit vectors [B, embed_dim]."""
    b = features.shape[0]
    empty = jnp.zeros((b, 0), jnp.int32)
    h, _ = self.encode(features, geometry, object_mask, empty, empty.astype(bool), label_tokens=label_tokens,
                       word_images=word_images, deterministic=deterministic)
    return layers.l2_normalize(self.image_proj(h[:, 0]))

  def embed_text(self, tokens, token_mask, *, feature_shape, word_images=None, label_tokens_len=1,
                 deterministic=True):
    """[identifier; text] alone -> unit vectors [B, embed_dim]. feature_shape = (F, G) of the object inputs."""
    b = tokens.shape[0]
    features = jnp.zeros((b, 0, feature_shape[0]), self.dtype)
    geometry = jnp.zeros((b, 0, feature_shape[1]), self.dtype)
    label_tokens = jnp.zeros((b, 0, label_tokens_len), jnp.int32) if self.library else None
    h, _ = self.encode(features, geometry, jnp.zeros((b, 0), bool), tokens, token_mask, label_tokens=label_tokens,
                       word_images=word_images, deterministic=deterministic)
    return layers.l2_normalize(self.text_proj(h[:, 0]))

  def init_all(self, features, geometry, object_mask, tokens, token_mask, label_tokens=None, word_images=None):
    """Every parameter (the heads and both projections): the initialiser's method."""
    out = self(features, geometry, object_mask, tokens, token_mask, masked_objects=jnp.zeros(object_mask.shape, bool),
               label_tokens=label_tokens, word_images=word_images)
    image = self.embed_image(features, geometry, object_mask, label_tokens=label_tokens, word_images=word_images)
    text = self.embed_text(tokens, token_mask, feature_shape=(features.shape[-1], geometry.shape[-1]),
                           word_images=word_images, label_tokens_len=1 if label_tokens is None else label_tokens.shape[-1])
    return out, image, text
