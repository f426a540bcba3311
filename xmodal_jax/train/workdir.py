"""What a training run checks and holds in its workdir before it writes anything there.

* `WorkdirLock`: one trainer per workdir. An exclusive `flock` on WORKDIR/.xmodal.lock, held for the life of
  the run (the OS drops it when the process dies, however it dies); a second trainer fails at once naming the
  holder's pid and host. On several hosts process 0 holds it. Paths that are not local files (gs://...) cannot
  be locked and are used with a warning.
* `check_resume_config`: a resumed run must be the same run. Fields that change parameter shapes, the data or
  its order (task, model, data, seed, batch size, optimiser kind or groups) are refused before anything is
  written, naming the fields and the fix; other changes (num_steps, logging, evaluation cadence, learning rate)
  are logged. `config.json` is replaced only once the run is accepted.
* `LoggedStepFilter`: a resumed run redoes the steps between its last checkpoint and the crash; the TensorBoard
  points they already wrote are not written twice, and those that were lost (an evaluation killed before its
  scalars reached the file) are written when the step is redone (per tag, not per step).
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Any

from absl import logging

from xmodal_jax import errors, fileio

LOCK_FILE = ".xmodal.lock"
CONFIG_FILE = "config.json"

# Config fields (dotted prefixes) whose change makes a different run: restored shapes or the data stream differ.
RUN_DEFINING = ("task", "seed", "model", "data", "train.batch_size", "optimizer.name", "optimizer.groups",
                "features", "loss.query_update")


is_local = fileio.is_local


def make_workdir(workdir: str) -> None:
  """mkdir -p of a local workdir; a path that is a file, or that cannot be created, is a WorkdirError."""
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir {workdir} is a file, not a directory; pass a directory (new, or a run's).")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    if e.errno == errno.ENOSPC:
      raise
    reason = e.strerror or type(e).__name__
    where = f" ({e.filename})" if e.filename and os.fspath(e.filename) != workdir else ""
    raise errors.WorkdirError(f"--workdir {workdir} cannot be created: {reason}{where}. Pass a directory you can "
                              "write, e.g. under your home directory.") from None


class WorkdirLock:
  """Exclusive lock on a workdir for the life of a training process (a context manager)."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled and is_local(workdir)
    self._file = None
    if enabled and not self.enabled:
      logging.warning("%s is not a local path: it cannot be locked; make sure no other run uses it.", workdir)

  def __enter__(self) -> "WorkdirLock":
    if not self.enabled:
      return self
    make_workdir(self.workdir)
    handle = open(self.path, "a+")  # pylint: disable=consider-using-with  (held until __exit__)
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      handle.seek(0)
      holder = handle.read().strip()
      handle.close()
      try:
        info = json.loads(holder)
        who = f"pid {info['pid']} on host {info['host']} (since {info['since']}: {info['command']})"
      except (ValueError, KeyError):
        who = "another process"
      raise errors.WorkdirError(f"{self.workdir} is in use by {who}. Wait for that run to finish or stop it, or "
                                "train in another --workdir.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": datetime.datetime.now().isoformat(timespec="seconds"),
                             "command": " ".join(sys.argv)[:500]}))
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc_info) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(value, dict):
    out = {}
    for key, item in value.items():
      out.update(_flat(item, f"{prefix}{key}."))
    return out
  return {prefix.rstrip("."): value}


def config_differences(previous: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (before, after)} of the fields that differ."""
  before, after = _flat(previous), _flat(current)
  missing = object()
  return {k: (before.get(k, missing), after.get(k, missing)) for k in sorted(set(before) | set(after))
          if before.get(k, missing) != after.get(k, missing)}


def _defines_run(field: str) -> bool:
  return any(field == p or field.startswith(p + ".") for p in RUN_DEFINING)


def check_resume_config(workdir: str, current: dict, *, allow_change: bool) -> None:
  """Refuse (WorkdirError) to resume a run whose config.json differs in a run-defining field, unless
  `allow_change`; log the other differences."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not fileio.exists(path):
    return
  with fileio.open(path) as f:
    previous = json.load(f)
  diffs = config_differences(previous, current)
  if not diffs:
    return
  show = lambda v: "(absent)" if not isinstance(v, (str, int, float, bool, list, tuple, type(None))) else repr(v)
  lines = [f"{k}: {show(a)} -> {show(b)}" for k, (a, b) in diffs.items()]
  defining = [line for (k, _), line in zip(diffs.items(), lines) if _defines_run(k)]
  if defining and not allow_change:
    raise errors.WorkdirError(
        f"{workdir} holds a run made with another config, and these changes would make a different run: "
        f"{'; '.join(defining)}. Train in a new --workdir, restore the fields, or pass --allow_config_change "
        "if you mean to continue this run with them (parameter shapes must still match).")
  logging.warning("Resuming %s with config changes: %s", workdir, "; ".join(lines))


def write_config(workdir: str, current: dict) -> None:
  """Write config.json atomically (a crash never leaves half a file; for a URL see fileio.write_atomic)."""
  fileio.write_atomic(os.path.join(workdir, CONFIG_FILE), lambda f: json.dump(current, f, indent=2, sort_keys=True))


def logged_tags(workdir: str) -> dict[int, set[str]]:
  """{step: the scalar tags logged at that step} from the workdir's TensorBoard event files."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=import-outside-toplevel
  logged: dict[int, set[str]] = {}
  for path in fileio.glob(os.path.join(workdir, "events.out.tfevents.*")):  # the loader reads gs:// (tf.io.gfile)
    try:
      for event in event_file_loader.EventFileLoader(path).Load():
        if event.HasField("summary"):
          logged.setdefault(int(event.step), set()).update(v.tag for v in event.summary.value)
    except Exception as e:  # pylint: disable=broad-except  (a torn tail after a crash: keep what was read)
      logging.warning("Could not read all of %s (%s); steps after the last one read may be logged twice.", path, e)
  return logged


def last_logged_step(workdir: str) -> int:
  """The largest step with a scalar in the workdir's TensorBoard event files (0 if none)."""
  return max(logged_tags(workdir), default=0)


def scalar_history(workdir: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of every scalar `tag` (e.g. "masked_curve/words_span_accuracy") in the workdir's TensorBoard
  event files, by step (a step logged twice after a resume: the last value read)."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
  values: dict[int, float] = {}
  for path in sorted(fileio.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.tag == tag:
          number = value.simple_value if value.HasField("simple_value") else tensor_util.make_ndarray(value.tensor)
          values[int(event.step)] = float(number)
  return sorted(values.items())


class LoggedStepFilter:
  """Wraps a clu metric writer: a scalar already logged at that step (`logged`: {step: tags}) is not written
  again; the others are (an evaluation whose results were lost is logged when its step is redone)."""

  def __init__(self, writer: Any, logged: dict[int, set[str]]):
    self._writer = writer
    self.logged = logged

  def write_scalars(self, step: int, scalars: dict) -> None:
    done = self.logged.get(step, set())
    new = {k: v for k, v in scalars.items() if k not in done}
    if new:
      self._writer.write_scalars(step, new)

  def missing(self, step: int, prefix: str) -> bool:
    """True if no scalar of `prefix`/ was logged at `step`."""
    return not any(tag.startswith(prefix + "/") for tag in self.logged.get(step, ()))

  def __getattr__(self, name: str) -> Any:
    return getattr(self._writer, name)
