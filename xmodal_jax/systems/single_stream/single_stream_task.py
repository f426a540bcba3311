r"""S4: single-stream vision-language pretraining (seed EP 3 889 830 A1; ../shared/DESIGN.md): one transformer over
[matching identifier; objects; text units], pretrained by masked text units (coarse spans or single tokens),
masked objects (overlap groups or random; their label text, or their feature), both aligned, and image-text
matching; used for retrieval (matching score, by predicted objects) and captioning (mask filling).

Objects: boxes per image (config.regions: shapes world's ground truth; a grid on photos) pooled by ROI-Align from a
frozen ImageNet EfficientNet-Lite feature map (cached per split; task_bases/frozen_tower_regions.py) and computed once
per split: features [N, R, C] + box geometry [N, R, 7] (x1, y1, x2, y2, w, h, area), "spliced" = concatenated and
projected to the width (systems/single_stream/single_stream_inputs.py has the sequence layout, position and type ids). Text units:
word tokens of the caption followed by <eos> (so mask filling can end a caption); the mask token is the id after
the tokenizer's vocabulary. Labels (masked-object targets): the distinct label texts of the train objects
(labels.json in the workdir), on data that has them.

Objective per step (config.loss_weights; config.schedule "sum": all every step | "alternate": the masked tasks on
even steps, matching on odd ones, [0159]):
  words    CE of the masked units (systems/single_stream/masked_prediction_objective.py)
  objects  CE of the masked objects' label (object_target "label"), or the squared error of their pooled feature
           ("feature"), or both
  matching binary CE of the matching head on the unmasked positives and `itm.negatives_per_positive` negatives per
           positive in the seed's three modes (systems/single_stream/image_text_matching.py), drawn at random or, with
           itm.sampling="hard", by the dual encoder's similarity (p ~ exp(cos / itm.hard_temperature); ALBEF's
           sampling, not in the seed)
  dual     symmetric InfoNCE of the modality-alone embeddings (the shortlist the matching score re-ranks)
The seed library (config.library.enabled; systems/single_stream/seed_library.py) fuses label text into objects and standard images
into words; masking removes both from masked items (systems/single_stream/single_stream_transformer.py).

Predict functions from raw inputs (serving, export, `xmodal caption`; task_bases/retrieval_task.py has the
interface): the image side takes uint8 centre crops [n, S, S, 3] and optional boxes [n, R, 4] / region_mask [n, R]
(`image_predict_inputs`; default: config.regions.grid's cells) (+ label_tokens [n, R, LABEL_LEN] for the seed
library; default none) and runs the frozen tower (the task's frozen params) and ROI-Align in the graph; the text
side takes the tokenizer's tokens / mask [n, max_len] and appends <eos> in the graph. embed_image / embed_text
(dual), pair_image (the objects: features, geometry, object_mask, label_tokens) / pair_text (the units: tokens,
mask [n, max_len + 1]), score_pairs (matching logit of aligned rows of those), caption (iterative mask filling,
[0072]). On the cached objects / units (training's evaluators): embed_image_features / embed_text_units (the
shortlist), score_pairs, object_score_pairs (retrieval by predicted objects, [0071]: the mean log-probability,
with every object of the image masked and the text visible, of the image's object labels), masked_words /
masked_object_labels (the masked_prediction evaluator's protocols), caption_features.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax import errors, fileio
from xmodal_jax.data import regions, shapes_caption_grammar, tokenizers
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.models import roi_align
from xmodal_jax.objectives.contrastive_softmax import symmetric_infonce
from xmodal_jax.systems.single_stream import image_text_matching, masked_prediction_objective as masked_prediction
from xmodal_jax.systems.single_stream import masking, object_masking, seed_library, text_masking
from xmodal_jax.systems.single_stream import masked_prediction_evaluator  # noqa: F401  (registers "masked_prediction")
from xmodal_jax.systems.single_stream.single_stream_transformer import SingleStreamTransformer
from xmodal_jax.task_bases.frozen_tower_regions import FrozenTowerRegions
from xmodal_jax.task_bases.retrieval_task import RetrievalTask

PAD, EOS = 0, 3
IGNORE = masked_prediction.IGNORE
OBJECT_TARGETS = ("label", "feature", "both")
SCHEDULES = ("sum", "alternate")
LABEL_LEN = 4  # label-text tokens per object ("large red circle")


class SingleStreamTask(FrozenTowerRegions, RetrievalTask):
  """See the module docstring."""

  CACHED_VARIANTS = {"embed_image": "embed_image_features", "embed_text": "embed_text_units",
                     "caption": "caption_features"}

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    super().__init__(config, workdir)
    self.use_cached_variants_in_evals()
    self.check_regions_config()
    m = config.masking
    checks = [(m.text_mode in text_masking.MODES, f"config.masking.text_mode={m.text_mode!r}: use one of "
                                                  f"{text_masking.MODES}."),
              (m.object_mode in object_masking.MODES, f"config.masking.object_mode={m.object_mode!r}: use one of "
                                                      f"{object_masking.MODES}."),
              (m.object_target in OBJECT_TARGETS, f"config.masking.object_target={m.object_target!r}: use one of "
                                                  f"{OBJECT_TARGETS}."),
              (0 < float(m.text_ratio) <= 1, f"config.masking.text_ratio={m.text_ratio}: in (0, 1]."),
              (all(0 <= float(x) <= 1 for x in (m.aligned_fraction, m.suffix_fraction)),
               "config.masking.aligned_fraction / suffix_fraction: fractions in [0, 1]."),
              (config.schedule in SCHEDULES, f"config.schedule={config.schedule!r}: use one of {SCHEDULES}."),
              (config.itm.sampling in ("random", "hard"), f"config.itm.sampling={config.itm.sampling!r}: 'random' "
                                                          "or 'hard'."),
              (len(config.itm.mode_weights) == 3 and min(config.itm.mode_weights) >= 0
               and sum(config.itm.mode_weights) > 0, f"config.itm.mode_weights={tuple(config.itm.mode_weights)}: "
                                                     "three weights >= 0 (image, text, both), not all 0."),
              (int(config.itm.negatives_per_positive) >= 1, "config.itm.negatives_per_positive: at least 1."),
              (config.caption.order in ("left_to_right", "confidence"),
               f"config.caption.order={config.caption.order!r}: 'left_to_right' or 'confidence'.")]
    for ok, message in checks:
      if not ok:
        raise errors.ConfigError(message)
    self.labels: tuple[str, ...] = ()
    self.library: seed_library.SeedLibrary | None = None
    self._objects: dict[tuple[str, bool], dict[str, np.ndarray]] = {}
    self._units: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    self._feature_dim: int | None = None
    self._predict.update(pair_image=self.pair_image, pair_text=self.pair_text, score_pairs=self.score_pairs,
                         caption=self.caption, embed_image_features=self.embed_image_features,
                         embed_text_units=self.embed_text_units, object_score_pairs=self.object_score_pairs,
                         masked_words=self.masked_words, masked_object_labels=self.masked_object_labels,
                         caption_features=self.caption_features)

  # ---- assets
  def _box_label_texts(self, split: str) -> list[list[str]] | None:
    """Per image, the label text of each of its data boxes (shapes world), or None when the data has none."""
    extras = getattr(self.split(split), "extras", None)
    return None if extras is None or not hasattr(extras, "box_labels") else extras.box_labels

  def _load_or_collect_labels(self, training: bool) -> tuple[str, ...]:
    path = os.path.join(self.workdir, "labels.json")
    if fileio.exists(path):
      with fileio.open(path) as f:
        return tuple(json.load(f))
    texts = self._box_label_texts("train") if training else None
    labels = tuple(sorted({t for image in texts for t in image})) if texts else ()
    if training and jax.process_index() == 0:
      with fileio.open(path, "w") as f:
        json.dump(list(labels), f)
    return labels

  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    cfg = self.config
    self.tokenizer = self.load_or_build_tokenizer(training)
    self.labels = self._load_or_collect_labels(training)
    if training:
      self.check_eval_splits()
    if cfg.masking.object_target in ("label", "both") and not self.labels and training:
      raise errors.ConfigError(f"config.masking.object_target={cfg.masking.object_target!r} predicts object labels, "
                               f"but {cfg.data.source} has none: use object_target='feature'.")
    if cfg.regions.method == "data" and cfg.regions.include_full:
      raise errors.ConfigError("config.regions.include_full=True: the whole-image box overlaps every object, so "
                               "overlap-group masking would hide the whole image; S4 uses objects only.")
    if cfg.library.enabled:
      if not self.labels:
        raise errors.ConfigError(f"config.library.enabled=True needs labelled boxes; {cfg.data.source} has none.")
      self.library = self._load_or_build_library(training)
    m = cfg.model
    self.model = SingleStreamTransformer(
        vocab_size=len(self.tokenizer) + 1, mask_id=self.mask_id, max_text_len=int(cfg.data.max_len) + 1,
        num_labels=len(self.labels) if cfg.masking.object_target != "feature" else 0,
        feature_dim=self.feature_dim() if cfg.masking.object_target != "label" else 0,
        width=m.width, num_layers=m.num_layers, num_heads=m.num_heads, mlp_dim=m.mlp_dim, embed_dim=m.embed_dim,
        library=bool(cfg.library.enabled), dropout_rate=m.dropout_rate, dtype=jnp.dtype(m.dtype))

  @property
  def mask_id(self) -> int:
    return len(self.tokenizer)

  def _load_or_build_library(self, training: bool) -> seed_library.SeedLibrary:
    path = os.path.join(self.workdir, "library.npz")
    if fileio.exists(path) or not training:
      return seed_library.SeedLibrary.load(path)
    objects = self.objects("train", evaluation=False)
    ids, _ = self.tokenizer.encode_batch(list(self.labels), LABEL_LEN)
    library = seed_library.build_library(objects["labels"], objects["features"], self.labels, ids,
                                         len(self.tokenizer) + 1, per_label=int(self.config.library.per_label),
                                         seed=int(self.config.library.seed))
    if jax.process_index() == 0:
      library.save(path)
    return library

  def _word_images(self):
    return None if self.library is None else jnp.asarray(self.library.word_images)

  def feature_dim(self) -> int:
    """Channels of the tower's feature map (traced once: every text-embedding call needs it)."""
    if self._feature_dim is None:
      self._feature_dim = int(self.feature_map_shape()[-1])
    return self._feature_dim

  def init_variables(self, rng):
    r, f, length = self.max_regions(), self.feature_dim(), int(self.config.data.max_len) + 1
    dummy = (jnp.zeros((1, r, f)), jnp.zeros((1, r, 7)), jnp.ones((1, r), bool), jnp.zeros((1, length), jnp.int32),
             jnp.ones((1, length), bool))
    label_tokens = jnp.zeros((1, r, LABEL_LEN), jnp.int32) if self.library is not None else None
    variables = self.model.init(rng, *dummy, label_tokens=label_tokens, word_images=self._word_images(),
                                method=SingleStreamTransformer.init_all)
    return {"params": variables["params"]}

  def pretrained_params(self):
    """A fine-tuning run (config.init_from = a pretraining workdir) starts from its params."""
    if not self.config.init_from:
      return None
    from xmodal_jax import systems  # pylint: disable=import-outside-toplevel  (the registry, to load another run)
    loaded = systems.load_init_run(self.config.init_from, task=self.config.task,
                                 mesh_shape=tuple(self.config.mesh.shape))
    vocabularies = [fileio.read_bytes(tokenizers.tokenizer_path(w)) for w in (str(self.config.init_from), self.workdir)]
    if vocabularies[0] != vocabularies[1]:
      raise errors.ConfigError(f"config.init_from={self.config.init_from!r} has another tokenizer than this run's.")
    return jax.device_get(loaded.variables["params"])

  # ---- per-split inputs
  def units(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [M, max_len + 1], valid bool [M, max_len + 1]): every caption's word ids then <eos>."""
    if split not in self._units:
      toks = self.tokens(split)
      m, length = toks.tokens.shape
      tokens = np.zeros((m, length + 1), np.int32)
      tokens[:, :length] = toks.tokens
      n = toks.mask.sum(1)
      tokens[np.arange(m), n] = EOS
      self._units[split] = (tokens, np.arange(length + 1)[None, :] <= n[:, None])
    return self._units[split]

  def objects(self, split: str, evaluation: bool) -> dict[str, np.ndarray]:
    """The split's objects: features float32 [N, R, C] (ROI-Align mean over each box of the cached feature map),
    geometry [N, R, 7], mask bool [N, R], boxes [N, R, 4] (xyxy pixels), labels int32 [N, R] (index into
    self.labels, -1 none) and label_tokens int32 [N, R, LABEL_LEN] (their text; 0 = padding)."""
    key = (split, evaluation)
    if key not in self._objects:
      boxes, valid = self.boxes(split, evaluation=evaluation)
      maps, size = self.feature_maps(split), int(self.config.data.image_size)
      pool = jax.jit(lambda fm, b: roi_align.pooled_region_features(fm.astype(jnp.float32), b, (size, size)))
      n = len(boxes)
      features = np.concatenate([np.asarray(pool(maps.read(split, np.arange(s, min(s + 256, n))),
                                                 boxes[s:s + 256])) for s in range(0, n, 256)]).astype(np.float32)
      labels, label_tokens = self._object_labels(split, valid.shape)
      self._objects[key] = {"features": features * valid[..., None],
                            "geometry": regions.box_geometry(boxes, size, size) * valid[..., None],
                            "mask": valid, "boxes": boxes, "labels": labels, "label_tokens": label_tokens}
    return self._objects[key]

  def _object_labels(self, split: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(labels int32 [N, R], label_tokens int32 [N, R, LABEL_LEN]) of the split's data boxes (objects())."""
    labels = np.full(shape, -1, np.int32)
    texts = self._box_label_texts(split) if self.config.regions.method == "data" else None
    index = {t: i for i, t in enumerate(self.labels)}
    if texts is not None:
      for i, image in enumerate(texts):
        labels[i, :len(image)] = [index.get(t, -1) for t in image]
    label_tokens = np.zeros((*shape, LABEL_LEN), np.int32)
    if self.labels:
      ids, _ = self.tokenizer.encode_batch(list(self.labels), LABEL_LEN)
      label_tokens = np.where((labels >= 0)[..., None], ids[np.maximum(labels, 0)], 0).astype(np.int32)
    return labels, label_tokens

  def image_predict_inputs(self, images, split=None, rows=None):
    """FrozenTowerRegions' regions, plus (seed library on) the label text of the split's data boxes."""
    out = super().image_predict_inputs(images, split, rows)
    if split is not None and self.library is not None:
      _, label_tokens = self._object_labels(split, self.boxes(split, evaluation=True)[1].shape)
      out["label_tokens"] = label_tokens[np.arange(len(label_tokens)) if rows is None else np.asarray(rows)]
    return out

  # ---- training
  def train_iterator(self, *, process_index, process_count):
    cfg = self.config
    data, toks = self.split("train"), self.tokens("train")
    tokens, valid = self.units("train")
    obj = self.objects("train", evaluation=False)

    def load(indices, keys):
      rows = toks.sample_one_per_image(indices, keys)
      masks = masking.mask_batch(cfg.seed, keys, cfg.masking, tokens=tokens[rows], valid=valid[rows],
                                 boxes=obj["boxes"][indices], object_mask=obj["mask"][indices],
                                 object_labels=obj["labels"][indices], label_tokens=obj["label_tokens"][indices],
                                 mask_id=self.mask_id)
      return {"features": obj["features"][indices], "geometry": obj["geometry"][indices],
              "object_mask": obj["mask"][indices], "label_tokens": obj["label_tokens"][indices],
              "labels": obj["labels"][indices], "tokens": tokens[rows], "token_mask": valid[rows],
              "image_ids": data.image_ids[indices], **masks}

    return EpochBatchIterator(len(data), cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  def _library_inputs(self, label_tokens):
    if self.library is None:
      return {}
    return {"label_tokens": label_tokens, "word_images": self._word_images()}

  def _apply(self, params, features, geometry, object_mask, tokens, token_mask, label_tokens, masked_objects=None,
             rng=None):
    rngs = {} if rng is None else {"dropout": rng}
    return self.model.apply({"params": params}, features, geometry, object_mask, tokens, token_mask,
                            masked_objects=masked_objects, deterministic=rng is None, rngs=rngs,
                            **self._library_inputs(label_tokens))

  def _embed_image(self, params, features, geometry, object_mask, label_tokens, rng=None):
    return self.model.apply({"params": params}, features, geometry, object_mask, deterministic=rng is None,
                            rngs={} if rng is None else {"dropout": rng}, method=SingleStreamTransformer.embed_image,
                            **self._library_inputs(label_tokens))

  def _embed_text(self, params, tokens, token_mask, rng=None):
    lib = {} if self.library is None else {"word_images": self._word_images(), "label_tokens_len": LABEL_LEN}
    return self.model.apply({"params": params}, tokens, token_mask, feature_shape=(self.feature_dim(), 7),
                            deterministic=rng is None, rngs={} if rng is None else {"dropout": rng},
                            method=SingleStreamTransformer.embed_text, **lib)

  def loss_fn(self, params, batch, rng, ctx):
    cfg, w = self.config, self.config.loss_weights
    r_mask, r_dual_i, r_dual_t, r_neg, r_itm = jax.random.split(rng, 5)
    image_side = (batch["features"], batch["geometry"], batch["object_mask"])
    metrics, losses = {}, {}
    # masked words and objects, on the positives
    out = self._apply(params, *image_side, batch["masked_tokens"], batch["masked_token_mask"],
                      batch["label_tokens"], masked_objects=batch["masked_objects"], rng=r_mask)
    losses["words"], aux = masked_prediction.masked_cross_entropy(out["word_logits"], batch["word_targets"])
    metrics.update(word_accuracy=aux["accuracy"], masked_words=aux["count"])
    objects_loss = jnp.zeros(())
    if "label_logits" in out:
      label_loss, aux = masked_prediction.masked_cross_entropy(out["label_logits"], batch["object_targets"])
      objects_loss += label_loss
      metrics.update(object_label_loss=label_loss, object_accuracy=aux["accuracy"], masked_objects=aux["count"])
    if "feature_pred" in out:
      feature_loss = masked_prediction.masked_regression(out["feature_pred"], batch["features"],
                                                         batch["masked_objects"])
      objects_loss += feature_loss
      metrics["object_feature_loss"] = feature_loss
    losses["objects"] = objects_loss
    # the dual encoder (shortlists; hard-negative scores); a loss of weight 0 is not computed
    ids = batch["image_ids"]
    need_dual = float(w.dual) > 0 or (float(w.matching) > 0 and cfg.itm.sampling == "hard")
    if need_dual:
      image_emb = self._embed_image(params, *image_side, batch["label_tokens"], rng=r_dual_i)
      text_emb = self._embed_text(params, batch["tokens"], batch["token_mask"], rng=r_dual_t)
      losses["dual"], aux = symmetric_infonce(image_emb, text_emb, float(cfg.dual.temperature), ids, ids)
      metrics["dual_accuracy"] = aux["pair_accuracy"]
    if float(w.matching) > 0:
      # image-text matching: unmasked positives + negatives in the seed's modes, never a text with its own image
      b = ids.shape[0]
      similarity = (jax.lax.stop_gradient(image_emb @ text_emb.T) if cfg.itm.sampling == "hard" else None)
      neg_images, neg_texts, _ = image_text_matching.sample_negative_pairs(
          r_neg, ids, b * int(cfg.itm.negatives_per_positive), tuple(cfg.itm.mode_weights), similarity,
          float(cfg.itm.hard_temperature))
      image_rows = jnp.concatenate([jnp.arange(b), neg_images])
      text_rows = jnp.concatenate([jnp.arange(b), neg_texts])
      pairs = self._apply(params, *(x[image_rows] for x in image_side), batch["tokens"][text_rows],
                          batch["token_mask"][text_rows], batch["label_tokens"][image_rows], rng=r_itm)
      labels = (ids[image_rows] == ids[text_rows]).astype(jnp.float32)
      losses["matching"], aux = image_text_matching.matching_loss(pairs["itm_logit"], labels)
      metrics["matching_accuracy"] = aux["accuracy"]
      metrics["negative_is_own_image"] = jnp.mean((ids[neg_images] == ids[neg_texts]).astype(jnp.float32))
    # joint training: summed, or the masked tasks and matching on alternate steps
    masked_on = matching_on = jnp.ones(())
    if cfg.schedule == "alternate":
      masked_on = (ctx.step % 2 == 0).astype(jnp.float32)
      matching_on = 1.0 - masked_on
    gates = {"words": masked_on, "objects": masked_on, "matching": matching_on, "dual": matching_on}
    loss = sum(float(w[name]) * gates[name] * value for name, value in losses.items() if float(w[name]))
    metrics.update({f"{name}_loss": value for name, value in losses.items()})
    return loss, metrics

  # ---- predict functions (raw images and tokenizer tokens)
  def pair_image(self, variables, images, boxes=None, region_mask=None, label_tokens=None):
    """uint8 images [n, S, S, 3] (+ boxes [n, R, 4] xyxy pixels, region_mask [n, R]; default: the grid; +
    label_tokens [n, R, LABEL_LEN], the seed library's label text; default none) -> the objects: {"features"
    [n, R, C], "geometry" [n, R, 7], "object_mask" [n, R], "label_tokens" [n, R, LABEL_LEN]} (as objects())."""
    boxes, valid = self.regions_or_default(images, boxes, region_mask)
    size = int(self.config.data.image_size)
    feature_map = self.tower_feature_map(variables.get("frozen"), images)
    keep = valid[..., None].astype(jnp.float32)
    features = roi_align.pooled_region_features(feature_map, boxes, (size, size)) * keep
    if label_tokens is None:
      label_tokens = jnp.zeros((*valid.shape, LABEL_LEN), jnp.int32)
    return {"features": features, "geometry": regions.box_geometry(boxes, size, size, xp=jnp) * keep,
            "object_mask": valid, "label_tokens": jnp.asarray(label_tokens, jnp.int32)}

  def pair_text(self, variables, tokens, mask):
    """Tokenizer tokens int32 / mask bool [n, max_len] -> the units {"tokens", "mask"} [n, max_len + 1]: the
    words then <eos> (as units())."""
    del variables
    n, length = tokens.shape
    count = jnp.sum(mask.astype(jnp.int32), 1)
    units = jnp.concatenate([jnp.asarray(tokens, jnp.int32), jnp.zeros((n, 1), jnp.int32)], 1)
    units = units.at[jnp.arange(n), count].set(EOS)
    return {"tokens": units, "mask": jnp.arange(length + 1)[None, :] <= count[:, None]}

  def embed_image(self, variables, images, boxes=None, region_mask=None, label_tokens=None):
    """-> the dual encoder's unit image vectors [n, D]."""
    image = self.pair_image(variables, images, boxes, region_mask, label_tokens)
    return self._embed_image(variables["params"], image["features"], image["geometry"], image["object_mask"],
                             image["label_tokens"])

  def embed_text(self, variables, tokens, mask):
    """-> the dual encoder's unit text vectors [n, D]."""
    return self.embed_text_units(variables, **self.pair_text(variables, tokens, mask))

  def caption(self, variables, images, boxes=None, region_mask=None, label_tokens=None):
    """uint8 images [n, S, S, 3] (regions as pair_image) -> caption_features' token rows [n, max_len + 1]."""
    image = self.pair_image(variables, images, boxes, region_mask, label_tokens)
    return self.caption_features(variables, image["features"], image["geometry"], image["object_mask"], None,
                                 image["label_tokens"])

  # ---- predict functions (cached objects and units: training's evaluators)
  def embed_image_features(self, variables, features, geometry, object_mask, labels, label_tokens):
    del labels
    return self._embed_image(variables["params"], features, geometry, object_mask, label_tokens)

  def embed_text_units(self, variables, tokens, mask):
    """units (tokens, mask [n, max_len + 1]) -> unit vectors [n, D]."""
    return self._embed_text(variables["params"], tokens, mask)

  def score_pairs(self, variables, image, text):
    """Aligned pairs (objects [P, ...] as pair_image / objects() give them, units [P, max_len + 1] as pair_text /
    units() give them) -> matching logits float32 [P]."""
    return self._apply(variables["params"], image["features"], image["geometry"], image["object_mask"],
                       text["tokens"], text["mask"], image["label_tokens"])["itm_logit"].astype(jnp.float32)

  def object_score_pairs(self, variables, image, text):
    """Retrieval by predicted objects ([0071]): with every object of the image masked (boxes kept) and the text
    visible, the mean log-probability of the image's object labels -> [P]."""
    out = self._apply(variables["params"], image["features"], image["geometry"], image["object_mask"],
                      text["tokens"], text["mask"], image["label_tokens"], masked_objects=image["object_mask"])
    logp = jax.nn.log_softmax(out["label_logits"].astype(jnp.float32), -1)
    labels = image["labels"]
    known = labels >= 0
    picked = jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], -1)[..., 0]
    return jnp.sum(picked * known, -1) / jnp.maximum(jnp.sum(known, -1), 1)

  def masked_words(self, variables, features, geometry, object_mask, label_tokens, masked_objects, tokens, mask):
    """-> predicted ids int32 [n, L] at every text position (the mask token never predicted)."""
    out = self._apply(variables["params"], features, geometry, object_mask, tokens, mask, label_tokens,
                      masked_objects=masked_objects)
    return jnp.argmax(out["word_logits"].at[..., self.mask_id].set(-jnp.inf), -1)

  def masked_object_labels(self, variables, features, geometry, object_mask, label_tokens, masked_objects, tokens,
                           mask):
    """-> predicted label indices int32 [n, R]."""
    out = self._apply(variables["params"], features, geometry, object_mask, tokens, mask, label_tokens,
                      masked_objects=masked_objects)
    return jnp.argmax(out["label_logits"], -1)

  def caption_features(self, variables, features, geometry, object_mask, labels, label_tokens):
    """Captions by iterative mask filling ([0072], our reading): max_len + 1 slots of [MASK]; each pass fills one
    slot (the leftmost, or the most confident with caption.order="confidence") with its argmax; the units after
    the first <eos> are dropped -> token rows int32 [n, max_len + 1] (<pad> after the caption)."""
    del labels
    n, slots = features.shape[0], int(self.config.data.max_len) + 1
    tokens = jnp.full((n, slots), self.mask_id, jnp.int32)
    valid = jnp.ones((n, slots), bool)
    by_confidence = self.config.caption.order == "confidence"

    def fill(_, tokens):
      out = self._apply(variables["params"], features, geometry, object_mask, tokens, valid, label_tokens)
      logits = out["word_logits"].astype(jnp.float32).at[..., self.mask_id].set(-jnp.inf)
      best, prob = jnp.argmax(logits, -1), jnp.max(jax.nn.softmax(logits, -1), -1)
      open_slot = tokens == self.mask_id
      score = jnp.where(open_slot, prob if by_confidence else -jnp.arange(slots)[None, :], -jnp.inf)
      slot = jnp.argmax(score, -1)
      return tokens.at[jnp.arange(n), slot].set(best[jnp.arange(n), slot])

    tokens = jax.lax.fori_loop(0, slots, fill, tokens)
    ended = jnp.cumsum(tokens == EOS, axis=1) > 0
    return jnp.where(ended, PAD, tokens)

  def decode_text(self, tokens: np.ndarray) -> list[str]:
    """Token rows -> caption strings (the units before the first <eos> / <pad>)."""
    out = []
    for row in np.asarray(tokens).tolist():
      ids = []
      for t in row:
        if t in (EOS, PAD):
          break
        if t != self.mask_id:
          ids.append(t)
      out.append(self.tokenizer.decode(ids))
    return out

  # ---- evaluation data
  def _masked_protocols(self, split: str, obj: dict[str, np.ndarray]) -> dict[str, dict]:
    """The fixed masks of the masked_prediction evaluator: every caption of the split with its image, its units
    masked by span and by single tokens (ratio and max span of config.masking, seeded by config.eval_seed, objects
    visible), and (labelled data) every image with its first caption and one object unit masked (overlap mode)."""
    cfg = self.config.masking
    tokens, valid = self.units(split)
    t2i = self.tokens(split).text_to_image
    image_side = lambda rows: {"features": obj["features"][rows], "geometry": obj["geometry"][rows],
                               "object_mask": obj["mask"][rows], "label_tokens": obj["label_tokens"][rows]}
    out = {}
    for mode in text_masking.MODES:
      rng = np.random.default_rng([int(self.config.eval_seed), 77])
      masked = [text_masking.mask_units(tokens[i], valid[i], rng, mask_id=self.mask_id, mode=mode,
                                        ratio=float(cfg.text_ratio), max_span=int(cfg.max_span))
                for i in range(len(tokens))]
      out[f"words_{mode}"] = {
          "predict": "masked_words", "targets": np.stack([m[1] for m in masked]),
          "inputs": dict(image_side(t2i), masked_objects=np.zeros_like(obj["mask"][t2i]),
                         tokens=np.stack([m[0] for m in masked]), mask=valid)}
    if self.labels and (obj["labels"] >= 0).any():
      rng = np.random.default_rng([int(self.config.eval_seed), 78])
      first = self.tokens(split).offsets[:-1]
      hidden = np.stack([object_masking.select_masked_objects(obj["boxes"][i], obj["mask"][i], rng, "overlap")
                         for i in range(len(first))])
      out["objects"] = {"predict": "masked_object_labels",
                        "targets": np.where(hidden, obj["labels"], IGNORE).astype(np.int32),
                        "inputs": dict(image_side(np.arange(len(first))), masked_objects=hidden,
                                       tokens=tokens[first], mask=valid[first])}
    return out

  def make_eval_data(self, split: str) -> EvalData:
    data = self.split(split)
    obj = self.objects(split, evaluation=True)
    tokens, valid = self.units(split)
    image_inputs = {"features": obj["features"], "geometry": obj["geometry"], "object_mask": obj["mask"],
                    "labels": obj["labels"], "label_tokens": obj["label_tokens"]}
    out = EvalData(image_inputs=image_inputs, text_inputs={"tokens": tokens, "mask": valid},
                   text_to_image=self.tokens(split).text_to_image,
                   title=f"{self.config.data.source} {split}: {len(data)} images", extras=self.example_extras(split))
    specs = [s for s in self.config.evals.values() if s.split == split]
    if any(s.type == "masked_prediction" for s in specs):
      out.extras["masked"] = self._masked_protocols(split, obj)
    if any(s.type == "captioning" for s in specs):
      out.extras.update(references=[list(c) for c in data.captions], decode_text=self.decode_text)
      if str(self.config.data.source) == "shapes":
        out.extras["true_pairs"] = shapes_caption_grammar.true_pairs_of(data.extras)
        out.extras["parses"] = shapes_caption_grammar.parses
    return out
