"""Directories that xmodal writes and may replace: the one rule that keeps a user's files safe.

A command that writes a directory of its own (`xmodal prepare --out`, `config.data.prepared_dir`,
`config.cache.dir`, `xmodal export --out`) may replace or delete only what it would itself write there. Before
it writes anything it calls `check_output_dir`: the directory must be absent, empty, or hold only entries whose
names the writer owns; anything else (a data folder, a file, a stranger's directory) is refused with a
`WorkdirError` that names the directory, a few of the entries it would not touch, and the fix. Nothing is
deleted in that case.
"""
from __future__ import annotations

import fnmatch
import os
from typing import Iterable

from xmodal_jax import errors

_SHOWN = 5  # foreign entries named in a message


def foreign_entries(directory: str, owned: Iterable[str]) -> list[str]:
  """Names in `directory` that match none of the `owned` glob patterns (sorted; [] for a missing directory)."""
  if not os.path.isdir(directory):
    return []
  patterns = tuple(owned)
  return sorted(name for name in os.listdir(directory)
                if not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns))


def check_output_dir(directory: str, owned: Iterable[str], *, what: str, fix: str) -> None:
  """Refuse (WorkdirError) an output `directory` that is a file or holds entries not matching `owned`.

  what: how the message names the directory ("--out", "config.cache.dir"); fix: what the user can do instead.
  """
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise errors.WorkdirError(f"{what} {directory} is a file, not a directory; {fix}")
  foreign = foreign_entries(directory, owned)
  if foreign:
    shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else "")
    raise errors.WorkdirError(
        f"{what} {directory} holds files xmodal did not make ({shown}); nothing was changed there. {fix}")
