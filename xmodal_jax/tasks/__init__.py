"""Task registry: config.task (a name) -> Task class. Imports are lazy so one task's deps don't load others."""
from __future__ import annotations

import importlib

_TASKS = {
    "vsepp": "xmodal_jax.tasks.vsepp:VSEPPTask",
    "s1_text_generator": "xmodal_jax.tasks.s1_text_generator:TextGeneratorTask",
    "s1_text_embedding": "xmodal_jax.tasks.s1_text_embedding:TextEmbeddingTask",
    "s1_pixel_embedding": "xmodal_jax.tasks.s1_pixel_embedding:PixelEmbeddingTask",
    "s1_fusion": "xmodal_jax.tasks.s1_fusion:FusionTask",
}

# Pipeline jobs (stages that do not train): config.stages.<name>.job -> fn(pipeline_config, workdir, stage).
_JOBS = {
    "s1_features": "xmodal_jax.tasks.s1_features:extract_features",
    "s1_ablation": "xmodal_jax.tasks.s1_report:write_ablation",
}


def get_task_class(name: str):
  if name not in _TASKS:
    raise ValueError(f"Unknown config.task={name!r}; available tasks: {sorted(_TASKS)}.")
  module, cls = _TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def get_job(name: str):
  if name not in _JOBS:
    raise ValueError(f"Unknown pipeline job {name!r}; available jobs: {sorted(_JOBS)}.")
  module, fn = _JOBS[name].split(":")
  return getattr(importlib.import_module(module), fn)


def available_tasks() -> list[str]:
  return sorted(_TASKS)
