"""The one trainer: mesh, sharded state, jitted step, loop, logs, checkpoints, evaluation.

It knows only the `Task` interface (tasks/base.py); it never names a system.

Step numbering: `state.step` counts completed updates. "Step k" in logs, checkpoints and errors is the
state after k updates; the k-th update consumed the k-th batch of the data iterator.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from xmodal_jax import tasks
from xmodal_jax.tasks.base import Task
from xmodal_jax.train import checkpointing
from xmodal_jax.train import optimizer as optimizer_lib
from xmodal_jax.train import sharding
from xmodal_jax.train.runtime import Runtime
from xmodal_jax.train.state import TrainState


class NonFiniteLossError(FloatingPointError):
  """Raised when a training step produced a NaN/Inf metric (loss or gradient norm)."""


@dataclasses.dataclass
class Setup:
  """Everything derived from the config before any array is made."""
  config: ml_collections.ConfigDict
  task: Task
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: Any
  abstract_state: Any          # ShapeDtypeStructs with shardings (restore target)
  init_state: Any              # jitted: rng -> sharded TrainState
  runtime: Runtime


def build(config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None) -> Setup:
  """Task, mesh, optimiser and the shardings of the train state (from the params' logical axis names).

  devices: the devices of the mesh (default: all); `config.mesh.shape` must fit their number.
  """
  task = tasks.get_task_class(config.task)(config, workdir)
  mesh = sharding.create_mesh(tuple(config.mesh.shape), devices=devices)
  rules = sharding.logical_axis_rules(fsdp=config.mesh.fsdp)
  tx = task.make_optimizer()

  def boxed_state(rng: jax.Array) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    params = task.init_params(init_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng, tx=tx)

  abstract_boxed = jax.eval_shape(boxed_state, jax.random.PRNGKey(config.seed))
  state_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  abstract_state = checkpointing.abstract_with_shardings(nn.meta.unbox(abstract_boxed), state_shardings)
  init_state = jax.jit(lambda rng: nn.meta.unbox(boxed_state(rng)), out_shardings=state_shardings)
  runtime = Runtime(mesh=mesh, param_shardings=state_shardings.params)
  return Setup(config, task, mesh, rules, state_shardings, abstract_state, init_state, runtime)


def make_train_step(setup: Setup):
  """jit of (state, first_bad_step, batch) -> (state, first_bad_step, metrics), state donated.

  `first_bad_step` (int32, -1 = none) records on device the first step whose metrics were not finite, so
  the NaN guard needs no host sync per step; the host checks it at every log and checkpoint.
  """
  task = setup.task
  replicated = sharding.replicated(setup.mesh)

  def step_fn(state: TrainState, first_bad: jax.Array, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    new_state, metrics = task.train_step(state, batch, rng)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(metrics)]))
    first_bad = jnp.where((first_bad < 0) & ~finite, state.step + 1, first_bad)
    return new_state, first_bad, metrics

  return jax.jit(step_fn,
                 in_shardings=(setup.state_shardings, replicated, sharding.batch_sharding(setup.mesh)),
                 out_shardings=(setup.state_shardings, replicated, replicated),
                 donate_argnums=(0,))


def _check_finite(first_bad: jax.Array, last_good_checkpoint: int | None) -> None:
  bad = int(jax.device_get(first_bad))
  if bad >= 0:
    where = (f"the last checkpoint (step {last_good_checkpoint}) is intact" if last_good_checkpoint
             else "no checkpoint was written before it")
    raise NonFiniteLossError(
        f"Training diverged: the loss or gradient norm became NaN/Inf at step {bad}; {where}. "
        "Lower config.optimizer.learning_rate, enable config.optimizer.grad_clip_norm, or check the input data.")


class _PreemptionWatcher:
  """SIGTERM (single host) or the JAX preemption sync point (multi-host) -> save and stop cleanly."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._event.is_set()

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Write config.json; on resume, log which fields differ from the run that made the workdir."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != current:
      logging.warning("Config differs from the one this workdir was started with (%s); resuming anyway. "
                      "Differences: %s", path, _diff(previous, current))
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
  return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def _flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update({f"{key}.{k}": v for k, v in _flatten(value).items()})
    else:
      out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
  return out


def _mean_metrics(pending: list[dict[str, jax.Array]]) -> dict[str, float]:
  stacked = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _report(task: Task, metrics: dict[str, float], splits: tuple[str, ...], title: str) -> str:
  """The task's tables for each split of `metrics` ({'split/metric': value})."""
  tables = []
  for split in splits:
    prefix = f"{split}/"
    tables.append(task.format_results({k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)},
                                      f"{split} ({title})"))
  return "\n\n".join(tables)


def evaluate_splits(setup: Setup, params: Any, splits: tuple[str, ...]) -> dict[str, float]:
  """{'<split>/<metric>': value} for each split, via the task's evaluators."""
  out = {}
  for split in splits:
    start = time.time()
    metrics = setup.task.evaluate(params, split, setup.runtime)
    out.update({f"{split}/{k}": float(v) for k, v in metrics.items()})
    logging.info("Evaluated %s in %.1fs: %s", split, time.time() - start, metrics)
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Train `config` in `workdir` (resuming from its latest checkpoint), then evaluate.

  stop_at_step: stop (after checkpointing) once this step is reached, as a preemption would; the same
  command later resumes. Returns {'step', 'metrics', 'train_seconds', 'stopped_early', 'state'}.
  """
  from clu import metric_writers, periodic_actions  # imports TensorFlow: keep it off the import path

  os.makedirs(workdir, exist_ok=True)
  _save_config(config, workdir)
  setup = build(config, workdir, devices)
  task, cfg = setup.task, config.train
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                    best_metric=config.checkpoint.best_metric,
                                    best_mode=config.checkpoint.best_mode,
                                    use_async=config.checkpoint.use_async)
  data = task.train_iterator(process_index=jax.process_index(), process_count=jax.process_count())
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  lr_schedule = optimizer_lib.learning_rate_schedule(config.optimizer, cfg.num_steps)

  if ckpt.latest_step() is not None:
    start_step, state, data_state = ckpt.restore(setup.abstract_state)
    data.set_state(data_state)
    logging.info("Resumed from %s at step %d (data position %s).", workdir, start_step, data_state)
  else:
    start_step = 0
    state = setup.init_state(jax.random.PRNGKey(config.seed))
    writer.write_hparams(_flatten(config))
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  logging.info("Task %s: %.2fM parameters, mesh %s, global batch %d, %d steps.", config.task, num_params / 1e6,
               dict(setup.mesh.shape), cfg.batch_size, cfg.num_steps)

  step_fn = make_train_step(setup)
  first_bad = jax.device_put(jnp.array(-1, jnp.int32), sharding.replicated(setup.mesh))
  report_progress = periodic_actions.ReportProgress(num_train_steps=cfg.num_steps, writer=writer)
  hooks = [report_progress]
  if cfg.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=cfg.profile_steps, logdir=workdir))
  watcher = _PreemptionWatcher()
  last_ckpt = start_step if start_step else None
  pending: list[dict[str, jax.Array]] = []
  step, stopped_early, train_start = start_step, False, time.time()
  try:
    while step < cfg.num_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.global_batch_from_host(next(data), setup.mesh)
        state, first_bad, metrics = step_fn(state, first_bad, batch)
      step += 1
      pending.append(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        logging.info("First step (with compilation) took %.1fs.", time.time() - train_start)
      for hook in hooks:
        hook(step)
      preempted = watcher.should_stop(step)
      stopped_early = preempted or (stop_at_step is not None and step >= stop_at_step and step < cfg.num_steps)
      if step % cfg.log_every == 0 or step == cfg.num_steps or stopped_early:
        _check_finite(first_bad, last_ckpt)
        scalars = {f"train/{k}": v for k, v in _mean_metrics(pending).items()}
        scalars["train/learning_rate"] = float(lr_schedule(step - 1))
        writer.write_scalars(step, scalars)
        pending = []
      if step % cfg.checkpoint_every == 0 or step == cfg.num_steps or stopped_early:
        _check_finite(first_bad, last_ckpt)
        ckpt.save(step, state, data.get_state())
        last_ckpt = step
      if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.num_steps and not stopped_early:
        with report_progress.timed("eval"):
          eval_metrics = evaluate_splits(setup, state.params, task.eval_splits[:1])
        writer.write_scalars(step, eval_metrics)
        ckpt.save_best(step, state, data.get_state(), eval_metrics)
      if stopped_early:
        logging.warning("Stopping at step %d (%s); rerun the same command to resume.", step,
                        "preemption signal" if preempted else "stop_at_step")
        break
    train_seconds = time.time() - train_start
    results: dict[str, Any] = {"step": step, "train_seconds": train_seconds, "stopped_early": stopped_early}
    if not stopped_early:
      eval_start = time.time()
      final = evaluate_splits(setup, state.params, task.eval_splits)
      results["eval_seconds"] = time.time() - eval_start
      writer.write_scalars(step, final)
      ckpt.save_best(step, state, data.get_state(), final)
      results["metrics"] = final
      results["report"] = _report(task, final, task.eval_splits, title=f"step {step}")
      if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
          json.dump(results, f, indent=2, sort_keys=True)
    return dict(results, state=state)
  finally:
    watcher.close()
    writer.flush()
    ckpt.wait()
    ckpt.close()
    writer.close()


def restore_params(config: ml_collections.ConfigDict, workdir: str, which: str = "latest"
                   ) -> tuple[Setup, int, Any]:
  """(setup, step, params) of the latest (or best) checkpoint of `workdir`, sharded as in training."""
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep,
                                    best_metric=config.checkpoint.best_metric or None,
                                    best_mode=config.checkpoint.best_mode, use_async=False, create=False)
  try:
    setup = build(config, workdir)
    step, state, _ = ckpt.restore(setup.abstract_state, which=which)
  finally:
    ckpt.close()
  return setup, step, state.params


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, *, splits: tuple[str, ...] | None = None,
                        which: str = "latest") -> dict[str, Any]:
  """Restore the latest (or best) checkpoint of `workdir` and evaluate it on `splits`."""
  setup, step, params = restore_params(config, workdir, which)
  splits = tuple(splits or setup.task.eval_splits)
  metrics = evaluate_splits(setup, params, splits)
  return {"step": step, "metrics": metrics,
          "report": _report(setup.task, metrics, splits, title=f"step {step}, {which} checkpoint")}
