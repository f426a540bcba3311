"""Autoregressive decoding by greedy choice or sampling, batched, EOS-aware, compiled with jit.

A decoder is driven through a step function over its key/value (or hidden-state) cache:

  step_fn(tokens [batch, 1] int32, cache, position int32 []) -> (logits [batch, vocab] float32, new cache)

(`position` = the index of `tokens` in the caption, 0 for <bos>). `recompute_fn(tokens [batch, L]) -> logits
[batch, L, vocab]` is the cache-free alternative: every step runs the whole prefix again (O(L^2) work per caption;
kept as the reference and for `bench/decode.py`'s comparison).

Sampling (Holtzman et al. 2020 for nucleus): logits / temperature, then keep the `top_k` most probable tokens (0 =
all) and the smallest set whose probability reaches `top_p` (1.0 = all), renormalise and draw. `greedy=True` takes
the argmax. A caption that has produced <eos> emits <pad> from then on; the loop stops when every caption has
ended or after `max_len` tokens.

Output: tokens int32 [batch, max_len]: the generated words, then <eos> (when it fits), then <pad> (0).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]
NEG_INF = -1e9


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """[batch, vocab] -> [batch, vocab] logits with the tokens outside the top-k / nucleus set at NEG_INF."""
  logits = logits.astype(jnp.float32) / max(float(temperature), 1e-6)
  vocab = logits.shape[-1]
  if 0 < top_k < vocab:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep a token if the probability mass before it is < top_p (so the most probable token is always kept).
    keep_sorted = (cumulative - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, NEG_INF)
  return logits


def _choose(logits, rng, greedy, temperature, top_k, top_p):
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, temperature=temperature, top_k=top_k,
                                                   top_p=top_p)).astype(jnp.int32)


def sample(step_fn: StepFn, cache: Any, batch: int, max_len: int, rng: jax.Array, *, bos_id: int, eos_id: int,
           pad_id: int = 0, greedy: bool = False, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0) -> jax.Array:
  """Captions of `batch` rows through the cache (see the module docstring) -> int32 [batch, max_len]."""

  def cond(carry):
    t, _, _, finished, _ = carry
    return (t < max_len) & ~jnp.all(finished)

  def body(carry):
    t, out, cache, finished, rng = carry
    previous = jnp.where(t == 0, bos_id, out[:, jnp.maximum(t - 1, 0)])
    logits, cache = step_fn(previous[:, None], cache, t)
    rng, key = jax.random.split(rng)
    token = jnp.where(finished, pad_id, _choose(logits, key, greedy, temperature, top_k, top_p))
    out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], t, axis=1)
    return t + 1, out, cache, finished | (token == eos_id), rng

  out = jnp.full((batch, max_len), pad_id, jnp.int32)
  init = (jnp.zeros((), jnp.int32), out, cache, jnp.zeros((batch,), bool), rng)
  return jax.lax.while_loop(cond, body, init)[1]


def sample_recomputing(recompute_fn: Callable[[jax.Array], jax.Array], batch: int, max_len: int, rng: jax.Array, *,
                       bos_id: int, eos_id: int, pad_id: int = 0, greedy: bool = False, temperature: float = 1.0,
                       top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """The same captions as `sample` without a cache: each step runs the decoder over the whole prefix buffer
  [batch, max_len] (causal attention makes the padding after position t irrelevant to position t)."""

  def cond(carry):
    t, _, finished, _ = carry
    return (t < max_len) & ~jnp.all(finished)

  def body(carry):
    t, out, finished, rng = carry
    inputs = jnp.concatenate([jnp.full((batch, 1), bos_id, jnp.int32), out[:, :-1]], axis=1)
    logits = jax.lax.dynamic_index_in_dim(recompute_fn(inputs), t, axis=1, keepdims=False)
    rng, key = jax.random.split(rng)
    token = jnp.where(finished, pad_id, _choose(logits, key, greedy, temperature, top_k, top_p))
    out = jax.lax.dynamic_update_slice_in_dim(out, token[:, None], t, axis=1)
    return t + 1, out, finished | (token == eos_id), rng

  out = jnp.full((batch, max_len), pad_id, jnp.int32)
  return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), out, jnp.zeros((batch,), bool), rng))[1]


def caption_mask(tokens: jax.Array, eos_id: int, pad_id: int = 0, *, include_eos: bool = True) -> jax.Array:
  """tokens [batch, len] (decoded) -> bool [batch, len]: the positions up to the first <eos> (inclusive when
  `include_eos`: the tokens the policy chose, SCST's sum over t), never <pad>."""
  is_eos = tokens == eos_id
  before_eos = jnp.cumsum(is_eos.astype(jnp.int32), axis=1) - is_eos.astype(jnp.int32) == 0
  keep = before_eos & (tokens != pad_id)
  return keep if include_eos else keep & ~is_eos


def words_only(tokens: jax.Array, eos_id: int, pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Decoded tokens [batch, len] -> (tokens with <eos> and everything after it set to <pad>, mask) — the layout
  of the library's text encoders (words only, right-padded)."""
  mask = caption_mask(tokens, eos_id, pad_id, include_eos=False)
  return jnp.where(mask, tokens, pad_id), mask
