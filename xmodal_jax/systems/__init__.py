"""The systems, one folder each (classifier/ = S1, region_word/ = S2, vse/ = S3, single_stream/ = S4, captioning/ =
S5, clip/): config.task (a name) -> Task class, the pipeline jobs (stages that do not train) and the evaluator types
a system defines (configs name them through `evaluator_config`). Imports are lazy so one system's dependencies do not
load others. A system's folder holds every module only it uses; what two or more
use lives in the shared layers (models, objectives, data, evaluation, serving, train, task_bases).

Nothing under `xmodal_jax/train`, `models`, `objectives`, `data`, `evaluation`, `serving` or `task_bases` imports this
package (tests/test_house.py): the
command line (and `xmodal_jax/pipeline.py`) resolve a config to a task here and hand it to the trainer.
"""
from __future__ import annotations

import importlib
from typing import Sequence

import ml_collections

from xmodal_jax import errors

_TASKS = {
    "vsepp": "xmodal_jax.systems.vse.vsepp_task:VSEPPTask",
    "dual_encoder": "xmodal_jax.systems.vse.dual_encoder_task:DualEncoderTask",
    "mfsr": "xmodal_jax.systems.vse.mfsr_task:MFSRTask",
    "region_word_alignment": "xmodal_jax.systems.region_word.region_word_task:RegionWordAlignmentTask",
    "single_stream_vlp": "xmodal_jax.systems.single_stream.single_stream_task:SingleStreamTask",
    "clip": "xmodal_jax.systems.clip.clip_task:ClipTask",
    "captioning": "xmodal_jax.systems.captioning.captioner_task:CaptioningTask",
    "s5_reward_model": "xmodal_jax.systems.captioning.reward_model:RewardModelTask",
    "s5_reward_model_dual_encoder": "xmodal_jax.systems.captioning.reward_model_dual:DualEncoderRewardTask",
    "s1_text_generator": "xmodal_jax.systems.classifier.text_generator_task:TextGeneratorTask",
    "s1_text_embedding": "xmodal_jax.systems.classifier.text_embedding:TextEmbeddingTask",
    "s1_pixel_embedding": "xmodal_jax.systems.classifier.pixel_embedding:PixelEmbeddingTask",
    "s1_fusion": "xmodal_jax.systems.classifier.fusion:FusionTask",
}

# Pipeline jobs (stages that do not train): config.stages.<name>.job -> fn(pipeline_config, workdir, stage).
_JOBS = {
    "s1_features": "xmodal_jax.systems.classifier.features:extract_features",
    "s1_ablation": "xmodal_jax.systems.classifier.ablation:write_ablation",
}

# Evaluator types that live in a system's folder (the shared ones: evaluation/evaluator.py's _BUILTIN): type -> the
# module that registers it. Imported by name when a config names the type (`evaluator_config`) or a task is created,
# so what is registered never depends on which config or task module was imported first.
_EVALUATORS = {
    "label_ranking": "xmodal_jax.systems.classifier.label_ranking_evaluator",
    "query_association": "xmodal_jax.systems.classifier.evaluators",
    "multilabel": "xmodal_jax.systems.region_word.multilabel_evaluator",
    "pair_choice": "xmodal_jax.systems.region_word.pair_choice_evaluator",
    "image_reconstruction": "xmodal_jax.systems.vse.image_reconstruction_evaluator",
    "masked_prediction": "xmodal_jax.systems.single_stream.masked_prediction_evaluator",
    "s5_reward_model": "xmodal_jax.systems.captioning.evaluators",
}


def _load(table: dict[str, str], name: str, what: str):
  if name not in table:
    raise errors.ConfigError(f"Unknown {what} {name!r}; available {what}s: {sorted(table)}.")
  module, attr = table[name].split(":")
  return getattr(importlib.import_module(module), attr)


def get_task_class(name: str):
  return _load(_TASKS, name, "task")


def get_job(name: str):
  return _load(_JOBS, name, "pipeline job")


def available_tasks() -> list[str]:
  return sorted(_TASKS)


def _register_evaluator(type_name: str) -> None:
  if type_name in _EVALUATORS:
    importlib.import_module(_EVALUATORS[type_name])  # its @evaluator.register runs on import


def evaluator_config(type_name: str, **fields) -> ml_collections.ConfigDict:
  """`evaluation.evaluator.evaluator_config` for any evaluator type, a system's own included (the configs' entry):
  the complete config entry of an evaluator of type `type_name`, `fields` overriding its defaults."""
  from xmodal_jax.evaluation import evaluator  # pylint: disable=import-outside-toplevel  (keeps the registry light)
  _register_evaluator(type_name)
  return evaluator.evaluator_config(type_name, **fields)


def create(config: ml_collections.ConfigDict, workdir: str):
  """The task of `config` (config.task) working in `workdir`, with the evaluator types its config.evals name
  registered. Reads no data."""
  if "task" not in config:
    raise errors.ConfigError(f"The config has no `task` field; set config.task to one of {available_tasks()}.")
  task_class = get_task_class(config.task)
  for spec in config.evals.values() if "evals" in config else ():
    _register_evaluator(spec.get("type", ""))
  return task_class(config, workdir)


def run_task(workdir: str, *, source: str | None = None):
  """The task of the run in `workdir`, from its config.json (a missing one is a MissingError naming it); `source`:
  read that data source (config.data.source) instead of the run's. Reads no data."""
  from xmodal_jax.train import inference  # pylint: disable=import-outside-toplevel  (keeps jax off the registry's import)
  config = inference.read_run_config(workdir)
  if source:
    with config.unlocked():
      config.data.source = source
  return create(config, workdir)


def load_run(workdir: str, *, which: str = "latest", mesh_shape: Sequence[int] | None = None):
  """A trained run loaded for inference from its workdir alone (its config.json, assets and checkpoint's
  params; no optimiser state, no data source): a `train.inference.LoadedModel`."""
  from xmodal_jax.train import inference  # pylint: disable=import-outside-toplevel  (keeps jax off the registry's import)
  return inference.load_model(run_task(workdir), which=which, mesh_shape=mesh_shape)


def load_init_run(init_from: str, *, task: str, mesh_shape: Sequence[int] | None = None):
  """The run a fine-tuning run starts from (config.init_from): loaded as by `load_run`; a missing workdir or a
  run of another task than `task` is a user error naming config.init_from."""
  try:
    loaded = load_run(str(init_from), mesh_shape=mesh_shape)
  except FileNotFoundError as e:
    raise errors.MissingError(f"config.init_from={init_from!r}: {e}") from None
  if loaded.task.config.task != task:
    raise errors.ConfigError(f"config.init_from={init_from!r} is a {loaded.task.config.task!r} run; this run "
                             f"starts from a {task!r} run.")
  return loaded
