r"""The mFSR ablation (seed 003, Table 3): train every row with one budget and batch size over several seeds and
write one markdown table of R@1/5/10 in both directions and rsum, mean +- std over the seeds, and each row's
rsum minus the first row's, seed by seed (paired: a seed fixes the data order and initial draws).

  python -m xmodal_jax.tasks.retrieval.mfsr_ablation --config=configs/retrieval/mfsr_shapes.py \
      --workdir=workdirs/mfsr_ablation_shapes [--seeds=0,1,2] [--rows=vsepp,mo,...] [--parallel=2] \
      [--split=test] [-- --config.train.batch_size=24 --config.train.num_steps=500 ...]

Each (row, seed) is an ordinary `xmodal train` run in WORKDIR/<row>/seed<k> (log: WORKDIR/<row>/seed<k>.log) with
the row's overrides, `--config.seed=k` and the flags after `--` (the same for every row: one budget). A run whose
results.json exists is not run again, so the command resumes where it stopped. The table (WORKDIR/ablation.md) reads
each run's results.json: the evaluator `--split` (default: `test` if the config has it, else its first
retrieval evaluator), at the
checkpoint the config's final evaluation reports (config.checkpoint.final_from; "best" = best val rsum).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

from xmodal_jax.evaluation import tables

_OFF = {"modal": 0, "specific": 0, "image": 0, "caption": 0}
# Row name -> (label in the paper's Table 3, loss weights != 1, separation on).
ROWS = {
    "vsepp": ("VSE++", _OFF, False),
    "mo": ("+mo", dict(_OFF, modal=1), True),
    "sp": ("+sp", dict(_OFF, specific=1), True),
    "mo_sp": ("+mo+sp", dict(_OFF, modal=1, specific=1), True),
    "mo_sp_img": ("+mo+sp+img-re", dict(_OFF, modal=1, specific=1, image=1), True),
    "mo_sp_cap": ("+mo+sp+cap-re", dict(_OFF, modal=1, specific=1, caption=1), True),
    "full": ("full mFSR", dict(_OFF, modal=1, specific=1, image=1, caption=1), True),
}
METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def row_flags(row: str, reconstruction_evals: list[str]) -> list[str]:
  """The overrides of a row; rows without image reconstruction turn its evaluators off."""
  _, weights, separation = ROWS[row]
  flags = [f"--config.model.separation.enabled={separation}"]
  flags += [f"--config.loss_weights.{k}={float(v)}" for k, v in weights.items()]
  return flags + ([f"--config.evals.{name}.at_end=False" for name in reconstruction_evals] if not weights["image"]
                  else [])


def _run(config: str, workdir: str, row: str, seed: int, extra: list[str], recon: list[str]
         ) -> tuple[str, int, float]:
  run_dir = os.path.join(workdir, row, f"seed{seed}")
  if os.path.exists(os.path.join(run_dir, "results.json")):
    return row, seed, 0.0
  os.makedirs(os.path.dirname(run_dir), exist_ok=True)
  cmd = [sys.executable, "-m", "xmodal_jax.main", "train", f"--config={config}", f"--workdir={run_dir}",
         f"--config.seed={seed}", *row_flags(row, recon), *extra]
  start = time.time()
  with open(run_dir + ".log", "w") as log:
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f"{row} seed {seed} failed (exit {code}); see {run_dir}.log")
  return row, seed, time.time() - start


def ablation_table(workdir: str, rows: list[str], seeds: list[int], split: str) -> str:
  """Markdown: one line per row, mean +- std over the seeds of each metric of evaluator `split`."""
  body, base = [], None
  for row in rows:
    values = []
    for seed in seeds:
      with open(os.path.join(workdir, row, f"seed{seed}", "results.json")) as f:
        metrics = json.load(f)["metrics"]
      values.append([metrics[f"{split}/{m}"] for m in METRICS])
    values = np.asarray(values)
    mean, std = values.mean(0), values.std(0, ddof=1) if len(seeds) > 1 else np.zeros(len(METRICS))
    base = values[:, -1] if base is None else base
    delta = values[:, -1] - base   # rsum minus the first row's, seed by seed (same data order per seed)
    body.append([ROWS[row][0]] + [f"{m:.1f} ± {s:.1f}" for m, s in zip(mean, std)]
                + [f"{delta.mean():+.1f} ± {delta.std(ddof=1) if len(seeds) > 1 else 0.0:.1f}"])
  headers = ["row", "i->t R@1", "i->t R@5", "i->t R@10", "t->i R@1", "t->i R@5", "t->i R@10", "rsum",
             f"rsum - {ROWS[rows[0]][0]} (paired)"]
  return tables.markdown_table(headers, body)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--split", default="", help="the evaluator whose R@K the table shows (default: the "
                      "retrieval evaluator named test, else the first one: val on Flickr8k)")
  args, extra = parser.parse_known_args(argv)
  extra = [a for a in extra if a != "--"]
  bad = [a for a in extra if not a.startswith("--config.")]
  rows = [r for r in args.rows.split(",") if r]
  unknown = [r for r in rows if r not in ROWS]
  if bad or unknown:
    print(f"mfsr_ablation: {'unknown rows ' + str(unknown) + ' (use ' + ','.join(ROWS) + ')' if unknown else ''}"
          f"{'; ' if bad and unknown else ''}{'flags after -- must be --config.X=V overrides: ' + str(bad) if bad else ''}",
          file=sys.stderr)
    return 2
  seeds = [int(s) for s in args.seeds.split(",") if s]
  path, _, variant = args.config.partition(":")
  if not os.path.exists(path):
    print(f"mfsr_ablation: config file {path} not found.", file=sys.stderr)
    return 2
  module_spec = importlib.util.spec_from_file_location("ablation_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  retrieval = [name for name, spec in config.evals.items() if spec.type == "retrieval"]
  split = args.split or ("test" if "test" in retrieval else retrieval[0])
  recon = [name for name, spec in config.evals.items() if spec.type == "image_reconstruction"]
  os.makedirs(args.workdir, exist_ok=True)
  jobs = [(row, seed) for seed in seeds for row in rows]
  print(f"[mfsr_ablation] {len(jobs)} runs ({len(rows)} rows x {len(seeds)} seeds), {args.parallel} at a time, "
        f"in {args.workdir}; extra flags: {' '.join(extra) or 'none'}", flush=True)
  try:
    with concurrent.futures.ThreadPoolExecutor(max(args.parallel, 1)) as pool:
      futures = [pool.submit(_run, args.config, args.workdir, row, seed, extra, recon) for row, seed in jobs]
      for future in concurrent.futures.as_completed(futures):
        row, seed, seconds = future.result()
        print(f"[mfsr_ablation] {row} seed {seed}: {'done before' if not seconds else f'{seconds:.0f}s'}",
              flush=True)
  except RuntimeError as e:
    print(f"mfsr_ablation: {e}", file=sys.stderr)
    return 1
  table = ablation_table(args.workdir, rows, seeds, split)
  with open(os.path.join(args.workdir, "ablation.md"), "w") as f:
    f.write(f"{split} split, mean ± std over seeds {seeds}; flags: {' '.join(extra) or 'none'}\n\n{table}\n")
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
