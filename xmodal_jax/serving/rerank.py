"""Re-ranking an ANN shortlist with a pairwise system's `score_pairs` (S2 region-word alignment, S4 matching).

The search service (`xmodal serve --rerank=K`) finds K candidates by one embedding (the faiss index), then
scores each (query, candidate) pair with the export's pair scorer and orders them by that score. What the
scorer takes are "pair sets": per item the features the system compares jointly (S2: region features and word
states; S4: the single-stream inputs), a pytree of arrays whose leading axis is the item. Indexed items' sets are
read from the export (`embedding_export.read_pair_sets`); a query's set is computed by the exported encoders
(`pair_texts` / `pair_images`).

Each `RerankJob` is one query and its candidates; `Reranker.score_jobs(jobs)` scores a batch of jobs in one
`score_pairs` call (the service's MicroBatcher gathers concurrent queries' jobs). The exported encoders split the
pairs into batches of at most max_batch, each padded to a power of two, so the jitted scorer compiles for a
handful of shapes only (the service's warm-up compiles the one a lone query needs).

  reranker = Reranker(encoders, export_dir, k=20, rows={"images": {image_id: row}, "texts": {text_id: row}})
  [scores] = reranker.score_jobs([RerankJob("text", "a red circle", "images", candidate_ids)])   # float32 [K]
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np

from xmodal_jax import errors
from xmodal_jax.serving import embedding_export

MAX_RERANK_K = 1000
QUERY_KINDS = ("text", "image", "image_id")  # a caption string, pixels uint8 [S, S, 3], an indexed image's id


@dataclasses.dataclass(frozen=True)
class RerankJob:
  """One query and the candidates to score against it.

  Attributes:
    query_kind: "text" (query: str), "image" (query: uint8 [S, S, 3]) or "image_id" (query: an indexed image id).
    query: the query itself.
    candidate_kind: "images" (for a text query) or "texts" (for an image query).
    candidate_ids: the export's ids of the candidates (the ANN shortlist), [n].
  """
  query_kind: str
  query: Any
  candidate_kind: str
  candidate_ids: Sequence[int]


def no_pairs_message(export_dir: str, k: int) -> str:
  return (f"--rerank={k}: the export {export_dir} has no pair sets, so there is nothing to re-rank with. Re-ranking "
          "needs a pairwise system's export (S2 region-word alignment, S4 single-stream matching: `xmodal export "
          "--workdir=RUN` writes them); serve this export without --rerank.")


def check_k(k: int) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_RERANK_K:
    raise errors.ConfigError(f"--rerank={k!r}: give the shortlist size, an integer from 1 to {MAX_RERANK_K} "
                             "(e.g. --rerank=20), or leave it out to rank by the embedding alone.")
  return int(k)


def concat(sets: Sequence[Any]) -> Any:
  """Pair sets (pytrees of arrays [n_i, ...]) -> one set [sum n_i, ...]."""
  return jax.tree.map(lambda *leaves: np.concatenate([np.asarray(x) for x in leaves]), *sets)


def take(pair_set: Any, rows: np.ndarray) -> Any:
  """The items `rows` (int [m]) of a set: [m, ...] (repeats allowed)."""
  return jax.tree.map(lambda x: np.asarray(x)[rows], pair_set)


def length(pair_set: Any) -> int:
  return int(np.asarray(jax.tree.leaves(pair_set)[0]).shape[0])


class Reranker:
  """Scores (query, candidate) pairs with an export's pair scorer.

  Args:
    encoders: `.has_pairs`, `.pair_texts(list[str])`, `.pair_images(uint8 [n, S, S, 3])` -> pair sets [n, ...],
      `.score_pairs(image_set [P, ...], text_set [P, ...])` -> float [P] (`serving/exported_encoder.py`).
    export_dir: the export the index was built from (its pair sets).
    k: the shortlist size K.
    rows: kind -> {id: row in the export's split order}, for `read_pair_sets`.
    read_sets: `(export_dir, kind, rows int [n]) -> set [n, ...]` (default `embedding_export.read_pair_sets`).
  """

  def __init__(self, encoders, export_dir: str, k: int, rows: dict[str, dict[int, int]], *,
               read_sets: Callable[[str, str, np.ndarray], Any] | None = None):
    self.k = check_k(k)
    if not getattr(encoders, "has_pairs", False):
      raise errors.ConfigError(no_pairs_message(export_dir, self.k))
    self.encoders, self.export_dir, self.rows = encoders, export_dir, rows
    self._read = read_sets or embedding_export.read_pair_sets
    self.calls = 0   # score_pairs calls so far
    self.pairs = 0   # pairs scored so far (without padding)

  def item_sets(self, kind: str, ids: Sequence[int]) -> Any:
    """The export's pair sets of the items `ids` (ids of `kind`, "images" | "texts") -> set [n, ...]."""
    try:
      rows = np.asarray([self.rows[kind][int(i)] for i in ids], np.int64)
    except KeyError as e:
      raise errors.DataError(f"{kind} id {e.args[0]} is not in the export {self.export_dir}.") from None
    return self._read(self.export_dir, kind, rows)

  def _query_sets(self, jobs: Sequence[RerankJob]) -> list[Any]:
    """Each job's query as a pair set [1, ...]: texts and pixels encoded in one call per kind."""
    out: list[Any] = [None] * len(jobs)
    for kind in QUERY_KINDS:
      where = [i for i, job in enumerate(jobs) if job.query_kind == kind]
      if not where:
        continue
      queries = [jobs[i].query for i in where]
      if kind == "text":
        sets = self.encoders.pair_texts([str(q) for q in queries])
      elif kind == "image":
        sets = self.encoders.pair_images(np.stack([np.asarray(q, np.uint8) for q in queries]))
      else:
        sets = self.item_sets("images", queries)
      for j, i in enumerate(where):
        out[i] = take(sets, np.asarray([j]))
    bad = [job.query_kind for job, s in zip(jobs, out) if s is None]
    if bad:
      raise ValueError(f"unknown query kind(s) {bad}; use one of {QUERY_KINDS}.")
    return out

  def score_jobs(self, jobs: Sequence[RerankJob]) -> list[np.ndarray]:
    """One `score_pairs` call for every job's pairs -> per job float32 [n candidates], in candidate order."""
    queries = self._query_sets(jobs)
    image_sides, text_sides, sizes = [], [], []
    for job, query in zip(jobs, queries):
      n = len(job.candidate_ids)
      sizes.append(n)
      if n == 0:
        continue
      candidates = self.item_sets(job.candidate_kind, job.candidate_ids)
      repeated = take(query, np.zeros([n], np.int64))
      image_side, text_side = (candidates, repeated) if job.candidate_kind == "images" else (repeated, candidates)
      image_sides.append(image_side)
      text_sides.append(text_side)
    total = sum(sizes)
    if total == 0:
      return [np.zeros([0], np.float32) for _ in jobs]
    scores = np.asarray(self.encoders.score_pairs(concat(image_sides), concat(text_sides)), np.float32).reshape(-1)
    if len(scores) != total:
      raise RuntimeError(f"score_pairs returned {len(scores)} scores for {total} pairs.")
    self.calls += 1
    self.pairs += total
    return list(np.split(scores, np.cumsum(sizes)[:-1]))
