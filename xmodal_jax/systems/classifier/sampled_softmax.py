"""Full and sampled softmax over K search queries with cosine logits (system S1's text generator).

The generator maps an image to an embedding x [D] and scores K queries, the rows of W [K, D] (seed eq. 1):

  p(q_c | x) = softmax_c(-s * d(x, w_c)),   d(x, w) = 1 - cos(x, w)
             = softmax_c(s * cos(x, w_c))   (the constant -s cancels in the softmax)

Evaluation uses the full K-way softmax (`full_softmax_loss`). Training uses a sampled softmax
(`sampled_softmax_loss`, Jean et al. 2015; Bengio & Senecal 2008): the normaliser is estimated from the true
class plus S negatives drawn from a proposal Q, with each logit corrected by -log(S * Q(c)) (the "log-Q"
correction, the log of the class's expected count among the samples). Its cost is O(batch * S * D), not O(K).

The sampled loss is a BIASED but CONSISTENT estimator of the full softmax loss (and of its gradient): for a
finite S its expectation differs from the full loss (the log of an unbiased estimate of the normaliser is not
unbiased), and the bias vanishes as S grows, fastest when Q is close to the model's softmax. Query ids are sorted
by decreasing training frequency, so the log-uniform (Zipf) proposal is a good default.

Memory/compute caveat: the gradient of the sampled loss with respect to W touches only B + S rows, but
`jax.grad` returns it as a dense [K, D] array, and a dense optimiser (e.g. `optax.adamw`) then updates all K
rows: that part of a training step stays O(K). A step whose cost does not grow with K needs a sparse update of
the gathered rows: `sampled_softmax_from_rows` + `train/sparse_rows.row_adagrad_update`, which the text
generator runs with config.loss.query_update="sparse_adagrad" (measured in `bench/s1_softmax.py`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xmodal_jax.models.layers import l2_normalize

DISTRIBUTIONS = ("log_uniform", "uniform")
# Logit of an accidental hit. Finite (unlike -inf), so neither logsumexp nor the gradient of `where` gives NaN.
_NEG_FILL = -1e9
_EPS = 1e-6


def _check_distribution(distribution: str) -> None:
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"Unknown sampling distribution {distribution!r}; choose one of {DISTRIBUTIONS}.")


def cosine_logits(x: jnp.ndarray, w: jnp.ndarray, scale) -> jnp.ndarray:
  """`scale * cos(x_b, w_c)` [batch, K] for x [batch, D], w [K, D] (seed eq. 1 up to a constant).

  Both sides are L2-normalised in float32 (`l2_normalize`, eps 1e-6), so rows of any norm are fine. Normalising
  W first (a [K, D] temporary) rather than scaling the [batch, K] dot products keeps the backward pass lighter:
  the latter must keep the unscaled dots alive for the gradient of the norms (measured ~2x temp memory).
  """
  if x.ndim != 2 or w.ndim != 2 or x.shape[-1] != w.shape[-1]:
    raise ValueError(f"cosine_logits expects x [batch, D] and w [K, D], got {x.shape} and {w.shape}.")
  cos = jnp.einsum("bd,kd->bk", l2_normalize(x, eps=_EPS), l2_normalize(w, eps=_EPS),
                   precision=jax.lax.Precision.HIGHEST)
  return scale * cos


def full_softmax_loss(x: jnp.ndarray, w: jnp.ndarray, labels: jnp.ndarray, scale
                      ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Mean over the batch of the K-way cross-entropy -log p(q_label | x) (seed eq. 1); O(batch * K * D).

  x [batch, D], w [K, D], labels int [batch]. Returns (loss, {"accuracy": top-1 accuracy}).
  """
  logits = cosine_logits(x, w, scale)  # [B, K]
  labels = jnp.asarray(labels).astype(jnp.int32)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return jnp.mean(nll), {"accuracy": accuracy}


def expected_log_count(ids: jnp.ndarray, num_samples: int, num_classes: int,
                       distribution: str = "log_uniform") -> jnp.ndarray:
  """log(S * P(id)) float32, same shape as `ids`: log of the expected count of `id` among S draws.

  "log_uniform": P(k) = (log(k+2) - log(k+1)) / log(K+1) = log1p(1/(k+1)) / log(K+1);
  "uniform": P(k) = 1/K.
  """
  _check_distribution(distribution)
  ids = jnp.asarray(ids)
  log_s = jnp.log(jnp.float32(num_samples))
  if distribution == "uniform":
    return jnp.full(ids.shape, log_s - jnp.log(jnp.float32(num_classes)), jnp.float32)
  k = ids.astype(jnp.float32)
  log_p = jnp.log(jnp.log1p(1.0 / (k + 1.0))) - jnp.log(jnp.log(jnp.float32(num_classes + 1)))
  return log_s + log_p


def sample_candidates(rng: jax.Array, num_samples: int, num_classes: int, distribution: str = "log_uniform"
                      ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """S = num_samples class ids drawn WITH replacement from Q, by a closed-form inverse CDF: O(S) work.

  "log_uniform" (Zipf-like, for ids sorted by decreasing frequency): k = floor(exp(u * log(K+1))) - 1, u ~ U[0, 1),
  clipped to [0, K-1], which gives P(k) = (log(k+2) - log(k+1)) / log(K+1). "uniform": P(k) = 1/K.
  Computed in float32: exact enough for K up to ~2^24.

  Returns (ids int32 [S], log_expected float32 [S] = log(S * P(ids))).
  """
  _check_distribution(distribution)
  if num_samples < 1 or num_classes < 1:
    raise ValueError(f"num_samples and num_classes must be >= 1, got {num_samples} and {num_classes}.")
  u = jax.random.uniform(rng, (num_samples,), jnp.float32)
  if distribution == "uniform":
    ids = jnp.floor(u * num_classes)
  else:
    ids = jnp.floor(jnp.exp(u * jnp.log(jnp.float32(num_classes + 1)))) - 1.0
  ids = jnp.clip(ids, 0, num_classes - 1).astype(jnp.int32)
  return ids, expected_log_count(ids, num_samples, num_classes, distribution)


def sampled_softmax_from_rows(x: jnp.ndarray, true_rows: jnp.ndarray, sampled_rows: jnp.ndarray,
                              labels: jnp.ndarray, ids: jnp.ndarray, *, num_classes: int, scale,
                              distribution: str = "log_uniform", remove_accidental_hits: bool = True
                              ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Sampled softmax loss from already gathered rows of W; differentiable w.r.t. the rows (for sparse updates).

  x [B, D]; true_rows [B, D] = w[labels]; sampled_rows [S, D] = w[ids]; labels int [B]; ids int [S] drawn from
  `distribution` over `num_classes` (S = len(ids)). Per row b the logits over [true class, S samples] are

    o_b = s * cos(x_b, w_c) - log(S * Q(c)),   c in (labels[b], ids[0], ..., ids[S-1])

  with samples equal to labels[b] (accidental hits) set to a large negative when `remove_accidental_hits`;
  loss = mean_b (logsumexp(o_b) - o_b[0]). Biased but consistent, see the module docstring.

  Returns (loss, {"sampled_accuracy"}): the fraction of rows whose true class has a higher score s * cos than
  every (non-hit) sampled class, on the uncorrected scores, i.e. how the model itself ranks them.
  """
  labels = jnp.asarray(labels).astype(jnp.int32)
  ids = jnp.asarray(ids).astype(jnp.int32)
  num_samples = ids.shape[0]
  true_score = scale * jnp.sum(l2_normalize(x, eps=_EPS) * l2_normalize(true_rows, eps=_EPS), axis=-1)  # [B]
  sampled_score = cosine_logits(x, sampled_rows, scale)  # [B, S]
  true_logit = true_score - expected_log_count(labels, num_samples, num_classes, distribution)
  sampled_logit = sampled_score - expected_log_count(ids, num_samples, num_classes, distribution)[None, :]
  if remove_accidental_hits:
    hit = ids[None, :] == labels[:, None]  # [B, S]
    sampled_logit = jnp.where(hit, _NEG_FILL, sampled_logit)
    sampled_score = jnp.where(hit, _NEG_FILL, sampled_score)
  logits = jnp.concatenate([true_logit[:, None], sampled_logit], axis=1)  # [B, 1 + S]
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - true_logit)
  beats = true_score > jnp.max(sampled_score, axis=1)
  return loss, {"sampled_accuracy": jnp.mean(beats.astype(jnp.float32))}


def sampled_softmax_loss(x: jnp.ndarray, w: jnp.ndarray, labels: jnp.ndarray, rng: jax.Array, *, num_samples: int,
                         scale, distribution: str = "log_uniform", remove_accidental_hits: bool = True
                         ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Sampled-softmax estimate of `full_softmax_loss`: x [B, D], w [K, D], labels int [B]; O(B * S * D).

  One shared set of S negatives per batch, `sample_candidates(rng, num_samples, K, distribution)`; only the rows
  w[labels] and w[ids] are gathered (works with w sharded along K under jit: XLA inserts the collectives).
  Logits and masking as in `sampled_softmax_from_rows`. Biased but consistent (bias -> 0 as S grows).

  Note: `jax.grad` w.r.t. w is a dense [K, D] array (zero outside the gathered rows), so a dense optimiser step
  on W remains O(K); use `sampled_softmax_from_rows` with a sparse row update to avoid it.
  """
  num_classes = w.shape[0]
  ids, _ = sample_candidates(rng, num_samples, num_classes, distribution)
  labels = jnp.asarray(labels).astype(jnp.int32)
  return sampled_softmax_from_rows(x, w[labels], w[ids], labels, ids, num_classes=num_classes, scale=scale,
                                   distribution=distribution, remove_accidental_hits=remove_accidental_hits)
