"""Image reconstruction: how close generated images are to the real ones, and a PNG grid to look at them.

The task's `reconstruct_images` predict function maps EvalData.image_inputs to images in [0, 1] [N, S, S, 3];
EvalData.extras["target_images"] holds the real images (uint8 [N, S, S, 3]) at the generator's size. Metrics over
the first `count` images: recon_l1 (mean absolute error in [0, 1] units), recon_psnr (dB). With
extras["grid_path"], writes a PNG of `grid_rows` rows of (real, generated) pairs side by side.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import tables


def image_grid(real: np.ndarray, generated: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
  """uint8 real, generated [N, S, S, 3] -> uint8 grid: each row holds `columns` pairs (real | generated)."""
  n, s = real.shape[0], real.shape[1]
  rows = -(-n // columns)
  cell = s + pad
  out = np.full((rows * cell + pad, columns * (2 * s + pad) + pad, 3), 255, np.uint8)
  for i in range(n):
    r, c = divmod(i, columns)
    top, left = pad + r * cell, pad + c * (2 * s + pad)
    out[top:top + s, left:left + s] = real[i]
    out[top:top + s, left + s:left + 2 * s] = generated[i]
  return out


@evaluator_lib.register
class ImageReconstructionEvaluator(evaluator_lib.Evaluator):
  """See the module docstring."""
  TYPE = "image_reconstruction"
  DEFAULTS = dict(reconstruct_images="reconstruct_images", count=64, grid_columns=8)

  def evaluate(self, predict_fns, variables, data, runtime):
    targets = np.asarray(data.extras.get("target_images") if data.extras else None)
    if targets.ndim != 4:
      raise ValueError(f"Evaluator {self.name!r}: EvalData.extras['target_images'] (uint8 [N, S, S, 3]) is missing.")
    n = min(int(self.spec.count), len(targets))
    inputs = {k: np.asarray(v)[:n] for k, v in data.need("image_inputs", self.name).items()}
    generated = runtime.map_batches(self.predict_fn(predict_fns, "reconstruct_images"), variables, inputs,
                                    self.spec.batch_size)
    generated = np.clip(np.asarray(generated, np.float32), 0.0, 1.0)
    real = targets[:n].astype(np.float32) / 255.0
    if generated.shape != real.shape:
      raise ValueError(f"Evaluator {self.name!r}: generated images {generated.shape} vs targets {real.shape}.")
    mse = float(np.mean((generated - real) ** 2))
    path = data.extras.get("grid_path")
    if path:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      grid = image_grid(targets[:n], np.round(generated * 255).astype(np.uint8), int(self.spec.grid_columns))
      Image.fromarray(grid).save(path + ".tmp.png")
      os.replace(path + ".tmp.png", path)
    return {"recon_l1": float(np.mean(np.abs(generated - real))),
            "recon_psnr": float(10 * np.log10(1.0 / max(mse, 1e-10))), "images": float(n)}

  def format(self, metrics, title):
    return tables.markdown_table(["L1", "PSNR (dB)", "images"],
                                 [[metrics["recon_l1"], metrics["recon_psnr"], int(metrics["images"])]], title=title)


def generated_cells(grid: np.ndarray, size: int, columns: int = 8, pad: int = 2) -> np.ndarray:
  """The generated halves of an `image_grid` (uint8) -> a grid of them alone (e.g. to publish a figure of a data
  set whose real images may not be copied)."""
  rows = (grid.shape[0] - pad) // (size + pad)
  cells = []
  for r in range(rows):
    for c in range(columns):
      top, left = pad + r * (size + pad), pad + c * (2 * size + pad) + size
      cell = grid[top:top + size, left:left + size]
      if cell.shape[:2] == (size, size) and not np.all(cell == 255):
        cells.append(cell)
  n = len(cells)
  out = np.full((-(-n // columns) * (size + pad) + pad, columns * (size + pad) + pad, 3), 255, np.uint8)
  for i, cell in enumerate(cells):
    r, c = divmod(i, columns)
    out[pad + r * (size + pad):pad + r * (size + pad) + size, pad + c * (size + pad):pad + c * (size + pad) + size] = cell
  return out


def main(argv: list[str]) -> int:
  """python -m xmodal_jax.systems.vse.image_reconstruction_evaluator GRID.png OUT.png --size=S [--rows=R] [--generated_only]:
  the first R rows of a grid written by the evaluator, or of its generated images alone."""
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("grid")
  parser.add_argument("out")
  parser.add_argument("--size", type=int, required=True, help="the generator's image size")
  parser.add_argument("--columns", type=int, default=8)
  parser.add_argument("--rows", type=int, default=0, help="keep the first ROWS rows (0: all)")
  parser.add_argument("--generated_only", action="store_true")
  args = parser.parse_args(argv)
  if not os.path.exists(args.grid):
    print(f"image_reconstruction: {args.grid} not found (an image_reconstruction evaluator writes it into the "
          "run's workdir).", file=sys.stderr)
    return 2
  grid = np.asarray(Image.open(args.grid).convert("RGB"))
  if args.generated_only:
    grid = generated_cells(grid, args.size, args.columns)
  if args.rows:
    grid = grid[:2 + args.rows * (args.size + 2)]
  Image.fromarray(grid).save(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
