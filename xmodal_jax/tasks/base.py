"""The Task interface: everything the one trainer needs from a system, and nothing system-specific.

A task owns its model(s), objective, data and evaluators. The trainer (`train/trainer.py`) builds the
mesh and optimiser, initialises the state with shardings derived from the parameters' logical axis
names, jits `train_step` with explicit in/out shardings, loops, logs, checkpoints and calls `evaluate`.
Tasks with unusual updates (GAN alternation, SCST sampling) override `train_step`; others only write
`loss_fn`.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Protocol

import jax
import ml_collections
import numpy as np
import optax

from xmodal_jax.data import sources
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.train import optimizer as optimizer_lib
from xmodal_jax.train.runtime import Runtime
from xmodal_jax.train.state import TrainState

Metrics = dict[str, jax.Array]


class CheckpointableIterator(Protocol):
  """Per-host batches of numpy arrays, with a position that can be saved and restored."""

  def __next__(self) -> dict[str, Any]: ...
  def __iter__(self) -> Iterator[dict[str, Any]]: ...
  def get_state(self) -> dict[str, Any]: ...
  def set_state(self, state: dict[str, Any]) -> None: ...


class Task(abc.ABC):
  """Base class of the systems. Subclasses implement the abstract methods."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self._splits: dict[str, sources.SplitData] = {}
    self._eval_images: dict[str, np.ndarray] = {}

  @property
  def eval_splits(self) -> tuple[str, ...]:
    """`config.eval.splits`: the first is evaluated during training (and picks the best checkpoint), all at
    the end."""
    return tuple(self.config.eval.splits)

  # ---- data
  def split(self, name: str) -> sources.SplitData:
    """The split `name` of `config.data.source`, loaded once per task."""
    if name not in self._splits:
      self._splits[name] = sources.load_split(self.config.data, name)
    return self._splits[name]

  def eval_images(self, name: str) -> np.ndarray:
    """uint8 [N, size, size, 3] centre crops of the whole split `name` (decoded once)."""
    if name not in self._eval_images:
      data = self.split(name)
      self._eval_images[name] = data.load_images(np.arange(len(data)), self.config.data.image_size)
    return self._eval_images[name]

  def image_iterator(self, rows: np.ndarray, targets: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]],
                     *, process_index: int, process_count: int) -> EpochBatchIterator:
    """Training batches over the train images `rows`: random crops (+ flips) as "images", plus
    `targets(image indices, keys)` (e.g. labels, a caption or queries drawn from the keys)."""
    cfg = self.config.data
    data = self.split("train")
    if len(rows) == 0:
      raise ValueError(f"No usable train image in {cfg.source} for config.task={self.config.task!r}: nothing to train "
                       "on (S1 stages: no labels or queries; check the config.data query / taxonomy fields).")

    def load(indices, keys):
      images = rows[indices]
      return {"images": data.load_images(images, cfg.image_size, keys=keys, flip=cfg.flip), **targets(images, keys)}

    return EpochBatchIterator(len(rows), self.config.train.batch_size, load, seed=self.config.seed,
                              process_index=process_index, process_count=process_count,
                              num_threads=cfg.num_threads, prefetch=cfg.prefetch)

  @abc.abstractmethod
  def train_iterator(self, *, process_index: int, process_count: int) -> CheckpointableIterator:
    """Per-host training batches; rows of one global batch are split across processes."""

  # ---- model and objective (pure functions of params, traced under jit)
  @abc.abstractmethod
  def init_params(self, rng: jax.Array) -> Any:
    """Parameters, with leaves boxed by `nn.with_logical_partitioning` (the trainer derives shardings)."""

  @abc.abstractmethod
  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
              ) -> tuple[jax.Array, Metrics]:
    """(scalar loss, scalar metrics) for one global batch."""

  def make_optimizer(self) -> optax.GradientTransformation:
    return optimizer_lib.create_optimizer(self.config.optimizer, self.config.train.num_steps)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[TrainState, Metrics]:
    """One update. Default: gradient of `loss_fn`, then the optimiser."""
    (loss, metrics), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(state.params, batch, rng, state.step)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.apply_gradients(grads), metrics

  # ---- evaluation (host side; may call runtime.map_batches for sharded inference)
  @abc.abstractmethod
  def evaluate(self, params: Any, split: str, runtime: Runtime) -> dict[str, float]:
    """Metrics on a whole split, e.g. {"i2t_r1": ..., "rsum": ...} (the trainer prefixes `split/`)."""

  def format_results(self, metrics: dict[str, float], split: str) -> str:
    """Human-readable table of `evaluate`'s metrics (printed at the end of a run)."""
    return "\n".join(f"{split}/{k}: {v:.4g}" for k, v in sorted(metrics.items()))
