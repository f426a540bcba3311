"""The spine's structure: frozen params are sharded arguments of the compiled step, parameter groups through
optax.multi_transform, one-way imports, params-only inference from a workdir alone, checkpoint retention."""
import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.helpers import REPO, load_config, make_task
from xmodal_jax import errors
from xmodal_jax.data.iterator import EpochBatchIterator
from xmodal_jax.models import layers
from xmodal_jax.train import checkpointing, inference, optimizer as optimizer_lib, sharding, trainer
from xmodal_jax.train.defaults import trainer_config
from xmodal_jax.train.state import TrainState
from xmodal_jax.train.task import Task


class _Head(nn.Module):
  @nn.compact
  def __call__(self, h):
    return layers.dense(1, ("mlp", None), name="out")(h)


class FrozenTowerTask(Task):
  """A frozen "pretrained" tower (random features, kernel [8, 16] sharded over `model`) and a trainable
  head, regressing a synthetic target. The tower comes from `frozen_params`, never from the optimiser."""

  def __init__(self, config, workdir, tower_seed: int = 0):
    super().__init__(config, workdir)
    self.tower_seed = tower_seed
    rng = np.random.default_rng(123)
    self.x = rng.normal(size=(64, 8)).astype(np.float32)
    self.y = np.sin(self.x.sum(1, keepdims=True)).astype(np.float32)
    self.head = _Head()

  def frozen_params(self):
    kernel = np.random.default_rng(self.tower_seed).normal(size=(8, 16)).astype(np.float32)
    return {"tower": {"kernel": nn.LogicallyPartitioned(kernel, ("embed", "mlp"))}}

  def init_variables(self, rng):
    return {"params": self.head.init(rng, jnp.zeros((1, 16)))["params"]}

  def train_iterator(self, *, process_index, process_count):
    return EpochBatchIterator(len(self.x), self.config.train.batch_size,
                              lambda i, k: {"x": self.x[i], "y": self.y[i]}, seed=0,
                              process_index=process_index, process_count=process_count, num_threads=1)

  def features(self, frozen, x):
    return jnp.tanh(x @ frozen["tower"]["kernel"])

  def frozen_params_arrays(self):
    return nn.meta.unbox(self.frozen_params())

  def loss_fn(self, params, batch, rng, ctx):
    pred = self.head.apply({"params": params}, self.features(ctx.frozen, batch["x"]))
    return jnp.mean((pred - batch["y"]) ** 2), {}

  def predict_fns(self):
    return {}


def _toy_config(**train):
  config = trainer_config()
  config.task = "frozen_tower_toy"
  config.mesh.shape = (2, 4)
  config.train.update(batch_size=16, num_steps=4, log_every=1, checkpoint_every=2, **train)
  config.optimizer.update(warmup_steps=0, learning_rate=0.05)
  return config


def test_frozen_params_are_sharded_step_arguments_and_stay_bit_identical(tmp_path):
  task = FrozenTowerTask(_toy_config(), str(tmp_path))
  setup = trainer.build(task)
  kernel = setup.frozen["tower"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")  # sharded like a param, not replicated
  step_fn = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(0))
  data = task.train_iterator(process_index=0, process_count=1)
  batch = sharding.global_batch_from_host(next(data), setup.mesh)
  first_bad = jnp.array(-1, jnp.int32)
  lowered = step_fn.lower(state, setup.frozen, first_bad, batch)
  # The tower is an argument of the program (with its sharding), not a constant baked into it.
  frozen_args = jax.tree.leaves(lowered.args_info[0][1], is_leaf=lambda x: hasattr(x, "donated"))
  assert [(a.shape, a.donated) for a in frozen_args] == [((8, 16), False)]
  assert not any("tensor<8x16xf32>" in line and "constant" in line for line in lowered.as_text().splitlines())
  compiled = lowered.compile()
  other = jax.device_put(jnp.zeros((8, 16)), kernel.sharding)
  _, _, with_tower = compiled(jax.tree.map(jnp.copy, state), setup.frozen, first_bad, batch)
  _, _, without = compiled(jax.tree.map(jnp.copy, state), {"tower": {"kernel": other}}, first_bad, batch)
  assert float(with_tower["loss"]) != float(without["loss"])  # same executable, new values: an argument
  # Training steps change the head and leave the tower bit-identical.
  before_tower, before_head = np.asarray(kernel).copy(), jax.tree.map(np.asarray, state.params)
  for _ in range(3):
    state, first_bad, _ = step_fn(state, setup.frozen, first_bad,
                                  sharding.global_batch_from_host(next(data), setup.mesh))
  np.testing.assert_array_equal(np.asarray(setup.frozen["tower"]["kernel"]), before_tower)
  assert any(not np.array_equal(a, np.asarray(b)) for a, b in
             zip(jax.tree.leaves(before_head), jax.tree.leaves(state.params)))


def test_frozen_params_are_not_checkpointed_and_must_match_on_resume(tmp_path):
  workdir = str(tmp_path / "run")
  stopped = trainer.train_and_evaluate(FrozenTowerTask(_toy_config(), workdir), stop_at_step=2)
  assert stopped["stopped_early"] and os.path.exists(os.path.join(workdir, trainer.FROZEN_FILE))
  saved = pathlib.Path(workdir, "checkpoints", "2")
  assert not any("tower" in p.name for p in saved.rglob("*"))  # only the trainable params were written
  with pytest.raises(errors.WorkdirError, match="frozen params of this run changed"):
    trainer.train_and_evaluate(FrozenTowerTask(_toy_config(), workdir, tower_seed=1))
  resumed = trainer.train_and_evaluate(FrozenTowerTask(_toy_config(), workdir))
  straight = trainer.train_and_evaluate(FrozenTowerTask(_toy_config(), str(tmp_path / "straight")))
  assert resumed["step"] == straight["step"] == 4
  for a, b in zip(jax.tree.leaves(resumed["state"].params), jax.tree.leaves(straight["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_frozen_subtree_through_multi_transform(tmp_path):
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.mesh.shape=(2,4)",
                       "--config.optimizer.groups=(('image_backbone/.*', 0.0), ('text_proj/.*', 0.5))")
  setup = trainer.build(make_task(config, tmp_path))
  step_fn = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(0))
  before = jax.tree.map(np.asarray, state.params)
  data = setup.task.train_iterator(process_index=0, process_count=1)
  first_bad = jnp.array(-1, jnp.int32)
  for _ in range(3):
    state, first_bad, metrics = step_fn(state, setup.frozen, first_bad,
                                        sharding.global_batch_from_host(next(data), setup.mesh))
  assert int(first_bad) == -1
  for name, subtree in before.items():
    same = all(np.array_equal(a, np.asarray(b)) for a, b in
               zip(jax.tree.leaves(subtree), jax.tree.leaves(state.params[name])))
    assert same == (name == "image_backbone"), name
  # No optimiser moments are kept for the frozen subtree: adam's state holds 2 arrays per other param.
  frozen_size = sum(x.size for x in jax.tree.leaves(before["image_backbone"]))
  total = sum(x.size for x in jax.tree.leaves(before))
  moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
  assert moments == 2 * (total - frozen_size)
  with pytest.raises(ValueError, match="matches no parameter"):
    bad = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.optimizer.groups=(('imag_backbone/.*', 0.0),)")
    trainer.build(make_task(bad, tmp_path / "bad"))


def test_learning_rate_multiplier_group_scales_the_update():
  cfg = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1, schedule="constant", warmup_steps=0,
                                       weight_decay=0.0, grad_clip_norm=0.0, b1=0.9, b2=0.999, momentum=0.0,
                                       groups=(("slow/.*", 0.25), ("still/.*", 0.0))))
  tx = optimizer_lib.create_optimizer(cfg, num_steps=10)
  params = {"fast": {"w": jnp.ones(3)}, "slow": {"w": jnp.ones(3)}, "still": {"w": jnp.ones(3)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["fast"]["w"], -0.2)
  np.testing.assert_allclose(updates["slow"]["w"], -0.05)
  np.testing.assert_allclose(updates["still"]["w"], 0.0)


def test_step_schedule_and_a_group_that_starts_later():
  """The VSE++ protocol's pieces: lr x step_factor at each boundary; a group (a tower) frozen for a first phase."""
  cfg = ml_collections.ConfigDict(dict(name="sgd", learning_rate=0.1, schedule="step", warmup_steps=2,
                                       step_boundaries=(5, 8), step_factor=0.1, weight_decay=0.0, grad_clip_norm=0.0,
                                       b1=0.9, b2=0.999, momentum=0.0, groups=(("late/.*", 1.0, 4),)))
  lr = optimizer_lib.learning_rate_schedule(cfg, 10)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 1, 2, 4, 5, 7, 8, 9)],
                             [0.0, 0.05, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  tx = optimizer_lib.create_optimizer(cfg, num_steps=10)
  params = {"early": {"w": jnp.ones(2)}, "late": {"w": jnp.ones(2)}}
  state = tx.init(params)
  moved = []
  for _ in range(6):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    moved.append((float(jnp.abs(updates["early"]["w"]).sum()) > 0, float(jnp.abs(updates["late"]["w"]).sum()) > 0))
  assert moved == [(False, False), (True, False), (True, False), (True, False), (True, True), (True, True)]
  with pytest.raises(errors.ConfigError, match="step_boundaries"):
    optimizer_lib.learning_rate_schedule(ml_collections.ConfigDict(dict(cfg.to_dict(), step_boundaries=(5, 3))), 10)


def test_final_figures_from_the_best_validation_checkpoint(tmp_path):
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.checkpoint.final_from=best",
                       "--config.train.num_steps=6", "--config.evals.val.every=2")
  out = trainer.train_and_evaluate(make_task(config, tmp_path))
  results = json.load(open(tmp_path / "results.json"))
  reported = results["checkpoint"]
  assert reported["which"] == "best" and reported["by"] == "val/rsum" and reported["step"] in (2, 4, 6)
  assert out["step"] == 6
  # The figures are those of the checkpoint the best-metric policy kept, re-measured from the workdir.
  again = trainer.evaluate_checkpoint(make_task(config, tmp_path), which="best")
  assert again["step"] == reported["step"]
  for key, value in again["metrics"].items():
    assert results["metrics"][key] == pytest.approx(value, abs=1e-6), key


BUILDING_BLOCKS = ("models", "objectives", "data", "evaluation", "serving", "task_bases")
APPLICATION = ("xmodal_jax.systems", "xmodal_jax.pipeline", "xmodal_jax.main")


def _imports(path: pathlib.Path) -> set[str]:
  """Every module a file imports, at any depth (lazy imports inside functions included)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{alias.name}" for alias in node.names)
  return out


def test_imports_go_one_way():
  package = pathlib.Path(REPO, "xmodal_jax")
  offenders = []
  for sub in BUILDING_BLOCKS + ("train",):
    for path in (package / sub).rglob("*.py"):
      forbidden = APPLICATION + (() if sub == "train" else ("xmodal_jax.train.trainer",))
      bad = sorted(m for m in _imports(path) if m.startswith(forbidden))
      if bad:
        offenders.append(f"{path.relative_to(REPO)} imports {bad}")
  assert not offenders, offenders
  # And at run time: loading the trainer loads no task.
  code = ("import sys, xmodal_jax.train.trainer, xmodal_jax.train.inference; "
          "print(sorted(m for m in sys.modules if m.startswith(('xmodal_jax.systems', 'xmodal_jax.pipeline'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]", out.stdout


def test_a_run_loads_for_inference_without_any_data_source(tmp_path, monkeypatch):
  from tests.test_sources import _caption_folder
  from xmodal_jax import systems
  from xmodal_jax.data import records, sources
  data_dir, prepared_dir, workdir = tmp_path / "data", tmp_path / "prepared", str(tmp_path / "run")
  _caption_folder(str(data_dir), n_train=16, n_val=8)
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", f"--config.data.source=folder:{data_dir}",
                       f"--config.data.prepared_dir={prepared_dir}", "--config.data.prepare_size=24",
                       "--config.data.image_size=24", "--config.train.batch_size=8", "--config.train.num_steps=3",
                       "--config.evals.val.batch_size=8", "--config.evals.val.every=0",
                       "--config.evals.test.at_end=False")
  results = trainer.train_and_evaluate(make_task(config, workdir))
  images = np.stack([records.load_image(str(data_dir / "images" / f"{i:03d}.jpg"))[:24, :24] for i in (16, 17)])
  shutil.rmtree(data_dir)
  shutil.rmtree(prepared_dir)

  def no_data(*args, **kwargs):
    raise AssertionError("inference read a data source")

  monkeypatch.setattr(sources, "load_split", no_data)
  model = systems.load_run(workdir, mesh_shape=(-1, 1))
  assert model.step == 3 and set(model.variables) == {"params"}
  for a, b in zip(jax.tree.leaves(model.variables["params"]), jax.tree.leaves(results["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the final params, no optimiser state
  text = model.predict("embed_text", model.task.encode_texts(["photo 16 of a colour", "something else"]))
  image = model.predict("embed_image", {"images": images})
  assert text.shape == image.shape == (2, config.model.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
  # Params only: the optimiser part of the checkpoint is not needed.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3", "train"))
  again = systems.load_run(workdir, mesh_shape=(-1, 1))
  np.testing.assert_array_equal(again.predict("embed_image", {"images": images}), image)


def _toy_state(value: float) -> TrainState:
  tx = optax.sgd(0.1)
  params = {"w": jnp.full((4,), value)}
  return TrainState(step=jnp.array(0, jnp.int32), params=params, model_state={}, opt_state=tx.init(params),
                    rng=jax.random.PRNGKey(0), tx=tx)


def test_checkpoints_keep_the_latest_n_and_the_best(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=2, best_metric="val/score", use_async=False)
  scores = {2: 0.9, 4: 0.5, 6: 0.7}
  for step in range(1, 7):
    ranked = {"val/score": scores[step]} if step in scores else None
    ckpt.save(step, _toy_state(float(step)), {"epoch": 0, "batch": step, "seed": 0}, metrics=ranked)
  ckpt.wait()
  assert ckpt.best_step() == 2 and ckpt.latest_step() == 6
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 5, 6]
  abstract = jax.eval_shape(lambda: _toy_state(0.0))
  step, state, data = ckpt.restore(abstract, which="best")
  assert step == 2 and float(state.params["w"][0]) == 2.0 and data["batch"] == 2
  with pytest.raises(ValueError, match="not among the evaluation metrics"):
    ckpt.save(7, _toy_state(7.0), {}, metrics={"val/other": 1.0})
  ckpt.close()
  with pytest.raises(FileNotFoundError, match="train first"):
    checkpointing.Checkpointer(str(tmp_path / "missing"), create=False)


class ShardMapLossTask(FrozenTowerTask):
  """The same toy, its loss written with `jax.shard_map` over the step's mesh: per-device squared errors summed
  with `psum` over `data` (what chunked global-batch losses do)."""

  def loss_fn(self, params, batch, rng, ctx):
    from jax.sharding import PartitionSpec as P
    pred = self.head.apply({"params": params}, self.features(ctx.frozen, batch["x"]))

    def per_shard(err):
      return jax.lax.psum(jnp.sum(err ** 2), "data")

    total = jax.shard_map(per_shard, mesh=ctx.mesh, in_specs=P("data"), out_specs=P(), check_vma=False)(
        pred - batch["y"])
    return total / pred.size, {}


def test_a_step_reaches_the_mesh_for_shard_map(tmp_path):
  plain = trainer.train_and_evaluate(FrozenTowerTask(_toy_config(), str(tmp_path / "plain")))
  mapped = trainer.train_and_evaluate(ShardMapLossTask(_toy_config(), str(tmp_path / "mapped")))
  for a, b in zip(jax.tree.leaves(plain["state"].params), jax.tree.leaves(mapped["state"].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


class _NormHead(nn.Module):
  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
    return layers.dense(1, ("mlp", None), name="out")(x)


class BatchStatsTask(FrozenTowerTask):
  """The toy with a BatchNorm head: its running statistics are model state, updated by the step (not by the
  optimiser), checkpointed with the params and read by inference."""

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.head = _NormHead()

  def init_variables(self, rng):
    return dict(self.head.init(rng, jnp.zeros((1, 16)), train=False))

  def train_step(self, state, batch, rng, ctx):
    h = self.features(ctx.frozen, batch["x"])

    def loss_fn(params):
      pred, updates = self.head.apply({"params": params, **ctx.model_state}, h, train=True, mutable=["batch_stats"])
      return jnp.mean((pred - batch["y"]) ** 2), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, model_state=dict(updates)), {"loss": loss}

  def predict(self, variables, x):
    return self.head.apply({k: v for k, v in variables.items() if k != "frozen"},
                           self.features(variables["frozen"], x), train=False)

  def predict_fns(self):
    return {"predict": self.predict}


def test_model_state_is_updated_by_the_step_checkpointed_and_used_by_inference(tmp_path):
  workdir = str(tmp_path / "run")
  first = trainer.train_and_evaluate(BatchStatsTask(_toy_config(), workdir), stop_at_step=2)
  stats = first["state"].model_state["batch_stats"]
  assert not np.allclose(np.asarray(stats["BatchNorm_0"]["mean"]), 0.0)  # moved by the steps, not the optimiser
  opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(first["state"].opt_state)[0]]
  assert opt_paths and not any(p.endswith(("['mean']", "['var']")) for p in opt_paths)  # not optimiser state
  resumed = trainer.train_and_evaluate(BatchStatsTask(_toy_config(), workdir))
  straight = trainer.train_and_evaluate(BatchStatsTask(_toy_config(), str(tmp_path / "straight")))
  for a, b in zip(jax.tree.leaves(resumed["state"].model_state), jax.tree.leaves(straight["state"].model_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  loaded = inference.load_model(BatchStatsTask(_toy_config(), workdir), mesh_shape=(-1, 1))
  assert set(loaded.variables) == {"params", "batch_stats", "frozen"}
  x = np.random.default_rng(5).normal(size=(8, 8)).astype(np.float32)
  task = loaded.task
  want = task.head.apply({"params": straight["state"].params, **straight["state"].model_state},
                         task.features(task.frozen_params_arrays(), x), train=False)
  np.testing.assert_allclose(loaded.predict("predict", {"x": x}), np.asarray(want), rtol=1e-5, atol=1e-6)
