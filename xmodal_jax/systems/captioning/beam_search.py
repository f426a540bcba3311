"""Beam search over a decoder's cache, batched, EOS-aware, with the GNMT length penalty, compiled with jit.

The step function is that of systems/captioning/sampling.py, over `batch * beam_size` rows (row b * beam_size + j is beam j of
caption b). Each step extends every live beam by every token and keeps, per caption, the `beam_size` best
candidates by

  score(y) = log p(y) / lp(|y|),   lp(n) = ((5 + n) / 6) ** alpha     (Wu et al. 2016, eq. 14; alpha = 0: log p)

where |y| counts the words and the <eos>. A beam that has produced <eos> stays a candidate as it is (extended by
<pad> at log-probability 0, its length frozen), so it competes with the longer live beams by the same score.
The cache rows are reordered to follow the surviving beams (every cache leaf whose leading axis is
batch * beam_size is gathered; scalars such as the cache index are shared). With beam_size 1 this is greedy
decoding exactly. Stops when every beam of every caption has ended, or after `max_len` tokens.

Output: (tokens int32 [batch, max_len] of the best beam, laid out as systems/captioning/sampling.py's, score float32 [batch]).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from xmodal_jax.systems.captioning.sampling import NEG_INF, StepFn


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT's lp(n) = ((5 + n) / 6) ** alpha."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _reorder(cache: Any, rows: jax.Array, total: int) -> Any:
  """Gather the cache's per-row leaves (leading axis `total`) at `rows` [total]."""
  return jax.tree.map(lambda x: x[rows] if x.ndim and x.shape[0] == total else x, cache)


def beam_search(step_fn: StepFn, cache: Any, batch: int, beam_size: int, max_len: int, *, bos_id: int, eos_id: int,
                pad_id: int = 0, alpha: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """See the module docstring. `cache` must be initialised for batch * beam_size rows."""
  k, total = beam_size, batch * beam_size

  def cond(carry):
    t, _, _, _, _, finished = carry
    return (t < max_len) & ~jnp.all(finished)

  def body(carry):
    t, seqs, logp, lengths, cache, finished = carry
    previous = jnp.where(t == 0, bos_id, seqs[:, :, jnp.maximum(t - 1, 0)]).reshape(total, 1)
    logits, cache = step_fn(previous, cache, t)
    vocab = logits.shape[-1]
    token_logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
    # A finished beam's only continuation is <pad> at log p 0.
    pad_only = jnp.full((vocab,), NEG_INF).at[pad_id].set(0.0)
    token_logp = jnp.where(finished[..., None], pad_only, token_logp)
    candidate_logp = (logp[..., None] + token_logp).reshape(batch, k * vocab)
    candidate_len = jnp.where(finished, lengths, t + 1)[..., None].repeat(vocab, axis=-1).reshape(batch, k * vocab)
    score = candidate_logp / length_penalty(candidate_len, alpha)
    _, best = jax.lax.top_k(score, k)                               # [batch, k]
    origin, token = best // vocab, (best % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(seqs, origin[..., None], axis=1)
    seqs = jax.lax.dynamic_update_slice_in_dim(seqs, token[..., None], t, axis=2)
    logp = jnp.take_along_axis(candidate_logp, best, axis=1)
    lengths = jnp.take_along_axis(candidate_len, best, axis=1)
    was_finished = jnp.take_along_axis(finished, origin, axis=1)
    finished = was_finished | (token == eos_id)
    rows = (jnp.arange(batch)[:, None] * k + origin).reshape(total)
    return t + 1, seqs, logp, lengths, _reorder(cache, rows, total), finished

  seqs = jnp.full((batch, k, max_len), pad_id, jnp.int32)
  # Only beam 0 is live at the start (the others would duplicate it).
  logp = jnp.where(jnp.arange(k)[None] == 0, 0.0, NEG_INF).repeat(batch, axis=0).astype(jnp.float32)
  init = (jnp.zeros((), jnp.int32), seqs, logp, jnp.zeros((batch, k), jnp.int32), cache,
          jnp.zeros((batch, k), bool))
  _, seqs, logp, lengths, _, _ = jax.lax.while_loop(cond, body, init)
  final = logp / length_penalty(lengths, alpha)
  best = jnp.argmax(final, axis=1)
  return (jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0],
          jnp.take_along_axis(final, best[:, None], axis=1)[:, 0])
