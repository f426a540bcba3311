"""The Task interface: everything the one trainer needs from a system, and nothing system-specific.

The trainer (`train/trainer.py`) imports this module and nothing under `xmodal_jax.systems`; systems implement
it in their folders (`xmodal_jax/systems/<system>/`), and the command line resolves `config.task` to a
class and hands the instance over. A task wires, for one system:

  * assets: what the model needs besides weights (a tokenizer, a query vocabulary), built from the train
    split on the first training run and written to the workdir; inference loads them from there alone;
  * variables: `init_variables` gives trainable `params` and any non-trainable collections (e.g. batch
    statistics); `frozen_params` gives parameters that are loaded, never trained (a pretrained tower, a
    reward model) and are passed to the jitted step as sharded arguments, never closed over;
  * the objective: a pure `loss_fn`, or a whole `train_step` for unusual updates (GAN alternation, SCST);
  * predict functions (`embed_image`, `embed_text`, `score_pairs`, `classify`, ...) and the data the shared
    evaluators (`xmodal_jax/evaluation/`) run them on.

Variables seen by predict functions: a dict {"params": trainable, <collection>: model state ...,
"frozen": frozen params (only when the task has some)}. Every function of params is pure and traced under jit.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Iterator, Protocol

import jax
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import Mesh

from xmodal_jax.train import optimizer as optimizer_lib
from xmodal_jax.train.state import TrainState

Metrics = dict[str, jax.Array]
PredictFn = Callable[..., Any]


class CheckpointableIterator(Protocol):
  """Per-host batches of numpy arrays, with a position that can be saved and restored."""

  def __next__(self) -> dict[str, Any]: ...
  def __iter__(self) -> Iterator[dict[str, Any]]: ...
  def get_state(self) -> dict[str, Any]: ...
  def set_state(self, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a step sees besides the state and the batch.

  step: int32 [] completed updates before this one (traced). frozen: the frozen params (traced, sharded;
  {} when the task has none). mesh: the device mesh (static), for `jax.shard_map` collectives inside a loss.
  model_state: the non-trainable collections of the state (traced; {} when none).
  """
  step: jax.Array
  frozen: Any
  mesh: Mesh
  model_state: Any


def with_frozen(params: Any, frozen: Any, model_state: Any = None) -> dict[str, Any]:
  """A model's whole variables from its trainable `params`, its frozen variables (`frozen_params()`: a dict of
  collections, "params" merged path by path with the trainable ones, others such as "batch_stats" taken as
  they are) and the state's non-trainable collections (`model_state`, which win over frozen ones)."""
  frozen = dict(frozen or {})
  flat = traverse_util.flatten_dict(frozen.pop("params", {}), sep="/")
  flat.update(traverse_util.flatten_dict(params, sep="/"))
  out = dict(frozen, params=traverse_util.unflatten_dict(flat, sep="/"))
  for name, value in (model_state or {}).items():
    if name not in ("params", "frozen"):
      out[name] = value
  return out


class Task(abc.ABC):
  """Base class of the systems. Constructing a task reads no data; `setup` loads or builds its assets."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir

  # ---- assets (tokenizer, vocabularies, ...) and the model built from them
  def setup(self, *, training: bool) -> None:
    """Make the task ready to build its model.

    training=True: load the assets from the workdir, or build them from the train split and write them
    there when absent (first run). training=False (inference): load them from the workdir only; never read a
    data source; raise FileNotFoundError naming the missing file when the run did not write it.
    """

  # ---- variables
  @abc.abstractmethod
  def init_variables(self, rng: jax.Array) -> dict[str, Any]:
    """{"params": trainable params, <collection>: non-trainable state ...}; leaves boxed with
    `nn.with_logical_partitioning` where they should be sharded (the trainer derives shardings from them)."""

  def frozen_params(self) -> Any:
    """Parameters that are loaded, never trained (a converted pretrained tower, a reward model from another
    workdir): a pytree of arrays, leaves optionally boxed with logical axis names. None: the task has none.

    Called once per run (training, resume, inference); checkpoints do not store them, so they must be
    loadable from the same source again. The trainer records their fingerprint in the workdir and refuses
    to resume with different ones.
    """
    return None

  def pretrained_params(self) -> Any:
    """Values for some trainable params at the start of a run (a nested dict, a subset of the params' paths;
    host arrays), e.g. the upper part of a pretrained tower that is fine-tuned. None: all from init_variables.
    Read once, for a new run only (a resumed run restores its checkpoint)."""
    return None

  # ---- training
  @abc.abstractmethod
  def train_iterator(self, *, process_index: int, process_count: int) -> CheckpointableIterator:
    """Per-host training batches; rows of one global batch are split across processes."""

  def loss_fn(self, params: Any, batch: dict[str, jax.Array], rng: jax.Array, ctx: StepContext
              ) -> tuple[jax.Array, Metrics]:
    """(scalar loss, scalar metrics) for one global batch. Needed unless `train_step` is overridden."""
    raise NotImplementedError(f"{type(self).__name__} must implement loss_fn or override train_step.")

  def make_optimizer(self) -> optax.GradientTransformation:
    """The optax transformation of the trainable params (config.optimizer, with its parameter groups)."""
    return optimizer_lib.create_optimizer(self.config.optimizer, self.config.train.num_steps)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, ctx: StepContext
                 ) -> tuple[TrainState, Metrics]:
    """One update. Default: gradient of `loss_fn`, then the optimiser."""
    (loss, metrics), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(state.params, batch, rng, ctx)
    metrics = dict(metrics, loss=loss, grad_norm=optimizer_lib.gradient_norm(grads))
    return state.apply_gradients(grads), metrics

  # ---- inference and evaluation
  @abc.abstractmethod
  def predict_fns(self) -> dict[str, PredictFn]:
    """Name -> pure fn(variables, **inputs) -> [batch, ...] arrays (or a pytree of them), e.g. "embed_image",
    "embed_text", "score_pairs", "classify". Must return the same function objects on every call (they key
    the compilation cache)."""

  def eval_data(self, split: str) -> Any:
    """The `evaluation.EvalData` of split `split` (inputs of the predict functions + ground truth)."""
    raise NotImplementedError(f"{type(self).__name__} provides no evaluation data.")
