"""Progress of long work (caching features, export, captioning a split, building an index, training): a thin
wrapper over tqdm.

  from xmodal_jax import progress

  with progress.bar(total=len(paths), desc="Exporting images", unit="images") as bar:
    for batch in batches:
      ...
      bar.update(len(batch))

The API (stable: other modules rely on it):
  bar(total, desc, unit="items", *, every=0.1, file=None, enabled=None, initial=0) -> a `Bar`, a context manager
      (`with ... as b`; or call b.close() yourself). `total`: the number of units (None: unknown). `desc`: what is
      being done, e.g. "Caching features". `every`: in logs, a line each time this fraction of `total` more is
      done. `file`: where it writes (default: sys.stderr at the time of the call). `enabled`: None = only on
      process 0 (jax.process_index(), asked only when JAX is already imported), or True / False. `initial`: units
      already done (a resumed run), counted in the progress but not in the rate.
  Bar.update(n=1): n more units done.   Bar.n: units done so far.   Bar.total: the total given.
  Bar.set_postfix(text): a short status shown after the rate (e.g. "loss 0.412"); "" clears it.
  Bar.close(finished=True): ends it (what leaving the `with` block does; once); finished=False: no last line.

How it shows:
  - stderr is a terminal: one tqdm line updated in place ("Caching features:  65%|######5   | 3904/6000
    [09:33<05:07, 6.81 examples/s]"), left on screen at the end.
  - otherwise (logs, CI, tests): plain lines, one each time another `every` of the total is done and one at the
    end (when the total is reached, or at close; without the ETA); the rate leaves out the first update (warm-up,
    compilation), "Caching features: 3904/6000 examples (65%), 6.81 examples/s, 09:33 elapsed, ETA 05:07";
    with an unknown total, only the last line.
  - on processes other than 0 (multi-host): nothing.
  Leaving the `with` block by an exception writes no final line (the error is reported instead). While a bar is on a
  terminal, a log record (any handler of the root logger, absl's included) first erases it, so logs stay readable.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from typing import TextIO

import tqdm

_TTY_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def is_main_process() -> bool:
  """True on process 0, and whenever JAX is not imported (a command that does not use it runs on one process)."""
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def _is_terminal(file: TextIO) -> bool:
  try:
    return bool(file.isatty())
  except (AttributeError, ValueError):  # a replaced stream without isatty, or a closed one
    return False


class Bar:
  """n of total units done; see the module docstring. Made by `bar()`, not directly."""

  def __init__(self, total: int | None, desc: str, unit: str, every: float, file: TextIO | None, initial: int):
    self.total, self.desc, self.unit, self.n = total, desc, unit, initial
    self._file, self._every, self._initial = file, every, initial
    self._start = time.monotonic()
    self._first: tuple[int, float] | None = None  # (n, time) at the first update: the rate leaves out warm-up
    self._written = None  # in logs: n of the last line written
    self._postfix = ""
    self._tqdm = None
    self._next_line = 1  # in logs: the next multiple of `every` (times total) that writes a line
    self._closed = False
    if file is not None and _is_terminal(file):
      self._tqdm = tqdm.tqdm(total=total, desc=desc, unit=f" {unit}", initial=initial, file=file, dynamic_ncols=True,
                             bar_format=_TTY_FORMAT if total else None)
      for handler in logging.root.handlers:  # absl's handler among them: log lines do not land inside the bar
        handler.addFilter(self._clear_for_logs)
    elif total:
      self._next_line = math.floor(initial / (total * every)) + 1

  def update(self, n: int = 1) -> None:
    """n more units done."""
    self.n += n
    if self._first is None:
      self._first = (self.n, time.monotonic())
    if self._tqdm is not None:
      self._tqdm.update(n)
    elif self._file is not None and self.total:
      done = self.n / (self.total * self._every)
      if done >= self._next_line or self.n >= self.total:
        self._next_line = math.floor(done) + 1
        self._write_line()

  def set_postfix(self, text: str) -> None:
    """A short status after the rate ("loss 0.412"); "" clears it."""
    self._postfix = text
    if self._tqdm is not None:
      self._tqdm.set_postfix_str(text)

  def _line(self) -> str:
    now = time.monotonic()
    elapsed = now - self._start
    if self._first is not None and self.n > self._first[0] and now > self._first[1]:  # after the first update
      rate = (self.n - self._first[0]) / (now - self._first[1])
    else:
      rate = (self.n - self._initial) / elapsed if elapsed > 0 and self.n > self._initial else None
    speed = f"{rate:.{0 if rate >= 100 else 1 if rate >= 10 else 2}f} {self.unit}/s" if rate else f"? {self.unit}/s"
    parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total
             else f"{self.desc}: {self.n} {self.unit}", speed, f"{tqdm.tqdm.format_interval(elapsed)} elapsed"]
    if self.total and self.n < self.total:
      parts.append("ETA " + (tqdm.tqdm.format_interval((self.total - self.n) / rate) if rate else "?"))
    return ", ".join(parts + ([self._postfix] if self._postfix else []))

  def _write_line(self) -> None:
    self._written = self.n
    print(self._line(), file=self._file, flush=True)

  def close(self, finished: bool = True) -> None:
    """Ends the bar (once; later calls do nothing): the last line unless `finished` is False (stopped by an error)."""
    if self._closed:
      return
    self._closed = True
    if self._tqdm is not None:
      for handler in logging.root.handlers:
        handler.removeFilter(self._clear_for_logs)
      self._tqdm.close()
    elif self._file is not None and finished and self._written != self.n:
      self._write_line()

  def __enter__(self) -> Bar:
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    self.close(finished=exc_type is None)

  def _clear_for_logs(self, record: logging.LogRecord) -> bool:  # pylint: disable=unused-argument
    """A log handler's filter while the bar is on a terminal: erase the bar, so the record starts its own line
    (tqdm draws it again at the next update)."""
    self._tqdm.clear()
    return True


def bar(total: int | None, desc: str, unit: str = "items", *, every: float = 0.1, file: TextIO | None = None,
        enabled: bool | None = None, initial: int = 0) -> Bar:
  """A progress bar for `total` units of work, to use as a context manager; see the module docstring."""
  if not 0 < every <= 1:
    raise ValueError(f"every must be in (0, 1], got {every}")
  if enabled is None:
    enabled = is_main_process()
  return Bar(total, desc, unit, every, (file or sys.stderr) if enabled else None, initial)
