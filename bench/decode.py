r"""S5 decoding speed: tokens/s of greedy decoding through the KV cache vs recomputing the whole prefix each step, at
caption lengths 16 and 32, and beam search of width 1 vs 3 (cached), on this machine's devices.

  python bench/decode.py                       # transformer decoder (width 256, depth 3, vocab 5,000), batch 64
  python bench/decode.py --decoder=gru --batch=128 --rounds=5

The decoder has random weights (speed does not depend on training) and <eos> is masked out of its logits, so every
caption runs to the full length; the image context is a 7 x 7 grid of the decoder's width (EfficientNet-Lite's grid).
Figures: median over rounds of tokens generated / wall time, after a compile-and-warm-up call (beam search: the
best beam's tokens, i.e. output tokens / s).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tabulate import tabulate  # noqa: E402

from xmodal_jax.models.caption_decoder import build_decoder  # noqa: E402
from xmodal_jax.systems.captioning import beam_search, sampling  # noqa: E402
from peak_rss import peak_rss_mb  # noqa: E402  # bench/peak_rss.py

EOS = 3


def _decoder_fns(kind: str, vocab: int, length: int, width: int, depth: int):
  """(params, step_fn factory, recompute_fn factory, empty cache factory) of a random decoder."""
  fields = dict(vocab_size=vocab, max_len=length, width=width, depth=depth, num_heads=4, dropout_rate=0.0)
  model, decoder = build_decoder(kind, **fields), build_decoder(kind, **fields, decode=True)
  context = jnp.zeros((1, 49, width))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, length), jnp.int32), context)["params"]
  no_eos = lambda logits: logits.at[..., EOS].set(-1e9)

  def step_fn(ctx):
    def step(tokens, cache, position):
      logits, mutated = decoder.apply({"params": params, "cache": cache}, tokens, ctx, positions=position,
                                      mutable=["cache"])
      return no_eos(logits[:, -1]), mutated["cache"]
    return step

  def empty_cache(ctx):
    shapes = jax.eval_shape(lambda: decoder.apply({"params": params}, jnp.zeros((ctx.shape[0], length), jnp.int32),
                                                  ctx, mutable=["cache"])[1]["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  recompute = lambda ctx: (lambda inputs: no_eos(model.apply({"params": params}, inputs, ctx)))
  return step_fn, recompute, empty_cache


def _time(fn, context, rounds: int) -> tuple[float, np.ndarray]:
  out = jax.block_until_ready(fn(context))  # compile + warm up
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(context))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), np.asarray(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--decoder", default="transformer", choices=["transformer", "gru"])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--vocab", type=int, default=5000)
  parser.add_argument("--width", type=int, default=256)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--lengths", default="16,32")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  rows = []
  context = jnp.asarray(np.random.default_rng(0).normal(size=(args.batch, 49, args.width)), jnp.float32)
  common = dict(bos_id=2, eos_id=EOS, pad_id=0)
  for length in [int(x) for x in args.lengths.split(",")]:
    step_fn, recompute, empty_cache = _decoder_fns(args.decoder, args.vocab, length, args.width, args.depth)
    key = jax.random.PRNGKey(0)
    cached = jax.jit(lambda c, n=length: sampling.sample(step_fn(c), empty_cache(c), c.shape[0], n, key, greedy=True,
                                                         **common))
    uncached = jax.jit(lambda c, n=length: sampling.sample_recomputing(recompute(c), c.shape[0], n, key, greedy=True,
                                                                       **common))

    def beam(c, k, n=length):
      beams = jnp.repeat(c, k, axis=0)
      return beam_search.beam_search(step_fn(beams), empty_cache(beams), c.shape[0], k, n, **common)[0]

    results = {}
    for name, fn in (("greedy, cached", cached), ("greedy, recomputing", uncached),
                     ("beam 1, cached", jax.jit(lambda c: beam(c, 1))), ("beam 3, cached", jax.jit(lambda c: beam(c, 3)))):
      seconds, tokens = _time(fn, context, args.rounds)
      generated = int(np.sum(tokens != 0))
      results[name] = generated / seconds
      rows.append([length, name, generated // args.batch, f"{seconds * 1000:.1f}", f"{results[name]:,.0f}",
                   f"{peak_rss_mb():,.0f}"])
    same = "yes" if np.array_equal(_time(cached, context, 1)[1], _time(uncached, context, 1)[1]) else "NO"
    rows.append([length, f"cached / recomputing: {results['greedy, cached'] / results['greedy, recomputing']:.2f}x; "
                         f"beam 1 / beam 3: {results['beam 1, cached'] / results['beam 3, cached']:.2f}x; "
                         f"cached == recomputing tokens: {same}", "", "", "", ""])
  print(f"S5 decoding, {args.decoder} decoder width {args.width} depth {args.depth}, vocab {args.vocab}, batch "
        f"{args.batch}, {jax.devices()[0].platform} x {jax.device_count()} ({os.cpu_count()} CPU cores)")
  print(tabulate(rows, headers=["length", "decoding", "tokens / caption", "ms / batch", "tokens / s",
                                   "peak RSS MB (so far)"],
                 tablefmt="pipe"))


if __name__ == "__main__":
  main()
