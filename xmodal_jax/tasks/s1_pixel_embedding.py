"""S1 stage 3, the pixel embedding: a CNN classifier trained on the labelled train images; its bottleneck
(1024-d in the full config) is the pixel feature the fusion classifier reads.

Config: data (+ taxonomy fields), model.image (ResNet), model.bottleneck_dim.
"""
from __future__ import annotations

import optax

from xmodal_jax.data.preprocess import normalize_images
from xmodal_jax.evaluation import classification
from xmodal_jax.models.classifier_heads import BottleneckClassifier
from xmodal_jax.tasks.s1_base import S1TaskBase


class PixelEmbeddingTask(S1TaskBase):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.label_names = self.annotations("train").label_names
    for name in self.eval_splits:
      self.annotations(name)
    self.model = BottleneckClassifier(self.backbone(), num_classes=len(self.label_names),
                                      bottleneck_dim=config.model.bottleneck_dim)

  def train_iterator(self, *, process_index, process_count):
    notes = self.annotations("train")
    return self.image_iterator(notes.labelled_images(), lambda images, keys: {"labels": notes.labels[images]},
                               process_index=process_index, process_count=process_count)

  def loss_fn(self, params, batch, rng, step):
    logits = self.model.apply({"params": params}, normalize_images(batch["images"]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}

  def embed_images(self, params, images):
    """uint8 [batch, H, W, 3] -> pixel embedding [batch, bottleneck_dim]."""
    return self.model.apply({"params": params}, normalize_images(images), method=BottleneckClassifier.embed)

  def predict(self, params, images):
    return self.model.apply({"params": params}, normalize_images(images)).argmax(-1)

  def evaluate(self, params, split, runtime):
    notes = self.annotations(split)
    rows = notes.labelled_images()
    predictions = runtime.map_batches(self.predict, params, {"images": self.eval_images(split)[rows]},
                                      self.config.eval.batch_size)
    return classification.classification_metrics(predictions, notes.labels[rows], len(self.label_names))

  def format_results(self, metrics, split):
    return classification.format_classification_table(metrics, f"{split}: pixel CNN (its own softmax head)")
