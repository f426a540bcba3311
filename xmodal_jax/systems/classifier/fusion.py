"""S1 stage 5, the fusion classifier: concat [text feature; pixel feature] -> two FC layers -> softmax over
the taxonomy. With model.inputs=("pixel",) or ("text",) the same head is the pixel-only / text-only
ablation.

Reads the features written by the features stage (config.features.stage, a sibling directory of this
stage's workdir, or an absolute path) for training and evaluation; inference needs only its asset
input_dim.json. Config: model.inputs, model.hidden, model.dropout_rate.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from xmodal_jax import errors, fileio
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.evaluation.evaluator import EvalData
from xmodal_jax.systems.classifier import query_annotations
from xmodal_jax.systems.classifier.classifier_heads import FusionClassifier
from xmodal_jax.systems.classifier.features import features_path
from xmodal_jax.task_bases.base import evaluated_splits
from xmodal_jax.train.task import Task

FEATURE_KINDS = ("text", "pixel")
INPUT_DIM_FILE = "input_dim.json"


class FusionTask(Task):
  """Predict function: classify (features [batch, F] -> logits [batch, num_classes])."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.inputs = tuple(config.model.inputs)
    if not self.inputs or any(k not in FEATURE_KINDS for k in self.inputs):
      raise errors.ConfigError(f"config.model.inputs={self.inputs}: choose a non-empty subset of {FEATURE_KINDS}.")
    stage = config.features.stage
    self.features_dir = (stage if os.path.isabs(stage) or not fileio.is_local(stage)
                         else os.path.join(os.path.dirname(fileio.absolute(workdir.rstrip("/"))), stage))
    self.label_names = query_annotations.label_names(config.data)
    self._features: dict[str, dict[str, np.ndarray]] = {}
    self._eval_data: dict[str, EvalData] = {}
    self._dim: int | None = None
    self.model = None
    self._predict = {"classify": self.classify}

  def setup(self, *, training: bool) -> None:
    """The input width is fixed when the classifier is first trained (input_dim.json); features rewritten
    since (e.g. with another text embedding) would not fit its checkpoint: say so instead of failing inside
    the restore."""
    if self.model is not None:
      return
    path = os.path.join(self.workdir, INPUT_DIM_FILE)
    trained = None
    if fileio.exists(path):
      with fileio.open(path) as f:
        trained = json.load(f)["input_dim"]
    elif not training:
      raise errors.MissingError(f"{path} not found: train this fusion stage first.")
    if training:
      self._dim = self.assemble(self.features("train")).shape[1]
      for split in evaluated_splits(self.config):
        self.features(split)
      if trained is not None and trained != self._dim:
        raise errors.WorkdirError(f"{self.workdir} was trained on {trained}-d inputs but {self.features_dir} now holds "
                         f"{self._dim}-d {'+'.join(self.inputs)} features (the features stage was re-run with "
                         "another config). Re-run the pipeline (`xmodal train` re-runs the stages whose inputs "
                         "changed).")
      if trained is None and jax.process_index() == 0:
        fileio.makedirs(self.workdir)
        with fileio.open(path, "w") as f:
          json.dump({"input_dim": self._dim, "inputs": list(self.inputs)}, f)
    else:
      self._dim = trained
    self.model = FusionClassifier(len(self.label_names), hidden=tuple(self.config.model.hidden),
                                  dropout_rate=self.config.model.dropout_rate)

  @property
  def input_dim(self) -> int:
    return self._dim

  def features(self, split: str) -> dict[str, np.ndarray]:
    if split not in self._features:
      path = features_path(self.features_dir, split)
      if not fileio.exists(path):
        raise errors.MissingError(f"{path} not found: run the features stage first (config.features.stage="
                                f"{self.config.features.stage!r}; `xmodal train` of the pipeline does it).")
      with fileio.load_npz(path) as data:
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

  def init_variables(self, rng):
    return {"params": self.model.init(rng, jnp.zeros((1, self._dim), jnp.float32))["params"]}

  def loss_fn(self, params, batch, rng, ctx):
    logits = self.model.apply({"params": params}, batch["features"], train=True, rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return loss, {"accuracy": (logits.argmax(-1) == batch["labels"]).mean()}

  def classify(self, variables, features):
    """[batch, F] -> logits [batch, num_classes]."""
    return self.model.apply({"params": variables["params"]}, features)

  def predict_fns(self):
    return self._predict

  def eval_data(self, split):
    if split not in self._eval_data:
      data = self.features(split)
      self._eval_data[split] = EvalData(image_inputs={"features": self.assemble(data)}, labels=data["labels"],
                                        label_names=self.label_names,
                                        title=f"classifier on {' + '.join(self.inputs)}")
    return self._eval_data[split]
