"""Task registry: config.task (a name) -> Task class. Imports are lazy so one task's deps don't load others."""
from __future__ import annotations

import importlib

_TASKS = {
    "vsepp": "xmodal_jax.tasks.vsepp:VSEPPTask",
}


def get_task_class(name: str):
  if name not in _TASKS:
    raise ValueError(f"Unknown config.task={name!r}; available tasks: {sorted(_TASKS)}.")
  module, cls = _TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def available_tasks() -> list[str]:
  return sorted(_TASKS)
