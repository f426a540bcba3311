r"""Benchmark: compile time and training throughput of a config's jitted train step.

  python bench/train_step.py                                   # default config, 1 device and 8 fake devices
  python bench/train_step.py --config=configs/retrieval/vsepp_shapes.py:tiny --steps=5
  python bench/train_step.py --meshes=1:1x1,8:2x4,8:8x1 -- --config.train.batch_size=256

Each setting runs in its own process (XLA_FLAGS must be set before JAX starts). On a CPU host, "8 fake
devices" split the same cores 8 ways: the figure measures sharding overhead, not a speed-up.
Prints one row per setting and the throughput ratio to the first row.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(config_path: str, mesh: str, steps: int, warmup: int, overrides: list[str]) -> dict:
  sys.path.insert(0, REPO)
  import jax
  from absl import flags
  from ml_collections import config_flags

  from xmodal_jax import systems
  from xmodal_jax.train import sharding, trainer

  argv = ["bench", f"--config={config_path}", f"--config.mesh.shape=({mesh.replace('x', ',')})", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  config = fv.config
  # Enough training images for the timed steps without generating the full default data set.
  needed = config.train.batch_size * (steps + warmup + 2)
  if "data.num_train" not in " ".join(overrides):
    config.data.num_train = min(config.data.num_train, needed)
  workdir = f"/tmp/xmodal_bench_{os.getpid()}"
  setup = trainer.build(systems.create(config, workdir))
  step_fn = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(config.seed))
  data = setup.task.train_iterator(process_index=0, process_count=1)
  first_bad = jax.numpy.array(-1, jax.numpy.int32)
  batch = sharding.global_batch_from_host(next(data), setup.mesh)
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, setup.frozen, first_bad, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):  # first executions fault in buffers; not representative of steady state
    state, first_bad, metrics = compiled(state, setup.frozen, first_bad,
                                         sharding.global_batch_from_host(next(data), setup.mesh))
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, first_bad, metrics = compiled(state, setup.frozen, first_bad,
                                         sharding.global_batch_from_host(next(data), setup.mesh))
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - t0
  return {"devices": jax.device_count(), "mesh": dict(setup.mesh.shape), "batch": config.train.batch_size,
          "compile_s": compile_s, "step_s": elapsed / steps,
          "examples_per_s": config.train.batch_size * steps / elapsed, "platform": jax.devices()[0].platform,
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/retrieval/vsepp_shapes.py")
  parser.add_argument("--meshes", default="1:1x1,8:2x4", help="comma list of DEVICES:DATAxMODEL")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args, overrides = parser.parse_known_args()
  overrides = [o for o in overrides if o != "--"]
  config_path = args.config if os.path.isabs(args.config.split(":")[0]) else os.path.join(REPO, args.config)
  if args.worker:
    print(json.dumps(_worker(config_path, args.worker, args.steps, args.warmup, overrides)))
    return
  rows = []
  for item in args.meshes.split(","):
    devices, mesh = item.split(":")
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("JAX_PLATFORMS", "cpu")
    cmd = [sys.executable, __file__, f"--config={args.config}", f"--worker={mesh}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
      sys.exit(f"worker for {item} failed:\n{proc.stderr[-4000:]}")
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  print(f"config: {args.config} {' '.join(overrides)}  (platform: {rows[0]['platform']}, {os.cpu_count()} cores)")
  print(f"{'devices':>7} {'mesh (data x model)':>20} {'batch':>6} {'compile s':>10} {'step s':>8} "
        f"{'examples/s':>11} {'ratio':>6} {'peak RSS MB':>12}")
  for row in rows:
    mesh = f"{row['mesh']['data']} x {row['mesh']['model']}"
    print(f"{row['devices']:>7} {mesh:>20} {row['batch']:>6} {row['compile_s']:>10.2f} {row['step_s']:>8.3f} "
          f"{row['examples_per_s']:>11.1f} {row['examples_per_s'] / rows[0]['examples_per_s']:>6.2f} "
          f"{row['peak_rss_mb']:>12,.0f}")


if __name__ == "__main__":
  main()
