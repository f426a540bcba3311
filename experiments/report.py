"""The one report writer: an experiment's tables (each row's metrics, mean +- std over seeds, and whether its
training converged) and its claims, each judged by experiments/stats.py (the paired difference A - B with its
95% bootstrap CI over seeds and evaluation items, and the verdict holds / does not hold / inconclusive /
inconclusive (budget)). Written to WORKDIR/report.md.

Sources, per (row, seed): the metrics of the row's run (results.json: the checkpoint the config's final
evaluation reports) or of its later evaluation (<run>.<name>.json); the per-item scores the trainer saved beside
results.json (eval_items/<evaluator>.npz: each query's rank, each image's correctness), so a claim is bootstrapped
over seeds x items (a claim on a metric without them: over seeds alone, and the table says so); and the
validation curve the trainer logged to TensorBoard (the experiment's Convergence tags), whose last two
evaluations must agree within the stated tolerance for a claim to be judged at all.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from experiments import runner, stats
from experiments.experiment import Claim, Experiment, Metric, run_dir
from xmodal_jax.evaluation.evaluator import ITEMS_DIR  # where the trainer saves per-item scores
from xmodal_jax.evaluation.tables import markdown_table



def scalar_history(directory: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of TensorBoard scalar `tag` in a run directory (the trainer's event files)."""
  from xmodal_jax.train import workdir as workdir_lib  # pylint: disable=import-outside-toplevel  (TensorBoard)
  if not os.path.isdir(directory):
    return []
  return workdir_lib.scalar_history(directory, tag)


def mean_std(values: Sequence[float], fmt: str = ".1f", *, signed: bool = False) -> str:
  """"mean ± std" (sample std over seeds; 0 for one seed)."""
  values = np.asarray(values, np.float64)
  std = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():{'+' if signed else ''}{fmt}} ± {std:{fmt}}"


@dataclasses.dataclass
class Run:
  metrics: dict[str, float] | None  # None: not finished
  directory: str                    # where its eval_items/ and TensorBoard curve are


@dataclasses.dataclass
class Judged:
  """A claim's line in the claims table."""
  text: str
  metric: str
  per_seed: str = ""
  comparison: stats.Comparison | None = None
  threshold: str = ""
  over: str = ""
  note: str = ""


@dataclasses.dataclass
class ReportData:
  """Every (row, seed)'s run of an experiment, read from its workdir (what the system's `sections` read too)."""
  experiment: Experiment
  workdir: str
  rows: list[str]
  seeds: list[int]
  runs: dict[str, dict[int, Run]]
  _curves: dict = dataclasses.field(default_factory=dict)  # (row, seed) -> curve (event files are read once)

  def values(self, row: str, metric: Metric) -> dict[int, float]:
    """{seed: value} of the seeds whose run finished and measured the metric."""
    out = {}
    for seed, run in self.runs.get(row, {}).items():
      value = metric.of(run.metrics) if run.metrics is not None else None
      if value is not None:
        out[seed] = float(value)
    return out

  def items(self, row: str, seed: int, metric: Metric) -> np.ndarray | None:
    """The per-item scores of one run for `metric` (None without them)."""
    if metric.items is None:
      return None
    path = os.path.join(self.runs[row][seed].directory, ITEMS_DIR, f"{metric.items_of}.npz")
    if not os.path.exists(path):
      return None
    with np.load(path) as data:
      return np.asarray(metric.items({k: data[k] for k in data.files}), np.float64)

  def curve(self, row: str, seed: int) -> list[tuple[int, float]]:
    """(step, validation metric) of one run: the mean of the convergence tags at the steps all were logged."""
    convergence = self.experiment.convergence
    if convergence is None:
      return []
    if (row, seed) not in self._curves:
      directory = self.runs[row][seed].directory
      curves = [dict(scalar_history(directory, tag)) for tag in convergence.tags]
      steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
      self._curves[(row, seed)] = [(s, float(np.mean([c[s] for c in curves]))) for s in steps]
    return self._curves[(row, seed)]

  def converged(self, row: str, seeds: Sequence[int]) -> bool:
    convergence = self.experiment.convergence
    if convergence is None:
      return False
    return stats.converged([[v for _, v in self.curve(row, s)] for s in seeds], convergence.tolerance)


def read(experiment: Experiment, workdir: str, rows: list[str], seeds: list[int]) -> ReportData:
  runs: dict[str, dict[int, Run]] = {}
  for row in rows:
    spec = experiment.rows[row]
    step = experiment.step_of(row)
    runs[row] = {}
    for seed in seeds:
      path = runner.result_path(experiment, workdir, row, seed)
      base = run_dir(workdir, step, seed if experiment.step(step).per_seed else 0)
      directory = base if spec.evaluation else os.path.dirname(path)
      metrics = None
      if os.path.exists(path):
        with open(path) as f:
          loaded = json.load(f)
        metrics = dict(loaded["metrics"] if not spec.evaluation else loaded)
        if experiment.merge_evaluations and not spec.evaluation:
          for later in sorted(glob.glob(glob.escape(base) + ".*.json")):
            with open(later) as f:
              for key, value in dict(json.load(f)).items():
                metrics.setdefault(key, value)
      runs[row][seed] = Run(metrics, directory)
  return ReportData(experiment, workdir, rows, seeds, runs)


def _convergence_cell(data: ReportData, row: str) -> str:
  convergence = data.experiment.convergence
  if convergence is None:
    return "not checked"
  seeds = [s for s, run in data.runs[row].items() if run.metrics is not None]
  curves = {s: data.curve(row, s) for s in seeds}
  if not seeds:
    return "–"
  if all(len(c) < 2 for c in curves.values()):
    return "< 2 val evaluations"
  ok = [s for s in seeds if stats.converged([[v for _, v in curves[s]]], convergence.tolerance)]
  lasts = "; ".join(f"{curves[s][-2][1]:.2f} -> {curves[s][-1][1]:.2f}" for s in seeds
                    if s not in ok and len(curves[s]) >= 2)
  return f"{len(ok)}/{len(seeds)}" + (f" (not: {lasts})" if lasts else "")


def table(data: ReportData, title: str, metrics: Sequence[Metric], rows: Sequence[str]) -> str:
  body = []
  for row in rows:
    cells = [data.experiment.rows[row].label]
    for metric in metrics:
      values = data.values(row, metric)
      cell = mean_std(list(values.values()), metric.fmt) if values else "–"
      if values and len(values) < len(data.seeds):
        cell += f" ({len(values)}/{len(data.seeds)} seeds)"
      cells.append(cell)
    cells.append(_convergence_cell(data, row))
    body.append(cells)
  return f"{title}\n\n" + markdown_table(["row"] + [m.label for m in metrics] + ["converged"], body)


def compare_values(text: str, metric_label: str, a: dict[int, float], b: dict[int, float] | None, *,
                   threshold: float = 0.0, threshold_text: str = "", converged: bool,
                   items: tuple[np.ndarray, np.ndarray] | None = None, item_note: str = "") -> Judged:
  """Judge "A exceeds B by more than threshold" on per-seed values {seed: value} (B None: A against the
  threshold alone), paired by seed; `items`: ([seeds, items], [seeds, items]) arrays to bootstrap over instead."""
  seeds = sorted(set(a) & set(b)) if b is not None else sorted(a)
  threshold_text = threshold_text or f"> {threshold:g}"
  if not seeds:
    return Judged(text, metric_label, threshold=threshold_text, note="not measured (no finished runs of both rows)")
  va = np.asarray([a[s] for s in seeds])
  vb = np.asarray([b[s] for s in seeds]) if b is not None else np.zeros(len(seeds))
  diff = va - vb
  per_seed = " / ".join(f"{d:+.2f}" for d in diff) + f" ({int(np.sum(diff > threshold))}/{len(diff)} > thr.)"
  if items is not None:
    comparison = stats.compare(items[0], items[1], threshold=threshold, converged_runs=converged)
    over = f"{_seeds(len(seeds))} x {items[0].shape[1]} {item_note or 'items'}"
  else:
    comparison = stats.compare(va[:, None], vb[:, None], threshold=threshold, converged_runs=converged)
    over = f"{_seeds(len(seeds))} (no per-item scores)"
  return Judged(text, metric_label, per_seed, comparison, threshold_text, over, comparison.advice)


def _seeds(n: int) -> str:
  return f"{n} seed{'s' if n != 1 else ''}"


def judge(data: ReportData, claim: Claim) -> Judged:
  """One claim of the experiment, judged on its runs."""
  experiment = data.experiment
  metric = experiment.metric(claim.metric)
  rows = [r for r in (claim.a, claim.b) if r]
  missing = [r for r in rows if r not in data.runs]
  if missing:
    return Judged(claim.text, claim.metric, note=f"not run (rows {', '.join(missing)} were not chosen)")
  a = data.values(claim.a, metric)
  b = data.values(claim.b, metric) if claim.b else None
  seeds = sorted(set(a) & set(b)) if b is not None else sorted(a)
  threshold, threshold_text = claim.threshold, ""
  if claim.relative and b:
    threshold = claim.threshold * float(np.mean([b[s] for s in seeds]))
    threshold_text = f"> {threshold:+.4g} ({claim.threshold:+.0%} of B)"
  converged = bool(seeds) and all(data.converged(r, seeds) for r in rows)
  items = None
  if seeds and metric.items is not None:
    got_a = [data.items(claim.a, s, metric) for s in seeds]
    got_b = [data.items(claim.b, s, metric) for s in seeds] if claim.b else [np.zeros_like(x) if x is not None
                                                                             else None for x in got_a]
    shapes = {x.shape for x in got_a + got_b if x is not None}
    if all(x is not None for x in got_a + got_b) and len(shapes) == 1:
      items = (np.stack(got_a), np.stack(got_b))
  return compare_values(claim.text, claim.metric, a, b, threshold=threshold, threshold_text=threshold_text,
                        converged=converged, items=items, item_note="images" if items is not None else "")


def claims_table(judged: Sequence[Judged]) -> str:
  body = []
  for j in judged:
    c = j.comparison
    body.append([j.text, j.metric, j.per_seed or "–",
                 f"{c.estimate:+.2f} [{c.low:+.2f}, {c.high:+.2f}]" if c else "–", j.threshold,
                 f"**{c.verdict}**" if c else "not judged", j.over or "–", j.note or ""])
  return markdown_table(["claim", "metric", "A - B per seed", "A - B [95% CI]", "threshold", "verdict",
                         "resampled", "note"], body)


def write(experiment: Experiment, workdir: str, rows: list[str], seeds: list[int], extra: Sequence[str] = (),
          out: str = "") -> str:
  """WORKDIR/report.md (and `out`, if given): the tables, claims and system sections; returned."""
  data = read(experiment, workdir, rows, seeds)
  run_rows = [r for r in rows if not experiment.rows[r].evaluation]
  parts = [f"# {experiment.title}",
           _header(experiment, workdir, seeds, extra)]
  unfinished = [f"{r} (seeds {[s for s, run in data.runs[r].items() if run.metrics is None]})" for r in rows
                if any(run.metrics is None for run in data.runs[r].values())]
  if unfinished:
    parts.append("Not finished (left out of the cells): " + "; ".join(unfinished) + ".")
  for spec in experiment.tables:
    chosen = [r for r in (spec.rows or run_rows) if r in rows]
    if chosen:
      parts.append(table(data, spec.title, spec.metrics, chosen))
  extra_parts, extra_judged = experiment.sections(data) if experiment.sections else ([], [])
  parts += extra_parts
  chosen = [c for c in experiment.claims if all(r in data.runs for r in (c.a, c.b) if r)]
  judged = [judge(data, c) for c in chosen] + list(extra_judged)
  if judged:
    parts.append("Claims (A - B > threshold; A and B paired by seed and by evaluation item):\n\n"
                 + claims_table(judged))
  left = [c.text for c in experiment.claims if c not in chosen]
  if left:
    parts.append(f"Not judged (their rows were not run here): {'; '.join(left)}.")
  text = "\n\n".join(parts) + "\n"
  for path in [os.path.join(workdir, "report.md")] + ([out] if out else []):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      f.write(text)
  return text


def _header(experiment: Experiment, workdir: str, seeds: list[int], extra: Sequence[str]) -> str:
  lines = [(f"Experiment `{experiment.name}` (`python -m experiments.run {experiment.name} --workdir={workdir}`), "
           f"config `{experiment.config}`, seeds {list(seeds)}."),
           (f"Budget (the same for every row): {experiment.budget_note or 'the config' + chr(39) + 's own'}; "
           f"budget flags: {' '.join(experiment.budget) or 'none'}; extra flags: {' '.join(extra) or 'none'}.")]
  convergence = experiment.convergence
  if convergence:
    lines.append(f"Converged: the validation metric ({' + '.join(convergence.tags)}"
                 f"{', mean' if len(convergence.tags) > 1 else ''}) changed by at most {convergence.tolerance:g} "
                 "between its last two evaluations; a claim on runs that had not all converged is "
                 "\"inconclusive (budget)\", whatever its CI says.")
  lines.append("Cells: mean ± std over seeds. Claims: the paired difference A - B and its 95% CI by a two-level "
               "bootstrap over seeds and evaluation items (experiments/stats.py); \"holds\" = the CI lies above "
               "the threshold, \"does not hold\" = below it, \"inconclusive\" = it contains it.")
  if experiment.notes:
    lines.append(experiment.notes)
  return "\n".join(lines)
