"""What an experiment is: rows x seeds of ordinary `xmodal` runs, the tables of their metrics, and the claims
judged on them. A system's module (experiments/mfsr.py, ...) describes its experiment with these types; the one
runner (runner.py) trains it and the one report writer (report.py) writes its tables and verdicts.

A row is usually one `xmodal train` of the experiment's config with the row's overrides, per seed, in
WORKDIR/<row>/seed<k>. Experiments that are not plain single runs name `steps` instead:

  a chain (S5: clip -> reward model -> MLE captioner -> SCST): each step an ordinary run of its own config, whose
    flags may name the run directories of the steps it `needs` (Context.run); rows read their metrics from the
    step they name. A step with per_seed=False runs once (seed 0) and every seed shares it (S5's reward and
    judge models: the instruments stay fixed, the seeds vary the captioners);
  a pipeline (S1): one step, `xmodal train` of a multi-stage config; several rows read its stages' results
    (Row.result="fusion/results.json");
  a later evaluation: Row.evaluation names an `xmodal eval` of a finished run with more overrides (S2's jittered
    boxes), whose metrics are the row's.

Flags (of a row, a step or an evaluation) are a list of `--config.X=V` strings or a function of the Context
(the loaded config, the seed, other steps' run directories) returning one.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

RESULTS = "results.json"


def run_dir(workdir: str, step: str, seed: int) -> str:
  """Where the run of `step` for `seed` lives (its log: the same path + '.log')."""
  return os.path.join(workdir, step, f"seed{seed}")


@dataclasses.dataclass
class Context:
  """What flags may depend on: the experiment, its workdir, the seed, and the run directories of other steps."""
  experiment: Experiment
  workdir: str
  seed: int
  _configs: dict = dataclasses.field(default_factory=dict)

  def run(self, step: str) -> str:
    """The run directory of `step` for this seed (seed 0 for a step every seed shares)."""
    return run_dir(self.workdir, step, self.seed if self.experiment.step(step).per_seed else 0)

  def config(self, config_arg: str = "") -> Any:
    """The ConfigDict of `config_arg` (default: the experiment's config), loaded as the command line loads it."""
    config_arg = config_arg or self.experiment.config
    if config_arg not in self._configs:
      self._configs[config_arg] = load_config(config_arg)
    return self._configs[config_arg]


Flags = Sequence[str] | Callable[[Context], Sequence[str]]


def resolve(flags: Flags, context: Context) -> list[str]:
  return list(flags(context) if callable(flags) else flags)


@dataclasses.dataclass(frozen=True)
class Step:
  """One run per seed: `xmodal train --config=<config> --workdir=<run dir> --config.seed=<k> <flags>
  [<budget> <extra flags>]`, or `command` instead."""
  name: str
  config: str = ""                 # '' = the experiment's config
  flags: Flags = ()
  needs: tuple[str, ...] = ()      # steps that must have finished first (the same seed's, or the shared run)
  per_seed: bool = True            # False: one run (seed 0) shared by every seed
  budget: bool = True              # whether the experiment's budget and the command line's extra flags apply
  done: tuple[str, ...] = (RESULTS,)  # files (in the run dir) whose presence means the step finished
  command: Callable[[Context, str], list[str]] | None = None  # (context, run dir) -> argv, instead of xmodal train
  home: str = ""                   # run in this other step's run dir (a command that adds to that run)


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """`xmodal eval` of a finished run with more overrides; its metrics go to <run dir>.<name>.json."""
  flags: Flags
  splits: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Row:
  """A line of the tables. A plain row is its own step (named after the row): the experiment's config with
  `flags`. Otherwise it reads its metrics from `step`'s run (file `result`, or the `evaluation` of it)."""
  label: str
  flags: Flags = ()
  step: str = ""
  result: str = RESULTS
  evaluation: str = ""


@dataclasses.dataclass(frozen=True)
class Metric:
  """A column: `value` is a key of the run's metrics or a function of them (None: not measured). `items`, with
  `items_of` (the evaluator whose eval_items/<name>.npz it reads), gives the per-item scores whose mean is the
  value, for a bootstrap over the evaluation items; without them a claim is judged over seeds alone."""
  label: str
  value: str | Callable[[dict[str, float]], float | None]
  items: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
  items_of: str = ""
  fmt: str = ".1f"

  def of(self, metrics: dict[str, float]) -> float | None:
    if callable(self.value):
      try:
        return self.value(metrics)
      except KeyError:
        return None
    return metrics.get(self.value)


@dataclasses.dataclass(frozen=True)
class Table:
  title: str
  metrics: tuple[Metric, ...]
  rows: tuple[str, ...] = ()       # () = every row run that is not an evaluation row


@dataclasses.dataclass(frozen=True)
class Claim:
  """"Row A's metric exceeds row B's by more than `threshold`" (b='' : A's metric exceeds `threshold`), paired
  by seed and item. `relative`: the threshold is that fraction of B's mean."""
  text: str
  a: str
  b: str
  metric: str                      # a Metric's label
  threshold: float = 0.0
  relative: bool = False


@dataclasses.dataclass(frozen=True)
class Convergence:
  """Training converged if the validation metric's last two evaluations differ by at most `tolerance`: the mean
  of the TensorBoard scalar `tags`, read from the directory of the row's result."""
  tags: tuple[str, ...]
  tolerance: float


@dataclasses.dataclass
class Experiment:
  name: str
  title: str
  config: str
  rows: dict[str, Row]
  tables: tuple[Table, ...]
  claims: tuple[Claim, ...] = ()
  convergence: Convergence | None = None
  seeds: tuple[int, ...] = (0, 1, 2)
  budget: tuple[str, ...] = ()     # flags of every budgeted run: one budget for every row
  budget_note: str = ""            # the budget in words, for the report
  steps: dict[str, Step] = dataclasses.field(default_factory=dict)
  evaluations: dict[str, Evaluation] = dataclasses.field(default_factory=dict)
  default_rows: tuple[str, ...] = ()   # () = every row
  after: tuple[str, ...] = ()      # steps run after the rows' steps when their needs were run (S5's caption dbs)
  warmup: str = ""                 # a step run alone first (it builds the caches the other runs read)
  merge_evaluations: bool = False  # a run's later `xmodal eval` files add metrics its results.json lacks
  sections: Callable[[Any], tuple[list[str], list[Any]]] | None = None  # report parts of one system (report.py)
  notes: str = ""

  def step(self, name: str) -> Step:
    """The step `name`: one of `steps`, or the plain row of that name."""
    if name in self.steps:
      return self.steps[name]
    row = self.rows[name]
    return Step(name=name, config=self.config, flags=row.flags)

  def step_of(self, row: str) -> str:
    return self.rows[row].step or row

  def metric(self, label: str) -> Metric:
    for table in self.tables:
      for metric in table.metrics:
        if metric.label == label:
          return metric
    raise KeyError(f"{self.name}: no metric {label!r} in its tables")


def load_config(config_arg: str) -> Any:
  """A config file[:variant] as `xmodal` loads it (ml_collections config_flags; paths from the repo root)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  path = config_arg.partition(":")[0]
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} not found (run from the repository root).")
  argv = ["experiments", f"--config={config_arg}"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config
