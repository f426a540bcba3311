"""What the tasks over a frozen pretrained image tower's regions share (S2 region-word alignment, S4 single-stream
pretraining): the tower's feature map of every split computed once and cached (data/feature_cache.py), and the
regions per image (config.regions: the data's boxes, shapes world's ground truth, or a grid; optionally the
whole-image box first; for evaluation another method or jittered boxes).

A mixin for an ImageTextTask whose config has `image_tower` (variant, input_size, feature_cut, cache_dtype,
cache_batch_size) and `regions` (method, grid, include_full, max_regions, eval_method, eval_jitter, jitter_seed).

Raw inputs (the predict functions on images, for serving and export): the tower's weights up to the cut are the
task's frozen params (`frozen_params`, variables["frozen"]), `tower_feature_map` runs them in the graph (the same
function the cache is built with, so cached and raw paths differ only by the cache's float16 rounding), and
`regions_or_default` fills in regions when a caller gives none: config.regions.grid's cells (the whole-image box
first with include_full), padded to `max_regions()`, whatever config.regions.method is (a photo folder has no
boxes). `image_predict_inputs(images, split)` gives the split's evaluation boxes (`boxes(split, evaluation=True)`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xmodal_jax import errors
from xmodal_jax.data import feature_cache, regions, sources
from xmodal_jax.models import efficientnet_lite, efficientnet_weights

REGION_METHODS = ("data", "grid")


def feature_stop(variant: str, cut: str) -> int | None:
  """A feature cut name -> the block to stop at (None: the head conv's output, 1280 channels)."""
  if cut == "head_conv":
    return None
  starts = efficientnet_lite.stage_starts(efficientnet_lite.variant(variant))
  if cut in starts and cut not in ("stem", "pooled"):
    return starts[cut]
  raise errors.ConfigError(f"config.image_tower.feature_cut={cut!r}: use 'head_conv' or the input of a stage, one of "
                           f"{sorted(k for k in starts if k not in ('stem', 'pooled'))}.")


class FrozenTowerRegions:
  """Feature maps of the frozen tower and region boxes per split; see the module docstring."""

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self._maps: dict[str, feature_cache.FeatureCache] = {}
    self._boxes: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}

  # A raw-input predict function -> its cached-input variant, for evaluators (subclasses fill it in).
  CACHED_VARIANTS: dict[str, str] = {}

  def use_cached_variants_in_evals(self) -> None:
    """Evaluation data holds the cached features, not pixels, so an evaluator field naming a raw-input predict
    function (what configs written before the raw-input interface name: `embed_image`, `pair_image`, ...) means its
    cached variant; rewritten in config.evals, with one warning, instead of failing on the wrong inputs."""
    renamed = []
    for name, spec in self.config.evals.items():
      for field, value in spec.items():
        if field != "type" and isinstance(value, str) and value in self.CACHED_VARIANTS:
          spec[field] = self.CACHED_VARIANTS[value]
          renamed.append(f"evals.{name}.{field}")
    if renamed:
      logging.warning("config %s named raw-image predict functions; evaluation reads cached features, so they use "
                      "%s (a config written before the raw-input interface).", ", ".join(renamed[:4]),
                      ", ".join(sorted(set(self.CACHED_VARIANTS.values()))))

  def check_regions_config(self) -> None:
    r = self.config.regions
    if r.method not in REGION_METHODS or r.eval_method not in ("",) + REGION_METHODS:
      raise errors.ConfigError(f"config.regions.method={r.method!r} / eval_method={r.eval_method!r}: use one of "
                               f"{REGION_METHODS} ('' = method).")
    if not 0 <= float(r.eval_jitter) < 1:
      raise errors.ConfigError(f"config.regions.eval_jitter={r.eval_jitter}: a fraction in [0, 1).")
    feature_stop(self.config.image_tower.variant, self.config.image_tower.feature_cut)

  def feature_map_shape(self) -> tuple[int, int, int]:
    t = self.config.image_tower
    tower = efficientnet_lite.EfficientNetLite(t.variant)
    stop = feature_stop(t.variant, t.feature_cut)
    x = jnp.zeros((1, t.input_size, t.input_size, 3), jnp.float32)
    out = jax.eval_shape(lambda im: tower.init_with_output(jax.random.PRNGKey(0), im, stop=stop, head=stop is None,
                                                          pool=False)[0], x)
    return tuple(out.shape[1:])

  # ---- the frozen tower
  def _tower_layer(self, name: str) -> bool:
    """Whether a top-level layer of the tower is used below config.image_tower.feature_cut."""
    t = self.config.image_tower
    stop = feature_stop(t.variant, t.feature_cut)
    if name.startswith("block_"):
      return stop is None or int(name[6:]) < stop
    return name.startswith("stem_") or (stop is None and name.startswith("head_"))

  def frozen_params(self):
    """The ImageNet tower's weights below the cut: {"params": {"image_tower": ...}, "batch_stats":
    {"image_tower": ...}} (host arrays; never trained, not checkpointed: reloaded from the weights file)."""
    weights = efficientnet_weights.load(self.config.image_tower.variant)
    return {collection: {"image_tower": {k: v for k, v in weights[collection].items() if self._tower_layer(k)}}
            for collection in ("params", "batch_stats")}

  def tower_feature_map(self, frozen, images: jnp.ndarray) -> jnp.ndarray:
    """(frozen params, uint8 images [n, S, S, 3]) -> float32 feature map [n, h, w, C] at the cut (traceable)."""
    t = self.config.image_tower
    stop, size = feature_stop(t.variant, t.feature_cut), int(t.input_size)
    if frozen is None or "image_tower" not in frozen.get("params", {}):
      raise ValueError(f"{type(self).__name__}: the raw-image predict functions need variables['frozen'] (the "
                       "tower's weights: frozen_params()); load the run with train.inference.load_model.")
    x = efficientnet_lite.normalize_images(images)
    if x.shape[1] != size or x.shape[2] != size:
      x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
    v = {collection: frozen[collection]["image_tower"] for collection in ("params", "batch_stats")}
    out = efficientnet_lite.EfficientNetLite(t.variant).apply(v, x, stop=stop, head=stop is None, pool=False)
    return out.astype(jnp.float32)

  def _tower_fn(self):
    frozen = jax.device_put(self.frozen_params())
    apply = jax.jit(self.tower_feature_map)
    return lambda images: np.asarray(apply(frozen, images))

  def feature_maps(self, split: str) -> feature_cache.FeatureCache:
    """The split's cached feature maps [N, h, w, C] of the frozen tower (centre crops at data.image_size)."""
    if split not in self._maps:
      cfg, t = self.config, self.config.image_tower
      data = self.split(split)
      key = {"side": "image_map", "source": sources.source_fingerprint(cfg.data), "split": split,
             "tower": t.variant, "cut": t.feature_cut, "input_size": int(t.input_size),
             "weights": efficientnet_weights.file_sha256(str(efficientnet_weights.source_file(t.variant))),
             "image_size": int(cfg.data.image_size), "prepare_size": int(cfg.data.prepare_size)}
      tower = None

      def encode(name, rows, view):
        nonlocal tower
        del name, view
        tower = tower or self._tower_fn()
        return tower(data.load_images(rows, cfg.data.image_size))

      self._maps[split] = feature_cache.ensure(key, {split: feature_cache.SplitPlan(len(data), 1)}, encode,
                                               directory="", dtype=t.cache_dtype, batch_size=int(t.cache_batch_size))
    return self._maps[split]

  # ---- regions
  def max_regions(self) -> int:
    r = self.config.regions
    if r.method == "grid" or r.eval_method == "grid":
      grid = int(r.grid[0]) * int(r.grid[1])
    else:
      grid = 0
    return max(int(r.max_regions), grid) + int(bool(r.include_full))

  def default_boxes(self, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Regions of images without boxes (module docstring): (boxes float32 [count, R, 4] xyxy pixels of the
    data.image_size crop, valid bool [count, R]), R = max(max_regions(), the grid's cells (+ 1))."""
    r, size = self.config.regions, int(self.config.data.image_size)
    cells = regions.grid_boxes(size, size, int(r.grid[0]), int(r.grid[1]), include_full=bool(r.include_full))
    return regions.pad_boxes([cells] * count, max(self.max_regions(), len(cells)))

  def regions_or_default(self, images: jnp.ndarray, boxes=None, region_mask=None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The predict functions' regions: `boxes` [n, R, 4] (xyxy pixels of the S crop) and `region_mask` [n, R]
    (default: every box valid), or `default_boxes` when boxes is None. Checks the images are S x S crops."""
    size = int(self.config.data.image_size)
    if tuple(images.shape[1:]) != (size, size, 3):
      raise ValueError(f"{type(self).__name__}: images must be uint8 [n, {size}, {size}, 3] centre crops at "
                       f"config.data.image_size (data.load_images / image_predict_inputs), got {images.shape}.")
    if boxes is None:
      boxes, region_mask = self.default_boxes(images.shape[0])
    elif region_mask is None:
      region_mask = jnp.ones(boxes.shape[:2], bool)
    return jnp.asarray(boxes, jnp.float32), jnp.asarray(region_mask, bool)

  def image_predict_inputs(self, images: np.ndarray, split: str | None = None, rows=None) -> dict[str, np.ndarray]:
    """The kwargs of the raw-image predict functions (embed_image, pair_image, ...) for uint8 images [n, S, S, 3]:
    with `split`, images `rows` of that split (default: all of it, in order) get the regions evaluation uses
    (`boxes(split, evaluation=True)`: the data's boxes or the grid, as config.regions says); without, the
    default regions (`default_boxes`)."""
    images = np.asarray(images)
    if split is None:
      boxes, valid = self.default_boxes(len(images))
    else:
      boxes, valid = self.boxes(split, evaluation=True)
      rows = np.arange(len(boxes)) if rows is None else np.asarray(rows)
      if len(rows) != len(images):
        raise ValueError(f"image_predict_inputs: {len(images)} images but {len(rows)} rows of split {split!r}.")
      boxes, valid = boxes[rows], valid[rows]
    return {"images": images, "boxes": boxes, "region_mask": valid}

  def boxes(self, split: str, evaluation: bool) -> tuple[np.ndarray, np.ndarray]:
    """(boxes float32 [N, R, 4] xyxy pixels of the data.image_size crop, valid bool [N, R]) of a split; for
    evaluation with regions.eval_method / eval_jitter applied."""
    key = (split, evaluation)
    if key not in self._boxes:
      r, size = self.config.regions, int(self.config.data.image_size)
      method = (r.eval_method or r.method) if evaluation else r.method
      data = self.split(split)
      if method == "grid":
        per_image = [regions.grid_boxes(size, size, int(r.grid[0]), int(r.grid[1]))] * len(data)
      else:
        per_image = [regions.xywh_to_xyxy(np.asarray(b, np.float32).reshape(-1, 4)) * self._box_scale(data)
                     for b in data.boxes]
        empty = sum(len(b) == 0 for b in per_image)
        if empty and not r.include_full:
          raise errors.DataError(f"config.regions.method='data': {empty} of {len(data)} {split} images of "
                                 f"{self.config.data.source} have no boxes; use method='grid' or include_full=True.")
      if evaluation and float(r.eval_jitter):
        rng = np.random.default_rng([int(r.jitter_seed), 17])
        per_image = [regions.jitter_boxes(b, float(r.eval_jitter), rng, size) for b in per_image]
      if r.include_full:
        full = np.asarray([[0, 0, size, size]], np.float32)
        per_image = [np.concatenate([full, b]) for b in per_image]
      count = self.max_regions()
      too_many = sum(len(b) > count for b in per_image)
      if too_many:
        raise errors.DataError(f"{too_many} {split} images have more than {count} regions; raise "
                               "config.regions.max_regions.")
      self._boxes[key] = regions.pad_boxes(per_image, count)
    return self._boxes[key]

  def _box_scale(self, data) -> float:
    """The data's boxes are in the stored image's pixels; crops are data.image_size (shapes world: the same)."""
    if isinstance(data, sources.InMemorySplit):
      return self.config.data.image_size / data.images.shape[1]
    return 1.0
