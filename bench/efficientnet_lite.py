r"""Benchmark: EfficientNet-Lite pooled features (ImageNet weights), Flax (jit) vs the same network in PyTorch
eager, on the same CPU, same batch, one run.

  python bench/efficientnet_lite.py                      # Lite0 at 224, batch 64
  python bench/efficientnet_lite.py --variant=efficientnet-lite2 --batch=32

The PyTorch network is tests/reference_efficientnet_lite.py (the parity reference), fed the same weights;
torch.set_num_threads = the cores JAX uses, channels_last, inference mode. Needs torch (launch/test.sh installs
the CPU build). Prints images/s of each and the ratio (JAX / PyTorch), and the largest difference of their
pooled features on the benchmark batch.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from peak_rss import label  # noqa: E402  # bench/peak_rss.py


def _rate(fn, batch: int, repeats: int) -> float:
  fn()  # compile / warm up
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return batch * repeats / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="efficientnet-lite0")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  import jax
  import torch
  from tests.reference_efficientnet_lite import EfficientNetLiteTorch
  from xmodal_jax.models import efficientnet_lite, efficientnet_weights

  size = efficientnet_lite.variant(args.variant).resolution
  pixels = np.random.default_rng(0).integers(0, 256, (args.batch, size, size, 3)).astype(np.uint8)
  x = np.asarray(efficientnet_lite.normalize_images(pixels), np.float32)

  variables = jax.device_put(efficientnet_weights.load(args.variant))
  model = efficientnet_lite.EfficientNetLite(args.variant)
  pooled = jax.jit(lambda v, x: model.apply(v, x))
  x_jax = jax.device_put(x)
  jax_rate = _rate(lambda: pooled(variables, x_jax).block_until_ready(), args.batch, args.repeats)

  threads = os.cpu_count() or 1
  torch.set_num_threads(threads)
  reference = EfficientNetLiteTorch(torch.load(str(efficientnet_weights.source_file(args.variant)),
                                               weights_only=True, map_location="cpu"))
  reference = reference.to(memory_format=torch.channels_last)
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
  with torch.inference_mode():
    torch_rate = _rate(lambda: reference.pooled(x_torch), args.batch, args.repeats)
    diff = float(np.abs(np.asarray(pooled(variables, x_jax)) - reference.pooled(x_torch).numpy()).max())

  print(f"{args.variant} pooled features, {size}x{size}, batch {args.batch}, {threads} cores "
        f"(jax {jax.__version__} {jax.devices()[0].platform}, torch {torch.__version__})")
  print(f"  Flax (jit):        {jax_rate:8.1f} images/s")
  print(f"  PyTorch (eager):   {torch_rate:8.1f} images/s")
  print(f"  ratio JAX / PyTorch: {jax_rate / torch_rate:.2f}x   (max |feature difference| {diff:.1e})")
  print(f"  {label()} (one process: JAX and PyTorch together)")


if __name__ == "__main__":
  main()
