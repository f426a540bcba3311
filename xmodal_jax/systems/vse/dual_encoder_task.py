"""Image<->text retrieval over two pretrained towers: EfficientNet-Lite (ImageNet, models/efficientnet_lite.py)
and all-MiniLM-L6-v2 (models/minilm.py), each frozen below a cut and trained above it with a projection into a
joint space; VSE++'s hinge loss (Faghri et al. 2018), CLIP's InfoNCE or SigLIP's sigmoid loss with learnable
scalars (task_bases/contrastive_objective.py; plain or chunked over the global batch). With the image tower
locked (model.image.cut="pooled") and the text tower trained this is LiT (Zhai et al. 2022) over pretrained towers
(configs/clip/clip_flickr8k.py, siglip_flickr8k.py).

The frozen lower parts are frozen params (arguments of the step, never trained or checkpointed). With
`config.cache.enabled` their activations are computed once per train split and stored (data/feature_cache.py,
with `cache.train_views` views per image: the centre crop, then random crops / flips), and training reads them
instead of running the lower parts: a step then costs only the upper parts. Evaluation and inference always
run the whole towers on raw inputs, so reported figures are what a user of the trained model gets.

Config: data (tokenizer "wordpiece", max_len, image_size, prepare_size, flip), model.image (variant, cut,
train_bn, flip_average), model.text (cut), model.embed_dim, loss (contrastive_objective.loss_config: kind hinge |
infonce | sigmoid, chunked, margin, max_violation, max_violation_warmup_steps, learn_temperature, temperature,
max_logit_scale), cache (enabled, train_views, dtype, dir,
batch_size), train.pairs ("image": one caption per image per epoch | "all": every (image, caption) pair).
Assets: tokenizer.json (the MiniLM WordPiece vocabulary).
"""
from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xmodal_jax import errors
from xmodal_jax.data import feature_cache, sources
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.models import efficientnet_lite, efficientnet_weights, layers, minilm
from xmodal_jax.systems.vse.pretrained_dual_encoder import PretrainedDualEncoder
from xmodal_jax.task_bases import contrastive_objective
from xmodal_jax.task_bases.retrieval_task import RetrievalTask
from xmodal_jax.train.task import with_frozen

PAIRS = ("image", "all")


def image_cut(variant: str, cut: Any) -> int:
  """A cut name ("stem", "stage0".."stage6", "head", "pooled") or block index -> the first trained block."""
  starts = efficientnet_lite.stage_starts(efficientnet_lite.variant(variant))
  if isinstance(cut, str) and cut in starts:
    return starts[cut]
  if isinstance(cut, int) and not isinstance(cut, bool) and 0 <= cut <= starts["pooled"]:
    return cut
  raise errors.ConfigError(f"config.model.image.cut={cut!r}: use one of {sorted(starts)} or a block index in "
                           f"0..{starts['pooled']}.")


def text_cut(num_layers: int, cut: Any) -> int:
  """"tokens" (train it all), "layer_K" (layers >= K train), "pooled" (all frozen) -> the first trained layer."""
  if cut == "tokens":
    return 0
  if cut == "pooled":
    return num_layers + 1
  if isinstance(cut, str) and cut.startswith("layer_") and cut[6:].isdigit() and 0 < int(cut[6:]) <= num_layers:
    return int(cut[6:])
  raise errors.ConfigError(f"config.model.text.cut={cut!r}: use 'tokens', 'pooled' or 'layer_K' with K in "
                           f"1..{num_layers}.")


class DualEncoderTask(RetrievalTask):
  """Predict functions: embed_image (uint8 images -> unit vectors), embed_text (tokens, mask -> unit vectors)."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    if config.train.pairs not in PAIRS:
      raise errors.ConfigError(f"config.train.pairs={config.train.pairs!r}; use one of {PAIRS}.")
    if config.data.tokenizer != "wordpiece":
      raise errors.ConfigError(f"config.data.tokenizer={config.data.tokenizer!r}: the MiniLM text tower needs its "
                               "own vocabulary, 'wordpiece'.")
    if config.cache.enabled and int(config.cache.train_views) < 1:
      raise errors.ConfigError(f"config.cache.train_views={config.cache.train_views}: at least 1 (the centre crop).")
    self._weights: dict[str, Any] | None = None
    self._caches: dict[str, feature_cache.FeatureCache] = {}

  # ---- assets, weights, model
  def setup(self, *, training: bool) -> None:
    if self.model is not None:
      return
    cfg = self.config
    self.tokenizer = self.load_or_build_tokenizer(training)
    text_config, text_params = self._text_weights()
    self.model = PretrainedDualEncoder(
        image_variant=cfg.model.image.variant, text_config=text_config, embed_dim=cfg.model.embed_dim,
        image_cut=image_cut(cfg.model.image.variant, cfg.model.image.cut),
        text_cut=text_cut(text_config.num_layers, cfg.model.text.cut), train_bn=bool(cfg.model.image.train_bn),
        **contrastive_objective.initial_scalars(contrastive_objective.kind_of(cfg.loss)))
    image = efficientnet_weights.load(cfg.model.image.variant)
    self._weights = {"params": {"image_tower": {k: v for k, v in image["params"].items() if k != "classifier"},
                                "text_tower": text_params["params"]},
                     "batch_stats": {"image_tower": image["batch_stats"]}}
    if training:
      self.check_eval_splits()

  @staticmethod
  def _text_weights():
    try:
      return minilm.load_params()
    except (ImportError, FileNotFoundError) as e:
      raise errors.MissingError(str(e)) from None

  def _frozen_path(self, path: str) -> bool:
    """Whether a "params" path belongs to a frozen lower part."""
    parts = path.split("/")
    if parts[0] == "image_tower":
      name = parts[1]
      if name.startswith("stem_"):
        return self.model.image_cut > 0
      if name.startswith("block_"):
        return int(name[6:]) < self.model.image_cut
      return name.startswith("head_") and self.model.image_cut >= self.model.image_pooled_cut
    if parts[0] == "text_tower":
      name = parts[1]
      if name.startswith("layer_"):
        return int(name[6:]) < self.model.text_cut
      return self.model.text_cut > 0  # the embeddings
    return False

  def _split_weights(self, frozen: bool) -> dict:
    flat = traverse_util.flatten_dict(self._weights["params"], sep="/")
    return traverse_util.unflatten_dict({k: v for k, v in flat.items() if self._frozen_path(k) == frozen}, sep="/")

  def frozen_params(self):
    out = {"params": self._split_weights(frozen=True)}
    if not self.model.train_bn:
      out["batch_stats"] = self._weights["batch_stats"]
    return out

  def pretrained_params(self):
    return self._split_weights(frozen=False)

  def _dummy_inputs(self):
    size, length = self.config.data.image_size, self.config.data.max_len
    return (jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, length), jnp.int32),
            jnp.ones((1, length), jnp.int32))

  def init_variables(self, rng):
    variables = self.model.init(rng, *self._dummy_inputs())
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    out = {"params": traverse_util.unflatten_dict({k: v for k, v in flat.items() if not self._frozen_path(k)},
                                                  sep="/")}
    if self.model.train_bn:
      out["batch_stats"] = self._weights["batch_stats"]
    return out

  # ---- data
  def _view_keys(self, view: int, count: int) -> np.ndarray:
    return np.random.default_rng([int(self.config.seed), 7919, view]).integers(0, 2**32, count, dtype=np.uint32)

  def _lower_fn(self, method):
    """The frozen lower part of a tower as a jitted host function (the weights as they are at the start)."""
    initial = jax.jit(self.init_variables)(jax.random.PRNGKey(0))["params"]  # projections: unused below the cut
    flat = traverse_util.flatten_dict(initial, sep="/")
    flat.update(traverse_util.flatten_dict(self.pretrained_params(), sep="/"))
    frozen = jax.device_put(jax.tree.map(np.asarray, self.frozen_params()))
    variables = with_frozen(traverse_util.unflatten_dict(flat, sep="/"), frozen)
    apply = jax.jit(lambda v, *a: self.model.apply(v, *a, method=method))
    return lambda *arrays: np.asarray(apply(variables, *arrays))

  def feature_cache(self, side: str) -> feature_cache.FeatureCache:
    """The train split's cached activations of the frozen lower part of one tower ("image" or "text")."""
    if side in self._caches:
      return self._caches[side]
    cfg, model = self.config, self.model
    key = {"side": side, "source": sources.source_fingerprint(cfg.data), "split": "train"}
    if side == "image":
      data, lower = self.split("train"), self._lower_fn(PretrainedDualEncoder.lower_image)
      views = int(cfg.cache.train_views)
      key.update(tower=cfg.model.image.variant, cut=model.image_cut,
                 weights=efficientnet_weights.file_sha256(str(efficientnet_weights.source_file(cfg.model.image.variant))),
                 image_size=cfg.data.image_size, prepare_size=cfg.data.prepare_size, flip=bool(cfg.data.flip),
                 views=views, view_seed=int(cfg.seed))

      def encode(split, rows, view):
        keys = None if view == 0 else self._view_keys(view, len(data))[rows]
        images = data.load_images(rows, cfg.data.image_size, keys=keys, flip=bool(cfg.data.flip))
        return lower(efficientnet_lite.normalize_images(images))

      plans = {"train": feature_cache.SplitPlan(len(data), views)}
    else:
      toks, lower = self.tokens("train"), self._lower_fn(PretrainedDualEncoder.lower_text)
      key.update(tower="all-MiniLM-L6-v2", cut=model.text_cut, max_len=cfg.data.max_len,
                 weights=efficientnet_weights.file_sha256(str(minilm.model_dir() / "model.safetensors")),
                 tokenizer=hashlib.sha256(str(self.tokenizer.encode_batch(["a b"], 4)).encode()).hexdigest()[:8])

      def encode(split, rows, view):
        del split, view
        return lower(toks.tokens[rows], toks.mask[rows])

      plans = {"train": feature_cache.SplitPlan(len(toks.tokens), 1)}
    self._caches[side] = feature_cache.ensure(key, plans, encode, directory=cfg.cache.dir, dtype=cfg.cache.dtype,
                                              batch_size=int(cfg.cache.batch_size))
    return self._caches[side]

  def train_iterator(self, *, process_index, process_count):
    cfg = self.config
    data, toks = self.split("train"), self.tokens("train")
    cached = bool(cfg.cache.enabled)
    if cached:
      image_cache, text_cache = self.feature_cache("image"), self.feature_cache("text")
    all_pairs = cfg.train.pairs == "all"
    count = len(toks.tokens) if all_pairs else len(data)

    def load(indices, keys):
      if all_pairs:  # every (image, caption) pair once per epoch
        captions, images = indices, toks.text_to_image[indices].astype(np.int64)
      else:          # one caption per image per epoch, drawn from the image's key
        images, captions = indices, toks.sample_one_per_image(indices, keys)
      batch = {"mask": toks.mask[captions], "image_ids": data.image_ids[images]}
      if cached:
        batch["image_feats"] = image_cache.read("train", images, keys % image_cache.views("train"))
        batch["text_feats"] = text_cache.read("train", captions)
      else:
        batch["images"] = data.load_images(images, cfg.data.image_size, keys=keys, flip=bool(cfg.data.flip))
        batch["tokens"] = toks.tokens[captions]
      return batch

    return EpochBatchIterator(count, cfg.train.batch_size, load, seed=cfg.seed, process_index=process_index,
                              process_count=process_count, num_threads=cfg.data.num_threads,
                              prefetch=cfg.data.prefetch)

  # ---- objective
  def loss_fn(self, params, batch, rng, ctx):
    variables = with_frozen(params, ctx.frozen, ctx.model_state)
    model = self.model
    if "image_feats" in batch:
      image_emb = model.apply(variables, batch["image_feats"], from_cut=True, method=model.encode_image)
      text_emb = model.apply(variables, batch["text_feats"], batch["mask"], from_cut=True, method=model.encode_text)
    else:
      images = efficientnet_lite.normalize_images(batch["images"])
      image_emb = model.apply(variables, images, method=model.encode_image)
      text_emb = model.apply(variables, batch["tokens"], batch["mask"], method=model.encode_text)
    scalars = {k: params[k] for k in ("logit_scale", "logit_bias") if k in params}
    return self.objective(image_emb, text_emb, batch["image_ids"], ctx, scalars)

  # ---- predict functions and evaluation data
  def embed_image(self, variables, images):
    """uint8 images [batch, H, W, 3] -> unit [batch, embed_dim] (the whole image tower). With
    model.image.flip_average, the normalised mean of the embeddings of the image and of its mirror (the model
    trains on both: the cache's views are the image and its mirror)."""
    v = with_frozen(variables["params"], variables["frozen"], variables)
    x = efficientnet_lite.normalize_images(images)
    emb = self.model.apply(v, x, method=PretrainedDualEncoder.encode_image)
    if self.config.model.image.get("flip_average", False):
      emb = layers.l2_normalize(emb + self.model.apply(v, x[:, :, ::-1], method=PretrainedDualEncoder.encode_image))
    return emb

  def embed_text(self, variables, tokens, mask):
    """WordPiece tokens, mask [batch, max_len] -> unit [batch, embed_dim] (the whole text tower)."""
    v = with_frozen(variables["params"], variables["frozen"], variables)
    return self.model.apply(v, tokens, mask, method=PretrainedDualEncoder.encode_text)
