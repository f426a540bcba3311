"""The command line as a user runs it (the installed `xmodal` console script): help that helps, flags that belong
to their command, --config.x=y overrides, `xmodal eval` from the run's config.json, a start-up without the
libraries' noise; and the progress bar (xmodal_jax/progress.py)."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY, cli_env, subprocess_xla_flags
from xmodal_jax import commands, progress

XMODAL = os.path.join(os.path.dirname(sys.executable), "xmodal")
ABSL_INFO_PREFIX = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ", re.M)  # "I1207 20:56:28.580309 1406786 "


def xmodal(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
  assert os.path.exists(XMODAL), f"{XMODAL} is missing: `pip install -e .` installs the console script"
  return subprocess.run([XMODAL, *args], cwd=REPO, env=env or cli_env(), capture_output=True, text=True,
                        timeout=timeout)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["help"]])
def test_help_lists_every_command_with_its_summary(args):
  result = xmodal(*args)
  assert result.returncode == 0, result.stderr
  for name, command in commands.COMMANDS.items():
    assert re.search(rf"^  {re.escape(name)} +{re.escape(command.summary)}$", result.stdout, re.M), name
  assert "USAGE:" not in result.stdout + result.stderr  # absl's usage of the console script's wrapper module


def test_train_help_shows_only_train_flags_with_defaults():
  result = xmodal("train", "--help")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert out.startswith("usage: xmodal train --config=FILE[:VARIANT] --workdir=DIR [--config.FIELD=VALUE ...]")
  for flag in ("--config=FILE[:VARIANT]", "--workdir=DIR", "--stop_at_step=N", "--stages=", "--[no]multihost",
               "--[no]allow_config_change", "--verbosity=N", "--[no]verbose"):
    assert flag in out, flag
  for other in ("--port", "--rerank", "--export=", "--decode", "--image_size", "--split"):
    assert other not in out, other
  assert "prepare:" not in out and "export:" not in out


def test_serve_help_shows_serve_flags_with_defaults():
  result = xmodal("serve", "-h")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "--port=PORT\n      TCP port. (default: 8000)" in out
  assert "--host=HOST" in out and "(default: 127.0.0.1)" in out
  assert "--rerank=K" in out and "0: off" in out and "--caption_db=DIR" in out
  assert "--config" not in out and "--workdir" not in out and "--multihost" not in out


def test_eval_help_says_the_config_defaults_to_the_runs_config_json():
  result = xmodal("help", "eval")
  assert result.returncode == 0 and "WORKDIR/config.json" in result.stdout


def test_a_flag_of_another_command_is_refused_naming_the_commands_flags():
  result = xmodal("index", "--port=1")
  assert result.returncode == 2 and result.stdout == ""
  assert ("xmodal index: error: --port is not a flag of index; its flags: --export, --out, --method, --what"
          in result.stderr), result.stderr
  both = xmodal("index", "--export=/nowhere", "--port=1", "--decode=beam")
  assert both.returncode == 2 and "--decode, --port are not flags of index" in both.stderr
  override = xmodal("index", "--export=/nowhere", f"--config={TINY}", "--config.train.num_steps=2")
  assert override.returncode == 2 and "--config, --config.train.num_steps are not flags of index" in override.stderr
  exclusive = xmodal("export", "--workdir=/nowhere", "--out=/nowhere", "--images=/nowhere", "--split=val")
  assert exclusive.returncode == 2 and "--images" in exclusive.stderr and "pass one" in exclusive.stderr
  unknown = xmodal("help", "frobnicate")
  assert unknown.returncode == 2 and "no command 'frobnicate'" in unknown.stderr


def test_every_flag_of_the_command_line_belongs_to_a_command():
  from xmodal_jax import main
  defined = {flag.name for flag in main.FLAGS.get_flags_for_module(main.__name__)}
  assert defined == commands.own_flags()
  for name, command in commands.COMMANDS.items():
    assert all(flag in defined for flag in command.notes), name
    assert set(command.notes) <= set(command.flags), name


def test_training_through_the_console_script_is_quiet_and_eval_reads_the_runs_config(tmp_path):
  """--config.x=y overrides apply; start-up says what matters and nothing else; a progress line; `xmodal eval
  --workdir=RUN` without --config evaluates with RUN/config.json; --verbosity=1 brings the libraries' logs back."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
  env["XLA_FLAGS"] = subprocess_xla_flags()  # one CPU device; JAX picks the platform itself, as for a user
  workdir = tmp_path / "run"
  trained = xmodal("train", f"--config={TINY}", f"--workdir={workdir}", "--config.train.num_steps=2",
                   "--config.evals.val.every=0", env=env)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert json.loads((workdir / "results.json").read_text())["step"] == 2  # the override applied
  err = trained.stderr
  assert re.search(r"^Task vsepp in .*run: [\d,]+ trainable parameters, mesh data 1 x model 1, global batch \d+, "
                   r"2 steps", err, re.M), err[-3000:]
  assert re.search(r"^Training: 2/2 steps \(100%\), [\d.]+ steps/s, \d\d:\d\d elapsed", err, re.M), err[-3000:]
  for noise in ("Unable to initialize backend", "[Hyperparameters]", "oneDNN", "Trainable params", "| Name"):
    assert noise not in err, noise
  assert not ABSL_INFO_PREFIX.search(err), err[-3000:]
  assert "image_proj/kernel" in (workdir / "parameters.txt").read_text()  # the parameter table: in the workdir

  evaluated = xmodal("eval", f"--workdir={workdir}", "--split=test", "--verbosity=1", env=env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = json.loads(evaluated.stdout.split("metrics: ", 1)[1].splitlines()[0])
  assert metrics["step"] == 2 and "test/rsum" in metrics
  assert re.search(r"^I\d{4} .* (xla_bridge|dispatch|pxla|compiler)\.py:\d+\]", evaluated.stderr, re.M)


# ---- xmodal_jax/progress.py

class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_in_logs_writes_a_line_every_tenth_with_rate_and_eta():
  out = io.StringIO()
  with progress.bar(95, "Caching features", unit="examples", file=out, enabled=True) as bar:
    for _ in range(19):
      bar.update(5)
  lines = out.getvalue().splitlines()
  assert len(lines) == 10, lines  # 10%, 20%, ..., 90% and the end
  assert re.fullmatch(r"Caching features: 10/95 examples \(11%\), [\d.]+ examples/s, 00:00 elapsed, ETA 00:00",
                      lines[0]), lines[0]
  assert lines[-1].startswith("Caching features: 95/95 examples (100%)") and "ETA" not in lines[-1]


def test_progress_resumed_postfix_error_and_other_processes():
  out = io.StringIO()
  with progress.bar(100, "Training", unit="steps", file=out, enabled=True, initial=40) as bar:
    bar.set_postfix("loss 0.5")
    bar.update(20)
  assert out.getvalue().splitlines()[0].startswith("Training: 60/100 steps (60%)")
  assert out.getvalue().rstrip().endswith("loss 0.5") and bar.n == 60
  failed = io.StringIO()
  with pytest.raises(RuntimeError):
    with progress.bar(100, "Exporting", file=failed, enabled=True) as bar:
      bar.update(3)  # below 10%: no line yet
      raise RuntimeError("boom")
  assert failed.getvalue() == ""  # no last line: the error is reported instead
  quiet = io.StringIO()
  with progress.bar(10, "Exporting", file=quiet, enabled=False) as bar:
    bar.update(10)
  assert quiet.getvalue() == ""
  with pytest.raises(ValueError):
    progress.bar(10, "x", every=0)


def test_progress_on_a_terminal_is_one_line_updated_in_place():
  out = _Terminal()
  with progress.bar(4, "Indexing", unit="vectors", file=out, enabled=True) as bar:
    for _ in range(4):
      bar.update(1)
  text = out.getvalue()
  assert "\r" in text and "\n" not in text.rstrip("\n")
  assert "Indexing: 100%|" in text and "4/4" in text and "vectors/s" in text


def test_the_quiet_environment_and_log_filter_step_aside_at_verbosity_1():
  import logging

  from xmodal_jax import log_noise
  assert [log_noise.asked_verbosity(["xmodal", *args]) for args in (
      [], ["--verbosity=1"], ["-v", "2"], ["--v=1"], ["--verbose"], ["--", "--verbosity=1"])] == [0, 1, 2, 1, 0, 0]
  environ = {"TF_CPP_MIN_LOG_LEVEL": "0"}
  log_noise.quiet_environment(["xmodal", "train"], environ)
  assert environ == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}  # a variable already set is kept
  loud = {}
  log_noise.quiet_environment(["xmodal", "train", "--verbosity=1"], loud)
  assert loud == {}

  def record(path, level):
    return logging.LogRecord("x", level, path, 1, "msg", None, None)

  only_ours = log_noise.OnlyOurInfo(keep=("/orbax/",))
  ours = os.path.join(log_noise.PACKAGE_DIR, "train", "trainer.py")
  assert only_ours.filter(record(ours, logging.INFO))
  assert not only_ours.filter(record("/site-packages/jax/_src/xla_bridge.py", logging.INFO))
  assert only_ours.filter(record("/site-packages/jax/_src/xla_bridge.py", logging.WARNING))
  assert only_ours.filter(record("/site-packages/orbax/checkpoint/x.py", logging.INFO))
