"""S1 stage 3, the pixel embedding: a CNN classifier trained on the labelled train images; its bottleneck
(1024-d in the full config) is the pixel feature the fusion classifier reads.

Config: data (+ taxonomy fields), model.image (ResNet), model.bottleneck_dim.
"""
from __future__ import annotations

import optax

from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.models.classifier_heads import BottleneckClassifier
from xmodal_jax.tasks.s1.stage import S1Stage


class PixelEmbeddingTask(S1Stage):
  """Predict functions: embed_image (the bottleneck [batch, bottleneck_dim]), classify (logits [batch, C])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self._predict = {"embed_image": self.embed_image, "classify": self.classify}

  def build_model(self):
    return BottleneckClassifier(self.backbone(), num_classes=len(self.label_names()),
                                bottleneck_dim=self.config.model.bottleneck_dim)

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    return self.image_iterator(notes.labelled_images(), lambda images, keys: {"labels": notes.labels[images]},
                               process_index=process_index, process_count=process_count)

  def loss_fn(self, params, batch, rng, ctx):
    logits = self.model.apply({"params": params}, normalize_images(batch["images"]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}

  def embed_image(self, variables, images):
    """uint8 [batch, H, W, 3] -> pixel embedding [batch, bottleneck_dim]."""
    return self.model.apply({"params": variables["params"]}, normalize_images(images),
                            method=BottleneckClassifier.embed)

  def classify(self, variables, images):
    """uint8 [batch, H, W, 3] -> logits [batch, num_classes]."""
    return self.model.apply({"params": variables["params"]}, normalize_images(images))

  def predict_fns(self):
    return self._predict

  def make_eval_data(self, split):
    notes = self.annotations(split)
    return EvalData(image_inputs={"images": self.eval_images(split)}, labels=notes.labels,
                    label_names=self.label_names(), title="pixel CNN (its own softmax head)")
