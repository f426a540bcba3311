"""The clip task on the spine: training end to end, a step with the chunked loss and gradient accumulation
(GradCache) == the plain full-batch step, bf16 compute, LiT with a locked ViT, the ViT-B/16 config (eval_shape at full
size, one step of its code path at tiny width with FSDP on 8 fake devices), and config errors."""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config
from xmodal_jax import errors, systems
from xmodal_jax.train import sharding, trainer

_TINY = "configs/clip/clip_shapes.py:tiny"


@pytest.fixture(scope="module")
def tiny_run(clip_tiny_run):
  """configs/clip/clip_shapes.py:tiny trained on a 2x4 mesh (4 steps; tests/conftest.py): (config, workdir,
  results)."""
  return clip_tiny_run


def test_tiny_clip_trains_and_reports_retrieval_and_zero_shot(tiny_run):
  config, workdir, results = tiny_run
  metrics = results["metrics"]
  assert results["step"] == config.train.num_steps and not results["stopped_early"]
  for key in ("val/i2t_r1", "test/t2i_r10", "zero_shot_val/accuracy", "zero_shot_test/top5_accuracy"):
    assert key in metrics and np.isfinite(metrics[key]), key
  assert metrics["zero_shot_val/num_classes"] == 10 and metrics["zero_shot_val/count"] == 64
  assert "zero_shot_val" in results["report"] and "Image->Text" in results["report"]
  assert os.path.exists(os.path.join(workdir, "tokenizer.json"))


def _one_step(config_args, workdir, batch_rows=None):
  """(metrics, new params, setup) of one train step of a fresh state built from `config_args` (same seed: same
  init)."""
  config = load_config(*config_args)
  setup = trainer.build(systems.create(config, workdir))
  state = setup.init_state(jax.random.PRNGKey(config.seed))
  data = setup.task.train_iterator(process_index=0, process_count=1)
  batch = next(data)
  if batch_rows is not None:  # duplicate images in the batch (two captions of one image)
    batch = {k: v[batch_rows] for k, v in batch.items()}
  step = trainer.make_train_step(setup)
  first_bad = jnp.array(-1, jnp.int32)
  state, _, metrics = step(state, setup.frozen, first_bad, sharding.global_batch_from_host(batch, setup.mesh))
  return jax.device_get(metrics), jax.device_get(state.params), setup


@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_accumulated_chunked_step_equals_the_plain_full_batch_step(tmp_path, loss):
  """The ring loss with GradCache over 4 micro-batches on a 4x2 mesh: the same loss, gradient norm and updated
  params as the plain loss over the whole batch at once (float32 rounding: rtol 2e-5), with duplicate images in the
  batch (images 0-3 twice, in other micro-batches and on other devices)."""
  rows = np.r_[np.arange(28), np.arange(4)]
  common = (_TINY, "--config.mesh.shape=(4,2)", f"--config.loss.kind={loss}")
  metrics_a, params_a, _ = _one_step(common, str(tmp_path / "a"), rows)
  metrics_b, params_b, _ = _one_step((*common, "--config.train.grad_accum_steps=4", "--config.loss.chunked=True"),
                                     str(tmp_path / "b"), rows)
  np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=2e-5)
  np.testing.assert_allclose(metrics_a["grad_norm"], metrics_b["grad_norm"], rtol=1e-4)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), params_a, params_b)


def test_bfloat16_compute_keeps_float32_params(tmp_path):
  metrics, params, setup = _one_step((_TINY, "--config.model.dtype=bfloat16"), str(tmp_path))
  assert np.isfinite(metrics["loss"])
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
  emb = jax.jit(setup.task.embed_image)({"params": params}, np.zeros((2, 64, 64, 3), np.uint8))
  assert emb.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, atol=1e-3)


def test_lit_locks_the_image_tower_of_a_finished_run(tiny_run, tmp_path):
  _, source, _ = tiny_run
  config = load_config(_TINY, f"--config.model.image.init_from={source}", "--config.model.image.locked=True",
                       "--config.train.num_steps=2")
  task = systems.create(config, str(tmp_path / "lit"))
  results = trainer.train_and_evaluate(task)
  assert np.isfinite(results["metrics"]["val/rsum"])
  trainable = results["state"].params
  assert "image_tower" not in trainable and {"text_tower", "image_proj", "text_proj"} <= set(trainable)
  original = systems.load_run(source).variables["params"]["image_tower"]
  locked = trainer.build(task).frozen["params"]["image_tower"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(original), jax.device_get(locked))


@pytest.mark.slow  # `bash launch/test.sh -m slow` (docs/development.md)
def test_vitb16_full_size_by_eval_shape_and_one_tiny_step_with_fsdp(tmp_path):
  from configs.clip import clip_vitb16  # pylint: disable=import-outside-toplevel
  from xmodal_jax.systems.clip import clip_task as clip  # pylint: disable=import-outside-toplevel
  full = clip_vitb16.get_config()
  model = clip.build_model(full, vocab_size=full.model.text.vocab_size)
  size, length = full.data.image_size, full.data.max_len
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                        jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), jnp.int32)))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  assert 85e6 < count(shapes["params"]["image_tower"]) < 87e6        # ViT-B/16
  assert 53e6 < count(shapes["params"]["text_tower"]) < 55e6         # 12 x 512 + a 32K vocabulary

  tiny = ("configs/clip/clip_vitb16.py:tiny", "--config.mesh.shape=(4,2)")
  config = load_config(*tiny)
  assert config.mesh.fsdp and config.loss.chunked and config.model.dtype == "bfloat16"
  assert config.model.image.remat and config.train.grad_accum_steps == 2
  metrics, _, setup = _one_step(tiny, str(tmp_path))
  assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
  kernel = setup.state_shardings.params["image_tower"]["encoder"]["layer_0"]["mlp"]["fc1"]["kernel"]
  assert kernel.spec == jax.sharding.PartitionSpec("data", "model")   # FSDP: embed over data, mlp over model


@pytest.mark.parametrize("override, message", [
    ("--config.model.image.locked=True", "needs config.model.image.init_from"),
    ("--config.train.grad_accum_steps=3", "not divisible by config.train.grad_accum_steps=3"),
    ("--config.loss.kind=triplet", "config.loss.kind='triplet'"),
    ("--config.model.image.pool=max", "config.model.image.pool=.max."),
])
def test_config_errors_name_the_field(tmp_path, override, message):
  config = load_config(_TINY, override)
  with pytest.raises((errors.UserError, ValueError), match=message.replace("(", r"\(").replace(")", r"\)")):
    trainer.build(systems.create(config, str(tmp_path)))


@pytest.mark.slow  # `bash launch/test.sh -m slow` (docs/development.md)
def test_lit_siglip_over_the_pretrained_towers(tmp_path):
  """configs/clip/siglip_flickr8k.py:tiny (dual_encoder task, EfficientNet-Lite0 locked from its feature cache,
  MiniLM's last layer trained, SigLIP's loss): trains, learns a bias, reports R@K and zero-shot accuracy."""
  from xmodal_jax.models import minilm  # pylint: disable=import-outside-toplevel
  ok, why = minilm.available()
  if not ok:
    pytest.skip(f"MiniLM weights unavailable: {why}")
  config = load_config("configs/clip/siglip_flickr8k.py:tiny")
  assert config.model.image.cut == "pooled" and config.loss.kind == "sigmoid"
  results = trainer.train_and_evaluate(systems.create(config, str(tmp_path)))
  params = results["state"].params
  assert set(params.get("image_tower", {})) == set()                      # locked: nothing of it trains
  assert float(params["logit_bias"]) != -10.0 and "text_tower" in params  # SigLIP's bias moved from its init
  assert np.isfinite(results["metrics"]["val/rsum"]) and "zero_shot_val/accuracy" in results["metrics"]
