"""Ablation tables of the retrieval systems (mFSR's Table 3 rows, S2's components): train every row with one
budget over several seeds, then write one markdown table of R@1/5/10 in both directions and rsum, mean +- std over
the seeds, and each row's rsum minus the first row's, seed by seed (paired: a seed fixes the data order and the
initial draws).

Each (row, seed) is an ordinary `xmodal train` run in WORKDIR/<row>/seed<k> (log: WORKDIR/<row>/seed<k>.log) with
the row's overrides, `--config.seed=k` and the extra flags (the same for every row: one budget). A run whose
results.json exists is not run again, so a command resumes where it stopped. Extra evaluations of a finished run
(`xmodal eval` with more overrides, e.g. other regions) are stored as WORKDIR/<row>/seed<k>.<name>.json and
likewise reused. A project's runner (mfsr_ablation.py, region_word_ablation.py) names the rows and the tables.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import glob
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np

from xmodal_jax.evaluation import tables

METRICS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
RETRIEVAL_HEADERS = ["i->t R@1", "i->t R@5", "i->t R@10", "t->i R@1", "t->i R@5", "t->i R@10", "rsum"]


@dataclasses.dataclass
class Row:
  label: str                                       # the row's name in the table
  flags: Callable[[ml_collections.ConfigDict], list[str]]  # config -> its --config.X=V overrides


def run_dir(workdir: str, row: str, seed: int) -> str:
  return os.path.join(workdir, row, f"seed{seed}")


def _call(cmd: list[str], log_path: str, what: str) -> float:
  start = time.time()
  with open(log_path, "w") as log:
    code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f"{what} failed (exit {code}); see {log_path}")
  return time.time() - start


def train(config_arg: str, workdir: str, row: str, seed: int, flags: list[str]) -> float:
  """Train one (row, seed) unless its results.json exists -> seconds (0: done before)."""
  out = run_dir(workdir, row, seed)
  if os.path.exists(os.path.join(out, "results.json")):
    return 0.0
  os.makedirs(os.path.dirname(out), exist_ok=True)
  cmd = [sys.executable, "-m", "xmodal_jax.main", "train", f"--config={config_arg}", f"--workdir={out}",
         f"--config.seed={seed}", *flags]
  return _call(cmd, out + ".log", f"{row} seed {seed}")


def evaluate(config_arg: str, workdir: str, row: str, seed: int, name: str, flags: list[str],
             splits: Sequence[str] = ()) -> dict[str, float]:
  """`xmodal eval` of a finished run with more overrides -> its metrics ({'<evaluator>/<metric>': v}), stored
  as WORKDIR/<row>/seed<k>.<name>.json (reused when present)."""
  out = run_dir(workdir, row, seed)
  path = f"{out}.{name}.json"
  if not os.path.exists(path):
    cmd = [sys.executable, "-m", "xmodal_jax.main", "eval", f"--config={config_arg}", f"--workdir={out}",
           f"--config.seed={seed}", *flags] + ([f"--split={','.join(splits)}"] if splits else [])
    _call(cmd, f"{out}.{name}.log", f"eval {name} of {row} seed {seed}")
    with open(f"{out}.{name}.log") as f:
      line = [l for l in f if l.startswith("metrics: ")][-1]
    with open(path, "w") as f:
      json.dump(json.loads(line[len("metrics: "):]), f, indent=2)
  with open(path) as f:
    return json.load(f)


def results(workdir: str, row: str, seed: int, *, with_evaluations: bool = False) -> dict[str, float]:
  """The run's final metrics (results.json); with_evaluations: plus the metrics of its later `evaluate` files
  (WORKDIR/<row>/seed<k>.<name>.json) that results.json lacks (evaluators added after the run)."""
  out = run_dir(workdir, row, seed)
  with open(os.path.join(out, "results.json")) as f:
    metrics = json.load(f)["metrics"]
  if with_evaluations:
    for path in sorted(glob.glob(glob.escape(out) + ".*.json")):
      with open(path) as f:
        for key, value in json.load(f).items():
          metrics.setdefault(key, value)
  return metrics


def mean_std(values: Sequence[float], *, signed: bool = False) -> str:
  """"mean ± std" (sample std over seeds; 0 for one seed), one decimal; signed: "+1.2 ± 0.3"."""
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():{'+' if signed else ''}.1f} ± {std:.1f}"


def retrieval_table(metrics: dict[str, list[dict[str, float]]], labels: dict[str, str], split: str) -> str:
  """Markdown: one line per row (in `metrics` order: row -> per-seed metric dicts), mean +- std of R@K and rsum
  of evaluator `split`, and the rsum minus the first row's, seed by seed."""
  body, base = [], None
  for row, per_seed in metrics.items():
    values = np.asarray([[m[f"{split}/{k}"] for k in METRICS] for m in per_seed])
    base = values[:, -1] if base is None else base
    body.append([labels[row]] + [mean_std(values[:, i]) for i in range(len(METRICS))]
                + [mean_std(values[:, -1] - base, signed=True)])
  first = labels[next(iter(metrics))]
  return tables.markdown_table(["row"] + RETRIEVAL_HEADERS + [f"rsum - {first} (paired)"], body)


def load_config(config_arg: str) -> ml_collections.ConfigDict:
  path, _, variant = config_arg.partition(":")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found.")
  module_spec = importlib.util.spec_from_file_location("ablation_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant or None)


def parse_args(name: str, doc: str, rows: dict[str, Row], argv: list[str]):
  """-> (args, rows to run, seeds, extra flags, config) or an exit code (a message printed)."""
  parser = argparse.ArgumentParser(prog=name, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--rows", default=",".join(rows))
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--split", default="", help="the evaluator whose R@K the table shows (default: the "
                      "retrieval evaluator named test, else the first one: val on Flickr8k)")
  args, extra = parser.parse_known_args(argv)
  extra = [a for a in extra if a != "--"]
  bad = [a for a in extra if not a.startswith("--config.")]
  chosen = [r for r in args.rows.split(",") if r]
  unknown = [r for r in chosen if r not in rows]
  problems = ([f"unknown rows {unknown} (use {','.join(rows)})"] if unknown else []) + (
      [f"flags after -- must be --config.X=V overrides: {bad}"] if bad else [])
  try:
    config = load_config(args.config)
  except FileNotFoundError as e:
    problems.append(str(e))
  if problems:
    print(f"{name}: {'; '.join(problems)}", file=sys.stderr)
    return 2
  seeds = [int(s) for s in args.seeds.split(",") if s]
  retrieval = [n for n, spec in config.evals.items() if spec.type == "retrieval"]
  args.split = args.split or ("test" if "test" in retrieval else retrieval[0])
  return args, chosen, seeds, extra, config


def train_all(name: str, args, rows: dict[str, Row], chosen: list[str], seeds: list[int], extra: list[str],
              config: ml_collections.ConfigDict) -> int:
  """Every (row, seed), `args.parallel` at a time -> 0, or 1 after printing the failure."""
  os.makedirs(args.workdir, exist_ok=True)
  jobs = [(row, seed) for seed in seeds for row in chosen]
  print(f"[{name}] {len(jobs)} runs ({len(chosen)} rows x {len(seeds)} seeds), {args.parallel} at a time, in "
        f"{args.workdir}; extra flags: {' '.join(extra) or 'none'}", flush=True)
  try:
    with concurrent.futures.ThreadPoolExecutor(max(args.parallel, 1)) as pool:
      futures = {pool.submit(train, args.config, args.workdir, row, seed, rows[row].flags(config) + extra): (row, seed)
                 for row, seed in jobs}
      for future in concurrent.futures.as_completed(futures):
        row, seed = futures[future]
        seconds = future.result()
        print(f"[{name}] {row} seed {seed}: {'done before' if not seconds else f'{seconds:.0f}s'}", flush=True)
  except RuntimeError as e:
    print(f"{name}: {e}", file=sys.stderr)
    return 1
  return 0


def train_rows(name: str, doc: str, rows: dict[str, Row], argv: list[str], *, more_rows: Sequence[str] = ()):
  """parse_args then train_all over the chosen rows (+ `more_rows`) -> (args, chosen rows, seeds, extra flags,
  config), or an exit code (the failure printed)."""
  parsed = parse_args(name, doc, rows, argv)
  if isinstance(parsed, int):
    return parsed
  args, chosen, seeds, extra, config = parsed
  code = train_all(name, args, rows, list(dict.fromkeys(list(chosen) + list(more_rows))), seeds, extra, config)
  return code or (args, chosen, seeds, extra, config)


def write_report(args, seeds: list[int], extra: list[str], parts: Sequence[str]) -> str:
  """WORKDIR/ablation.md: a header line (split, seeds, flags) and the parts; printed, and returned."""
  text = "\n\n".join([f"{args.split} split, mean ± std over seeds {seeds}; flags: {' '.join(extra) or 'none'}",
                       *parts]) + "\n"
  with open(os.path.join(args.workdir, "ablation.md"), "w") as f:
    f.write(text)
  print(text)
  return text
