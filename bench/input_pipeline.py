r"""Benchmark: input pipeline throughput (images/s) vs what training consumes.

  python bench/input_pipeline.py                                  # configs/retrieval/vsepp_flickr8k.py, its real data
  python bench/input_pipeline.py --config=configs/retrieval/vsepp_shapes.py --batches=50
  python bench/input_pipeline.py --train_steps=10                 # also time the train step (consumption)

Measures, on this machine:
  1. raw JPEG decode of the source images (PIL, one thread) for reference;
  2. the training pipeline of the config: prepared tfds array_record -> decode -> random crop/flip ->
     caption pick + tokens -> batches, through grain with config.data.num_threads reader threads;
  3. with --train_steps, the jitted train step on those batches (examples/s it consumes).
The pipeline is not the bottleneck when (2) is well above (3).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/retrieval/vsepp_flickr8k.py")
  parser.add_argument("--batches", type=int, default=30)
  parser.add_argument("--train_steps", type=int, default=0)
  args, overrides = parser.parse_known_args()

  from absl import flags
  from ml_collections import config_flags
  argv = ["bench", f"--config={os.path.join(REPO, args.config)}", *[o for o in overrides if o != "--"]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  config = fv.config

  import numpy as np
  from PIL import Image
  from peak_rss import label  # bench/peak_rss.py
  from xmodal_jax import systems
  print(f"config: {args.config}  source: {config.data.source}  batch {config.train.batch_size}  "
        f"crop {config.data.image_size}  threads {config.data.num_threads}  ({os.cpu_count()} cores)")

  kind, _, rest = config.data.source.partition(":")
  if kind == "folder":
    files = sorted(glob.glob(os.path.join(rest, "images", "*.jpg")))[:300]
    t0 = time.perf_counter()
    for path in files:
      np.asarray(Image.open(path).convert("RGB"))
    dt = time.perf_counter() - t0
    size = Image.open(files[0]).size
    print(f"  raw decode of source JPEGs ({size[0]}x{size[1]}), 1 thread: {len(files) / dt:8.1f} images/s, "
          f"{label()}")

  workdir = f"/tmp/xmodal_bench_input_{os.getpid()}"
  task = systems.create(config, workdir)
  task.setup(training=True)
  iterator = task.train_iterator(process_index=0, process_count=1)
  next(iterator)  # start-up (threads, first epoch permutation)
  t0 = time.perf_counter()
  for _ in range(args.batches):
    batch = next(iterator)
  dt = time.perf_counter() - t0
  pipeline = args.batches * config.train.batch_size / dt
  print(f"  training pipeline (decode + crop/flip + tokens + batch): {pipeline:8.1f} images/s "
        f"({dt / args.batches * 1000:.0f} ms per batch of {len(batch['images'])}), {label()}")

  if args.train_steps:
    import jax
    from xmodal_jax.train import sharding, trainer
    setup = trainer.build(task)
    step_fn = trainer.make_train_step(setup)
    state = setup.init_state(jax.random.PRNGKey(0))
    first_bad = jax.numpy.array(-1, jax.numpy.int32)
    batches = [sharding.global_batch_from_host(next(iterator), setup.mesh) for _ in range(args.train_steps + 3)]
    for b in batches[:3]:  # compile + warm-up
      state, first_bad, metrics = step_fn(state, setup.frozen, first_bad, b)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for b in batches[3:]:
      state, first_bad, metrics = step_fn(state, setup.frozen, first_bad, b)
    jax.block_until_ready(metrics)
    consumed = args.train_steps * config.train.batch_size / (time.perf_counter() - t0)
    print(f"  train step consumes:                                  {consumed:8.1f} images/s "
          f"-> pipeline / consumption = {pipeline / consumed:.1f}x, {label()} (so far)")


if __name__ == "__main__":
  main()
