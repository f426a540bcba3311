"""The one rows x seeds runner: every (row, seed) of an experiment as ordinary `xmodal` runs, resumable, run
one at a time or N at a time.

Each step of each seed is an ordinary `xmodal train` in WORKDIR/<step>/seed<k> (log: WORKDIR/<step>/seed<k>.log)
with the step's flags, `--config.seed=k` (a step every seed shares: seed0, with its config's seed), the
experiment's budget and the command line's extra flags (the same
for every row: one budget). A run whose `done` files exist (results.json) is not run again, so the same command
resumes where it stopped; an interrupted run resumes from its checkpoint. Steps run in dependency order (a
chain's step waits for the steps it needs), `parallel` at a time; the experiment's warm-up step (one that
builds the feature caches every other run reads) runs alone first. A row's later evaluation (`xmodal eval` with
more overrides) is stored as WORKDIR/<step>/seed<k>.<name>.json and likewise reused.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time

from experiments.experiment import Context, Experiment, resolve, run_dir


@dataclasses.dataclass(frozen=True)
class Job:
  step: str
  seed: int                        # the seed of its run dir (0 for a step every seed shares)
  evaluation: str = ""             # '' = the step's run; else the evaluation of that run
  needs: tuple[tuple[str, int, str], ...] = ()

  @property
  def key(self) -> tuple[str, int, str]:
    return (self.step, self.seed, self.evaluation)

  def title(self) -> str:
    return f"{self.step}{f' ({self.evaluation})' if self.evaluation else ''} seed {self.seed}"


def _dir_seed(experiment: Experiment, step: str, seed: int) -> int:
  return seed if experiment.step(step).per_seed else 0


def step_dir(experiment: Experiment, workdir: str, step: str, seed: int) -> str:
  """The directory a step works in for `seed` (its home step's, for a step that adds to another run)."""
  home = experiment.step(step).home
  return run_dir(workdir, home or step, _dir_seed(experiment, home or step, seed))


def result_path(experiment: Experiment, workdir: str, row: str, seed: int) -> str:
  """The file holding row `row`'s metrics for `seed` (results.json of its run, or its evaluation's .json)."""
  spec = experiment.rows[row]
  step = experiment.step_of(row)
  base = run_dir(workdir, step, _dir_seed(experiment, step, seed))
  return f"{base}.{spec.evaluation}.json" if spec.evaluation else os.path.join(base, spec.result)


def plan(experiment: Experiment, rows: list[str], seeds: list[int]) -> dict[tuple, Job]:
  """Every job the rows need for the seeds, dependencies before dependents (insertion order)."""
  jobs: dict[tuple, Job] = {}

  def add_step(step: str, seed: int, chain: tuple[str, ...] = ()) -> tuple:
    if step in chain:
      raise ValueError(f"{experiment.name}: steps depend on each other in a cycle: {' -> '.join(chain + (step,))}")
    spec = experiment.step(step)
    needs = tuple(add_step(n, seed, chain + (step,)) for n in spec.needs)
    if spec.home and spec.home not in spec.needs:
      needs += (add_step(spec.home, seed, chain + (step,)),)
    job = Job(step, _dir_seed(experiment, step, seed), needs=needs)
    jobs.setdefault(job.key, job)
    return job.key

  for seed in seeds:
    for row in rows:
      key = add_step(experiment.step_of(row), seed)
      evaluation = experiment.rows[row].evaluation
      if evaluation:
        job = Job(key[0], key[1], evaluation, needs=(key,))
        jobs.setdefault(job.key, job)
    ran = {key[0] for key in jobs}
    for step in experiment.after:
      spec = experiment.step(step)
      if all(n in ran for n in spec.needs + ((spec.home,) if spec.home else ())):
        add_step(step, seed)
  return jobs


def is_done(experiment: Experiment, workdir: str, job: Job) -> bool:
  directory = step_dir(experiment, workdir, job.step, job.seed)
  if job.evaluation:
    return os.path.exists(f"{directory}.{job.evaluation}.json")
  return all(os.path.exists(os.path.join(directory, f)) for f in experiment.step(job.step).done)


def command(experiment: Experiment, workdir: str, job: Job, context: Context, extra: list[str]) -> list[str]:
  """The argv of a job."""
  spec = experiment.step(job.step)
  directory = step_dir(experiment, workdir, job.step, job.seed)
  if spec.command is not None and not job.evaluation:
    return spec.command(context, directory)
  budget = list(experiment.budget) + list(extra) if spec.budget else []
  seed = [f"--config.seed={job.seed}"] if spec.per_seed else []  # a shared run keeps its config's seed
  argv = [sys.executable, "-m", "xmodal_jax.main", "eval" if job.evaluation else "train",
          f"--config={spec.config or experiment.config}", f"--workdir={directory}", *seed,
          *resolve(spec.flags, context), *budget]
  if job.evaluation:
    evaluation = experiment.evaluations[job.evaluation]
    argv += resolve(evaluation.flags, context)
    argv += [f"--split={','.join(evaluation.splits)}"] if evaluation.splits else []
  return argv


def log_path(experiment: Experiment, workdir: str, job: Job) -> str:
  base = run_dir(workdir, job.step, job.seed)
  return f"{base}.{job.evaluation}.log" if job.evaluation else f"{base}.log"


def _call(argv: list[str], log: str, what: str) -> None:
  os.makedirs(os.path.dirname(log), exist_ok=True)
  with open(log, "w") as f:
    code = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT)
  if code:
    raise RuntimeError(f"{what} failed (exit {code}); see {log}")


def run_job(experiment: Experiment, workdir: str, job: Job, argv: list[str]) -> None:
  """Run one job (its `command`) to its end; an evaluation also stores its metrics (the `metrics: {...}` line
  xmodal eval prints) as <run dir>.<name>.json."""
  log = log_path(experiment, workdir, job)
  os.makedirs(os.path.dirname(step_dir(experiment, workdir, job.step, job.seed)), exist_ok=True)
  with open(_command_file(log), "w") as f:
    json.dump(argv[1:], f)
  _call(argv, log, job.title())
  if job.evaluation:
    with open(log) as f:
      lines = [line for line in f if line.startswith("metrics: ")]
    if not lines:
      raise RuntimeError(f"{job.title()} printed no metrics; see {log}")
    directory = step_dir(experiment, workdir, job.step, job.seed)
    with open(f"{directory}.{job.evaluation}.json", "w") as f:
      json.dump(json.loads(lines[-1][len("metrics: "):]), f, indent=2)


def _command_file(log: str) -> str:
  """Beside the log: the command a job ran (JSON; not *.json, which are a run's later evaluations)."""
  return log[:-len(".log")] + ".command"


def _changed(experiment: Experiment, workdir: str, job: Job, context: Context, extra: list[str]) -> str:
  """A warning if a finished job ran with another command than it would now ('' if the same, or unknown)."""
  path = _command_file(log_path(experiment, workdir, job))
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    before = json.load(f)
  try:
    now = command(experiment, workdir, job, context, extra)[1:]
  except Exception:  # noqa: BLE001  (only a warning: the report says what the runs are)
    return ""
  if before == now:
    return ""
  changed = sorted(set(before) ^ set(now))
  return (f"{job.title()} finished earlier with other flags ({' '.join(changed)}); it is kept. Remove "
          f"{step_dir(experiment, workdir, job.step, job.seed)} to run it again with these.")


def _with_needs(jobs: dict[tuple, Job], key: tuple) -> set[tuple]:
  out, stack = set(), [key]
  while stack:
    key = stack.pop()
    if key not in out:
      out.add(key)
      stack.extend(jobs[key].needs)
  return out


def run(experiment: Experiment, workdir: str, rows: list[str], seeds: list[int], *, extra: list[str] = (),
        parallel: int = 1, log=print) -> int:
  """Run every job not done yet, `parallel` at a time -> 0, or 1 after printing the failures."""
  extra = list(extra)
  jobs = plan(experiment, rows, seeds)
  configs: dict = {}
  contexts = {seed: Context(experiment, workdir, seed, configs) for seed in {job.seed for job in jobs.values()}}
  finished = {key for key, job in jobs.items() if is_done(experiment, workdir, job)}
  for key in [k for k in jobs if k in finished]:
    warning = _changed(experiment, workdir, jobs[key], contexts[key[1]], extra)
    if warning:
      log(f"[{experiment.name}] warning: {warning}")
  pending = [key for key in jobs if key not in finished]
  warmup = next((key for key in pending if key[0] == experiment.warmup and not key[2]), None)
  first = _with_needs(jobs, warmup) if warmup else set()  # run alone, before anything else
  os.makedirs(workdir, exist_ok=True)
  log(f"[{experiment.name}] {len(jobs)} runs ({len(rows)} rows x {len(seeds)} seeds), {len(finished)} done before, "
      f"{parallel} at a time, in {workdir}; extra flags: {' '.join(extra) or 'none'}")
  failures: list[str] = []
  parallel = max(1, parallel)
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    running: dict[concurrent.futures.Future, tuple] = {}
    started: dict[tuple, float] = {}
    while pending or running:
      if not failures:
        for key in list(pending):
          if len(running) >= parallel or (warmup and warmup not in finished and running):
            break
          if warmup and warmup not in finished and key not in first:
            continue
          if all(need in finished for need in jobs[key].needs):
            pending.remove(key)
            started[key] = time.time()
            try:  # here, not in the threads: a flag function may load a config
              argv = command(experiment, workdir, jobs[key], contexts[key[1]], extra)
            except Exception as e:  # noqa: BLE001  (a config that does not load: name the run, stop)
              failures.append(f"{jobs[key].title()}: its command could not be built: {type(e).__name__}: {e}")
              break
            running[pool.submit(run_job, experiment, workdir, jobs[key], argv)] = key
      if not running:
        break
      done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        key = running.pop(future)
        try:
          future.result()
        except (RuntimeError, OSError, ValueError) as e:
          failures.append(str(e))
          continue
        finished.add(key)
        log(f"[{experiment.name}] {jobs[key].title()}: {time.time() - started[key]:.0f}s")
  if failures or pending:
    for failure in failures:
      print(f"{experiment.name}: {failure}", file=sys.stderr)
    if pending:
      print(f"{experiment.name}: not run: {', '.join(jobs[k].title() for k in pending)}", file=sys.stderr)
    return 1
  return 0
