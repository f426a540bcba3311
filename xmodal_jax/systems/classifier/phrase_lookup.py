"""Phrase generation by nearest queries, and new queries from class prototypes (system S1, seed eq. 2).

The text generator scores the K query embeddings W [K, D] against an image embedding x by cosine similarity
(seed eq. 1; the softmax is monotone in it, so the top-k queries are the top-k cosines). New queries are added
without retraining as class prototypes (seed eq. 2):

  phi_c = 1/|S_c| * sum_{x in S_c} f(x),   f(x) the L2-normalised image feature,

appended after the old ids (`extend_queries`) or written over existing rows (`replace_queries`).

The generator's distribution over all K queries, p(q_c | x) = softmax_c(-s d(x, w_c)) = softmax_c(s cos(x, w_c))
(d = 1 - cos; the constant cancels), is `top_query_probabilities` (the k most probable, normalised over all K);
`query_space_similarity` compares images by the cosine of their p(q | x) vectors, in chunks of K.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models.layers import l2_normalize

METHODS = ("exact", "approx")


def query_cosines(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """Cosine similarity of every x with every query vector: x [batch, D], w [K, D] -> [batch, K] float32.

  Computed as dots scaled by W's inverse row norms: no normalised [K, D] copy of W (forward only, so unlike
  `cosine_logits` there is no backward pass that would need the unscaled dots).
  """
  if x.ndim != 2 or w.ndim != 2 or x.shape[-1] != w.shape[-1]:
    raise ValueError(f"query_cosines expects x [batch, D] and w [K, D], got {x.shape} and {w.shape}.")
  w32 = w.astype(jnp.float32)
  inv_norm = 1.0 / jnp.maximum(jnp.sqrt(jnp.sum(w32 * w32, axis=-1)), 1e-6)  # [K]
  dots = jnp.einsum("bd,kd->bk", l2_normalize(x), w32, precision=jax.lax.Precision.HIGHEST)
  return dots * inv_norm[None, :]


@functools.partial(jax.jit, static_argnames=("k", "method", "recall_target"))
def top_queries(x: jnp.ndarray, w: jnp.ndarray, k: int, *, method: str = "exact", recall_target: float = 0.95
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """The k queries nearest to each x: (cosine similarities [batch, k], ids int32 [batch, k]), best first.

  x [batch, D], w [K, D]. "exact": `jax.lax.top_k`; "approx": `jax.lax.approx_max_k` with `recall_target`
  (approximate on TPU; on CPU XLA rewrites it to the same exact TopK as "exact"). k, method and recall_target
  are static. Cost O(batch * K * D) plus a [batch, K] score buffer.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown top-k method {method!r}; choose one of {METHODS}.")
  if not 1 <= k <= w.shape[0]:
    raise ValueError(f"k={k} must be in [1, K={w.shape[0]}].")
  scores = query_cosines(x, w)  # [batch, K]
  if method == "exact":
    values, ids = jax.lax.top_k(scores, k)
  else:
    values, ids = jax.lax.approx_max_k(scores, k, recall_target=recall_target)
  return values, ids.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k",))
def top_query_probabilities(x: jnp.ndarray, w: jnp.ndarray, k: int, scale: float
                            ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """The k most probable queries under seed eq. 1, p(q_c | x) = softmax_c(s cos(x, w_c)) over all K.

  x [batch, D], w [K, D], scale s (the text generator's `loss.scale`). Returns (probabilities [batch, k],
  cosines [batch, k], ids int32 [batch, k]), most probable first: the same order as `top_queries` (the softmax
  is monotone in the cosine). k = K gives the whole distribution. Cost O(batch * K * D).
  """
  if not 1 <= k <= w.shape[0]:
    raise ValueError(f"k={k} must be in [1, K={w.shape[0]}].")
  cosines = query_cosines(x, w)  # [batch, K]
  logits = scale * cosines
  log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
  values, ids = jax.lax.top_k(logits, k)
  return jnp.exp(values - log_z), jnp.take_along_axis(cosines, ids, axis=-1), ids.astype(jnp.int32)


@jax.jit
def _chunk_log_partition(x: jnp.ndarray, w: jnp.ndarray, scale: float) -> jnp.ndarray:
  return jax.nn.logsumexp(scale * query_cosines(x, w), axis=-1)


@jax.jit
def _chunk_similarity_terms(x_a, x_b, w, scale, log_z_a, log_z_b):
  p_a = jnp.exp(scale * query_cosines(x_a, w) - log_z_a[:, None])  # [Na, chunk]
  p_b = jnp.exp(scale * query_cosines(x_b, w) - log_z_b[:, None])  # [Nb, chunk]
  dots = jnp.einsum("ak,bk->ab", p_a, p_b, precision=jax.lax.Precision.HIGHEST)
  return dots, jnp.sum(p_a * p_a, axis=-1), jnp.sum(p_b * p_b, axis=-1)


def query_log_partition(x: Any, w: Any, scale: float, chunk: int = 65536) -> np.ndarray:
  """log sum_c exp(s cos(x, w_c)) over all K queries: x [batch, D], w [K, D] -> [batch], in chunks of K rows."""
  parts = [_chunk_log_partition(x, w[start:start + chunk], scale) for start in range(0, np.shape(w)[0], chunk)]
  return np.asarray(jax.nn.logsumexp(jnp.stack(parts), axis=0))


def query_space_similarity(x_a: Any, x_b: Any, w: Any, scale: float, chunk: int = 65536) -> np.ndarray:
  """Cosine of the query distributions: sim[i, j] = <p(q | a_i), p(q | b_j)> / (|p(q | a_i)| |p(q | b_j)|).

  x_a [Na, D], x_b [Nb, D] (image embeddings), w [K, D], scale s. Returns float32 [Na, Nb] in [0, 1] (1: the
  same distribution). K is processed `chunk` rows at a time (two passes: log partition, then dot products), so
  memory is O((Na + Nb) * chunk), never [N, K].
  """
  x_a, x_b, w = jnp.asarray(x_a), jnp.asarray(x_b), np.asarray(w)
  log_z_a, log_z_b = (jnp.asarray(query_log_partition(x, w, scale, chunk)) for x in (x_a, x_b))
  dots, norm_a, norm_b = 0.0, 0.0, 0.0
  for start in range(0, w.shape[0], chunk):
    d, na, nb = _chunk_similarity_terms(x_a, x_b, jnp.asarray(w[start:start + chunk]), scale, log_z_a, log_z_b)
    dots, norm_a, norm_b = dots + d, norm_a + na, norm_b + nb
  return np.clip(np.asarray(dots / jnp.sqrt(norm_a[:, None] * norm_b[None, :]), np.float32), 0.0, 1.0)


def class_prototypes(features: Any, members: Any) -> jnp.ndarray:
  """Seed eq. 2: phi_c = mean over x in S_c of f(x), f(x) = L2-normalised `features` rows; returns [C, D].

  features [N, D]; members bool [C, N], row c marks the images of S_c. An empty S_c raises ValueError
  (checked when `members` is concrete, i.e. outside jit). Prototypes are means, not re-normalised.
  """
  features = jnp.asarray(features)
  if features.ndim != 2 or np.ndim(members) != 2 or np.shape(members)[1] != features.shape[0]:
    raise ValueError(f"class_prototypes expects features [N, D] and members [C, N], got {features.shape} "
                     f"and {np.shape(members)}.")
  if not isinstance(members, jax.core.Tracer):
    counts = np.asarray(members).astype(bool).sum(axis=1)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
      raise ValueError(f"members row {int(empty[0])} is empty: class prototype {int(empty[0])} has no images "
                       f"(empty rows: {empty.tolist()}).")
  weights = jnp.asarray(members).astype(jnp.float32)  # [C, N]
  sums = jnp.einsum("cn,nd->cd", weights, l2_normalize(features), precision=jax.lax.Precision.HIGHEST)
  return sums / jnp.sum(weights, axis=1, keepdims=True)


def _check_rows(w: Any, prototypes: Any) -> None:
  if np.ndim(w) != 2 or np.ndim(prototypes) != 2 or np.shape(w)[1] != np.shape(prototypes)[1]:
    raise ValueError(f"Expected w [K, D] and prototypes [C, D], got {np.shape(w)} and {np.shape(prototypes)}.")


def extend_queries(w: Any, prototypes: Any) -> jnp.ndarray:
  """[K + C, D]: the C prototypes appended as new queries with ids K..K+C-1; old ids keep their rows."""
  _check_rows(w, prototypes)
  w = jnp.asarray(w)
  return jnp.concatenate([w, jnp.asarray(prototypes).astype(w.dtype)], axis=0)


def replace_queries(w: Any, ids: Any, prototypes: Any) -> jnp.ndarray:
  """[K, D]: rows `ids` (int [C]) replaced by the C prototypes; the other rows unchanged."""
  _check_rows(w, prototypes)
  if np.shape(ids) != (np.shape(prototypes)[0],):
    raise ValueError(f"ids must have shape [C] = ({np.shape(prototypes)[0]},), got {np.shape(ids)}.")
  if not isinstance(ids, jax.core.Tracer):
    ids_np = np.asarray(ids)
    if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= np.shape(w)[0]):
      raise ValueError(f"ids must be in [0, K={np.shape(w)[0]}), got min {ids_np.min()} max {ids_np.max()}.")
    if len(np.unique(ids_np)) != ids_np.size:
      raise ValueError(f"ids must be distinct, got {ids_np.tolist()}.")
  w = jnp.asarray(w)
  return w.at[jnp.asarray(ids)].set(jnp.asarray(prototypes).astype(w.dtype))


def _duplicates(phrases: Sequence[str]) -> list[str]:
  return sorted(p for p, n in collections.Counter(phrases).items() if n > 1)


@dataclasses.dataclass
class PhraseTable:
  """K phrases and their query vectors [K, D] (row i is the embedding of phrases[i])."""
  phrases: list[str]
  vectors: Any
  _device_vectors: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

  def __post_init__(self):
    self.phrases = list(self.phrases)
    if np.ndim(self.vectors) != 2 or np.shape(self.vectors)[0] != len(self.phrases):
      raise ValueError(f"PhraseTable needs vectors [K, D] with K = len(phrases) = {len(self.phrases)}, "
                       f"got shape {np.shape(self.vectors)}.")
    dups = _duplicates(self.phrases)
    if dups:
      raise ValueError(f"Duplicate phrases: {dups}.")

  def __len__(self) -> int:
    return len(self.phrases)

  def lookup(self, x: Any, k: int = 3, method: str = "exact") -> list[list[tuple[str, float]]]:
    """The k best (phrase, cosine score) pairs for each row of x [batch, D] (or one x [D]), best first."""
    x = jnp.asarray(x)
    if self._device_vectors is None:  # transfer W once, not on every lookup
      self._device_vectors = jnp.asarray(self.vectors)
    scores, ids = top_queries(x[None] if x.ndim == 1 else x, self._device_vectors, k, method=method)
    scores, ids = np.asarray(scores), np.asarray(ids)
    return [[(self.phrases[i], float(s)) for s, i in zip(row_s, row_i)] for row_s, row_i in zip(scores, ids)]

  def extend(self, new_phrases: Sequence[str], prototypes: Any) -> PhraseTable:
    """A new table with `new_phrases` appended (ids K..K+C-1), their vectors the `prototypes` [C, D]."""
    new_phrases = list(new_phrases)
    if np.ndim(prototypes) != 2 or np.shape(prototypes)[0] != len(new_phrases):
      raise ValueError(f"extend needs prototypes [C, D] with C = len(new_phrases) = {len(new_phrases)}, "
                       f"got shape {np.shape(prototypes)}.")
    dups = sorted(set(new_phrases) & set(self.phrases)) or _duplicates(new_phrases)
    if dups:
      raise ValueError(f"Duplicate phrases (new phrases must be distinct and not in the table): {dups}.")
    return PhraseTable(self.phrases + new_phrases, extend_queries(self.vectors, prototypes))
