r"""The mFSR ablation (seed 003, Table 3): train every row with one budget and batch size over several seeds and
write one markdown table of R@1/5/10 in both directions and rsum, mean +- std over the seeds, and each row's
rsum minus the first row's, seed by seed (paired: a seed fixes the data order and initial draws). The machinery
is task_bases/ablation.py.

  python -m xmodal_jax.systems.vse.mfsr_ablation --config=configs/retrieval/mfsr_shapes.py \
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

import sys

from xmodal_jax.task_bases import ablation

_OFF = {"modal": 0, "specific": 0, "image": 0, "caption": 0}
# Row name -> (label in the paper's Table 3, loss weights != 1, separation on).
_TABLE3 = {
    "vsepp": ("VSE++", _OFF, False),
    "mo": ("+mo", dict(_OFF, modal=1), True),
    "sp": ("+sp", dict(_OFF, specific=1), True),
    "mo_sp": ("+mo+sp", dict(_OFF, modal=1, specific=1), True),
    "mo_sp_img": ("+mo+sp+img-re", dict(_OFF, modal=1, specific=1, image=1), True),
    "mo_sp_cap": ("+mo+sp+cap-re", dict(_OFF, modal=1, specific=1, caption=1), True),
    "full": ("full mFSR", dict(_OFF, modal=1, specific=1, image=1, caption=1), True),
}


def row_flags(row: str, reconstruction_evals: list[str]) -> list[str]:
  """The overrides of a row; rows without image reconstruction turn its evaluators off."""
  _, weights, separation = _TABLE3[row]
  flags = [f"--config.model.separation.enabled={separation}"]
  flags += [f"--config.loss_weights.{k}={float(v)}" for k, v in weights.items()]
  return flags + ([f"--config.evals.{name}.at_end=False" for name in reconstruction_evals] if not weights["image"]
                  else [])


def _reconstruction_evals(config) -> list[str]:
  return [name for name, spec in config.evals.items() if spec.type == "image_reconstruction"]


ROWS = {name: ablation.Row(label, lambda config, name=name: row_flags(name, _reconstruction_evals(config)))
        for name, (label, _, _) in _TABLE3.items()}


def main(argv: list[str]) -> int:
  trained = ablation.train_rows("mfsr_ablation", __doc__, ROWS, argv)
  if isinstance(trained, int):
    return trained
  args, rows, seeds, extra, _ = trained
  table = ablation.retrieval_table({row: [ablation.results(args.workdir, row, s) for s in seeds] for row in rows},
                                   {row: ROWS[row].label for row in rows}, args.split)
  ablation.write_report(args, seeds, extra, [table])
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
