r"""S2: region-word multilayer semantic alignment (seed 002, [0004], [0120]-[0124]) over a frozen pretrained image
tower: salient regions by self-attention, entity (region <-> word) and relation (region pair <-> phrase) alignment
by cross attention, semantic tags mined from the train captions predicted from the global image vector, and a
hinge loss with hardest negatives on the combined similarity.

Model and similarities: systems/region_word/region_word_model.py (+ region_word_similarity.py, relation_pairs.py,
bigru_text.py). The image tower (EfficientNet-Lite, ImageNet weights; models/efficientnet_lite.py) is frozen: its
feature map at `image_tower.feature_cut` is computed once per split (data/feature_cache.py, float16) and every
step / evaluation reads it, so a step costs only ROI-Align and the trained upper parts. Regions per image
(config.regions): the data's boxes (shapes world: ground truth) or a grid, optionally with the whole-image box
first; evaluation can swap them (eval_method) or jitter them (eval_jitter) to test robustness to poor detection.

Objective (our reading of "a matching strategy based on semantic consistency"): the combined similarity
S = (w_g S_global + w_e S_entity + w_r S_relation) / (w_g + w_e + w_r) is trained with VSE++'s hinge (hardest in-batch negatives after
a warm-up of summed hinges; objectives/contrastive_hinge.py); "consistency" adds the same hinge on every layer
on its own (weight loss.consistency_weight), so that the layers agree on which pairs match rather than one layer
carrying the sum; the tag head adds sum_t BCE(tag logits, multi-hot tags of the image's captions) / T (weight
tags.weight), the "global constraint" on the image embedding.

Predict functions, from raw inputs (serving, export; task_bases/retrieval_task.py has the interface): embed_image /
embed_text (global unit vectors: shortlists for re-ranking), pair_image / pair_text (per-item sets) and score_pairs
(the combined similarity of aligned pairs). The image side takes uint8 centre crops [n, S, S, 3] and optional
boxes [n, R, 4] / region_mask [n, R] (`image_predict_inputs`; default: config.regions.grid's cells) and runs the
frozen tower (the task's frozen params) in the graph. On the cached feature maps (training, evaluators):
embed_image_features / pair_image_features (feature_map, boxes, region_mask) for the pairwise retrieval and
pair_choice (compositional) evaluators, tag_logits / text_tag_logits (tags.side image / text / both) for the
multilabel evaluator (side="text", predict="text_tag_logits" for the caption head). Assets in the workdir:
tokenizer.json, tags.json.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xmodal_jax import errors, fileio
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.objectives.contrastive_hinge import hinge_loss_from_similarity
from xmodal_jax.systems.region_word import compositional_foils, semantic_tags
from xmodal_jax.systems.region_word import multilabel_evaluator, pair_choice_evaluator  # noqa: F401  (registers them)
from xmodal_jax.systems.region_word.region_word_model import LAYERS, RegionWordAlignment, alignment_similarities
from xmodal_jax.task_bases.frozen_tower_regions import FrozenTowerRegions
from xmodal_jax.task_bases.retrieval_task import RetrievalTask


class RegionWordAlignmentTask(FrozenTowerRegions, RetrievalTask):
  """See the module docstring."""

  CACHED_VARIANTS = {"embed_image": "embed_image_features", "pair_image": "pair_image_features"}

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self.use_cached_variants_in_evals()
    cfg = config
    self.check_regions_config()
    unknown = set(cfg.similarity.weights) - set(LAYERS)
    if unknown or not any(float(cfg.similarity.weights[k]) for k in LAYERS):
      raise errors.ConfigError(f"config.similarity.weights={dict(cfg.similarity.weights)}: give weights of "
                               f"{LAYERS}, at least one > 0.")
    if float(cfg.similarity.weights.relation) and not cfg.model.relation:
      raise errors.ConfigError("config.similarity.weights.relation > 0 needs config.model.relation=True.")
    if cfg.tags.side not in ("image", "text", "both"):
      raise errors.ConfigError(f"config.tags.side={cfg.tags.side!r}: the tag head(s) on the global 'image', 'text' or "
                               "'both' vectors.")
    self.tags: tuple[str, ...] = ()
    self._predict.update(pair_image=self.pair_image, pair_text=self.pair_text, score_pairs=self.score_pairs,
                         embed_image_features=self.embed_image_features,
                         pair_image_features=self.pair_image_features,
                         tag_logits=self.tag_logits, text_tag_logits=self.text_tag_logits)

  # ---- assets and model
  def _load_or_mine_tags(self, training: bool) -> tuple[str, ...]:
    cfg = self.config.tags
    if not cfg.enabled:
      return ()
    path = os.path.join(self.workdir, "tags.json")
    if fileio.exists(path) or not training:
      return semantic_tags.load_tags(path)
    captions = (c for caps in self.split("train").captions for c in caps)
    tags = semantic_tags.mine_tags(captions, min_count=int(cfg.min_count), max_tags=int(cfg.max_tags),
                                   extra_stopwords=tuple(cfg.extra_stopwords))
    if jax.process_index() == 0:
      semantic_tags.save_tags(path, tags, {"min_count": int(cfg.min_count), "max_tags": int(cfg.max_tags),
                                           "extra_stopwords": list(cfg.extra_stopwords)})
    return tags

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    self.tokenizer = self.load_or_build_tokenizer(training)
    self.tags = self._load_or_mine_tags(training)
    if training:
      self.check_eval_splits()
    m = self.config.model
    self.model = RegionWordAlignment(
        vocab_size=len(self.tokenizer), image_size=int(self.config.data.image_size), embed_dim=m.embed_dim,
        word_dim=m.word_dim, text_hidden=m.text_hidden, roi_bins=m.roi_bins, salient_attention=m.salient_attention,
        num_heads=m.num_heads, global_pool=m.global_pool, relation=m.relation, relation_regions=m.relation_regions,
        relation_dim=m.relation_dim, contextual_regions=m.contextual_regions,
        num_tags=len(self.tags), tag_side=self.config.tags.side if self.tags else "none",
        dtype=jnp.dtype(m.dtype))

  def _dummy_inputs(self):
    shape = self.feature_map_shape()
    r, length = self.max_regions(), self.config.data.max_len
    return (jnp.zeros((1, *shape), jnp.float32), jnp.zeros((1, r, 4), jnp.float32), jnp.ones((1, r), bool),
            jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool))

  def init_variables(self, rng):
    return {"params": self.model.init(rng, *self._dummy_inputs())["params"]}

  # ---- training
  def tag_targets(self, split: str, rows: np.ndarray) -> np.ndarray:
    """float32 [n, T]: the tags of each image's captions (their union)."""
    return semantic_tags.tag_targets([self.split(split).captions[int(i)] for i in rows], self.tags)

  def caption_tag_targets(self, split: str) -> np.ndarray:
    """float32 [captions, T]: the tags of each caption of the split (rows as in tokens(split))."""
    return semantic_tags.tag_targets([[c] for caps in self.split(split).captions for c in caps], self.tags)

  def train_iterator(self, *, process_index, process_count):
    data, toks = self.split("train"), self.tokens("train")
    maps = self.feature_maps("train")
    boxes, valid = self.boxes("train", evaluation=False)
    with_tags = bool(self.tags) and float(self.config.tags.weight) > 0
    sides = ("image", "text") if self.config.tags.side == "both" else (self.config.tags.side,)
    image_tags = self.tag_targets("train", np.arange(len(data))) if with_tags and "image" in sides else None
    text_tags = self.caption_tag_targets("train") if with_tags and "text" in sides else None

    def load(indices, keys):
      captions = toks.sample_one_per_image(indices, keys)
      batch = {"feature_map": maps.read("train", indices), "boxes": boxes[indices], "region_mask": valid[indices],
               "tokens": toks.tokens[captions], "mask": toks.mask[captions], "image_ids": data.image_ids[indices]}
      if image_tags is not None:
        batch["tag_targets"] = image_tags[indices]
      if text_tags is not None:
        batch["text_tag_targets"] = text_tags[captions]
      return batch

    cfg = self.config
    return EpochBatchIterator(len(data), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  def loss_fn(self, params, batch, rng, ctx):
    del rng
    v = {"params": params}
    image = self.model.apply(v, batch["feature_map"], batch["boxes"], batch["region_mask"],
                             method=RegionWordAlignment.encode_image)
    text = self.model.apply(v, batch["tokens"], batch["mask"], method=RegionWordAlignment.encode_text)
    sims = alignment_similarities(image, text, self.config.similarity, all_pairs=True)
    cfg = self.config.loss
    max_violation = jnp.logical_and(bool(cfg.max_violation), ctx.step >= cfg.max_violation_warmup_steps)
    hinge = functools.partial(hinge_loss_from_similarity, margin=cfg.margin, max_violation=max_violation,
                              image_ids=batch["image_ids"])
    loss, aux = hinge(sims["combined"])
    metrics = dict(aux, max_violation=max_violation.astype(jnp.float32), matching_loss=loss)
    layers_on = [name for name in LAYERS if name in sims]
    for name in layers_on:
      layer_loss, layer_aux = hinge(sims[name])
      metrics[f"{name}_loss"], metrics[f"{name}_pos_sim"] = layer_loss, layer_aux["pos_sim"]
      if float(cfg.consistency_weight) and len(layers_on) > 1:
        loss = loss + float(cfg.consistency_weight) * layer_loss
    for prefix, logits_key, targets_key, out in (("tag", "tag_logits", "tag_targets", image),
                                                 ("text_tag", "text_tags", "text_tag_targets", text)):
      if targets_key in batch:  # the image's tags from its global vector / the caption's from the caption's
        logits, targets = out[logits_key], batch[targets_key]
        tag_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets))
        tp = jnp.sum((logits > 0) & (targets > 0.5))
        metrics[f"{prefix}_loss"] = tag_loss
        metrics[f"{prefix}_micro_f1"] = 2 * tp / jnp.maximum(jnp.sum(logits > 0) + jnp.sum(targets > 0.5), 1)
        loss = loss + float(self.config.tags.weight) * tag_loss
    return loss, metrics

  # ---- predict functions (raw images; the text side is the same for both paths)
  def pair_image(self, variables, images, boxes=None, region_mask=None):
    """uint8 images [n, S, S, 3] (+ boxes [n, R, 4] xyxy pixels, region_mask [n, R]; default: the grid) -> the
    image's sets: regions [n, R, D], region_mask, saliency [n, R], global [n, D], (pairs [n, P, D], pair_mask)."""
    boxes, region_mask = self.regions_or_default(images, boxes, region_mask)
    return self.pair_image_features(variables, self.tower_feature_map(variables.get("frozen"), images), boxes,
                                    region_mask)

  def embed_image(self, variables, images, boxes=None, region_mask=None):
    """-> unit global image vectors [n, D] (pair_image's "global")."""
    return self.pair_image(variables, images, boxes, region_mask)["global"]

  def pair_text(self, variables, tokens, mask):
    """tokens int32, mask bool [n, L] -> the caption's sets: words [n, L, D], word_mask, global [n, D],
    (phrases [n, L-1, D], phrase_mask)."""
    out = self.model.apply({"params": variables["params"]}, tokens, mask, method=RegionWordAlignment.encode_text)
    out.pop("text_tags", None)
    return out

  def embed_text(self, variables, tokens, mask):
    return self.pair_text(variables, tokens, mask)["global"]

  def score_pairs(self, variables, image, text):
    """Aligned per-item sets of P pairs (pair_image / pair_text outputs, row i with row i) -> combined
    similarities float32 [P]."""
    del variables
    return alignment_similarities(image, text, self.config.similarity, all_pairs=False)["combined"]

  # ---- predict functions (cached feature maps [n, h, w, C]: training's evaluators)
  def pair_image_features(self, variables, feature_map, boxes, region_mask):
    """-> the image's sets, as pair_image."""
    out = self.model.apply({"params": variables["params"]}, feature_map, boxes, region_mask,
                           method=RegionWordAlignment.encode_image)
    out.pop("tag_logits", None)
    return out

  def embed_image_features(self, variables, feature_map, boxes, region_mask):
    return self.pair_image_features(variables, feature_map, boxes, region_mask)["global"]

  def tag_logits(self, variables, feature_map, boxes, region_mask):
    return self.model.apply({"params": variables["params"]}, feature_map, boxes, region_mask,
                            method=RegionWordAlignment.encode_image)["tag_logits"]

  def text_tag_logits(self, variables, tokens, mask):
    return self.model.apply({"params": variables["params"]}, tokens, mask,
                            method=RegionWordAlignment.encode_text)["text_tags"]

  # ---- evaluation data
  def make_eval_data(self, split: str) -> EvalData:
    toks = self.tokens(split)
    data = self.split(split)
    boxes, valid = self.boxes(split, evaluation=True)
    maps = self.feature_maps(split).read(split, np.arange(len(data)))
    out = EvalData(image_inputs={"feature_map": maps, "boxes": boxes, "region_mask": valid},
                   text_inputs={"tokens": toks.tokens, "mask": toks.mask}, text_to_image=toks.text_to_image,
                   extras=self.example_extras(split))
    specs = [s for s in self.config.evals.values() if s.split == split]
    if self.tags and any(s.type == "multilabel" for s in specs):
      out.extras.update(tag_targets_image=self.tag_targets(split, np.arange(len(data))), tag_names=self.tags,
                        tag_targets_text=self.caption_tag_targets(split))
    if any(s.type == "pair_choice" for s in specs):
      choices = compositional_foils.build_choices(data.captions, seed=int(self.config.seed))
      out.extras["choice"] = {"image_rows": choices["image_rows"], "kinds": choices["kinds"],
                              "true_text_inputs": self.encode_texts(choices["true_captions"]),
                              "foil_text_inputs": self.encode_texts(choices["foil_captions"])}
    return out

