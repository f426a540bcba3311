"""Shared test utilities."""
from __future__ import annotations

import os

from ml_collections import config_flags
from absl import flags

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
  from xmodal_jax import tasks
  return tasks.create(config, str(workdir))


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
