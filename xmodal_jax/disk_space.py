"""A full disk is a user error: one message naming the path, the free space and (where known) the space needed.

Writers deep in libraries report a full disk in many shapes: `OSError(ENOSPC)`, orbax's and tensorstore's
`RESOURCE_EXHAUSTED` / `ValueError`s whose text holds "No space left on device", array_record's `RuntimeError`.
`is_disk_full(e)` recognises them (the exception, its cause / context chain, its text); `full_disk_is_an_error`
turns one into `errors.DiskFullError` and `check_free_space` refuses to start a write that cannot fit.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Iterator

from xmodal_jax import errors

_MARKERS = ("No space left on device", "ENOSPC", "Disk quota exceeded", "EDQUOT", "os_error_code='28'")


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def failed_path(error: BaseException) -> str | None:
  """The file an OSError in `error`'s chain names, if any."""
  return next((e.filename for e in _chain(error) if isinstance(e, OSError) and e.filename), None)


def is_disk_full(error: BaseException) -> bool:
  """True if `error` (or what caused it) says the disk or the quota is full."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(marker in str(e) for marker in _MARKERS):
      return True
  return False


def _existing(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def free_bytes(path: str) -> int | None:
  """Free bytes on the filesystem of `path` (or of its nearest existing parent); None for a URL."""
  if "://" in path:
    return None
  return shutil.disk_usage(_existing(path)).free


def _mb(n: int) -> str:
  return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} KB"


_FIX = "Free some space on that disk, or write to another one."


def message(path: str, doing: str, needed: int | None = None) -> str:
  """'No space left on the device of PATH while DOING (N MB free there, about M MB needed)' (no full stop)."""
  free = free_bytes(path)
  space = f"{_mb(free)} free there" if free is not None else "the bucket's quota is full"
  need = f", about {_mb(needed)} needed" if needed else ""
  return f"No space left on the device of {path} while {doing} ({space}{need})"


@contextlib.contextmanager
def full_disk_is_an_error(path: str, doing: str, needed: int | None = None, fix: str = _FIX) -> Iterator[None]:
  """Inside: an exception that means a full disk becomes one DiskFullError naming `path` and the `fix`."""
  try:
    yield
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (only a full disk is translated; the rest re-raised)
    if not is_disk_full(e):
      raise
    raise errors.DiskFullError(f"{message(path, doing, needed)}. {fix}") from e


def check_free_space(path: str, needed: int, doing: str, fix: str = _FIX) -> None:
  """Refuse (DiskFullError) to start writing `needed` bytes under `path` when the disk has less free."""
  free = free_bytes(path)
  if free is not None and free < needed:
    raise errors.DiskFullError(f"{message(path, doing, needed)}. {fix}")
