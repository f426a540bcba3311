"""Evaluators: the interface, the data they read, and the registry configs name them through.

A config declares its evaluators, several per run, each with its own schedule and log prefix:

  config.evals.val = evaluator_config("retrieval", split="val", every=500, best_metric="rsum")
  config.evals.test = evaluator_config("retrieval", split="test")          # every=0: at the end only

An evaluator never sees a task. The trainer hands it the task's predict functions (name -> pure
fn(variables, **inputs)), the variables, the task's `EvalData` of its split and the runtime that runs
functions sharded over the mesh; it returns flat metrics {name: float}, logged as "<prefix>/<name>". An evaluator
may also keep per-item scores of its last evaluation in `items` ({name: array over the split's items}, e.g. each
query's rank): the trainer saves those of the final evaluation as WORKDIR/eval_items/<prefix>.npz, so that
statistics over the evaluation items (a bootstrap CI of a difference between runs) can be computed later.
An evaluator may also leave example pictures of its last evaluation in `summaries` (evaluation/summary_images.py:
e.g. retrieval's queries and their top results), `examples` of them (0 = none); the trainer writes them to
TensorBoard beside the scalars.

Shared types (used by two or more systems): "retrieval" (evaluation/retrieval_evaluator.py), "classification"
(evaluation/classification.py), "zero_shot" (evaluation/zero_shot.py: CLIP-style classification by embedded class
prompts), "captioning" (evaluation/captioning.py: caption metrics, CLIP-S under scorer models). A system's own
types live in its folder and register (`register`) when their module is imported; the system registry
(`xmodal_jax.systems`) imports the module of each type a config names, in `systems.evaluator_config` and
`systems.create`, so no config has to import one: "label_ranking" and
"query_association" (systems/classifier/), "multilabel" and "pair_choice" (systems/region_word/: S2's semantic
tags, true caption vs a compositional foil), "image_reconstruction" (systems/vse/: MFSR's generated vs real
images), "masked_prediction" (systems/single_stream/: S4's masked words / objects), "s5_reward_model"
(systems/captioning/).
The shared types are imported on first use.
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, Callable

import ml_collections
import numpy as np

from xmodal_jax import errors

ITEMS_DIR = "eval_items"  # WORKDIR/<ITEMS_DIR>/<prefix>.npz: the per-item scores the trainer saves

_BUILTIN = {
    "retrieval": "xmodal_jax.evaluation.retrieval_evaluator",
    "classification": "xmodal_jax.evaluation.classification",
    "zero_shot": "xmodal_jax.evaluation.zero_shot",
    "captioning": "xmodal_jax.evaluation.captioning",
}
_REGISTRY: dict[str, type["Evaluator"]] = {}

# Fields every evaluator entry has; each type adds its own (Evaluator.DEFAULTS).
COMMON_DEFAULTS = dict(
    type="",
    split="val",        # which split of the task's data
    every=0,            # evaluate every N training steps; 0 = only at the end
    at_end=True,        # evaluate when training ends (and in `xmodal eval`)
    batch_size=500,     # rows per predict call (rounded up to a multiple of the data-parallel size)
    prefix="",          # log prefix; '' = the entry's name in config.evals
    best_metric="",     # a metric of this evaluator that picks the best checkpoint ('' = none)
    best_mode="max",    # max | min
    examples=4,         # queries / images shown in TensorBoard per evaluation (0 = no pictures)
)


@dataclasses.dataclass
class EvalData:
  """What a task gives an evaluator for one split. Each evaluator reads the fields it needs.

  image_inputs: per-image inputs of the image-side predict functions, {name: [N, ...]} (e.g. {"images":
    uint8 [N, H, W, 3]}, or {"features": [N, F]} when "images" are feature rows).
  text_inputs: per-text inputs of the text-side predict functions, {name: [M, ...]} (e.g. tokens, mask).
  text_to_image: int [M], the image of each text (retrieval).
  labels: int [N], class of each image, -1 = unlabelled (classification).
  label_names: names of the classes / labels.
  label_sets: per image, int array of its true label ids (multi-label ranking).
  complete_truth: optional bool [N, num_labels]: every label that is true of each image, when the data knows
    more than the listed label_sets (shapes world knows every query true of an image).
  extras: anything a project evaluator needs besides (e.g. S1's held-out query pairs), and what example pictures
    show (evaluation/summary_images.py): "captions" (the string of each text row), "references" (per image),
    "display_images" (uint8 [N, H, W, 3] when image_inputs are not images).
  title: a description of what is evaluated, shown above the result table.
  """
  image_inputs: dict[str, Any] | None = None
  text_inputs: dict[str, Any] | None = None
  text_to_image: np.ndarray | None = None
  labels: np.ndarray | None = None
  label_names: tuple[str, ...] = ()
  label_sets: list[np.ndarray] | None = None
  complete_truth: np.ndarray | None = None
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)
  title: str = ""

  def need(self, field: str, evaluator: str) -> Any:
    value = getattr(self, field)
    if value is None:
      raise errors.ConfigError(f"Evaluator {evaluator!r} needs EvalData.{field}, which this task's eval_data does not "
                       "provide; use an evaluator type that fits the task.")
    return value


class Evaluator(abc.ABC):
  """One configured evaluation. Subclasses set TYPE and DEFAULTS (their own config fields) and implement
  `evaluate` and `format`."""
  TYPE: str = ""
  DEFAULTS: dict[str, Any] = {}

  def __init__(self, name: str, spec: ml_collections.ConfigDict):
    self.name = name
    self.spec = spec
    self.split = str(spec.split)
    self.prefix = spec.prefix or name
    self.every = int(spec.every)
    self.at_end = bool(spec.at_end)
    self.items: dict[str, np.ndarray] | None = None  # per-item scores of the last `evaluate` (module docstring)
    self.summaries: Any = None  # summary_images.Summaries of the last `evaluate`, or None (module docstring)
    self.examples = int(spec.get("examples", COMMON_DEFAULTS["examples"]))
    if self.every < 0:
      raise errors.ConfigError(f"config.evals.{name}.every={self.every}: use a number of steps, or 0 for the end only.")
    if spec.best_mode not in ("max", "min"):
      raise errors.ConfigError(f"config.evals.{name}.best_mode={spec.best_mode!r}; use 'max' or 'min'.")

  @property
  def best_metric(self) -> str | None:
    """The logged name ("<prefix>/<metric>") of the metric that picks the best checkpoint, if any."""
    return f"{self.prefix}/{self.spec.best_metric}" if self.spec.best_metric else None

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def predict_fn(self, predict_fns: dict[str, Callable], field: str) -> Callable:
    name = self.spec[field]
    if name not in predict_fns:
      raise errors.ConfigError(f"config.evals.{self.name}.{field}={name!r}: the task has no predict function of that name; "
                       f"it has {sorted(predict_fns)}.")
    return predict_fns[name]

  @abc.abstractmethod
  def evaluate(self, predict_fns: dict[str, Callable], variables: Any, data: EvalData, runtime: Any
               ) -> dict[str, float]:
    """Metrics {name: float} (without the prefix)."""

  @abc.abstractmethod
  def format(self, metrics: dict[str, float], title: str) -> str:
    """A human-readable table of `evaluate`'s metrics."""


def register(cls: type[Evaluator]) -> type[Evaluator]:
  """Class decorator: makes `cls` available to configs as type `cls.TYPE`."""
  if not cls.TYPE:
    raise errors.ConfigError(f"{cls.__name__} has no TYPE.")
  _REGISTRY[cls.TYPE] = cls
  return cls


def get(type_name: str) -> type[Evaluator]:
  if type_name not in _REGISTRY and type_name in _BUILTIN:
    importlib.import_module(_BUILTIN[type_name])
  if type_name not in _REGISTRY:
    raise errors.ConfigError(f"Unknown evaluator type {type_name!r}; available: {available()}.")
  return _REGISTRY[type_name]


def available() -> list[str]:
  return sorted(set(_BUILTIN) | set(_REGISTRY))


def evaluator_config(type_name: str, **fields: Any) -> ml_collections.ConfigDict:
  """A complete config entry of an evaluator of type `type_name` (every field present, so any is overridable
  from the command line), with `fields` overriding the defaults."""
  defaults = dict(COMMON_DEFAULTS, **get(type_name).DEFAULTS, type=type_name)
  unknown = sorted(set(fields) - set(defaults))
  if unknown:
    raise errors.ConfigError(f"Evaluator type {type_name!r} has no field(s) {unknown}; it has {sorted(defaults)}.")
  return ml_collections.ConfigDict(dict(defaults, **fields))


def create(name: str, spec: ml_collections.ConfigDict) -> Evaluator:
  """The evaluator of config entry `config.evals.<name>`."""
  if "type" not in spec or not spec.type:
    raise errors.ConfigError(f"config.evals.{name} has no type; use one of {available()}.")
  cls = get(spec.type)
  expected = set(COMMON_DEFAULTS) | set(cls.DEFAULTS)
  unknown = sorted(set(spec.keys()) - expected)
  if unknown:
    raise errors.ConfigError(f"config.evals.{name}: unknown field(s) {unknown} for type {spec.type!r}; known: "
                     f"{sorted(expected)}.")
  missing = {k: v for k, v in dict(COMMON_DEFAULTS, **cls.DEFAULTS).items() if k not in spec}
  if missing:
    spec = ml_collections.ConfigDict(dict(spec.to_dict(), **missing))
  return cls(name, spec)


def create_all(evals: ml_collections.ConfigDict) -> list[Evaluator]:
  """Every entry of `config.evals`: those that run during training first, then those that run at the end
  only (so "val" comes before "test" in reports); at most one may pick the best checkpoint."""
  out = [create(name, spec) for name, spec in evals.items()]
  out.sort(key=lambda e: e.every == 0)  # stable
  picking = [e.name for e in out if e.best_metric]
  if len(picking) > 1:
    raise errors.ConfigError(f"config.evals: {picking} all set best_metric; only one evaluator may pick the best "
                     "checkpoint.")
  return out


def best_metric(evals: ml_collections.ConfigDict) -> tuple[str | None, str]:
  """("<prefix>/<metric>", mode) of the evaluator of `config.evals` that picks the best checkpoint, or
  (None, "max")."""
  for evaluator in create_all(evals):
    if evaluator.best_metric:
      return evaluator.best_metric, evaluator.spec.best_mode
  return None, "max"
