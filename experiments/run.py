r"""Run a paper experiment (rows x seeds of ordinary `xmodal` runs) and write its report.

  python -m experiments.run NAME[:VARIANT] --workdir=W [--seeds=0,1,2] [--rows=a,b] [--parallel=N]
      [--report-only] [--dry-run] [--out=PATH] [--config.X=V ...]

NAME is a system's experiment (experiments/<name>.py): classifier (S1's fusion vs pixel only), region_word (S2's
ablation), mfsr (S3's Table 3 rows), single_stream (S4's masking and seed-library rows), captioning (S5's MLE /
SCST table); VARIANT picks its data and budget (shapes, the default; flickr8k; tiny: seconds per run, to check the
machinery end to end). `--list` prints them. The runs go to W/<step>/seed<k> (logs beside them: seed<k>.log);
finished runs are kept, so the same command resumes. `--config.X=V` flags (also after `--`) go to every run the
budget applies to (one budget for every row). The report (tables, claims with 95% CIs and verdicts) goes to
W/report.md and stdout; `--report-only` writes it from the runs there without training anything.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from experiments import report, runner
from experiments.experiment import Context, Experiment

EXPERIMENTS = {
    "classifier": "experiments.classifier",
    "region_word": "experiments.region_word",
    "mfsr": "experiments.mfsr",
    "single_stream": "experiments.single_stream",
    "captioning": "experiments.captioning",
}


def get(name: str) -> Experiment:
  """The experiment NAME[:VARIANT]."""
  system, _, variant = name.partition(":")
  if system not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {system!r}; use one of {', '.join(EXPERIMENTS)}")
  module = importlib.import_module(EXPERIMENTS[system])
  if variant and variant not in module.VARIANTS:
    raise ValueError(f"experiment {system} has no variant {variant!r}; use one of {', '.join(module.VARIANTS)}")
  return module.get_experiment(variant or module.VARIANTS[0])


def _list() -> str:
  lines = []
  for system, module_name in EXPERIMENTS.items():
    module = importlib.import_module(module_name)
    for variant in module.VARIANTS:
      experiment = module.get_experiment(variant)
      lines.append(f"{system}:{variant}: {experiment.title} (rows {', '.join(experiment.default_rows or experiment.rows)})")
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("name", nargs="?", help="NAME[:VARIANT]")
  parser.add_argument("--workdir")
  parser.add_argument("--seeds", default="", help="comma-separated (default: the experiment's, 0,1,2)")
  parser.add_argument("--rows", default="", help="comma-separated (default: the experiment's rows)")
  parser.add_argument("--parallel", type=int, default=1, help="runs at once")
  parser.add_argument("--report-only", action="store_true", help="write the report from the runs there")
  parser.add_argument("--dry-run", action="store_true", help="print the commands of the runs not done yet")
  parser.add_argument("--out", default="", help="also write the report here")
  parser.add_argument("--list", action="store_true", help="list the experiments and their variants")
  args, extra = parser.parse_known_args(argv)
  if args.list:
    print(_list())
    return 0
  extra = [a for a in extra if a != "--"]
  problems = [f"flags must be --config.X=V overrides: {[a for a in extra if not a.startswith('--config.')]}"] if any(
      not a.startswith("--config.") for a in extra) else []
  if not args.name or not args.workdir:
    problems.append("give NAME[:VARIANT] and --workdir")
  experiment = None
  if args.name:
    try:
      experiment = get(args.name)
    except ValueError as e:
      problems.append(str(e))
  if experiment is not None:
    rows = [r for r in args.rows.split(",") if r] or list(experiment.default_rows or experiment.rows)
    unknown = [r for r in rows if r not in experiment.rows]
    if unknown:
      problems.append(f"unknown rows {unknown} (use {','.join(experiment.rows)})")
  if problems:
    print(f"experiments.run: {'; '.join(problems)}", file=sys.stderr)
    return 2
  # A row read from a later evaluation needs its run: add the run's own row when it is a row.
  rows += [experiment.step_of(r) for r in rows if experiment.rows[r].evaluation
           and experiment.step_of(r) in experiment.rows and experiment.step_of(r) not in rows]
  seeds = [int(s) for s in args.seeds.split(",") if s] or list(experiment.seeds)
  if args.dry_run:
    for job in runner.plan(experiment, rows, seeds).values():
      if not runner.is_done(experiment, args.workdir, job):
        context = Context(experiment, args.workdir, job.seed)
        print(" ".join(runner.command(experiment, args.workdir, job, context, extra)))
    return 0
  if not args.report_only:
    code = runner.run(experiment, args.workdir, rows, seeds, extra=extra, parallel=args.parallel,
                      log=lambda line: print(line, flush=True))
    if code:
      return code
  print(report.write(experiment, args.workdir, rows, seeds, extra, out=args.out))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
