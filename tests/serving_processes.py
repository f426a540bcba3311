"""The commands a user runs to serve a trained run, as real processes: `xmodal export` -> `xmodal index` ->
`xmodal serve` (a server on a free localhost port), for the end-to-end tests (tests/test_serving_end_to_end.py,
tests/test_serving_systems.py)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from typing import Iterator

import pytest

from tests.helpers import REPO, stop_process, subprocess_xla_flags
from xmodal_jax.serving import search_service


def xmodal(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  """`xmodal ARGS` in a child process (one CPU device, the test run's compiler flags)."""
  return subprocess.run([sys.executable, "-m", "xmodal_jax.main", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "XLA_FLAGS": subprocess_xla_flags()})


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def export_and_index(workdir: str, out: str, *export_flags: str) -> subprocess.CompletedProcess:
  """`xmodal export --workdir=WORKDIR --out=OUT FLAGS` then `xmodal index --export=OUT`; returns the export's
  process (its stdout / stderr), after asserting that both commands succeeded."""
  exported = xmodal("export", f"--workdir={workdir}", f"--out={out}", *export_flags)
  assert exported.returncode == 0, exported.stderr[-3000:]
  indexed = xmodal("index", f"--export={out}")
  assert indexed.returncode == 0, indexed.stderr[-3000:]
  assert f"next: xmodal serve --index={out}/index" in indexed.stdout
  return exported


@contextlib.contextmanager
def served(out: str, *serve_flags: str) -> Iterator[str]:
  """`xmodal serve --index=OUT/index FLAGS` running until the block ends; yields its base url."""
  port = free_port()
  proc = subprocess.Popen([sys.executable, "-m", "xmodal_jax.main", "serve", f"--index={out}/index",
                           f"--port={port}", *serve_flags], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, "XLA_FLAGS": subprocess_xla_flags()})
  url = f"http://127.0.0.1:{port}"
  try:
    if not search_service.wait_until_serving(url, proc, timeout_s=300):
      proc.kill()
      pytest.fail(f"xmodal serve did not come up: {proc.stdout.read()[-3000:]}")
    yield url
  finally:
    stop_process(proc)
