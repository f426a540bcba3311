"""Load on the real server: uvicorn in a subprocess serving the fake index and encoders of
tests/test_search_service.py (each encoder batch sleeps a little, as a jitted call takes time), 2,000 text queries
at concurrency 16 over HTTP on 127.0.0.1. Every answer must be a 200 with the right results. Throughput and
latency percentiles are printed (`pytest -s`) and written to search_load.json under $XMODAL_TEST_ARTIFACTS (else
the test's tmp_path); nothing is asserted about time."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from tests.helpers import REPO, stop_process
from tests.test_search_service import COLOURS, NAMES, FakeEncoders, FakeIndex, colour_vector, image_id, \
    text_vector, write_fake_export

REQUESTS = 2000
CONCURRENCY = 16
BATCH_DELAY_S = 0.004  # per encoder call
MAX_BATCH = 16


def serve_fakes(export_dir: str) -> None:
  """The subprocess: the service over the fakes on a free loopback port; prints "URL <url>" once listening."""
  from xmodal_jax.serving import search_service
  encoders = FakeEncoders(max_batch=MAX_BATCH, delay_s=BATCH_DELAY_S)
  app = search_service.create_app(FakeIndex(export_dir), encoders,
                                  limits=search_service.ServiceLimits(batch_wait_ms=2))
  sock = search_service.open_socket("127.0.0.1", 0)
  server = search_service.uvicorn_server(app, log_level="warning", access_log=False)
  url = search_service.socket_url(sock)
  threading.Thread(target=lambda: (_wait_started(server), print(f"URL {url}", flush=True)), daemon=True).start()
  server.run(sockets=[sock])


def _wait_started(server, timeout_s=60.0):
  deadline = time.monotonic() + timeout_s
  while not server.started and time.monotonic() < deadline:
    time.sleep(0.02)


def _start_server(export_dir: str):
  process = subprocess.Popen(
      [sys.executable, "-c", "import sys; from tests.test_search_load import serve_fakes; serve_fakes(sys.argv[1])",
       export_dir], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []

  def read():
    for line in process.stdout:
      lines.append(line)
  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline and process.poll() is None:
    url = next((line.split()[1] for line in lines if line.startswith("URL ")), None)
    if url:
      return process, url, lines
    time.sleep(0.05)
  process.kill()
  raise AssertionError("the search server did not start:\n" + "".join(lines))


async def _load(url: str):
  latencies, failures = [], []
  counter = iter(range(REQUESTS))

  async def worker(client):
    for i in counter:
      colour = NAMES[i % len(NAMES)]
      query = f"query {i}: a {colour} shape"
      start = time.perf_counter()
      try:
        response = await client.post("/api/search/text", json={"query": query, "k": 3})
      except httpx.HTTPError as e:
        failures.append(f"{i}: {type(e).__name__}: {e}")
        continue
      latencies.append(time.perf_counter() - start)
      if response.status_code != 200:
        failures.append(f"{i}: HTTP {response.status_code} {response.text[:200]}")
        continue
      results = response.json()["results"]
      expected = float(text_vector(query) @ colour_vector(NAMES.index(colour)))
      if (len(results) != 3 or results[0]["image_id"] != image_id(colour)
          or abs(results[0]["score"] - expected) > 1e-5):
        failures.append(f"{i}: wrong results for {query!r}: {results}")

  limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(CONCURRENCY))), timeout=600)
    seconds = time.perf_counter() - start
    health = (await client.get("/api/health")).json()
  return latencies, failures, seconds, health


def test_two_thousand_queries_at_concurrency_16(tmp_path):
  assert len(COLOURS) == 5
  export = write_fake_export(tmp_path)
  process, url, log = _start_server(export)
  try:
    latencies, failures, seconds, health = asyncio.run(_load(url))
  finally:
    stop_process(process)
  assert not failures, f"{len(failures)} of {REQUESTS} failed, e.g. {failures[:3]}\n" + "".join(log[-20:])
  assert len(latencies) == REQUESTS and health["text_queries"] == REQUESTS
  ms = np.asarray(latencies) * 1000
  figures = {"requests": REQUESTS, "concurrency": CONCURRENCY, "seconds": round(seconds, 3),
             "throughput_rps": round(REQUESTS / seconds, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
             "p90_ms": round(float(np.percentile(ms, 90)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
             "max_ms": round(float(ms.max()), 2), "encoder_calls": health["text_batches"],
             "mean_batch": round(REQUESTS / health["text_batches"], 2), "max_batch": MAX_BATCH,
             "encoder_delay_ms": BATCH_DELAY_S * 1000}
  out_dir = os.environ.get("XMODAL_TEST_ARTIFACTS") or str(tmp_path)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "search_load.json")
  with open(path, "w") as f:
    json.dump(figures, f, indent=1)
  print(f"\nsearch service load: {json.dumps(figures)} -> {path}")
  assert health["text_batches"] < REQUESTS  # concurrent queries shared encoder calls
