"""What the tasks over a frozen pretrained image tower's regions share (S2 region-word alignment, S4 single-stream
pretraining): the tower's feature map of every split computed once and cached (data/feature_cache.py), and the
regions per image (config.regions: the data's boxes, shapes world's ground truth, or a grid; optionally the
whole-image box first; for evaluation another method or jittered boxes).

A mixin for an ImageTextTask whose config has `image_tower` (variant, input_size, feature_cut, cache_dtype,
cache_batch_size) and `regions` (method, grid, include_full, max_regions, eval_method, eval_jitter, jitter_seed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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

  def _tower_fn(self):
    t = self.config.image_tower
    tower = efficientnet_lite.EfficientNetLite(t.variant)
    weights = efficientnet_weights.load(t.variant)
    variables = jax.device_put({"params": {k: v for k, v in weights["params"].items() if k != "classifier"},
                                "batch_stats": weights["batch_stats"]})
    stop, size = feature_stop(t.variant, t.feature_cut), int(t.input_size)

    @jax.jit
    def apply(v, images):
      x = efficientnet_lite.normalize_images(images)
      if x.shape[1] != size:
        x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear")
      return tower.apply(v, x, stop=stop, head=stop is None, pool=False)

    return lambda images: np.asarray(apply(variables, images))

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
