r"""Benchmark: per-device memory and step time of the global-batch CLIP / SigLIP losses, plain vs chunked (ring).

  python bench/contrastive_memory.py                               # B = 256 ... 16384, D = 256, mesh (8, 1)
  python bench/contrastive_memory.py --large                       # also B = 65536 (compile only by default)
  python bench/contrastive_memory.py --batches=256,1024 --runs=3 --device_memory_gb=1

The default run takes about 5-6 minutes on 2 CPU cores (B = 16384 steps take 6-11 s each there); use
--run_max_batch=4096 for about 1.5 minutes.

For each loss (infonce: `contrastive_softmax.infonce_loss` / `ring_contrastive.ring_infonce`; sigmoid:
`contrastive_sigmoid.sigmoid_loss` / `ring_contrastive.ring_sigmoid`), form (plain, chunked) and global batch, a
worker process (XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX starts) compiles `value_and_grad`
of the loss with respect to both embeddings and the scalars, for float32 [B, D] inputs sharded over `data` of an
(8, 1) mesh, and reports `compiled.memory_analysis()`.

Memory figures are PER DEVICE: the compiled program is the SPMD-partitioned per-device module; the worker checks
that its argument bytes equal one device's shards (2 * B/8 * D * 4 bytes of embeddings, B/8 * 4 of ids, and the
scalars), not the global arrays, and reports "per_device": true/false. "Peak" = temp + argument + output bytes
(an upper bound: XLA:CPU's temp is one preallocated block sized by its buffer assignment).

A setting whose peak exceeds --device_memory_gb (standing for an accelerator's HBM; default 16) is reported as
"does not fit" and not run. One that fits is run (warm-up, then --runs timed steps; the median is reported) unless
B > --run_max_batch ("compiled only"; 8 fake devices share the host's cores, so big batches are slow on a CPU) or
all 8 devices' peaks together exceed 80% of host memory ("host"). A worker that crashes, is killed or passes
--timeout is reported as failed with the reason. On a CPU host step times measure the work, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8


def _worker(loss: str, form: str, batch: int, dim: int, runs: int, run_max_batch: int,
            device_memory_gb: float) -> dict:
  sys.path.insert(0, REPO)
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  from xmodal_jax.objectives import contrastive_sigmoid, contrastive_softmax, ring_contrastive
  from xmodal_jax.train.sharding import create_mesh

  mesh = create_mesh((DEVICES, 1))
  rows, cols = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  if loss == "sigmoid":
    fn = (contrastive_sigmoid.sigmoid_loss if form == "plain"
          else functools.partial(ring_contrastive.ring_sigmoid, mesh=mesh))
    argnums, scalars = (0, 1, 2, 3), (np.float32(np.log(10.0)), np.float32(-10.0))
  else:
    base = (contrastive_softmax.infonce_loss if form == "plain"
            else functools.partial(ring_contrastive.ring_infonce, mesh=mesh))
    fn = lambda x, y, s, ids: base(x, y, s, ids)  # noqa: E731
    argnums, scalars = (0, 1, 2), (np.float32(np.log(1 / 0.07)),)
  step = jax.jit(jax.value_and_grad(fn, argnums=argnums, has_aux=True))
  emb = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
  ids = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=rows)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=cols)
  t0 = time.perf_counter()
  compiled = step.lower(emb, emb, *([scalar] * len(scalars)), ids).compile()
  compile_s = time.perf_counter() - t0
  stats = compiled.memory_analysis()
  peak = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
  shard_args = (2 * batch * dim * 4 + batch * 4) // DEVICES + 4 * len(scalars)
  result = {"loss": loss, "form": form, "batch": batch, "dim": dim, "compile_s": compile_s,
            "temp_bytes": stats.temp_size_in_bytes, "argument_bytes": stats.argument_size_in_bytes,
            "output_bytes": stats.output_size_in_bytes, "alias_bytes": stats.alias_size_in_bytes,
            "peak_bytes": peak, "per_device": stats.argument_size_in_bytes == shard_args,
            "platform": jax.devices()[0].platform, "step_s": None}
  host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  if peak > device_memory_gb * 2**30:
    return dict(result, status="does not fit")
  if batch > run_max_batch:
    return dict(result, status="compiled only")
  if DEVICES * peak > 0.8 * host_bytes:
    return dict(result, status="host")

  @functools.partial(jax.jit, out_shardings=(rows, rows, rows))
  def make_inputs(key):
    kx, ky, ki = jax.random.split(key, 3)
    x = jax.random.normal(kx, (batch, dim), jnp.float32)
    y = x + jax.random.normal(ky, (batch, dim), jnp.float32)  # correlated pairs
    image_ids = jax.random.randint(ki, (batch,), 0, max(batch * 3 // 4, 1))  # some images captioned twice
    unit = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    return unit(x), unit(y), image_ids.astype(jnp.int32)

  x, y, image_ids = make_inputs(jax.random.PRNGKey(0))
  args = (x, y, *(jax.device_put(s, cols) for s in scalars), image_ids)
  jax.block_until_ready(compiled(*args))  # warm-up: first execution faults in buffers
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return dict(result, status="ok", step_s=float(np.median(times)),
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _run_setting(args, loss: str, form: str, batch: int) -> dict:
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}", TF_CPP_MIN_LOG_LEVEL="2")
  env.setdefault("JAX_PLATFORMS", "cpu")
  cmd = [sys.executable, __file__, f"--worker={loss}:{form}:{batch}", f"--dim={args.dim}", f"--runs={args.runs}",
         f"--run_max_batch={args.run_max_batch}", f"--device_memory_gb={args.device_memory_gb}"]
  failed = {"loss": loss, "form": form, "batch": batch, "status": "failed"}
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=args.timeout)
  except subprocess.TimeoutExpired:
    return dict(failed, reason=f"timeout after {args.timeout} s")
  if proc.returncode:
    if proc.returncode < 0:
      reason = f"killed by {signal.Signals(-proc.returncode).name}"
    else:
      lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
      reason = f"exit {proc.returncode}: {lines[-1][:200] if lines else 'no output'}"
    return dict(failed, reason=reason)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _cell(row: dict | None) -> tuple[str, str]:
  """(peak MiB, step / status) columns of one setting."""
  if row is None:
    return "-", "-"
  if row["status"] == "failed":
    return "-", f"failed ({row['reason']})"
  peak = f"{row['peak_bytes'] / 2**20:.1f}"
  if row["status"] == "ok":
    return peak, f"{row['step_s'] * 1e3:.1f} ms, RSS {row['peak_rss_mb']:,.0f} MB"
  return peak, {"does not fit": "does not fit", "compiled only": "compiled only",
                "host": "not run (host memory)"}[row["status"]]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batches", default="256,1024,4096,16384", help="comma list of global batch sizes")
  parser.add_argument("--large", action="store_true", help="also B = 65536")
  parser.add_argument("--losses", default="infonce,sigmoid")
  parser.add_argument("--dim", type=int, default=256)
  parser.add_argument("--runs", type=int, default=5, help="timed steps per setting (median reported)")
  parser.add_argument("--run_max_batch", type=int, default=16384, help="compile only (no timing) above this batch")
  parser.add_argument("--device_memory_gb", type=float, default=16.0, help="per-device budget (an accelerator's HBM)")
  parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    loss, form, batch = args.worker.split(":")
    print(json.dumps(_worker(loss, form, int(batch), args.dim, args.runs, args.run_max_batch,
                             args.device_memory_gb)))
    return
  batches = [int(b) for b in args.batches.split(",")] + ([65536] if args.large else [])
  bad = [b for b in batches if b % DEVICES]
  if bad:
    sys.exit(f"--batches {bad} not divisible by the {DEVICES} devices of the data axis")
  rows = {}
  for loss in args.losses.split(","):
    for batch in batches:
      for form in ("plain", "chunked"):
        t0 = time.perf_counter()
        rows[loss, form, batch] = row = _run_setting(args, loss, form, batch)
        print(f"  {loss:>7} {form:>7} B={batch:<6} {row['status']} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
  done = [r for r in rows.values() if r["status"] != "failed"]
  platform = done[0]["platform"] if done else "?"
  per_device = all(r["per_device"] for r in done)
  print(f"value_and_grad, D={args.dim}, float32, mesh (data={DEVICES}, model=1), platform {platform}, "
        f"{os.cpu_count()} cores; peak = temp + argument + output bytes per device "
        f"({'checked per device' if per_device else 'NOT verified per device'}), budget {args.device_memory_gb} GB")
  print(f"{'loss':>8} {'batch':>6} | {'plain MiB':>10} {'plain step':>18} | {'chunked MiB':>11} {'chunked step':>18} "
        f"| {'plain/chunked':>13}")
  for loss in args.losses.split(","):
    for batch in batches:
      plain, chunked = rows[loss, "plain", batch], rows[loss, "chunked", batch]
      ratio = (f"{plain['peak_bytes'] / chunked['peak_bytes']:.1f}x"
               if "peak_bytes" in plain and "peak_bytes" in chunked else "-")
      (pm, ps), (cm, cs) = _cell(plain), _cell(chunked)
      print(f"{loss:>8} {batch:>6} | {pm:>10} {ps:>18} | {cm:>11} {cs:>18} | {ratio:>13}")


if __name__ == "__main__":
  main()
