"""Errors that are the user's to fix, and the exit codes of the `xmodal` command.

A `UserError` carries a message that names the thing and the fix; `xmodal` prints it on one line and exits
with `exit_code`, without a traceback (`--verbose` shows one). Any other exception is a bug and is printed
with its traceback. Each subclass is also the built-in type callers would expect (a bad config value is a
`ValueError`, a missing file a `FileNotFoundError`).
"""
from __future__ import annotations

# Exit codes of `xmodal` (docs/failure_behaviour.md).
EXIT_OK = 0
EXIT_ERROR = 1            # a UserError: the message says what to fix
EXIT_USAGE = 2            # bad command line: unknown flag, bad config file or field
EXIT_INTERRUPTED = 130    # stopped by Ctrl-C (SIGINT), checkpoint saved: rerun to resume (128 + 2)
EXIT_STOPPED = 75         # stopped on purpose at --stop_at_step, checkpoint saved: rerun to resume (EX_TEMPFAIL)
EXIT_PREEMPTED = 143      # stopped by SIGTERM / a preemption notice, checkpoint saved: rerun to resume (128 + 15)


class UserError(Exception):
  """An error the user fixes: bad config, bad data, a workdir in the wrong state."""
  exit_code = EXIT_ERROR


class ConfigError(UserError, ValueError):
  """A config field has a value that cannot work; the message names the field, the value and the rule."""


class DataError(UserError, ValueError):
  """The data cannot be used as it is (a bad record, image or split)."""


class MissingError(UserError, FileNotFoundError):
  """A file or directory the command needs does not exist."""


class WorkdirError(UserError, RuntimeError):
  """The workdir is in use, holds another kind of run, or holds a run that this config may not continue."""


class DiskFullError(UserError, OSError):
  """The disk (or quota) is full: the message names the path, the free space and the fix."""
