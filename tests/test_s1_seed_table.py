"""The seed table: mean (std) per classifier and the paired fusion - pixel-only difference, from runs' results."""
import json
import os

import pytest

from xmodal_jax import errors
from xmodal_jax.systems.classifier import seed_table


def _run(root, name, pixel, text, fusion):
  for stage, acc in (("pixel_only", pixel), ("text_only", text), ("fusion", fusion)):
    os.makedirs(root / name / stage)
    with open(root / name / stage / "results.json", "w") as f:
      json.dump({"metrics": {"test/accuracy": acc, "test/mean_class_accuracy": acc - 1.0}}, f)
  return str(root / name)


def test_paired_difference_mean_std_and_sign_count(tmp_path):
  dirs = [_run(tmp_path, "s0", 90.0, 30.0, 91.0), _run(tmp_path, "s1", 92.0, 31.0, 92.5),
          _run(tmp_path, "s2", 91.0, 29.0, 90.5)]
  table = seed_table.seed_table(dirs, "test")
  assert "91.00 (1.00)" in table                       # pixel only: mean 91, sd 1 (ddof=1)
  assert "+1.00 / +0.50 / -0.50" in table              # fusion - pixel, per seed
  assert "+0.33 (0.76); 2/3 > 0" in table              # mean, sd of the differences, seeds favouring fusion
  assert "p = " in table


def test_an_unfinished_run_is_named(tmp_path):
  done = _run(tmp_path, "s0", 90.0, 30.0, 91.0)
  with pytest.raises(errors.MissingError, match="has not finished stage 'pixel_only'"):
    seed_table.seed_table([done, str(tmp_path / "missing")], "test")
  assert seed_table.main([done]) != 0
