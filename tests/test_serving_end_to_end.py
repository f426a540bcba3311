"""Shapes world end to end through the commands a user runs: a trained CLIP run (tests/conftest.py) ->
`xmodal export` -> `xmodal index` -> `xmodal serve` (a real server process on localhost) -> a test caption's own
image comes back first through the HTTP API, with the scores of the in-library encoders."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.helpers import REPO, subprocess_xla_flags
from xmodal_jax import systems
from xmodal_jax.serving import embedding_export as fmt, search_service


def _xmodal(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "xmodal_jax.main", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env={**os.environ, "XLA_FLAGS": subprocess_xla_flags()})


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(clip_tiny_run, tmp_path_factory):
  """(base url, export dir, workdir): the run's test split exported, indexed and served."""
  _, workdir, _ = clip_tiny_run
  out = str(tmp_path_factory.mktemp("e2e") / "export")
  done = _xmodal("export", f"--workdir={workdir}", f"--out={out}", "--split=test", "--shard_size=25")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Exported step 4" in done.stdout and "images 3 shards written" in done.stdout
  done = _xmodal("index", f"--export={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "images: exact" in done.stdout and f"next: xmodal serve --index={out}/index" in done.stdout
  port = _free_port()
  proc = subprocess.Popen([sys.executable, "-m", "xmodal_jax.main", "serve", f"--index={out}/index",
                           f"--port={port}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "XLA_FLAGS": subprocess_xla_flags()})
  url = f"http://127.0.0.1:{port}"
  if not search_service.wait_until_serving(url, proc):
    proc.kill()
    pytest.fail(f"xmodal serve did not come up: {proc.stdout.read()[-3000:]}")
  yield url, out, workdir
  proc.terminate()
  proc.wait(timeout=30)


def test_a_test_caption_finds_its_own_image_first_through_the_http_api(server):
  url, out, workdir = server
  model = systems.load_run(workdir, mesh_shape=(-1, 1))
  task = model.task
  data, toks = task.split("test"), task.tokens("test")
  images = model.predict("embed_image", {"images": task.eval_images("test")})
  texts = model.predict("embed_text", {"tokens": toks.tokens, "mask": toks.mask})
  scores = texts @ images.T                                  # [captions, images], in-library ranking
  own = scores[np.arange(len(texts)), toks.text_to_image]
  margin = own - np.where(np.eye(len(images), dtype=bool)[toks.text_to_image], -np.inf, scores).max(axis=1)
  row = int(np.argmax(margin))                               # the caption that ranks its image first by most
  assert margin[row] > 0
  caption = [c for caps in data.captions for c in caps][row]
  image_id = int(data.image_ids[toks.text_to_image[row]])

  answer = httpx.post(f"{url}/api/search/text", json={"query": caption, "k": 5}, timeout=60)
  assert answer.status_code == 200, answer.text
  results = answer.json()["results"]
  assert results[0]["image_id"] == image_id and caption in results[0]["captions"]
  np.testing.assert_allclose(results[0]["score"], own[row], atol=1e-4)
  expected = np.argsort(-scores[row])[:5]
  assert [r["image_id"] for r in results] == [int(data.image_ids[i]) for i in expected]

  picture = httpx.get(f"{url}{results[0]['image_url']}", timeout=30)
  assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
  similar = httpx.post(f"{url}/api/search/image", params={"k": 3, "target": "images"},
                       files={"image": ("query.jpg", picture.content, "image/jpeg")}, timeout=60)
  assert similar.status_code == 200, similar.text
  assert similar.json()["results"][0]["image_id"] == image_id  # the image finds itself (JPEG round trip)
  assert httpx.get(f"{url}/images/..%2fmanifest.json", timeout=10).status_code == 404
  health = httpx.get(f"{url}/api/health", timeout=10).json()
  assert health["model_step"] == fmt.read_manifest(out)["step"] == 4
