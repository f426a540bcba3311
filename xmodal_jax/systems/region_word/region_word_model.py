"""S2's two encoders (seed 002, [0004], [0120]-[0124]): regions of an image and words of a caption into one space,
with salient-region self-attention, relation items (region pairs / adjacent-word phrases) and semantic-tag heads.
A linen module: no losses; the layer similarities are `alignment_similarities` (pure).

Image side, from a frozen tower's feature map:
  region inputs   ROI-Align of each box (bins x bins, flattened) + its geometry (models/roi_align.py)   [B, R, F]
  regions         v_r = FC(inputs)  (the seed's FC from 2048-d to the 1024-d common space, [0121])        [B, R, D]
  salient regions with `salient_attention`: h = LayerNorm(v + MHSA(v)) over the valid regions, saliency
                  a = softmax_r(w^T tanh(W h_r)) and the global image vector g = sum_r a_r h_r; the entity and
                  relation layers align v (h with `contextual_regions`), weighted and selected by a; without it
                  h = v, a uniform over the valid regions and g = mean_r v_r; `global_pool="image"` takes g from
                  the first region instead (the whole-image box: VSE++'s global image feature).
  relations       pairs (r, s) of the K most salient regions: MLP([h_r; h_s; relative geometry])      [B, P, D_rel]
Text side:
  words           Bi-GRU (300-d embeddings, hidden 1024 in the seed's setup) -> FC to D when sizes differ   [B, L, D]
  global          masked mean of the words                                                                  [B, D]
  phrases         adjacent word pairs: MLP([w_t; w_{t+1}])                                             [B, L-1, D_rel]
Tag heads: logits of the mined semantic tags from the global image (and/or text) vector, [B, T].
Every set item and global vector is L2-normalised.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from xmodal_jax.data import regions as region_boxes
from xmodal_jax.models import attention, layers, roi_align
from xmodal_jax.systems.region_word import relation_pairs
from xmodal_jax.systems.region_word.bigru_text import BiGRUWordEncoder
from xmodal_jax.systems.region_word.region_word_similarity import cross_attention_similarity

GLOBAL_POOLS = ("regions", "image")
TAG_SIDES = ("image", "text", "both", "none")


class _PairMLP(nn.Module):
  """[..., F] -> [..., D]: Dense -> ReLU -> Dense (relation / phrase items)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(layers.dense(self.features, ("mlp_in", "mlp"), dtype=self.dtype, name="hidden")(x))
    return layers.dense(self.features, ("mlp", "joint"), dtype=self.dtype, name="out")(x)


class RegionWordAlignment(nn.Module):
  """encode_image(feature_map [B, h, w, C], boxes [B, R, 4] xyxy pixels of an image_size image, region_mask [B, R])
  and encode_text(tokens, mask [B, L]) -> dicts of unit item sets, masks, global vectors and tag logits."""
  vocab_size: int
  image_size: int
  embed_dim: int = 1024
  word_dim: int = 300
  text_hidden: int = 1024
  roi_bins: int = 1
  salient_attention: bool = True
  num_heads: int = 4
  global_pool: str = "regions"
  relation: bool = True
  relation_regions: int = 8
  relation_dim: int = 0     # width of the relation items (0: embed_dim); the relation layer's cost ~ its width
  contextual_regions: bool = False  # the entity / relation layers see h (True) or v (False: saliency only weights)
  num_tags: int = 0
  tag_side: str = "image"
  dtype: Any = jnp.float32

  def setup(self):
    if self.global_pool not in GLOBAL_POOLS:
      raise ValueError(f"RegionWordAlignment.global_pool={self.global_pool!r}; use one of {GLOBAL_POOLS}.")
    if self.tag_side not in TAG_SIDES:
      raise ValueError(f"RegionWordAlignment.tag_side={self.tag_side!r}; use one of {TAG_SIDES}.")
    d = self.embed_dim
    self.region_fc = layers.dense(d, ("region_in", "joint"), dtype=self.dtype, name="region_fc")
    if self.salient_attention:
      self.region_attention = attention.MultiHeadAttention(self.num_heads, dtype=self.dtype, name="region_attention")
      self.region_norm = nn.LayerNorm(dtype=self.dtype, name="region_norm")
      self.saliency_hidden = layers.dense(d // 2, ("joint", "mlp"), dtype=self.dtype, name="saliency_hidden")
      self.saliency_out = layers.dense(1, ("mlp", "unit"), dtype=self.dtype, name="saliency_out")
    self.words = BiGRUWordEncoder(self.vocab_size, self.word_dim, self.text_hidden, dtype=self.dtype, name="words")
    if self.text_hidden != d:
      self.word_fc = layers.dense(d, ("hidden", "joint"), dtype=self.dtype, name="word_fc")
    if self.relation:
      self.pair_mlp = _PairMLP(self.relation_dim or d, self.dtype, name="pair_mlp")
      self.phrase_mlp = _PairMLP(self.relation_dim or d, self.dtype, name="phrase_mlp")
    if self.num_tags and self.tag_side in ("image", "both"):
      self.image_tags = layers.dense(self.num_tags, ("joint", "tags"), dtype=self.dtype, name="image_tags")
    if self.num_tags and self.tag_side in ("text", "both"):
      self.text_tags = layers.dense(self.num_tags, ("joint", "tags"), dtype=self.dtype, name="text_tags")

  def region_inputs(self, feature_map: jnp.ndarray, boxes: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """-> (ROI-Align bins + box geometry [B, R, bins^2 C + 7], geometry [B, R, 7])."""
    size = (self.image_size, self.image_size)
    pooled = roi_align.roi_align(feature_map.astype(jnp.float32), boxes, size, self.roi_bins)  # [B, R, b, b, C]
    geometry = region_boxes.box_geometry(boxes, *size, xp=jnp)
    return jnp.concatenate([pooled.reshape(*boxes.shape[:2], -1), geometry], axis=-1), geometry

  def _tag_input(self, unit: jnp.ndarray) -> jnp.ndarray:
    """A unit global vector scaled by sqrt(D) (entries ~ 1), so the linear tag head's logits need no large
    weights."""
    return (unit * self.embed_dim ** 0.5).astype(self.dtype)

  def encode_image(self, feature_map: jnp.ndarray, boxes: jnp.ndarray, region_mask: jnp.ndarray
                   ) -> dict[str, jnp.ndarray]:
    """-> {"regions" [B, R, D], "region_mask", "saliency" [B, R], "global" [B, D], ("pairs" [B, P, D],
    "pair_mask"), ("tag_logits" [B, T])}."""
    inputs, geometry = self.region_inputs(feature_map, boxes)
    v = self.region_fc(inputs.astype(self.dtype))
    valid = region_mask.astype(bool)
    if self.salient_attention:
      h = self.region_norm(v + self.region_attention(v, mask=attention.padding_mask(valid)))
      logits = self.saliency_out(jnp.tanh(self.saliency_hidden(h)))[..., 0].astype(jnp.float32)
      saliency = nn.softmax(jnp.where(valid, logits, -1e9), axis=-1) * valid
    else:
      h = v
      saliency = valid / jnp.maximum(jnp.sum(valid, axis=-1, keepdims=True), 1)
    pooled = h[:, 0] if self.global_pool == "image" else jnp.sum(saliency[..., None] * h, axis=1)
    if not self.contextual_regions:
      h = v
    out = {"regions": layers.l2_normalize(h.astype(jnp.float32)), "region_mask": valid, "saliency": saliency,
           "global": layers.l2_normalize(pooled.astype(jnp.float32))}
    if self.relation:
      first, second, pair_mask = relation_pairs.region_pairs(
          valid, self.relation_regions, saliency if self.salient_attention else None)
      take = lambda idx: jnp.take_along_axis(h, idx[..., None], axis=1)
      pair_in = jnp.concatenate([take(first), take(second),
                                 relation_pairs.relative_geometry(geometry, first, second).astype(h.dtype)], -1)
      out.update(pairs=layers.l2_normalize(self.pair_mlp(pair_in).astype(jnp.float32)), pair_mask=pair_mask)
    if self.num_tags and self.tag_side in ("image", "both"):
      out["tag_logits"] = self.image_tags(self._tag_input(out["global"])).astype(jnp.float32)
    return out

  def encode_text(self, tokens: jnp.ndarray, mask: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """-> {"words" [B, L, D], "word_mask", "global" [B, D], ("phrases" [B, L-1, D], "phrase_mask"),
    ("tag_logits" [B, T])}."""
    valid = mask.astype(bool)
    w = self.words(tokens, valid)
    if self.text_hidden != self.embed_dim:
      w = self.word_fc(w)
    weights = valid.astype(w.dtype)[..., None]
    pooled = jnp.sum(w * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    out = {"words": layers.l2_normalize(w.astype(jnp.float32)), "word_mask": valid,
           "global": layers.l2_normalize(pooled.astype(jnp.float32))}
    if self.relation:
      phrase_in = jnp.concatenate([w[:, :-1], w[:, 1:]], axis=-1)
      out.update(phrases=layers.l2_normalize(self.phrase_mlp(phrase_in).astype(jnp.float32)),
                 phrase_mask=relation_pairs.adjacent_phrases(valid))
    if self.num_tags and self.tag_side in ("text", "both"):
      out["text_tags"] = self.text_tags(self._tag_input(out["global"])).astype(jnp.float32)
    return out

  def __call__(self, feature_map, boxes, region_mask, tokens, mask):
    return self.encode_image(feature_map, boxes, region_mask), self.encode_text(tokens, mask)


LAYERS = ("global", "entity", "relation")


def alignment_similarities(image: dict[str, jnp.ndarray], text: dict[str, jnp.ndarray],
                           cfg: ml_collections.ConfigDict, *, all_pairs: bool) -> dict[str, jnp.ndarray]:
  """The layer similarities and their weighted mean, S = sum_layer w_layer S_layer / sum_layer w_layer
  (cfg.weights; the mean keeps S in [-1, 1], so the hinge margin means what it means for one layer), each
  [Bi, Bt] (all_pairs) or [P] (aligned pairs). A layer with weight 0 is not computed.

  global   cos(g_image, g_text)
  entity   cross attention regions <-> words; S_i2t weighted by the regions' saliency
  relation cross attention region pairs <-> phrases
  cfg: weights.{global, entity, relation}, directions, attention_temperature, aggregation, lse_temperature.
  """
  weights = {name: float(cfg.weights[name]) for name in LAYERS}
  out = {}
  if weights["global"]:
    spec = "id,td->it" if all_pairs else "pd,pd->p"
    out["global"] = jnp.einsum(spec, image["global"], text["global"])
  options = dict(all_pairs=all_pairs, directions=tuple(cfg.directions), attention_temperature=float(
      cfg.attention_temperature), aggregation=str(cfg.aggregation), lse_temperature=float(cfg.lse_temperature))
  if weights["entity"]:
    out["entity"] = cross_attention_similarity(image["regions"], image["region_mask"], text["words"],
                                               text["word_mask"], image_weights=image["saliency"],
                                               **options)["mean"]
  if weights["relation"]:
    if "pairs" not in image:
      raise ValueError("alignment_similarities: weights.relation > 0 needs the model's relation items "
                       "(model.relation=True).")
    out["relation"] = cross_attention_similarity(image["pairs"], image["pair_mask"], text["phrases"],
                                                 text["phrase_mask"], **options)["mean"]
  if not out:
    raise ValueError("alignment_similarities: every layer weight is 0; give at least one a weight.")
  out["combined"] = sum(weights[name] * out[name] for name in LAYERS if name in out) / sum(weights.values())
  return out
