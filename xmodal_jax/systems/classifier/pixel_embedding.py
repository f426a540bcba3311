"""S1 stage 3, the pixel embedding: a CNN classifier trained on the labelled train images; its bottleneck
(1024-d in the full config) is the pixel feature the fusion classifier reads.

Two backbones: a ResNet trained from scratch on the target labels (model.pretrained_image=""), or the seed's
design, "the bottleneck of a pre-trained CNN": an ImageNet EfficientNet-Lite (model.pretrained_image=
"efficientnet-lite0" | 1 | 2; models/efficientnet_lite.py), frozen (frozen params, BN statistics as trained on
ImageNet), whose pooled 1280-d feature is projected to the bottleneck; only the bottleneck and the softmax head
train. model.input_size is the tower's resolution: on real data the stage reads its own prepared copy of the
images at that size (the other stages keep config.data.image_size), on shapes world (generated at one size)
images are resized to it; 0 = as the data gives them. With model.cache (the default for the pretrained tower)
the frozen tower runs once over the train images (data/feature_cache.py; view 0 the centre crop, view 1 its
mirror image when config.data.flip) and training reads the pooled features, so a training step costs only the
bottleneck and the head.

The stage trains on the labelled set (ROLE; systems/classifier/partition.py), without the held-out fold when cross-fitted.

Config: data (+ taxonomy fields), model.image (ResNet), model.bottleneck_dim, model.pretrained_image,
model.input_size, model.cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xmodal_jax import errors
from xmodal_jax.data import feature_cache, preprocess, sources
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.models import efficientnet_lite, efficientnet_weights
from xmodal_jax.systems.classifier.classifier_heads import BottleneckClassifier, PrecomputedFeatures
from xmodal_jax.systems.classifier.stage import S1Stage
from xmodal_jax.train.task import with_frozen


class PixelEmbeddingTask(S1Stage):
  """Predict functions: embed_image (the bottleneck [batch, bottleneck_dim]), classify (logits [batch, C])."""

  ROLE = "labelled"

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self._predict = {"embed_image": self.embed_image, "classify": self.classify}
    self._cache: feature_cache.FeatureCache | None = None
    if self.cached and not self.pretrained:
      raise errors.ConfigError("config.model.cache=True needs a pretrained tower (config.model.pretrained_image): "
                               "a CNN trained from scratch changes at every step.")

  @property
  def pretrained(self) -> str:
    """The pretrained tower's variant, or "" (a ResNet from scratch)."""
    return str(self.config.model.get("pretrained_image", "") or "")

  @property
  def cached(self) -> bool:
    return bool(self.config.model.get("cache", False))

  @property
  def input_size(self) -> int:
    return int(self.config.model.get("input_size", 0) or 0)

  @property
  def own_images(self) -> bool:
    """True if this stage reads its own copy of a real data set at the tower's size (module docstring)."""
    shapes = str(self.config.data.source).partition(":")[0] == "shapes"
    return bool(self.pretrained and self.input_size and not shapes)

  @property
  def image_size(self) -> int:
    """The side of the uint8 images the predict functions take."""
    return int(self.data_config().image_size)

  def data_config(self) -> ml_collections.ConfigDict:
    """config.data, or its copy at the tower's size when this stage reads its own images."""
    if not self.own_images:
      return self.config.data
    data = ml_collections.ConfigDict(self.config.data.to_dict())
    data.update(image_size=self.input_size, prepare_size=max(self.input_size, int(data.prepare_size)))
    return data

  def build_model(self):
    backbone = efficientnet_lite.EfficientNetLite(self.pretrained) if self.pretrained else self.backbone()
    return BottleneckClassifier(backbone, num_classes=len(self.label_names()),
                                bottleneck_dim=self.config.model.bottleneck_dim)

  def frozen_params(self):
    if not self.pretrained:
      return None
    tower = efficientnet_weights.load(self.pretrained)
    return {"params": {"backbone": {k: v for k, v in tower["params"].items() if k != "classifier"}},
            "batch_stats": {"backbone": tower["batch_stats"]}}

  def init_variables(self, rng):
    params = self.model.init(rng, self.normalize(self.dummy_images()))["params"]
    return {"params": {k: v for k, v in params.items() if not (self.pretrained and k == "backbone")}}

  def normalize(self, images):
    """uint8 [batch, H, W, 3] -> the backbone's input (the pretrained tower's scaling and size)."""
    if not self.pretrained:
      return preprocess.normalize_images(images)
    size = self.input_size
    x = efficientnet_lite.normalize_images(images)
    if size and size != x.shape[1]:
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
    return x

  def _apply(self, variables, images, method=None):
    frozen = variables.get("frozen") if self.pretrained else None
    return self.model.apply(with_frozen(variables["params"], frozen), self.normalize(images), method=method)

  def feature_cache(self) -> feature_cache.FeatureCache:
    """The frozen tower's pooled features [views, C] of every train image (views: centre crop, + mirror)."""
    if self._cache is None:
      data, cfg = self.split("train"), self.data_config()
      views = 2 if cfg.flip else 1
      key = {"side": "pixel", "source": sources.source_fingerprint(cfg), "split": "train", "tower": self.pretrained,
             "weights": efficientnet_weights.file_sha256(str(efficientnet_weights.source_file(self.pretrained))),
             "image_size": self.image_size, "input_size": self.input_size, "views": views}
      variables = with_frozen({}, jax.device_put(jax.tree.map(np.asarray, self.frozen_params())))
      pooled = jax.jit(lambda v, x: self.model.apply(v, self.normalize(x), method=BottleneckClassifier.features))

      def encode(split, rows, view):
        images = data.load_images(rows, self.image_size)
        return np.asarray(pooled(variables, images[:, :, ::-1] if view else images))

      self._cache = feature_cache.ensure(key, {"train": feature_cache.SplitPlan(len(data), views)}, encode,
                                         dtype="float32")
    return self._cache

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    rows = self.train_rows(notes.labelled_images())
    if not self.cached:
      return self.image_iterator(rows, lambda images, keys: {"labels": notes.labels[images]},
                                 process_index=process_index, process_count=process_count)
    cache = self.feature_cache()

    def load(indices, keys):
      images = rows[indices]
      return {"pooled": cache.read("train", images, keys % cache.views("train")), "labels": notes.labels[images]}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count, num_threads=1,
                              prefetch=self.config.data.prefetch)

  def loss_fn(self, params, batch, rng, ctx):
    if "pooled" in batch:  # cached: the head on precomputed tower features, same parameters
      head = BottleneckClassifier(PrecomputedFeatures(), num_classes=len(self.label_names()),
                                  bottleneck_dim=self.config.model.bottleneck_dim)
      logits = head.apply({"params": params}, batch["pooled"])
    else:
      logits = self._apply({"params": params, "frozen": ctx.frozen}, batch["images"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}

  def embed_image(self, variables, images):
    """uint8 [batch, H, W, 3] -> pixel embedding [batch, bottleneck_dim]."""
    return self._apply(variables, images, method=BottleneckClassifier.embed)

  def classify(self, variables, images):
    """uint8 [batch, H, W, 3] -> logits [batch, num_classes]."""
    return self._apply(variables, images)

  def predict_fns(self):
    return self._predict

  def make_eval_data(self, split):
    notes = self.annotations(split)
    return EvalData(image_inputs={"images": self.eval_images(split)}, labels=notes.labels,
                    label_names=self.label_names(), title="pixel CNN (its own softmax head)")
