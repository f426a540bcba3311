r"""Benchmark: full vs sampled softmax over K queries (system S1, seed eq. 1) and top-k phrase lookup.

  python bench/s1_softmax.py                                    # K = 1,000,000, D = 64, batch 128, S = 1024
  python bench/s1_softmax.py --num_classes=100000,1000000 --steps=5

For each K, times (median of --steps runs after --warmup, block_until_ready) and memory of:
  full loss+grad      full_softmax_loss, grad w.r.t. (x, W)                               O(B K D)
  sampled loss+grad   sampled_softmax_loss, grad w.r.t. (x, W); dense [K, D] grad of W     O(B S D) + O(K D) zeros
  full adamw step     the above + optax.adamw on W (W and the Adam state donated)          dense update: O(K D)
  sampled adamw step  likewise with the sampled loss                                      dense update: O(K D)
  sampled sparse Ada. grad w.r.t. the gathered rows only, row-wise Adagrad on them in place
                      (train/sparse_rows.row_adagrad + apply_updates: what query_update="sparse_adagrad" runs)  O((B+S) D), flat in K
  top-k lookup        top_queries, exact (lax.top_k) vs approx (lax.approx_max_k), k=3, batch B and 1

Memory is the compiled executable's `memory_analysis()`: `temp` = XLA scratch buffers; `total` = temp + arguments
+ outputs - aliased (donated) bytes, i.e. what the step needs on the device, W and optimiser state included.
Runs on the default JAX backend (CPU here; set JAX_PLATFORMS to choose).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from xmodal_jax.systems.classifier import phrase_lookup as pl  # pylint: disable=wrong-import-position
from xmodal_jax.systems.classifier import sampled_softmax as ss  # pylint: disable=wrong-import-position
from xmodal_jax.train import sparse_rows  # pylint: disable=wrong-import-position
from peak_rss import peak_rss_mb  # pylint: disable=wrong-import-position  # bench/peak_rss.py

MB = 2.0 ** 20


def _memory(compiled) -> tuple[float, float]:
  """(temp MB, total MB) from `memory_analysis()`, or (nan, nan) where the backend has none."""
  try:
    m = compiled.memory_analysis()
    temp = m.temp_size_in_bytes
    total = temp + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return temp / MB, total / MB
  except Exception:  # pylint: disable=broad-except
    return float("nan"), float("nan")


def _time(fn, args, steps: int, warmup: int, feedback: int = 0) -> tuple[float, float, float, float]:
  """Compile `fn` (jitted) for `args`; returns (compile s, median step s, temp MB, total MB).

  With `feedback` = n, the first n outputs replace the first n arguments after each call (donated state).
  """
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  temp, total = _memory(compiled)
  args = list(args)
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    if i >= warmup:
      times.append(time.perf_counter() - t0)
    if feedback:
      args[:feedback] = out[:feedback]
  return compile_s, statistics.median(times), temp, total


def _bench_k(num_classes: int, args) -> list[dict]:
  dim, batch, num_samples, scale, lr = args.dim, args.batch, args.num_samples, args.scale, args.lr
  r = np.random.default_rng(0)
  x = jnp.asarray(r.normal(size=(batch, dim)), jnp.float32)
  labels = jnp.asarray(np.minimum(r.zipf(1.3, size=batch) - 1, num_classes - 1), jnp.int32)
  rng = jax.random.PRNGKey(0)
  new_w = lambda: jax.random.normal(jax.random.PRNGKey(1), (num_classes, dim), jnp.float32)
  w = new_w()

  full_loss = lambda x, w: ss.full_softmax_loss(x, w, labels, scale)
  sampled_loss = lambda x, w, rng: ss.sampled_softmax_loss(x, w, labels, rng, num_samples=num_samples, scale=scale)
  full_grad = jax.jit(jax.value_and_grad(full_loss, argnums=(0, 1), has_aux=True))
  sampled_grad = jax.jit(jax.value_and_grad(sampled_loss, argnums=(0, 1), has_aux=True))

  opt = optax.adamw(lr)

  def adam_step(loss_fn):
    def step(w, opt_state, x, rng):
      (loss, _), (gx, gw) = jax.value_and_grad(lambda x, w: loss_fn(x, w, rng), argnums=(0, 1), has_aux=True)(x, w)
      updates, opt_state = opt.update(gw, opt_state, w)
      return optax.apply_updates(w, updates), opt_state, loss, gx
    return jax.jit(step, donate_argnums=(0, 1))

  full_adam = adam_step(lambda x, w, rng: full_loss(x, w))
  sampled_adam = adam_step(sampled_loss)

  row_tx = sparse_rows.row_adagrad(lr)  # the optax transformation S1's sparse_adagrad option trains W with

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def sparse_adagrad(w, row_state, x, rng):
    ids, _ = ss.sample_candidates(rng, num_samples, num_classes)
    rows_ids = jnp.concatenate([labels, ids])
    rows = w[rows_ids]  # [B + S, D]: the only rows read or written

    def loss_fn(x, rows):
      return ss.sampled_softmax_from_rows(x, rows[:batch], rows[batch:], labels, ids, num_classes=num_classes,
                                          scale=scale)
    (loss, _), (gx, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(x, rows)
    updates, row_state = row_tx.update({"w": sparse_rows.RowSparseGrad(rows_ids, g_rows)}, row_state)
    return sparse_rows.apply_updates({"w": w}, updates)["w"], row_state, loss, gx

  rows = []

  def add(name, fn, fn_args, feedback=0):
    compile_s, step_s, temp, total = _time(fn, fn_args, args.steps, args.warmup, feedback)
    rows.append(dict(K=num_classes, name=name, compile_s=compile_s, step_s=step_s, temp=temp, total=total,
                     rss=peak_rss_mb()))
    print(f"  done K={num_classes:,} {name}: {step_s * 1e3:.1f} ms", file=sys.stderr, flush=True)

  add("full loss+grad", full_grad, (x, w))
  add("sampled loss+grad", sampled_grad, (x, w, rng))
  add("full adamw step", full_adam, (w, opt.init(w), x, rng), feedback=2)
  w = new_w()  # the previous one was donated
  add("sampled adamw step", sampled_adam, (w, opt.init(w), x, rng), feedback=2)
  w = new_w()
  add("sampled sparse Adagrad step", sparse_adagrad, (w, row_tx.init({"w": w}), x, rng), feedback=2)
  w = new_w()
  for method in ("exact", "approx"):
    for b in (batch, 1):
      fn = jax.jit(lambda x, w, method=method: pl.top_queries(x, w, args.topk, method=method))
      add(f"top-{args.topk} {method}, batch {b}", fn, (x[:b], w))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_classes", default="1000000", help="comma list of K (number of queries)")
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--num_samples", type=int, default=1024)
  parser.add_argument("--scale", type=float, default=10.0)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--topk", type=int, default=3)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()
  rows = []
  for k in args.num_classes.split(","):
    rows += _bench_k(int(k), args)

  dev = jax.devices()[0]
  print(f"D={args.dim} batch={args.batch} S={args.num_samples} k={args.topk}  ({dev.platform}: {dev.device_kind}, "
        f"{jax.device_count()} device(s), {os.cpu_count()} cores; median of {args.steps} after {args.warmup} warm-up)")
  print("memory: compiled memory_analysis(); temp = XLA scratch, total = temp + args + outputs - donated\n")
  print("| K | variant | compile s | step ms | temp MB | total MB | peak RSS MB (so far) |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for row in rows:
    print(f"| {row['K']:,} | {row['name']} | {row['compile_s']:.2f} | {row['step_s'] * 1e3:.2f} | "
          f"{row['temp']:.1f} | {row['total']:.1f} | {row['rss']:,.0f} |")
  print()
  by = {(row["K"], row["name"]): row for row in rows}
  pairs = [("full loss+grad", "sampled loss+grad"), ("full adamw step", "sampled adamw step"),
           ("full adamw step", "sampled sparse Adagrad step"), ("sampled adamw step", "sampled sparse Adagrad step")]
  pairs += [(f"top-{args.topk} exact, batch {b}", f"top-{args.topk} approx, batch {b}") for b in (args.batch, 1)]
  print("| K | ratio | time | temp mem | total mem |")
  print("|---:|---|---:|---:|---:|")
  for k in sorted({row["K"] for row in rows}):
    for a, b in pairs:
      ra, rb = by[(k, a)], by[(k, b)]
      print(f"| {k:,} | {a} / {b} | {ra['step_s'] / rb['step_s']:.1f}x | "
            f"{ra['temp'] / max(rb['temp'], 1e-6):.1f}x | {ra['total'] / rb['total']:.1f}x |")


if __name__ == "__main__":
  main()
