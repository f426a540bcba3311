r"""Benchmark: nearest-neighbour indexes (serving/ann_index.py) vs exact search over unit vectors.

  python bench/ann.py                                  # N = 10K, 100K, 1M; D = 256; 1,000 queries
  python bench/ann.py --sizes=10000,100000             # the quick check (about 1 minute on 2 cores)
  python bench/ann.py --nprobes=8,16,64 --ef_searches=16,64,256 --threads=1   # other search settings

Data: synthetic clustered unit vectors, D = --dim, N / --per_cluster clusters (random unit centres c), each point
x = normalize(c + s * z B / sqrt(r) + e * g / sqrt(D)): z ~ N(0, I_r) along a random r-dimensional basis B
(r = --intrinsic_dim, s = --spread: embeddings vary along few directions), g ~ N(0, I_D) (e = --isotropic). A
query's 10 nearest neighbours then have cosines ~0.6-0.7 to it, and with the defaults IVF recall rises from ~0.7
at nprobe 4 to ~1 at nprobe 16 for N = 100K (isotropic Gaussian blobs in 256-D, tried first, were either trivially
separable, recall 1.0 at nprobe 4, or had neighbours barely closer than the rest, recall 0.4 at nprobe 128).
The index holds N such points; the 1,000 queries are near-duplicates of more points of the same clusters that are
not in the index (x + --query_noise * g / sqrt(D), renormalised), as for a new photo of something already in the
collection. Vectors are generated in chunks straight into one float32 [N, D] array (1M x 256 = 1 GB; each index
holds a second copy, one index at a time).

For each method, built with `ann_index.build_index` and searched with `AnnIndex.search` (what serving runs):
  exact        IndexFlatIP (brute force): the ground truth for recall
  ivf          IndexIVFFlat, nlist = 4 sqrt(N) (at most N / 39), at each --nprobes value (one build)
  hnsw         IndexHNSWFlat, M = 32, efConstruction 64, at each --ef_searches value (one build)
it reports the build time, recall@10 against exact, single-query latency p50/p99 (batch 1, every query, k = 10)
and throughput at batch --batch, then the ratios against exact. faiss parallelises batch-1 exact search over the
database and larger batches over the queries (OpenMP, --threads, default faiss's own = the cores). On a machine
that is busy with something else use --threads=1: OpenMP threads waiting for a descheduled one make batch-1 exact
search at N = 10K take 16 ms instead of 0.2 ms. Most of the time of the default run goes to N = 1M (exact batch-1
queries, k-means over 256K samples, the HNSW graph of 1M vectors: several minutes each on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import faiss  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from xmodal_jax.serving import ann_index  # pylint: disable=wrong-import-position
from peak_rss import peak_rss_mb  # pylint: disable=wrong-import-position  # bench/peak_rss.py

K = 10


def clustered_unit_vectors(n: int, centres: np.ndarray, basis: np.ndarray, spread: float, isotropic: float,
                           rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
  """n unit vectors around `centres` [C, D], varying along `basis` [r, D] -> float32 [n, D], chunk by chunk."""
  dim, rank = centres.shape[1], basis.shape[0]
  out = np.empty((n, dim), np.float32)
  for start in range(0, n, chunk):
    size = min(n, start + chunk) - start
    block = rng.standard_normal((size, dim), dtype=np.float32)
    block *= isotropic / np.sqrt(dim)
    block += rng.standard_normal((size, rank), dtype=np.float32) @ (basis * (spread / np.sqrt(rank)))
    block += centres[rng.integers(len(centres), size=size)]
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    out[start:start + size] = block
  return out


def make_data(n: int, args) -> tuple[np.ndarray, np.ndarray]:
  """(database float32 [n, D], queries float32 [Q, D]) of the same clusters (see the module docstring)."""
  rng = np.random.default_rng(args.seed)
  centres = rng.standard_normal((max(1, n // args.per_cluster), args.dim), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  basis = np.linalg.qr(rng.standard_normal((args.dim, args.intrinsic_dim)))[0].T.astype(np.float32)  # [r, D]
  make = lambda size: clustered_unit_vectors(size, centres, basis, args.spread, args.isotropic, rng)
  database, queries = make(n), make(args.queries)  # the queries' points are not in the database
  queries += rng.standard_normal(queries.shape, dtype=np.float32) * (args.query_noise / np.sqrt(args.dim))
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  return database, queries


def _measure(index: ann_index.AnnIndex, queries: np.ndarray, batch: int, truth: np.ndarray | None,
             **search) -> dict:
  """recall@10 vs `truth` (ids [Q, 10]), batch-1 latency p50/p99 ms, queries/s at `batch`; also the ids found."""
  index.search(queries[:batch], K, **search)  # warm-up
  latencies = []
  for i in range(len(queries)):
    t0 = time.perf_counter()
    index.search(queries[i:i + 1], K, **search)
    latencies.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  found = np.concatenate([index.search(queries[s:s + batch], K, **search)[1] for s in range(0, len(queries), batch)])
  batch_s = time.perf_counter() - t0
  recall = 1.0 if truth is None else float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth)]))
  return {"recall": recall, "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
          "p99_ms": float(np.percentile(latencies, 99)) * 1e3, "qps": len(queries) / batch_s, "ids": found}


def _bench_size(n: int, args) -> list[dict]:
  t0 = time.perf_counter()
  database, queries = make_data(n, args)
  ids = np.arange(n, dtype=np.int64)
  print(f"  N={n:,}: data {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
  rows = []

  def run(label, index, truth, **search):
    m = _measure(index, queries, args.batch, truth, **search)
    rows.append({"N": n, "method": label, "build_s": index.build_seconds, **m, "rss_mb": peak_rss_mb()})
    print(f"  N={n:,} {label}: recall {m['recall']:.3f}, p50 {m['p50_ms']:.2f} ms, {m['qps']:.0f} q/s",
          file=sys.stderr, flush=True)
    return m

  exact = ann_index.build_index(database, ids, "exact")
  truth = run("exact", exact, None)["ids"]
  del exact
  if n >= ann_index.IVF_MIN_PER_LIST * ann_index.default_nlist(n):
    ivf = ann_index.build_index(database, ids, "ivf")
    for nprobe in dict.fromkeys(ivf.params["nprobe"] if p == "default" else int(p) for p in args.nprobes.split(",")):
      run(f"ivf nlist={ivf.params['nlist']} nprobe={nprobe}", ivf, truth, nprobe=nprobe)
    del ivf
  hnsw = ann_index.build_index(database, ids, "hnsw")
  for ef in dict.fromkeys(hnsw.params["ef_search"] if e == "default" else int(e) for e in args.ef_searches.split(",")):
    run(f"hnsw M={hnsw.params['m']} efSearch={ef}", hnsw, truth, ef_search=ef)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="10000,100000,1000000", help="comma list of N (database vectors)")
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--queries", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=64, help="batch of the throughput measurement")
  parser.add_argument("--nprobes", default="4,16,default", help="ivf nprobe values ('default': the library's)")
  parser.add_argument("--ef_searches", default="16,default,128", help="hnsw efSearch values ('default': 64)")
  parser.add_argument("--per_cluster", type=int, default=1000, help="mean database points per cluster")
  parser.add_argument("--intrinsic_dim", type=int, default=32, help="dimensions the points vary along (r)")
  parser.add_argument("--spread", type=float, default=1.0, help="norm of the variation along them (centre: 1)")
  parser.add_argument("--isotropic", type=float, default=0.5, help="norm of the noise in all D dimensions")
  parser.add_argument("--query_noise", type=float, default=0.2, help="query = held-out point + this much noise")
  parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss's default)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.threads:
    faiss.omp_set_num_threads(args.threads)
  rows = []
  for n in args.sizes.split(","):
    rows += _bench_size(int(n), args)

  print(f"D={args.dim} k={K} queries={args.queries} (near-duplicates of held-out points) clusters=N/{args.per_cluster} "
        f"spread={args.spread}  (faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
        f"{os.cpu_count()} cores)\n")
  print(f"| N | method | build s | recall@{K} | batch-1 p50 ms | batch-1 p99 ms | q/s at batch {args.batch} | "
        "peak RSS MB (so far) |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r['N']:,} | {r['method']} | {r['build_s']:.2f} | {r['recall']:.3f} | {r['p50_ms']:.3f} | "
          f"{r['p99_ms']:.3f} | {r['qps']:,.0f} | {r['rss_mb']:,.0f} |")
  print("\nratios vs exact (same N): build time, batch-1 p50 speed-up (exact / method), batch throughput")
  print("| N | method | build | p50 speed-up | throughput |")
  print("|---:|---|---:|---:|---:|")
  exact = {r["N"]: r for r in rows if r["method"] == "exact"}
  for r in rows:
    if r["method"] != "exact":
      e = exact[r["N"]]
      print(f"| {r['N']:,} | {r['method']} | {r['build_s'] / max(e['build_s'], 1e-9):.0f}x | "
            f"{e['p50_ms'] / r['p50_ms']:.1f}x | {r['qps'] / e['qps']:.1f}x |")


if __name__ == "__main__":
  main()
