r"""Benchmark: the search service with a real run's exported encoders, under load over HTTP on localhost.

  python bench/search_service.py --workdir=workdirs/clip_shapes            # export its test split, index, serve
  python bench/search_service.py --workdir=W --requests=2000 --concurrency=16 --split=val
  python bench/search_service.py --workdir=S2_OR_S4_RUN --rerank=20        # re-ranked: R@1 via HTTP vs library
  python bench/search_service.py --rerank_table                            # synthetic 1K / 100K items, K=20, 100

With --rerank=K the service re-ranks each shortlist of K with the export's score_pairs, and "R@1 of the export"
is the library's re-ranked R@1: the exported vectors' top K, re-scored by the exported score_pairs on the
exported pair sets of the image and the caption, with no HTTP and no search service.

--rerank_table: p50 / p99 latency and throughput without and with re-ranking (K = 20, 100) over 1K and 100K
SYNTHETIC items (random vectors in an exact faiss index, random S2-shaped pair sets, a jitted region-word scorer
of S2's shape), one server process per row; ratios against the row without re-ranking.

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


def library_reranked_top1(out: str, image_ids, image_vectors, query_vectors, text_rows, k: int) -> np.ndarray:
  """Top-1 image id per caption by the library alone: the exported vectors' top k images, re-scored by the
  exported score_pairs on the exported pair sets (embedding_export.read_pair_sets) of the images and the caption."""
  from xmodal_jax.serving import embedding_export, exported_encoder  # pylint: disable=import-outside-toplevel
  encoders = exported_encoder.load_encoders(out)
  top = []
  for vector, row in zip(query_vectors, text_rows):
    shortlist = np.argsort(-(image_vectors @ vector), kind="stable")[:k]  # positions in the export's order
    images = embedding_export.read_pair_sets(out, "images", shortlist)
    text = embedding_export.read_pair_sets(out, "texts", [row])
    scores = encoders.score_pairs(images, text)
    top.append(image_ids[shortlist[int(np.argmax(scores))]])
  return np.asarray(top)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="workdirs/clip_shapes", help="a finished retrieval / CLIP run")
  parser.add_argument("--split", default="test")
  parser.add_argument("--out", default=None, help="export dir (default: /tmp/xmodal-bench-export-<run>-<split>)")
  parser.add_argument("--requests", type=int, default=2000)
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--rerank", type=int, default=None, help="serve with --rerank=K (a pairwise run's export)")
  parser.add_argument("--rerank_table", action="store_true", help="the synthetic re-ranking table")
  parser.add_argument("--sizes", default="1000,100000", help="--rerank_table: item counts")
  parser.add_argument("--ks", default="20,100", help="--rerank_table: shortlist sizes K")
  parser.add_argument("--_serve_synthetic", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  if args._serve_synthetic:  # pylint: disable=protected-access
    serve_synthetic(*map(int, args._serve_synthetic.split(",")))  # pylint: disable=protected-access
    return
  if args.rerank_table:
    rerank_table([int(n) for n in args.sizes.split(",")], [int(k) for k in args.ks.split(",")],
                 min(args.requests, 400), min(args.concurrency, 8), args.k)
    return
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
  top = (library_reranked_top1(out, image_ids, image_vectors, text_vectors[used], used, args.rerank)
         if args.rerank else image_ids[np.argmax(text_vectors[used] @ image_vectors.T, axis=1)])
  offline_r1 = float(np.mean(top == np.asarray([texts[i]["image_id"] for i in used])))
  port = _free_port()
  server = subprocess.Popen([sys.executable, "-c", "import sys; from xmodal_jax.serving import search_service; "
                             "search_service.serve(sys.argv[1], port=int(sys.argv[2]), rerank=int(sys.argv[3]) or None)",
                             f"{out}/index", str(port), str(args.rerank or 0)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


# ------------------------------------------------------------------------------------------ re-ranking table
# `--rerank_table`: the service over SYNTHETIC items (random unit vectors in an exact faiss index, random pair
# sets) with a jitted S2-like pair scorer (words x regions similarity, max over regions, mean over words), so
# that 1K and 100K items need no 100K-image export. It measures what re-ranking adds to a query: reading K pair
# sets and one score_pairs call of K pairs (micro-batched across concurrent queries), beside the ANN search.

SYN_DIM, SYN_REGIONS, SYN_WORDS, SYN_PAIR_DIM = 256, 16, 12, 64


def _rng_rows(seed: int, rows, shape) -> np.ndarray:
  """Deterministic random float32 [len(rows), *shape] per row (the same row -> the same array)."""
  return np.stack([np.random.default_rng([seed, int(r)]).standard_normal(shape, np.float32) for r in rows])


class SyntheticEncoders:
  """Encoders of the synthetic service: hashed text / image vectors, S2-shaped pair sets, a jitted scorer."""

  def __init__(self, max_batch: int = 64):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    self.image_size, self.max_len, self.max_batch, self.dim, self.step, self.has_pairs = 32, 16, max_batch, SYN_DIM, 0, True

    def score(image, text):  # regions [P, R, D], words [P, L, D] -> [P]
      sim = jnp.einsum("prd,pld->plr", image["regions"], text["words"]) / np.sqrt(SYN_PAIR_DIM)
      return sim.max(-1).mean(-1)
    self._score = jax.jit(score)

  def encode_texts(self, texts):
    return _unit(_rng_rows(1, [zlib_hash(t) for t in texts], [SYN_DIM]))

  def encode_images(self, images):
    return _unit(_rng_rows(2, [int(np.asarray(x).sum()) for x in images], [SYN_DIM]))

  def pair_texts(self, texts):
    return {"words": _rng_rows(3, [zlib_hash(t) for t in texts], [SYN_WORDS, SYN_PAIR_DIM])}

  def pair_images(self, images):
    return {"regions": _rng_rows(4, [int(np.asarray(x).sum()) for x in images], [SYN_REGIONS, SYN_PAIR_DIM])}

  def score_pairs(self, image_set, text_set):
    n = len(image_set["regions"])
    size = 1 << (n - 1).bit_length()  # padded to a power of two, as the exported encoders do
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], size - n, 0)])
    return np.asarray(self._score({"regions": pad(image_set["regions"])}, {"words": pad(text_set["words"])}))[:n]


def zlib_hash(text: str) -> int:
  import zlib  # pylint: disable=import-outside-toplevel
  return zlib.crc32(text.encode())


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def synthetic_read_pair_sets(export_dir, kind, rows):
  return {"regions": _rng_rows(5, rows, [SYN_REGIONS, SYN_PAIR_DIM])}


def write_synthetic_export(out: str, n: int):
  """images.jsonl and a manifest for n synthetic images (no image files: results have no picture)."""
  from xmodal_jax.serving import embedding_export  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  with open(os.path.join(out, "images.jsonl"), "w") as f:
    f.writelines(json.dumps({"id": i, "file": f"images/{i}.jpg", "captions": [f"item {i}"]}) + "\n" for i in range(n))
  embedding_export.write_json_atomic(os.path.join(out, embedding_export.MANIFEST), {
      "format": embedding_export.FORMAT, "version": 1, "step": 0, "dim": SYN_DIM,
      "kinds": {"images": {"count": n, "shards": []}}})


def serve_synthetic(n: int, rerank: int, port: int) -> None:
  """The server process of one table row: n synthetic items, --rerank=rerank (0: off), on 127.0.0.1:port."""
  from xmodal_jax.serving import ann_index, search_service  # pylint: disable=import-outside-toplevel
  out = f"/tmp/xmodal-bench-synthetic-{n}"
  write_synthetic_export(out, n)
  vectors = _unit(np.random.default_rng(0).standard_normal([n, SYN_DIM], np.float32))
  index = ann_index.SearchIndex({"images": ann_index.build_index(vectors, np.arange(n), "exact")}, out,
                                json.load(open(os.path.join(out, "manifest.json"))), out)
  app = search_service.create_app(index, SyntheticEncoders(), rerank=rerank or None, warm_up=True,
                                  read_pair_sets=synthetic_read_pair_sets)
  sock = search_service.open_socket("127.0.0.1", port)
  search_service.uvicorn_server(app, log_level="warning", access_log=False).run(sockets=[sock])


async def _timed_queries(url: str, requests: int, concurrency: int, k: int):
  latencies, failures = [], []
  counter = iter(range(requests))

  async def worker(client):
    for i in counter:
      start = time.perf_counter()
      answer = await client.post("/api/search/text", json={"query": f"query number {i}", "k": k})
      latencies.append(time.perf_counter() - start)
      if answer.status_code != 200:
        failures.append(answer.text[:200])

  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
    for i in range(3):
      await client.post("/api/search/text", json={"query": f"warm {i}", "k": k})
    start = time.perf_counter()
    await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
  return np.asarray(latencies) * 1000, failures, seconds


def rerank_table(sizes, ks, requests: int, concurrency: int, k: int) -> None:
  rows = []
  for n in sizes:
    base = None
    for rerank in (0, *ks):
      port = _free_port()
      server = subprocess.Popen([sys.executable, __file__, "--_serve_synthetic", f"{n},{rerank},{port}"], cwd=REPO)
      url = f"http://127.0.0.1:{port}"
      try:
        sys.path.insert(0, REPO)
        from xmodal_jax.serving import search_service  # pylint: disable=import-outside-toplevel
        if not search_service.wait_until_serving(url, server, timeout_s=600):
          sys.exit(f"the synthetic server (n={n}, rerank={rerank}) did not start")
        ms, failures, seconds = asyncio.run(_timed_queries(url, requests, concurrency, k))
      finally:
        server.terminate()
        server.wait(timeout=30)
      row = {"items": n, "rerank": rerank or "off", "p50_ms": float(np.percentile(ms, 50)),
             "p99_ms": float(np.percentile(ms, 99)), "qps": requests / seconds, "failed": len(failures)}
      base = base or row
      rows.append({**row, "p50_ratio": row["p50_ms"] / base["p50_ms"], "qps_ratio": row["qps"] / base["qps"]})
      print(json.dumps(rows[-1]), flush=True)
  print(f"\n{requests} text queries per row, concurrency {concurrency}, k={k}; ratios against the row without "
        "re-ranking of the same size")
  print("| items | re-rank K | p50 ms | p99 ms | queries/s | p50 ratio | throughput ratio | failed |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['items']:,} | {r['rerank']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['qps']:.1f} | "
          f"{r['p50_ratio']:.2f} | {r['qps_ratio']:.2f} | {r['failed']} |")


if __name__ == "__main__":
  main()
