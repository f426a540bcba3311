"""What the command line shows of the libraries' logs: at the default --verbosity=0, xmodal's own lines (without
absl's "I1207 20:56:28.580309 140678601075584 file.py:12]" prefix) and every library's warnings and errors; the
libraries' INFO (JAX's "Unable to initialize backend 'tpu'", faiss's AVX-512 loader, clu's metric lines, the
hyper-parameter line and the parameter table, which the workdir keeps anyway), TensorFlow's / XLA's C++ INFO and
WARNING lines and TensorFlow's oneDNN notice are left out. `--verbosity=1` (or an environment variable already
set) brings each of them back. Nothing is deleted: each is a log level or an environment variable.

TensorFlow only stores and reads data sets here (tfds) and writes TensorBoard files, so its oneDNN ops, which the
notice is about, compute nothing a model sees; TF_ENABLE_ONEDNN_OPTS=1 turns them (and the notice) back on.
"""
from __future__ import annotations

import logging
import os
import re

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Set (when not set already) before any library loads, at --verbosity < 1.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's and XLA's C++ INFO and WARNING lines
    "TF_ENABLE_ONEDNN_OPTS": "0",  # TensorFlow's "oneDNN custom operations are on" notice (twice per process)
}


def asked_verbosity(argv: list[str]) -> int:
  """--verbosity / -v of a command line, read before absl parses it (0 when absent or not a number)."""
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  for i, arg in enumerate(args):
    match = re.fullmatch(r"--?(?:verbosity|v)(?:=(.*))?", arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (args[i + 1] if i + 1 < len(args) else "")
      try:
        return int(value)
      except ValueError:
        return 0
  return 0


def quiet_environment(argv: list[str], environ=os.environ) -> None:
  """At --verbosity < 1: the QUIET_ENVIRONMENT variables that are not set yet (before TensorFlow / JAX load)."""
  if asked_verbosity(argv) < 1:
    for name, value in QUIET_ENVIRONMENT.items():
      environ.setdefault(name, value)


class OnlyOurInfo(logging.Filter):
  """Drops the records below WARNING that a module outside xmodal_jax logged (`keep`: path fragments of libraries
  whose INFO stays, e.g. "/orbax/" with --verbose_checkpointing)."""

  def __init__(self, keep: tuple[str, ...] = ()):
    super().__init__()
    self.keep = keep

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING or os.path.abspath(record.pathname).startswith(PACKAGE_DIR):
      return True
    return any(fragment in record.pathname for fragment in self.keep)
