r"""Benchmark: the library's CLIP train step against open_clip's on the same architecture, same machine, same run.

  bash ../shared/tools/peer_openclip_setup.sh        # once: /tmp/peer-openclip-venv (CPU torch + open-clip-torch)
  python bench/clip_step.py                          # reference config, 3 alternating rounds
  python bench/clip_step.py --rounds=5 --batch=256 --variants=ours,ours_no_host_memory,ours_bf16

Reference (issue 12): ViT 64 px / patch 8 / width 192 / depth 4 / 3 heads, text context 32 / width 192 / depth 4 /
3 heads, embed 192, vocab 8192, batch 128, fp32, 2 threads. Both sides: random images and full-length random tokens,
InfoNCE with a learnable clamped temperature, AdamW (betas 0.9/0.98, weight decay 0.2 on matrices), warm-up +
cosine schedule, no gradient clipping; the loss is read back every step. Ours is the `clip` task's real jitted step
(trainer.make_train_step: the task's loss, the NaN guard, the metrics); open_clip's is its own training step, timed
by ../shared/tools/peer_openclip_bench.py (called, not copied).

Each measurement is its own process, and the variants alternate round by round (the machine's speed drifts: compare
within a round). Printed per variant: median samples/s over the rounds, min/max, step-time spread, page faults per
step (ours), peak RSS, and the ratio to open_clip (median of the per-round ratios).

Variants (xmodal_jax/host_memory.py): ours (default settings, started with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 as
launch/env.sh / host_memory.reexec_with_huge_pages start a run: XLA's per-step arena in 2 MiB pages, returned every
step), ours_kept_heap (no tunable: the mallopt kept heap with its trimmer), ours_no_host_memory
(XMODAL_KEEP_HOST_MEMORY=0: plain glibc, the arena mapped and zeroed in 4 KiB pages every step), ours_memory_scheduler
(as ours with XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false: a 1.00 GB arena instead of 1.35 GB,
measured slower), ours_bf16 (model.dtype=bfloat16), openclip. Peak RSS: ru_maxrss of the worker (ours) / /usr/bin/time %M (open_clip).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(os.path.dirname(REPO), "shared", "tools", "peer_openclip_bench.py")
PEER_PYTHON = "/tmp/peer-openclip-venv/bin/python"


def _config(args):
  """The clip task config of the reference architecture (configs/clip/common.py)."""
  sys.path.insert(0, REPO)  # the configs package
  from configs.clip import common  # pylint: disable=import-outside-toplevel
  data = common.data("shapes", num_train=args.batch, num_val=8, num_test=8, image_size=args.image_size,
                     max_len=args.context)
  config = common.clip_config(
      data, loss="infonce", embed_dim=args.width,
      image=common.vit(patch_size=args.patch, width=args.width, depth=args.depth, num_heads=args.heads),
      text=common.text_transformer(width=args.width, depth=args.depth, num_heads=args.heads,
                                   vocab_size=args.vocab))
  config.optimizer.update(learning_rate=5e-4, grad_clip_norm=0.0, warmup_steps=max(1, (args.warmup + args.steps) // 10))
  config.train.update(batch_size=args.batch, num_steps=args.warmup + args.steps)
  config.mesh.shape = (1, 1)
  config.evals = common.evals(("val",), every=0, zero_shot=False)
  return config


def _worker(args) -> dict:
  """One timing of the library's step in this process."""
  from xmodal_jax import host_memory  # pylint: disable=import-outside-toplevel
  host_memory.keep_freed_memory()  # as `xmodal` does at start-up, before JAX starts its threads
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from xmodal_jax import systems  # pylint: disable=import-outside-toplevel
  from xmodal_jax.train import sharding, trainer  # pylint: disable=import-outside-toplevel

  config = _config(args)
  if args.worker == "ours_bf16":
    config.model.dtype = "bfloat16"
  task = systems.create(config, f"/tmp/xmodal_bench_clip_{os.getpid()}")
  setup = trainer.build(task, jax.devices()[:1])
  step = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  host = {"images": rng.integers(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=np.uint8),
          "tokens": rng.integers(1, args.vocab, (args.batch, args.context), dtype=np.int32),
          "mask": np.ones((args.batch, args.context), np.int32),
          "image_ids": np.arange(args.batch, dtype=np.int64)}
  batch = sharding.global_batch_from_host(host, setup.mesh)
  first_bad = jax.numpy.array(-1, jax.numpy.int32)
  start = time.perf_counter()
  compiled = step.lower(state, setup.frozen, first_bad, batch).compile()
  compile_s = time.perf_counter() - start
  times, losses, faults = [], [], []
  for i in range(args.warmup + args.steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    state, first_bad, metrics = compiled(state, setup.frozen, first_bad, batch)
    losses.append(float(metrics["loss"]))  # read back every step, as open_clip's loss.item()
    times.append(time.perf_counter() - start)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  timed = times[args.warmup:]
  median = statistics.median(timed)
  return {"samples_per_s": args.batch / median, "step_s": {"median": median, "min": min(timed), "max": max(timed)},
          "faults_per_step": statistics.median(faults[args.warmup:]), "compile_s": compile_s,
          "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
          "loss_first_last": [losses[0], losses[-1]], "host_memory": host_memory.mode(),
          "trims": host_memory.trims(),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _peer_config(args) -> str:
  return json.dumps({"embed_dim": args.width,
                     "vision_cfg": {"image_size": args.image_size, "patch_size": args.patch, "width": args.width,
                                    "layers": args.depth, "heads": args.heads, "mlp_ratio": 4.0},
                     "text_cfg": {"context_length": args.context, "vocab_size": args.vocab, "width": args.width,
                                  "heads": args.heads, "layers": args.depth, "mlp_ratio": 4.0}})


def _run(variant: str, args) -> dict:
  if variant == "openclip":
    cmd = ["/usr/bin/time", "-f", "PEAK_RSS_KB %M", args.peer_python, args.peer_script, "--batch-size",
           str(args.batch), "--threads", str(args.threads), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--config", _peer_config(args)]
    env = dict(os.environ)
  else:
    cmd = [sys.executable, os.path.abspath(__file__), f"--worker={variant}",
           *[f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "variants", "rounds")
             and v is not None]]
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb")]
    if variant in ("ours", "ours_bf16", "ours_memory_scheduler"):
      tunables.append("glibc.malloc.hugetlb=1")
    if tunables:
      env["GLIBC_TUNABLES"] = ":".join(tunables)
    else:
      env.pop("GLIBC_TUNABLES", None)
    if variant == "ours_no_host_memory":
      env["XMODAL_KEEP_HOST_MEMORY"] = "0"
    if variant == "ours_memory_scheduler":
      env["XLA_FLAGS"] = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
  if proc.returncode:
    sys.exit(f"{variant} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  if variant == "openclip":
    rss = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    out["peak_rss_mb"] = int(rss[-1].split()[1]) / 1024 if rss else float("nan")
    out["faults_per_step"] = None
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default="ours,ours_kept_heap,ours_no_host_memory,openclip")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--patch", type=int, default=8)
  parser.add_argument("--width", type=int, default=192)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--heads", type=int, default=3)
  parser.add_argument("--context", type=int, default=32)
  parser.add_argument("--vocab", type=int, default=8192)
  parser.add_argument("--threads", type=int, default=2, help="open_clip's torch threads (XLA uses every core)")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--peer_python", default=PEER_PYTHON)
  parser.add_argument("--peer_script", default=PEER_SCRIPT)
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(_worker(args)))
    return
  variants = args.variants.split(",")
  if "openclip" in variants and not os.path.exists(args.peer_python):
    sys.exit(f"{args.peer_python} not found: run `bash ../shared/tools/peer_openclip_setup.sh` first (or drop "
             "openclip from --variants).")
  results: dict[str, list[dict]] = {v: [] for v in variants}
  for r in range(args.rounds):
    for variant in variants:
      out = _run(variant, args)
      results[variant].append(out)
      print(f"round {r + 1}/{args.rounds} {variant:>20}: {out['samples_per_s']:7.1f} samples/s, peak RSS "
            f"{out['peak_rss_mb']:.0f} MB" + (f" ({out['host_memory']}, {out['trims']} trims)" if "trims" in out else ""),
            flush=True)
  print(f"\nbatch {args.batch}, ViT {args.image_size}px/patch {args.patch}, width {args.width}, depth {args.depth}, "
        f"heads {args.heads}, text context {args.context}, vocab {args.vocab}, fp32 unless named; "
        f"{os.cpu_count()} cores; {args.rounds} rounds x {args.steps} timed steps")
  header = (f"{'variant':>20} {'samples/s':>10} {'min':>7} {'max':>7} {'faults/step':>12} {'peak RSS MB':>12} "
            f"{'vs open_clip':>13} {'RSS vs open_clip':>17}")
  print(header)
  peer = results.get("openclip")
  for variant, runs in results.items():
    sps = [o["samples_per_s"] for o in runs]
    ratio = ""
    if peer and variant != "openclip":
      ratios = [o["samples_per_s"] / p["samples_per_s"] for o, p in zip(runs, peer)]
      ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    rss_ratio = ""
    if peer and variant != "openclip":
      rss_ratio = f"{statistics.median(o['peak_rss_mb'] / p['peak_rss_mb'] for o, p in zip(runs, peer)):.2f}x"
    faults = runs[0]["faults_per_step"]
    faults = "-" if faults is None else f"{statistics.median(o['faults_per_step'] for o in runs):.0f}"
    print(f"{variant:>20} {statistics.median(sps):>10.1f} {min(sps):>7.1f} {max(sps):>7.1f} {faults:>12} "
          f"{statistics.median(o['peak_rss_mb'] for o in runs):>12.0f} {ratio:>13} {rss_ratio:>17}")
  ours = results.get("ours", [{}])[0]
  if ours:
    print(f"\nours: {ours['params']:,} params, compile {ours['compile_s']:.1f}s, loss {ours['loss_first_last']}; "
          f"open_clip: {peer[0]['params']:,} params" if peer else "")


if __name__ == "__main__":
  main()
