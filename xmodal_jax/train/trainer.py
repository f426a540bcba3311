"""The one trainer: mesh, sharded state, jitted step, loop, logs, checkpoints, evaluators.

It knows only the `Task` interface (train/task.py) and never imports `xmodal_jax.systems`: the command line
(or a pipeline) builds the task from the config and hands it over, as the Flax examples hand a config to
`train_and_evaluate`.

Step numbering: `state.step` counts completed updates. "Step k" in logs, checkpoints and errors is the
state after k updates; the k-th update consumed the k-th batch of the data iterator.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from xmodal_jax import disk_space, errors, fileio, host_memory, progress
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import summary_images
from xmodal_jax.train import checkpointing
from xmodal_jax.train import inference
from xmodal_jax.train import optimizer as optimizer_lib
from xmodal_jax.train import sharding, validation
from xmodal_jax.train import workdir as workdir_lib
from xmodal_jax.train.runtime import Runtime
from xmodal_jax.train.state import TrainState
from xmodal_jax.train.task import StepContext, Task

FROZEN_FILE = "frozen_params.json"
ITEMS_DIR = evaluator_lib.ITEMS_DIR  # per-item scores of the final evaluation (save_items)
PARAMETERS_FILE = "parameters.txt"  # the table of trainable parameters (shown at --verbosity=1)


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """Raised when a training step produced a NaN/Inf metric (loss or gradient norm)."""


@dataclasses.dataclass
class Setup:
  """Everything derived from the task before the loop: mesh, shardings, initialiser, frozen params."""
  task: Task
  mesh: jax.sharding.Mesh
  rules: tuple
  state_shardings: Any
  abstract_state: Any          # ShapeDtypeStructs with shardings (restore target)
  init_state: Any              # jitted: rng -> sharded TrainState
  frozen: Any                  # the task's frozen params on the mesh ({} when none)
  frozen_shardings: Any
  runtime: Runtime
  frozen_fingerprint: dict | None = None  # training: hash of the frozen params (None when there are none)

  def variables(self, state: TrainState) -> dict[str, Any]:
    """What predict functions take: {"params", <model state collections>, "frozen" (if any)}."""
    out = {"params": state.params, **state.model_state}
    if self.frozen:
      out["frozen"] = self.frozen
    return out


def _variable_shardings(state_shardings: TrainState, frozen_shardings: Any) -> dict[str, Any]:
  out = {"params": state_shardings.params, **state_shardings.model_state}
  if frozen_shardings:
    out["frozen"] = frozen_shardings
  return out


def build(task: Task, devices: list[jax.Device] | None = None, *, training: bool = True) -> Setup:
  """Mesh, optimiser and the shardings of the train state (from the params' logical axis names).

  Calls `task.setup(training=...)` first. devices: the devices of the mesh (default: all);
  `config.mesh.shape` must fit their number.
  """
  config = task.config
  mesh = sharding.create_mesh(tuple(config.mesh.shape), devices=devices)
  if training:
    validation.validate(config, data_parallel=mesh.shape["data"], process_count=jax.process_count())
  task.setup(training=training)
  rules = sharding.logical_axis_rules(fsdp=config.mesh.fsdp)
  tx = task.make_optimizer()

  def boxed_state(rng: jax.Array) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    variables = dict(task.init_variables(init_rng))
    params = variables.pop("params")
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                      opt_state=tx.init(params), rng=train_rng, tx=tx)

  abstract_boxed = jax.eval_shape(boxed_state, jax.random.PRNGKey(config.seed))
  state_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  abstract_state = checkpointing.abstract_with_shardings(nn.meta.unbox(abstract_boxed), state_shardings)
  init_state = jax.jit(lambda rng: nn.meta.unbox(boxed_state(rng)), out_shardings=state_shardings)
  frozen_boxed = task.frozen_params() or {}
  fingerprint = _fingerprint(nn.meta.unbox(frozen_boxed)) if frozen_boxed and training else None
  frozen_shardings = sharding.logical_shardings(frozen_boxed, mesh, rules)
  frozen = jax.device_put(nn.meta.unbox(frozen_boxed), frozen_shardings)
  runtime = Runtime(mesh=mesh, variable_shardings=_variable_shardings(state_shardings, frozen_shardings))
  return Setup(task, mesh, rules, state_shardings, abstract_state, init_state, frozen, frozen_shardings, runtime,
               fingerprint)


def make_train_step(setup: Setup):
  """jit of (state, frozen, first_bad_step, batch) -> (state, first_bad_step, metrics), state donated.

  Frozen params are an argument (sharded like any param), never a constant baked into the program.
  `first_bad_step` (int32, -1 = none) records on device the first step whose metrics were not finite, so
  the NaN guard needs no host sync per step; the host checks it at every log, evaluation and checkpoint.
  """
  task, mesh = setup.task, setup.mesh
  replicated = sharding.replicated(mesh)

  def step_fn(state: TrainState, frozen: Any, first_bad: jax.Array, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    ctx = StepContext(step=state.step, frozen=frozen, mesh=mesh, model_state=state.model_state)
    new_state, metrics = task.train_step(state, batch, rng, ctx)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(metrics)]))
    first_bad = jnp.where((first_bad < 0) & ~finite, state.step + 1, first_bad)
    return new_state, first_bad, metrics

  return jax.jit(step_fn,
                 in_shardings=(setup.state_shardings, setup.frozen_shardings, replicated,
                               sharding.batch_sharding(mesh)),
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
  """SIGTERM (single host) or the JAX preemption sync point (multi-host), and Ctrl-C (SIGINT) -> save and stop
  cleanly at the next step. A second Ctrl-C stops at once (KeyboardInterrupt: no checkpoint, exit 130)."""

  def __init__(self):
    self._event = threading.Event()
    self.reason = "preempted"
    self._previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)

  def _on_sigterm(self, *_) -> None:
    self._event.set()

  def _on_sigint(self, *_) -> None:
    if self._event.is_set() and self.reason == "interrupted":
      raise KeyboardInterrupt  # the second Ctrl-C: stop now
    self.reason = "interrupted"
    self._event.set()
    logging.warning("Ctrl-C: saving a checkpoint at the next step, then stopping (Ctrl-C again to stop at once, "
                    "without it).")

  def should_stop(self, step: int) -> bool:
    if self._event.is_set():
      return True
    return jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step)

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


def _hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()}


def _fingerprint(tree: Any) -> dict[str, Any]:
  """sha256 over the paths, shapes, dtypes and bytes of a pytree of (host) arrays."""
  digest, count, size = hashlib.sha256(), 0, 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}|{value.shape}|{value.dtype}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
    count, size = count + 1, size + value.size
  return {"sha256": digest.hexdigest(), "arrays": count, "values": size}


def _check_frozen(setup: Setup, workdir: str, resuming: bool) -> None:
  """The frozen params a run started with are the ones it resumes with (they are not in the checkpoint)."""
  current = setup.frozen_fingerprint
  if current is None:
    return
  path = os.path.join(workdir, FROZEN_FILE)
  if resuming and fileio.exists(path):
    with fileio.open(path) as f:
      recorded = json.load(f)
    if recorded["sha256"] != current["sha256"]:
      raise errors.WorkdirError(f"The frozen params of this run changed since it started ({path} records sha256 "
                       f"{recorded['sha256'][:12]}..., they now hash to {current['sha256'][:12]}...): restore the "
                       "original source of the frozen params, or start a new --workdir.")
  elif jax.process_index() == 0:
    with fileio.open(path, "w") as f:
      json.dump(current, f, indent=2)


def load_pretrained(params: Any, pretrained: Any, shardings: Any) -> Any:
  """`params` with the leaves named in `pretrained` (nested dict of host arrays) replaced, each placed with the
  param's sharding; a path that is not a param, or a shape that differs, is an error naming it."""
  if not pretrained:
    return params
  flat = traverse_util.flatten_dict(params, sep="/")
  flat_shardings = traverse_util.flatten_dict(shardings, sep="/")
  for path, value in traverse_util.flatten_dict(pretrained, sep="/").items():
    if path not in flat:
      raise errors.ConfigError(f"Pretrained value for {path}, which is not a trainable param of this model.")
    value = np.asarray(value, flat[path].dtype)
    if value.shape != flat[path].shape:
      raise errors.DataError(f"Pretrained value for {path} has shape {value.shape}; the model's param has "
                             f"{flat[path].shape}.")
    flat[path] = jax.device_put(value, flat_shardings[path])
  return traverse_util.unflatten_dict(flat, sep="/")


def _best_variables(ckpt: checkpointing.Checkpointer, setup: Setup, step: int) -> dict[str, Any]:
  abstract = {"params": setup.abstract_state.params, "model_state": setup.abstract_state.model_state}
  _, model = ckpt.restore_model(abstract, step=step)
  out = {"params": model["params"], **model["model_state"]}
  if setup.frozen:
    out["frozen"] = setup.frozen
  return out


def _restore(ckpt: checkpointing.Checkpointer, setup: Setup, workdir: str) -> tuple[int, Any, dict]:
  """The latest checkpoint; a checkpoint that does not fit the task's shapes is a WorkdirError, not a raw
  orbax error (only reachable with --allow_config_change: other changes are refused earlier)."""
  try:
    return ckpt.restore(setup.abstract_state)
  except (ValueError, TypeError, KeyError) as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.WorkdirError(
        f"The checkpoint in {workdir} does not fit this config's model (the config changed parameter shapes or "
        f"structure: {str(e).splitlines()[0][:300]}). Train in a new --workdir.") from e


class _MetricAverager:
  """Means of the step metrics since the last log, accumulated on device with clu metric collections (no
  host sync per step)."""

  def __init__(self):
    self._collection = None
    self._value = None

  def add(self, metrics: dict[str, jax.Array]) -> None:
    from clu import metrics as clu_metrics  # imports TensorFlow: keep it off the import path
    if self._collection is None:
      self._collection = clu_metrics.Collection.create(
          **{k: clu_metrics.Average.from_output(k) for k in metrics})
    value = self._collection.single_from_model_output(**metrics)
    self._value = value if self._value is None else self._value.merge(value)

  def pop(self) -> dict[str, float]:
    out = {} if self._value is None else {k: float(v) for k, v in self._value.compute().items()}
    self._value = None
    return out


def evaluate(task: Task, runtime: Runtime, variables: dict[str, Any], evaluators: list[evaluator_lib.Evaluator]
             ) -> dict[str, float]:
  """{'<prefix>/<metric>': value} of each evaluator, run on the task's predict functions and eval data."""
  out = {}
  predict_fns = task.predict_fns()
  for evaluator in evaluators:
    start = time.time()
    metrics = evaluator.evaluate(predict_fns, variables, task.eval_data(evaluator.split), runtime)
    out.update({f"{evaluator.prefix}/{k}": float(v) for k, v in metrics.items()})
    logging.info("Evaluated %s (%s) in %.1fs: %s", evaluator.name, evaluator.split, time.time() - start,
                 ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
  return out


def report(task: Task, metrics: dict[str, float], evaluators: list[evaluator_lib.Evaluator], title: str) -> str:
  """The evaluators' tables of `metrics` ({'<prefix>/<metric>': value})."""
  tables = []
  for evaluator in evaluators:
    prefix = f"{evaluator.prefix}/"
    own = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    if not own:
      continue
    what = task.eval_data(evaluator.split).title
    heading = f"{evaluator.prefix}: {what} ({title})" if what else f"{evaluator.prefix} ({title})"
    tables.append(evaluator.format(own, heading))
  return "\n\n".join(tables)


def evaluate_checkpoint(task: Task, *, splits: tuple[str, ...] | None = None, which: str = "latest"
                        ) -> dict[str, Any]:
  """Restore the latest (or best) checkpoint's params (no optimiser state) and run the evaluators that run at
  the end of training (those of `splits` only, if given)."""
  evaluators = [e for e in evaluator_lib.create_all(task.config.evals)
                if e.at_end and (not splits or e.split in splits)]
  if not evaluators:
    raise errors.ConfigError(f"No evaluator of config.evals runs on split(s) {list(splits or ())}; the config evaluates "
                     f"{sorted({e.split for e in evaluator_lib.create_all(task.config.evals)})}.")
  loaded = inference.load_model(task, which=which)
  metrics = evaluate(task, loaded.runtime, loaded.variables, evaluators)
  return {"step": loaded.step, "metrics": metrics,
          "report": report(task, metrics, evaluators, title=f"step {loaded.step}, {which} checkpoint")}


def train_and_evaluate(task: Task, *, stop_at_step: int | None = None, devices: list[jax.Device] | None = None,
                       allow_config_change: bool = False) -> dict[str, Any]:
  """Train `task` in `task.workdir` (resuming from its latest checkpoint), evaluating as `config.evals` says.

  The workdir is locked for the life of the call; a resume whose config differs in a run-defining field is
  refused unless `allow_config_change` (train/workdir.py). stop_at_step: stop (after checkpointing) once this
  step is reached, as a preemption would; the same command later resumes. Returns {'step', 'metrics',
  'report', 'train_seconds', 'stopped_early', 'stop_reason' (None | 'stop_at_step' | 'preempted' |
  'interrupted'), 'state'}.

  On a CPU host this first applies the host-memory policy (xmodal_jax/host_memory.py; once per process, a no-op
  after the CLI applied it; XMODAL_KEEP_HOST_MEMORY=0 turns it off).
  """
  host_memory.keep_freed_memory()
  mesh = sharding.create_mesh(tuple(task.config.mesh.shape), devices=devices)  # no arrays: just the layout
  validation.validate(task.config, data_parallel=mesh.shape["data"], process_count=jax.process_count())
  with workdir_lib.WorkdirLock(task.workdir, enabled=jax.process_index() == 0):
    watcher = _PreemptionWatcher()  # from the start: a signal during set-up or compilation stops after step 1
    try:
      return _train_and_evaluate(task, watcher, stop_at_step=stop_at_step, devices=devices,
                                 allow_config_change=allow_config_change)
    except Exception as e:  # pylint: disable=broad-except  (a full disk, however a writer reports it)
      if isinstance(e, errors.UserError) or not disk_space.is_disk_full(e):
        raise
      raise errors.DiskFullError(f"{disk_space.message(task.workdir, 'training')}. {_full_disk_fix(task.workdir)}"
                                 ) from e
    finally:
      watcher.close()


def _committed_steps(workdir: str) -> list[int]:
  """Steps with a committed checkpoint (orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it when done)."""
  directory = os.path.join(workdir, checkpointing.CHECKPOINTS)
  if not fileio.isdir(directory):
    return []
  return sorted(int(os.path.basename(p.rstrip("/"))) for p in fileio.glob(os.path.join(directory, "*"))
                if os.path.basename(p.rstrip("/")).isdigit())


def _full_disk_fix(workdir: str) -> str:
  steps = _committed_steps(workdir)
  kept = (f"The last committed checkpoint (step {steps[-1]}) is intact" if steps
          else "No checkpoint had been committed yet")
  return f"{kept}: free some space (or move --workdir to another disk) and rerun the same command to resume."


def _state_bytes(state: TrainState) -> int:
  """The bytes a checkpoint of `state` holds, about (orbax stores the arrays uncompressed, plus metadata)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)
             if hasattr(x, "shape") and hasattr(x, "dtype"))


def _start_up_summary(task: Task, setup: Any, state: TrainState, data: Any) -> str:
  """One line: the task, parameters, mesh, data size and workdir ("Task vsepp in /tmp/run: 13,648 trainable
  parameters, mesh data 1 x model 1, global batch 32, 20 steps = 0.7 epochs of 960 examples.")."""
  cfg = task.config.train
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  mesh = " x ".join(f"{axis} {size}" for axis, size in setup.mesh.shape.items())
  batches = getattr(data, "batches_per_epoch", None)  # full batches of the training set
  epochs = f" = {cfg.num_steps / batches:.1f} epochs of {batches * cfg.batch_size:,} examples" if batches else ""
  return (f"Task {task.config.task} in {task.workdir}: {params:,} trainable parameters, mesh {mesh}, global batch "
          f"{cfg.batch_size}, {cfg.num_steps} steps{epochs}.")


def _train_and_evaluate(task: Task, watcher: _PreemptionWatcher, *, stop_at_step: int | None, devices: list[jax.Device] | None,
                        allow_config_change: bool) -> dict[str, Any]:
  from clu import metric_writers, parameter_overview, periodic_actions  # TensorFlow: keep it off the import path

  config, workdir = task.config, task.workdir
  cfg = config.train
  fileio.makedirs(workdir)
  current_config = json.loads(config.to_json_best_effort())
  evaluators = evaluator_lib.create_all(config.evals)
  metric_name, metric_mode = evaluator_lib.best_metric(config.evals)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep, best_metric=metric_name,
                                    best_mode=metric_mode, use_async=config.checkpoint.use_async)
  resuming = ckpt.latest_step() is not None
  if resuming:  # before anything is built or written: a changed run is refused with the workdir untouched
    workdir_lib.check_resume_config(workdir, current_config, allow_change=allow_config_change)
  setup = build(task, devices)
  _check_frozen(setup, workdir, resuming)
  data = task.train_iterator(process_index=jax.process_index(), process_count=jax.process_count())
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  # Example pictures and texts: to TensorBoard only (the default writer would also log every text in full).
  pictures = metric_writers.SummaryWriter(workdir) if jax.process_index() == 0 else None
  lr_schedule = optimizer_lib.learning_rate_schedule(config.optimizer, cfg.num_steps)

  if resuming:
    start_step, state, data_state = _restore(ckpt, setup, workdir)
    data.set_state(data_state)
    logged = workdir_lib.logged_tags(workdir) if jax.process_index() == 0 else {}
    writer = workdir_lib.LoggedStepFilter(writer, logged)  # the redone steps are in TensorBoard already
    logging.info("Resumed from %s at step %d (data position %s; TensorBoard has steps up to %d).", workdir,
                 start_step, data_state, max(logged, default=0))
  else:
    start_step = 0
    state = setup.init_state(jax.random.PRNGKey(config.seed))
    state = state.replace(params=load_pretrained(state.params, task.pretrained_params(), setup.state_shardings.params))
    writer.write_hparams(_hparams(config))
  if jax.process_index() == 0:  # the run is accepted: record its config (only now)
    workdir_lib.write_config(workdir, current_config)
  parameter_overview.log_parameter_overview(state.params, include_stats=False, msg="Trainable params")  # -v=1
  if jax.process_index() == 0:  # the parameter table, always: in the workdir
    with fileio.open(os.path.join(workdir, PARAMETERS_FILE), "w") as f:
      f.write(parameter_overview.get_parameter_overview(state.params, include_stats=False) + "\n")
  logging.info("%s", _start_up_summary(task, setup, state, data))

  step_fn = make_train_step(setup)
  checkpoint_bytes = _state_bytes(state) + (1 << 20)  # + metadata and the data position
  first_bad = jax.device_put(jnp.array(-1, jnp.int32), sharding.replicated(setup.mesh))
  report_progress = periodic_actions.ReportProgress(num_train_steps=cfg.num_steps, writer=writer)
  hooks = [report_progress]
  if cfg.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(num_profile_steps=cfg.profile_steps, logdir=workdir))
  last_ckpt = start_step if start_step else None
  averager = _MetricAverager()
  step, stopped_early, train_start = start_step, False, time.time()
  final_metrics: dict[str, float] = {}
  eval_seconds = 0.0
  stop_reason = None
  samples_written = resuming  # the data sample grid: once per run, at its first evaluation
  lost = [e for e in evaluators if start_step and start_step < cfg.num_steps and e.due(start_step)
          and isinstance(writer, workdir_lib.LoggedStepFilter) and writer.missing(start_step, e.prefix)]
  if lost and jax.process_count() == 1:  # killed between the checkpoint and its evaluation's scalars
    logging.info("Evaluating step %d again: its %s results never reached TensorBoard.", start_step,
                 ", ".join(e.prefix for e in lost))
    writer.write_scalars(start_step, evaluate(task, setup.runtime, setup.variables(state), lost))
    write_summaries(pictures, start_step, lost)
  if stop_at_step is not None and start_step >= stop_at_step and start_step < cfg.num_steps:
    logging.warning("The run is at step %d already, not below --stop_at_step=%d: nothing to train.", start_step,
                    stop_at_step)
    stopped_early, stop_reason = True, "stop_at_step"
  train_bar = progress.bar(cfg.num_steps, "Training", unit="steps", initial=start_step)
  try:
    while step < cfg.num_steps and not stopped_early:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = sharding.global_batch_from_host(next(data), setup.mesh)
        state, first_bad, metrics = step_fn(state, setup.frozen, first_bad, batch)
      step += 1
      averager.add(metrics)
      if step == start_step + 1:
        jax.block_until_ready(metrics)
        logging.info("First step (with compilation) took %.1fs.", time.time() - train_start)
      for hook in hooks:
        hook(step)
      preempted = watcher.should_stop(step)
      stopped_early = preempted or (stop_at_step is not None and step >= stop_at_step and step < cfg.num_steps)
      stop_reason = (watcher.reason if preempted else "stop_at_step") if stopped_early else None
      final = step == cfg.num_steps
      if step % cfg.log_every == 0 or final or stopped_early:
        _check_finite(first_bad, last_ckpt)
        scalars = {f"train/{k}": v for k, v in averager.pop().items()}
        scalars["train/learning_rate"] = float(lr_schedule(step - 1))
        writer.write_scalars(step, scalars)
        train_bar.set_postfix(f"loss {scalars['train/loss']:.4g}" if "train/loss" in scalars else "")
      train_bar.update(1)  # after the loss it shows, before the evaluations' lines
      due = [] if stopped_early else [e for e in evaluators if (e.at_end if final else e.due(step))]
      eval_metrics = {}
      if due:
        _check_finite(first_bad, last_ckpt)
        eval_start = time.time()
        with report_progress.timed("eval"):
          eval_metrics = evaluate(task, setup.runtime, setup.variables(state), due)
        writer.write_scalars(step, eval_metrics)
        write_summaries(pictures, step, due, task=None if samples_written else task)
        samples_written = True
        if final:
          final_metrics, eval_seconds = eval_metrics, time.time() - eval_start
      ranked = metric_name is not None and metric_name in eval_metrics
      if step % cfg.checkpoint_every == 0 or final or stopped_early or ranked:
        _check_finite(first_bad, last_ckpt)
        if fileio.is_local(workdir):  # refuse a save that cannot fit, before orbax writes half of it
          disk_space.check_free_space(ckpt.directory, checkpoint_bytes, f"saving the checkpoint of step {step}",
                                      fix=_full_disk_fix(workdir))
        ckpt.save(step, state, data.get_state(), metrics=eval_metrics if ranked else None)
        last_ckpt = step
      if stopped_early:
        logging.warning("Stopping at step %d (%s); rerun the same command to resume.", step,
                        {"preempted": "preemption signal", "interrupted": "Ctrl-C"}.get(stop_reason, stop_reason))
        break
    train_bar.close()
    train_seconds = time.time() - train_start - eval_seconds
    results: dict[str, Any] = {"step": step, "train_seconds": train_seconds, "stopped_early": stopped_early,
                               "stop_reason": stop_reason}
    if not stopped_early:
      at_end = [e for e in evaluators if e.at_end]
      if not final_metrics:  # the run had finished before: evaluate it again
        eval_start = time.time()
        final_metrics = evaluate(task, setup.runtime, setup.variables(state), at_end)
        eval_seconds = time.time() - eval_start
      reported = {"which": "latest", "step": step}
      if config.checkpoint.get("final_from", "latest") == "best" and metric_name:
        ckpt.wait()
        best = ckpt.best_step()
        if best is not None and best != step:  # report the best-validation checkpoint (the VSE++ protocol)
          eval_start = time.time()
          variables = _best_variables(ckpt, setup, best)
          final_metrics = evaluate(task, setup.runtime, variables, at_end)
          eval_seconds += time.time() - eval_start
        reported = {"which": "best", "step": best if best is not None else step, "by": metric_name}
      results.update(metrics=final_metrics, eval_seconds=eval_seconds, checkpoint=reported,
                     report=report(task, final_metrics, evaluators,
                                   title=f"step {reported['step']}" + (", best checkpoint" if reported["which"] == "best"
                                                                      else "")))
      if jax.process_index() == 0:
        save_items(workdir, at_end)  # before results.json, which marks the run finished
        with fileio.open(os.path.join(workdir, "results.json"), "w") as f:
          json.dump(results, f, indent=2, sort_keys=True)
    return dict(results, state=state)
  finally:
    train_bar.close(finished=sys.exc_info()[1] is None)
    _run_all(writer.flush, ckpt.wait, ckpt.close, writer.close, *([pictures.close] if pictures else []))


def write_summaries(writer: Any, step: int, evaluators: list[evaluator_lib.Evaluator], task: Task | None = None
                    ) -> None:
  """The example pictures of the evaluators' last evaluation (Evaluator.summaries) as TensorBoard images
  "<prefix>/examples/..." and texts "<prefix>/example_texts/..." (nothing when `writer` is None: processes other
  than 0); with `task`, also a grid of samples of the first evaluator's split ("data/examples/samples"), written
  once per run."""
  if writer is None:
    return
  for e in evaluators:
    summary_images.write(writer, step, e.prefix, e.summaries)
  if task is not None and evaluators:
    summary_images.write(writer, step, "data", summary_images.data_samples(task.eval_data(evaluators[0].split)))


def save_items(workdir: str, evaluators: list[evaluator_lib.Evaluator]) -> None:
  """The per-item scores of the evaluators' last evaluation (Evaluator.items, e.g. each query's rank), as
  WORKDIR/eval_items/<prefix>.npz: what statistics over the evaluation items read (a bootstrap over queries)."""
  kept = [e for e in evaluators if e.items]
  if kept:
    fileio.makedirs(os.path.join(workdir, ITEMS_DIR))
  for e in kept:
    fileio.save_npz(os.path.join(workdir, ITEMS_DIR, f"{e.prefix}.npz"), **e.items)


def _run_all(*closers) -> None:
  """Call each closer even if an earlier one fails (a full disk fails the flush and the checkpoint wait alike);
  then raise the first failure, unless an exception is already on its way out (which says more)."""
  first = None
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      first = first or e
  if first is not None and sys.exc_info()[1] is None:
    raise first
