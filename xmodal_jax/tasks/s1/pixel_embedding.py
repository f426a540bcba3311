"""S1 stage 3, the pixel embedding: a CNN classifier trained on the labelled train images; its bottleneck
(1024-d in the full config) is the pixel feature the fusion classifier reads.

Two backbones: a ResNet trained from scratch on the target labels (model.pretrained_image=""), or the seed's
design, "the bottleneck of a pre-trained CNN": an ImageNet EfficientNet-Lite (model.pretrained_image=
"efficientnet-lite0" | 1 | 2; models/efficientnet_lite.py), frozen (frozen params, BN statistics as trained on
ImageNet), whose pooled 1280-d feature is projected to the bottleneck; only the bottleneck and the softmax head
train. model.input_size resizes images to the tower's resolution first (0: as the data gives them).

Config: data (+ taxonomy fields), model.image (ResNet), model.bottleneck_dim, model.pretrained_image,
model.input_size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from xmodal_jax.data import preprocess
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.models import efficientnet_lite, efficientnet_weights
from xmodal_jax.models.classifier_heads import BottleneckClassifier
from xmodal_jax.tasks.s1.stage import S1Stage
from xmodal_jax.train.task import with_frozen


class PixelEmbeddingTask(S1Stage):
  """Predict functions: embed_image (the bottleneck [batch, bottleneck_dim]), classify (logits [batch, C])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self._predict = {"embed_image": self.embed_image, "classify": self.classify}

  @property
  def pretrained(self) -> str:
    """The pretrained tower's variant, or "" (a ResNet from scratch)."""
    return str(self.config.model.get("pretrained_image", "") or "")

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
    size = int(self.config.model.get("input_size", 0) or 0)
    x = efficientnet_lite.normalize_images(images)
    if size and size != x.shape[1]:
      x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear")
    return x

  def _apply(self, variables, images, method=None):
    frozen = variables.get("frozen") if self.pretrained else None
    return self.model.apply(with_frozen(variables["params"], frozen), self.normalize(images), method=method)

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    return self.image_iterator(notes.labelled_images(), lambda images, keys: {"labels": notes.labels[images]},
                               process_index=process_index, process_count=process_count)

  def loss_fn(self, params, batch, rng, ctx):
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
