"""S1 stage 5, the fusion classifier: concat [text feature; pixel feature] -> two FC layers -> softmax over
the taxonomy. With model.inputs=("pixel",) or ("text",) the same head is the pixel-only / text-only
ablation.

Reads the features written by the features stage (config.features.stage, a sibling directory of this
stage's workdir, or an absolute path). Config: model.inputs, model.hidden, model.dropout_rate.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal_jax.data import query_annotations
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation import classification
from xmodal_jax.models.classifier_heads import FusionClassifier
from xmodal_jax.tasks.base import Task
from xmodal_jax.tasks.s1_features import features_path

FEATURE_KINDS = ("text", "pixel")


class FusionTask(Task):

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.inputs = tuple(config.model.inputs)
    if not self.inputs or any(k not in FEATURE_KINDS for k in self.inputs):
      raise ValueError(f"config.model.inputs={self.inputs}: choose a non-empty subset of {FEATURE_KINDS}.")
    stage = config.features.stage
    self.features_dir = stage if os.path.isabs(stage) else os.path.join(os.path.dirname(os.path.abspath(workdir)),
                                                                         stage)
    self._features: dict[str, dict[str, np.ndarray]] = {}
    self.label_names = query_annotations.label_names(config.data)
    train = self.features("train")
    self.model = FusionClassifier(len(self.label_names), hidden=tuple(config.model.hidden),
                                  dropout_rate=config.model.dropout_rate)
    self._dim = self.assemble(train).shape[1]
    self._check_input_dim(workdir)
    for name in self.eval_splits:
      self.features(name)

  def _check_input_dim(self, workdir: str) -> None:
    """The classifier's input width is fixed when it is first trained; features rewritten since (e.g. with
    another text embedding) would not fit its checkpoint: say so instead of failing inside the restore."""
    path = os.path.join(workdir, "input_dim.json")
    if os.path.exists(path):
      with open(path) as f:
        trained = json.load(f)["input_dim"]
      if trained != self._dim:
        raise ValueError(f"{workdir} was trained on {trained}-d inputs but {self.features_dir} now holds "
                         f"{self._dim}-d {'+'.join(self.inputs)} features (the features stage was re-run with another "
                         "config). Re-run the pipeline (`xmodal train` re-runs the stages whose inputs changed).")
    elif jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(path, "w") as f:
        json.dump({"input_dim": self._dim, "inputs": list(self.inputs)}, f)

  def features(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._features:
      path = features_path(self.features_dir, split)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run the features stage first (config.features.stage="
                                f"{self.config.features.stage!r}; `xmodal train` of the pipeline does it).")
      with np.load(path) as data:
        self._features[split] = {k: data[k] for k in data.files}
    return self._features[split]

  def assemble(self, features: dict[str, np.ndarray]) -> np.ndarray:
    """The classifier input [N, F]: the chosen feature kinds concatenated in `inputs` order."""
    return np.concatenate([np.asarray(features[k], np.float32) for k in self.inputs], axis=1)

  def train_iterator(self, *, process_index, process_count):
    train = self.features("train")
    rows = np.flatnonzero(train["labels"] >= 0)
    x, y = self.assemble(train)[rows], train["labels"][rows]

    def load(indices, keys):
      return {"features": x[indices], "labels": y[indices]}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count, num_threads=1,
                              prefetch=self.config.data.prefetch)

  def init_params(self, rng):
    return self.model.init(rng, jnp.zeros((1, self._dim), jnp.float32))["params"]

  def loss_fn(self, params, batch, rng, step):
    logits = self.model.apply({"params": params}, batch["features"], train=True, rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}

  def probabilities(self, params, features):
    """[batch, F] -> class probabilities [batch, num_classes]."""
    return jax.nn.softmax(self.model.apply({"params": params}, features))

  def evaluate(self, params, split, runtime):
    data = self.features(split)
    rows = np.flatnonzero(data["labels"] >= 0)
    probs = runtime.map_batches(self.probabilities, params, {"features": self.assemble(data)[rows]},
                                self.config.eval.batch_size)
    return classification.classification_metrics(probs.argmax(-1), data["labels"][rows], len(self.label_names))

  def format_results(self, metrics, split):
    return classification.format_classification_table(metrics, f"{split}: classifier on {' + '.join(self.inputs)}")
