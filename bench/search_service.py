r"""Benchmark: the search service with a real run's exported encoders, under load over HTTP on localhost.

  python bench/search_service.py --workdir=workdirs/clip_shapes            # export its test split, index, serve
  python bench/search_service.py --workdir=W --requests=2000 --concurrency=16 --split=val

Exports the split (`xmodal export`, skipped when the export is up to date), builds the index (`xmodal index`),
starts `xmodal serve` as its own process on a free loopback port, and sends `--requests` text queries (the split's
captions, in turn) from `--concurrency` concurrent clients (httpx). Prints the throughput, latency percentiles,
failed requests, how many encoder calls served them (the micro-batcher), and text->image R@1 as the service
answered (each caption's own image first), beside the same R@1 from the exported embeddings alone. The client
runs on the same cores as the server, so on a 2-core machine it takes part of the CPU the figures measure.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _xmodal(*args: str) -> str:
  done = subprocess.run([sys.executable, "-m", "xmodal_jax.main", *args], cwd=REPO, capture_output=True, text=True)
  if done.returncode:
    sys.exit(f"xmodal {args[0]} failed:\n{done.stderr[-3000:]}")
  return done.stdout.strip()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


async def _load(url: str, texts: list[dict], requests: int, concurrency: int, k: int):
  latencies, failures, hits = [], [], []
  counter = iter(range(requests))

  async def worker(client):
    for i in counter:
      item = texts[i % len(texts)]
      start = time.perf_counter()
      try:
        answer = await client.post("/api/search/text", json={"query": item["text"], "k": k})
      except httpx.HTTPError as e:
        failures.append(f"{type(e).__name__}: {e}")
        continue
      latencies.append(time.perf_counter() - start)
      if answer.status_code != 200:
        failures.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
        continue
      hits.append(answer.json()["results"][0]["image_id"] == item["image_id"])

  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
    await client.post("/api/search/text", json={"query": texts[0]["text"], "k": k})  # compile the encoder
    before = (await client.get("/api/health")).json()
    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    after = (await client.get("/api/health")).json()
  return latencies, failures, hits, seconds, after["text_batches"] - before["text_batches"]


def _peak_rss_mb(pid: int) -> float | None:
  """The server process's peak RSS (VmHWM) in MB, read before it is stopped; None where unknown."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return round(int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 1024)
  except (OSError, StopIteration, ValueError):
    return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="workdirs/clip_shapes", help="a finished retrieval / CLIP run")
  parser.add_argument("--split", default="test")
  parser.add_argument("--out", default=None, help="export dir (default: /tmp/xmodal-bench-export-<run>-<split>)")
  parser.add_argument("--requests", type=int, default=2000)
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument("--k", type=int, default=10)
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  from xmodal_jax.serving import embedding_export, search_service  # pylint: disable=import-outside-toplevel
  out = args.out or f"/tmp/xmodal-bench-export-{os.path.basename(os.path.normpath(args.workdir))}-{args.split}"
  t0 = time.time()
  print(_xmodal("export", f"--workdir={args.workdir}", f"--out={out}", f"--split={args.split}").splitlines()[-1])
  print(f"  ({time.time() - t0:.1f} s)")
  print(_xmodal("index", f"--export={out}"))
  texts = embedding_export.read_items(out, "texts")
  image_ids, image_vectors, _ = embedding_export.read_embeddings(out, "images")
  _, text_vectors, _ = embedding_export.read_embeddings(out, "texts")
  used = [i % len(texts) for i in range(args.requests)]
  top = image_ids[np.argmax(text_vectors[used] @ image_vectors.T, axis=1)]
  offline_r1 = float(np.mean(top == np.asarray([texts[i]["image_id"] for i in used])))
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-m", "xmodal_jax.main", "serve", f"--index={out}/index",
                             f"--port={port}"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f"http://127.0.0.1:{port}"
  try:
    if not search_service.wait_until_serving(url, server):
      sys.exit("xmodal serve did not start")
    latencies, failures, hits, seconds, calls = asyncio.run(
        _load(url, texts, args.requests, args.concurrency, args.k))
    server_rss_mb = _peak_rss_mb(server.pid)
  finally:
    server.terminate()
    server.wait(timeout=30)
  ms = np.asarray(latencies) * 1000
  figures = {"requests": args.requests, "concurrency": args.concurrency, "failed": len(failures),
             "seconds": round(seconds, 2), "requests_per_s": round(args.requests / seconds, 1),
             "p50_ms": round(float(np.percentile(ms, 50)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
             "p99_ms": round(float(np.percentile(ms, 99)), 1), "encoder_calls": calls,
             "mean_batch": round(args.requests / max(calls, 1), 2),
             "service_t2i_r1": round(100 * float(np.mean(hits)), 2) if hits else None,
             "exported_t2i_r1": round(100 * offline_r1, 2), "cores": os.cpu_count(),
             "server_peak_rss_mb": server_rss_mb}
  print(f"run {args.workdir} ({args.split}): {len(image_ids)} images, {len(texts)} captions")
  print("| requests | concurrency | failed | req/s | p50 ms | p90 ms | p99 ms | encoder calls | mean batch | "
        "t->i R@1 via HTTP | R@1 of the export | server peak RSS MB |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  print(f"| {figures['requests']} | {figures['concurrency']} | {figures['failed']} | {figures['requests_per_s']} | "
        f"{figures['p50_ms']} | {figures['p90_ms']} | {figures['p99_ms']} | {calls} | {figures['mean_batch']} | "
        f"{figures['service_t2i_r1']} | {figures['exported_t2i_r1']} | {server_rss_mb} |")
  print(json.dumps(figures))
  if failures:
    print(f"{len(failures)} failed, e.g. {failures[:3]}")


if __name__ == "__main__":
  main()
