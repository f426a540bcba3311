"""The trainer: sharded step == single-device step, kill/resume exactness, NaN guard, CLI end to end."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import REPO, load_config, make_task, subprocess_xla_flags
from xmodal_jax.train import sharding, trainer


def _tiny(*overrides):
  return load_config("configs/retrieval/vsepp_shapes.py:tiny", *overrides)


def _run_steps(config, workdir, devices, num_steps):
  setup = trainer.build(make_task(config, workdir), devices)
  step_fn = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(config.seed))
  data = setup.task.train_iterator(process_index=0, process_count=1)
  first_bad = jax.numpy.array(-1, jax.numpy.int32)
  losses = []
  for _ in range(num_steps):
    batch = sharding.global_batch_from_host(next(data), setup.mesh)
    state, first_bad, metrics = step_fn(state, setup.frozen, first_bad, batch)
    losses.append(float(metrics["loss"]))
  return setup, state, losses


def test_2x4_mesh_step_matches_single_device(tmp_path):
  assert jax.device_count() == 8, "tests/conftest.py should provide 8 fake CPU devices"
  single_cfg = _tiny("--config.mesh.shape=(1,1)")
  _, single, single_losses = _run_steps(single_cfg, tmp_path / "one", jax.devices()[:1], 3)
  mesh_cfg = _tiny("--config.mesh.shape=(2,4)")
  setup, sharded, sharded_losses = _run_steps(mesh_cfg, tmp_path / "eight", None, 3)
  # The parameters really are spread over the mesh: some over `model` (4-way), the batch over `data`.
  specs = [s.spec for s in jax.tree.leaves(setup.state_shardings.params)]
  assert any("model" in tuple(spec) for spec in specs)
  assert dict(setup.mesh.shape) == {"data": 2, "model": 4}
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-4, atol=2e-5)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)
  assert int(sharded.step) == 3


def test_fsdp_rules_shard_params_over_data(tmp_path):
  config = _tiny("--config.mesh.shape=(2,4)", "--config.mesh.fsdp=True")
  setup = trainer.build(make_task(config, tmp_path), None)
  specs = [tuple(s.spec) for s in jax.tree.leaves(setup.state_shardings.params)]
  assert any("data" in spec for spec in specs)


def test_kill_and_resume_reaches_identical_state(tmp_path):
  overrides = ("--config.train.num_steps=6", "--config.train.checkpoint_every=100", "--config.evals.val.every=0")
  straight = trainer.train_and_evaluate(make_task(_tiny(*overrides), tmp_path / "straight"))
  killed = trainer.train_and_evaluate(make_task(_tiny(*overrides), tmp_path / "resumed"), stop_at_step=4)
  assert killed["stopped_early"] and killed["step"] == 4
  resumed = trainer.train_and_evaluate(make_task(_tiny(*overrides), tmp_path / "resumed"))
  assert not resumed["stopped_early"] and resumed["step"] == 6
  for a, b in zip(jax.tree.leaves(straight["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert straight["metrics"] == resumed["metrics"]
  # Control: a run that resumes from a different data position diverges, so the check above has teeth.
  shifted = trainer.train_and_evaluate(make_task(_tiny(*overrides, "--config.seed=1"), tmp_path / "shifted"))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(straight["state"].params), jax.tree.leaves(shifted["state"].params)))


def test_nan_guard_names_the_step(tmp_path):
  config = _tiny("--config.optimizer.learning_rate=1e30", "--config.optimizer.grad_clip_norm=0.0",
                 "--config.optimizer.warmup_steps=0", "--config.train.num_steps=6")
  with pytest.raises(trainer.NonFiniteLossError, match=r"NaN/Inf at step \d+"):
    trainer.train_and_evaluate(make_task(config, tmp_path))


def test_cli_train_then_eval(tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags(), JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "xmodal_jax.main"]
  train = subprocess.run(cmd + ["train", "--config=configs/retrieval/vsepp_shapes.py:tiny", f"--workdir={workdir}",
                                "--config.train.num_steps=4"], cwd=REPO, env=env, capture_output=True, text=True)
  assert train.returncode == 0, train.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["step"] == 4 and "test/i2t_r1" in results["metrics"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir)), os.listdir(workdir)
  assert os.path.exists(os.path.join(workdir, "tokenizer.json"))
  ev = subprocess.run(cmd + ["eval", "--config=configs/retrieval/vsepp_shapes.py:tiny", f"--workdir={workdir}",
                             "--split=test"], cwd=REPO, env=env, capture_output=True, text=True)
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert "Image->Text" in ev.stdout, ev.stdout
  # The restored latest checkpoint reproduces the training run's final test metrics exactly.
  line = [l for l in ev.stdout.splitlines() if l.startswith("metrics: ")][-1]
  restored = json.loads(line[len("metrics: "):])
  assert restored["step"] == 4
  for key, value in results["metrics"].items():
    if key.startswith("test/"):
      assert restored[key] == pytest.approx(value, abs=1e-6), key
  best = subprocess.run(cmd + ["eval", "--config=configs/retrieval/vsepp_shapes.py:tiny", f"--workdir={workdir}",
                               "--split=val", "--checkpoint=best"], cwd=REPO, env=env, capture_output=True, text=True)
  assert best.returncode == 0 and "best checkpoint" in best.stdout, best.stderr[-3000:]
  bad = subprocess.run(cmd + ["train", "--config=configs/retrieval/vsepp_shapes.py:tiny", f"--workdir={workdir}",
                              "--config.train.no_such_key=1"], cwd=REPO, env=env, capture_output=True, text=True)
  assert bad.returncode != 0 and "no_such_key" in bad.stderr
