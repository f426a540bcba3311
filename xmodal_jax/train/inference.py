"""A run loaded for inference from its workdir alone: the checkpoint's params (no optimiser state), the task's
assets (tokenizer, vocabularies: written there by training) and its frozen params. No data source is read.

  task = ...                         # the run's task, e.g. systems.create(config, workdir) (see systems.load_run)
  model = load_model(task, mesh_shape=(-1, 1))
  embeddings = model.predict("embed_image", {"images": uint8_images})
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections

from xmodal_jax import errors, fileio
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.train import checkpointing, sharding
from xmodal_jax.train.runtime import Runtime
from xmodal_jax.train.task import Task


@dataclasses.dataclass
class LoadedModel:
  """A task with restored variables on a mesh; `predict` runs one of its predict functions in batches."""
  task: Task
  step: int
  variables: dict[str, Any]
  runtime: Runtime

  def predict(self, name: str, inputs: dict[str, Any], batch_size: int = 256) -> Any:
    fns = self.task.predict_fns()
    if name not in fns:
      raise ValueError(f"{type(self.task).__name__} has no predict function {name!r}; it has {sorted(fns)}.")
    return self.runtime.map_batches(fns[name], self.variables, inputs, batch_size)


def load_model(task: Task, *, which: str = "latest", step: int | None = None,
               mesh_shape: Sequence[int] | None = None, devices: list[jax.Device] | None = None) -> LoadedModel:
  """Restore `task.workdir`'s latest (or best, or `step`) checkpoint for inference.

  mesh_shape: the (data, model) mesh to run on, e.g. (-1, 1) for whatever devices this machine has
  (default: the training config's). Parameters are resharded onto it by orbax.
  """
  config = task.config
  task.setup(training=False)
  mesh = sharding.create_mesh(tuple(mesh_shape or config.mesh.shape), devices=devices)
  rules = sharding.logical_axis_rules(fsdp=config.mesh.fsdp)
  abstract_boxed = jax.eval_shape(task.init_variables, jax.random.PRNGKey(0))
  shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  abstract = checkpointing.abstract_with_shardings(nn.meta.unbox(abstract_boxed), shardings)
  abstract_model = {"params": abstract["params"],
                    "model_state": {k: v for k, v in abstract.items() if k != "params"}}
  metric, mode = evaluator_lib.best_metric(config.evals)
  ckpt = checkpointing.Checkpointer(task.workdir, best_metric=metric, best_mode=mode, use_async=False, create=False)
  try:
    restored_step, model = ckpt.restore_model(abstract_model, which=which, step=step)
  finally:
    ckpt.close()
  variables = {"params": model["params"], **model["model_state"]}
  variable_shardings = {"params": shardings["params"], **{k: v for k, v in shardings.items() if k != "params"}}
  frozen = task.frozen_params()
  if frozen:
    frozen_shardings = sharding.logical_shardings(frozen, mesh, rules)
    variables["frozen"] = jax.device_put(nn.meta.unbox(frozen), frozen_shardings)
    variable_shardings["frozen"] = frozen_shardings
  return LoadedModel(task, int(restored_step), variables, Runtime(mesh, variable_shardings))



def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with (its config.json; JSON lists back to tuples)."""
  path = os.path.join(workdir, "config.json")
  if not fileio.exists(path):
    raise errors.MissingError(f"{path} not found: --workdir must be a directory made by `xmodal train`.")
  with fileio.open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value
