"""orbax checkpoints: the latest N (for resume after preemption) and the best by an eval metric.

Layout in the workdir:  checkpoints/<step>/{state,data}   best/<step>/{state,data}
`state` is the sharded TrainState (restored with its shardings), `data` the data iterator position (JSON).
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Wraps two orbax CheckpointManagers (latest keep-N, async; best-by-metric keep-1).

  create=False (evaluation) never makes directories; a missing workdir then reads as "no checkpoints".
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, best_metric: str | None = None,
               best_mode: str = "max", use_async: bool = True, create: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"config.checkpoint.best_mode={best_mode!r}; use 'max' or 'min'.")
    self.best_metric = best_metric or None
    latest_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not create and not os.path.isdir(latest_dir):
      raise FileNotFoundError(f"No checkpoints in {workdir} (expected {latest_dir}); train first with "
                              "`xmodal train --workdir=...` or point --workdir at a trained run.")
    self._latest = ocp.CheckpointManager(
        latest_dir, item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                             enable_async_checkpointing=use_async))
    self._best = None
    if self.best_metric:
      self._best = ocp.CheckpointManager(
          os.path.abspath(os.path.join(workdir, "best")), item_names=("state", "data"),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=create, enable_async_checkpointing=use_async, best_mode=best_mode,
              best_fn=lambda metrics: metrics[self.best_metric], keep_checkpoints_without_metrics=False))

  @staticmethod
  def _args(state, data_state, restore: bool = False):
    if restore:
      return ocp.args.Composite(state=ocp.args.StandardRestore(state), data=ocp.args.JsonRestore())
    return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> bool:
    if step in self._latest.all_steps():
      return False
    return self._latest.save(step, args=self._args(state, data_state), force=True)

  def save_best(self, step: int, state: Any, data_state: dict, metrics: dict[str, float]) -> None:
    """Offer a checkpoint to the best-by-metric manager; kept only if `metrics[best_metric]` is the best."""
    if self._best is None or step in self._best.all_steps():
      return
    if self.best_metric not in metrics:
      raise KeyError(f"config.checkpoint.best_metric={self.best_metric!r} is not among the evaluation "
                     f"metrics {sorted(metrics)}; pick one of those (or '' to disable).")
    self._best.save(step, args=self._args(state, data_state), metrics={self.best_metric: float(metrics[self.best_metric])},
                    force=True)

  def restore(self, abstract_state: Any, *, which: str = "latest", step: int | None = None) -> tuple[int, Any, dict]:
    """Restore (step, state, data_state); `abstract_state` holds ShapeDtypeStructs with shardings."""
    manager = self._best if which == "best" else self._latest
    if manager is None:
      raise ValueError("No best-checkpoint manager: set config.checkpoint.best_metric to keep best checkpoints.")
    if step is None:
      step = manager.best_step() if which == "best" else manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"No {which} checkpoint in {manager.directory}; train first with `xmodal train`.")
    restored = manager.restore(step, args=self._args(abstract_state, None, restore=True))
    return step, restored["state"], restored["data"]

  def wait(self) -> None:
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    if self._best is not None:
      self._best.close()


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings (what orbax restores into)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
