"""Two JAX processes (jax.distributed on CPU, 2 devices each) train exactly like one process with 4 devices:
each process loads only its rows of every global batch, batches are assembled as global arrays, and the
checkpoint written by both processes resumes; then both export the val split together (`xmodal export`: each
writes its own shards) and get the one-process export's embeddings."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, subprocess_xla_flags


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(workdir, num_processes, devices, extra=()):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["XLA_FLAGS"] = subprocess_xla_flags()  # the worker adds its own device count
  env["JAX_PLATFORMS"] = "cpu"
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", f"--process_id={i}",
                             f"--num_processes={num_processes}", f"--port={port}", f"--devices={devices}",
                             f"--workdir={workdir}", *extra],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(num_processes)]
  outputs = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    outputs.append(json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):]))
  return outputs


def test_two_processes_stop_resume_and_match_one_process(tmp_path):
  """2 processes x 2 devices, stopped at step 2 (checkpoint written by both), resumed to step 4
  == 1 process x 4 devices straight to step 4."""
  (single,) = _run(tmp_path / "single", 1, 4, [f"--export_to={tmp_path / 'single_export'}"])
  stopped = _run(tmp_path / "multi", 2, 2, ["--stop_at_step=2"])
  assert [m["processes"] for m in stopped] == [2, 2] and all(m["devices"] == 4 for m in stopped)
  assert all(m["step"] == 2 and m["metrics"] is None for m in stopped)
  resumed = _run(tmp_path / "multi", 2, 2, [f"--export_to={tmp_path / 'multi_export'}"])
  for m in resumed:
    assert m["step"] == 4
    assert m["checksum"] == pytest.approx(single["checksum"], rel=1e-5)
    for key, value in single["metrics"].items():
      assert m["metrics"][key] == pytest.approx(value, abs=1e-3), key
  # Both processes exported the val split together, each writing its own shards (i mod 2), and process 0 the
  # manifest and encoders: the same embeddings as the one-process export.
  from xmodal_jax.serving import embedding_export as fmt
  shards = {kind: len(fmt.read_manifest(str(tmp_path / "single_export"))["kinds"][kind]["shards"])
            for kind in fmt.KINDS}
  for m in resumed:
    for kind in fmt.KINDS:
      assert m["export"]["mine"][kind] == list(range(m["process"], shards[kind], 2))
  for kind in fmt.KINDS:
    ids, vectors, _ = fmt.read_embeddings(str(tmp_path / "multi_export"), kind)
    ref_ids, ref_vectors, _ = fmt.read_embeddings(str(tmp_path / "single_export"), kind)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(vectors, ref_vectors, atol=1e-4)
  assert os.path.isfile(tmp_path / "multi_export" / "encoder" / "encoder.json")
