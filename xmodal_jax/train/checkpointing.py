"""orbax checkpoints of a run: the latest N (for resume after preemption) plus the best by an eval metric.

Layout in the workdir: `checkpoints/<step>/{model,train,data}` (+ orbax's metrics file on steps that were
evaluated). Items:
  model  {"params", "model_state"}: all that inference needs (`restore_model` reads only this item);
  train  {"step", "opt_state", "rng"}: the rest of the TrainState, for resuming;
  data   the data iterator position (JSON).
Frozen params are not stored (the task loads them from their source; see train/task.py).

One orbax CheckpointManager keeps what either preservation policy wants: `LatestN(max_to_keep)` and, when a
best metric is set, `BestN(n=1)` over the checkpoints saved with metrics.
"""
from __future__ import annotations

import logging
import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from xmodal_jax import errors, fileio
from xmodal_jax.train.state import TrainState

CHECKPOINTS = "checkpoints"
# Fault injection (tests/test_reliability.py): SIGKILL the process right after starting the save of this step.
FAULT_KILL_DURING_SAVE = "XMODAL_FAULT_KILL_DURING_SAVE"


class _DropUnrankedSaveWarning(logging.Filter):
  """orbax warns on every save without metrics when best checkpoints are tracked; here most saves (the
  periodic ones) have none by design, so that warning is noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropUnrankedSaveWarning())


def _model_item(state: TrainState) -> dict:
  return {"params": state.params, "model_state": state.model_state}


def _train_item(state: TrainState) -> dict:
  return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}


class Checkpointer:
  """Save / restore a run's TrainState and data position.

  create=False (evaluation, inference) never makes directories; a workdir without checkpoints is an error
  that says to train first.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, best_metric: str | None = None,
               best_mode: str = "max", use_async: bool = True, create: bool = True):
    if best_mode not in ("max", "min"):
      raise errors.ConfigError(f"best_mode={best_mode!r}; use 'max' or 'min'.")
    self.best_metric = best_metric or None
    # orbax takes a gs:// URL itself (its GCS path: commit files, no renames); only a local path is made absolute
    directory = fileio.absolute(os.path.join(workdir, CHECKPOINTS))
    self.directory = directory
    if not create and not fileio.isdir(directory):
      raise errors.MissingError(f"No checkpoints in {workdir} (expected {directory}); train first with "
                              "`xmodal train --workdir=...` or point --workdir at a trained run.")
    keep = [policies.LatestN(n=max_to_keep)]
    best_fn = None
    if self.best_metric:
      best_fn = lambda metrics: metrics[self.best_metric]
      keep.append(policies.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                 keep_checkpoints_without_metrics=False))
    self._manager = ocp.CheckpointManager(
        directory, item_names=("model", "train", "data"),
        options=ocp.CheckpointManagerOptions(
            create=create, enable_async_checkpointing=use_async, best_fn=best_fn, best_mode=best_mode,
            preservation_policy=policies.AnyPreservationPolicy(keep)))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step() if self.best_metric else None

  def save(self, step: int, state: TrainState, data_state: dict, metrics: dict[str, float] | None = None) -> bool:
    """Save `step` (once). `metrics`, if given, must hold the best metric; the BestN policy ranks by it."""
    if step in self._manager.all_steps():
      return False
    kept = None
    if self.best_metric and metrics is not None:
      if self.best_metric not in metrics:
        raise errors.ConfigError(f"The best-checkpoint metric {self.best_metric!r} is not among the evaluation metrics "
                       f"{sorted(metrics)}; pick one of those in the evaluator's best_metric (or '' to disable).")
      kept = {self.best_metric: float(metrics[self.best_metric])}
    args = ocp.args.Composite(model=ocp.args.StandardSave(_model_item(state)),
                              train=ocp.args.StandardSave(_train_item(state)),
                              data=ocp.args.JsonSave(data_state))
    saved = self._manager.save(step, args=args, metrics=kept, force=True)
    if os.environ.get(FAULT_KILL_DURING_SAVE) == str(step):  # fault injection for the crash tests only
      os.kill(os.getpid(), signal.SIGKILL)  # the asynchronous write of this step is still in flight
    return saved

  def _step(self, which: str, step: int | None) -> int:
    if step is None:
      if which == "best":
        if not self.best_metric:
          raise errors.WorkdirError("This run keeps no best checkpoint (no evaluator sets best_metric); use "
                           "--checkpoint=latest.")
        step = self.best_step()
      else:
        step = self.latest_step()
    if step is None:
      raise errors.MissingError(f"No {which} checkpoint in {self._manager.directory}; train first with `xmodal train`.")
    return step

  def restore(self, abstract_state: TrainState, *, which: str = "latest", step: int | None = None
              ) -> tuple[int, TrainState, dict]:
    """(step, state, data position); `abstract_state` holds ShapeDtypeStructs with shardings."""
    step = self._step(which, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_model_item(abstract_state)),
        train=ocp.args.StandardRestore(_train_item(abstract_state)),
        data=ocp.args.JsonRestore()))
    model, train = restored["model"], restored["train"]
    state = abstract_state.replace(step=train["step"], params=model["params"], model_state=model["model_state"],
                                   opt_state=train["opt_state"], rng=train["rng"])
    return step, state, restored["data"]

  def restore_model(self, abstract_model: dict, *, which: str = "latest", step: int | None = None
                    ) -> tuple[int, dict]:
    """(step, {"params", "model_state"}) only: no optimiser state is read (inference)."""
    step = self._step(which, step)
    restored = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract_model)))
    return step, restored["model"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings (what orbax restores into)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
