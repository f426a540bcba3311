"""mFSR (seed 003): each loss against a NumPy reference, the separation's normalisation options, the alternating
GAN step (each optimiser moves only its own parameters, with only its own loss), the caption decoder's padding
mask, the 8-device step == 1-device step and the cached-feature path == the raw-image path (the ablation's rows and
table: tests/test_experiments.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config, make_task
from xmodal_jax import errors
from xmodal_jax.data.captions import teacher_forcing
from xmodal_jax.models.caption_decoder import GRUCaptionDecoder
from xmodal_jax.objectives.contrastive_hinge import contrastive_hinge_loss
from xmodal_jax.objectives.scst import teacher_forcing_loss
from xmodal_jax.systems.vse import feature_separation_objective as fs, gan_objective as gan
from xmodal_jax.systems.vse.feature_separation_model import FeatureSeparation
from xmodal_jax.train import sharding, trainer

SHAPES = "configs/retrieval/mfsr_shapes.py:tiny"
NO_WARMUP = "--config.optimizer.warmup_steps=0"  # (the first step's learning rate is not 0)


def _unit(rng, *shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _bce(logits, label):
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  return float(np.mean(-(label * np.log(p) + (1 - label) * np.log(1 - p))))


# ---- losses vs NumPy
def test_modal_loss_matches_numpy():
  rng = np.random.default_rng(0)
  v, l = _unit(rng, 9, 5), _unit(rng, 9, 5) + 0.3
  want = (np.mean(np.linalg.norm(v - v.mean(0), axis=1) + np.linalg.norm(l - l.mean(0), axis=1))
          + np.exp(-np.linalg.norm(v.mean(0) - l.mean(0))))
  got, aux = fs.modal_loss(jnp.asarray(v), jnp.asarray(l))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  np.testing.assert_allclose(float(aux["modal_gap"]), np.linalg.norm(v.mean(0) - l.mean(0)), rtol=1e-5)
  # Separating the two modal means lowers the loss (the reading of eq. 7's exponent).
  assert float(fs.modal_loss(jnp.asarray(v), jnp.asarray(l + 2.0))[0]) < float(got)


def test_specific_loss_matches_numpy():
  rng = np.random.default_rng(1)
  v_sp, v_se, l_sp, l_se = (_unit(rng, 7, 4) for _ in range(4))
  want = np.mean(np.exp(np.sum(v_sp * v_se, 1)) + np.exp(np.sum(l_sp * l_se, 1)))
  got, _ = fs.specific_loss(*(jnp.asarray(a) for a in (v_sp, v_se, l_sp, l_se)))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_semantic_loss_is_the_max_violation_hinge_in_numpy():
  rng = np.random.default_rng(2)
  v, l = _unit(rng, 6, 8), _unit(rng, 6, 8)
  s = v @ l.T
  pos = np.diag(s)
  cost_c = np.maximum(0, 0.2 - pos[:, None] + s)
  cost_i = np.maximum(0, 0.2 - pos[None, :] + s)
  np.fill_diagonal(cost_c, 0)
  np.fill_diagonal(cost_i, 0)
  want = np.mean(cost_c.max(1) + cost_i.max(0))
  got, _ = contrastive_hinge_loss(jnp.asarray(v), jnp.asarray(l), margin=0.2, max_violation=True)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_gan_losses_match_numpy():
  rng = np.random.default_rng(3)
  real, fake, match, mismatch = (rng.normal(size=10).astype(np.float32) * 3 for _ in range(4))
  d, aux = gan.discriminator_loss(*(jnp.asarray(a) for a in (real, fake, match, mismatch)))
  np.testing.assert_allclose(float(d), _bce(real, 1) + _bce(fake, 0) + _bce(match, 1) + _bce(mismatch, 0), rtol=1e-5)
  np.testing.assert_allclose(float(aux["d1_loss"]), _bce(real, 1) + _bce(fake, 0), rtol=1e-5)
  g, _ = gan.generator_loss(*(jnp.asarray(a) for a in (fake, match, mismatch)))
  np.testing.assert_allclose(float(g), _bce(fake, 1) + _bce(match, 1) + _bce(mismatch, 0), rtol=1e-5)


def test_caption_loss_matches_numpy_and_masks_padding():
  rng = np.random.default_rng(4)
  tokens = np.asarray([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]], np.int32)
  tf = teacher_forcing(tokens, 6)
  logits = rng.normal(size=(2, 6, 12)).astype(np.float32)
  mask = tf["targets"] != 0
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, tf["targets"][..., None], -1)[..., 0]
  want = float(np.sum(nll * mask) / mask.sum())
  got, _ = teacher_forcing_loss(jnp.asarray(logits), jnp.asarray(tf["targets"]), jnp.asarray(mask))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Logits at padding positions do not count.
  noisy = np.where(mask[..., None], logits, rng.normal(size=logits.shape) * 100).astype(np.float32)
  np.testing.assert_allclose(float(teacher_forcing_loss(jnp.asarray(noisy), jnp.asarray(tf["targets"]),
                                                        jnp.asarray(mask))[0]), want, rtol=1e-5)


def test_caption_decoder_ignores_inputs_after_a_position():
  """Teacher forcing: logits at t see inputs <= t only, so the padding after a caption cannot leak backwards."""
  decoder = GRUCaptionDecoder(vocab_size=20, max_len=6, width=8, dropout_rate=0.0)
  code = jnp.ones((2, 1, 12))
  a = jnp.asarray([[2, 5, 6, 0, 0, 0], [2, 7, 0, 0, 0, 0]], jnp.int32)
  b = a.at[:, 3:].set(11)
  params = decoder.init(jax.random.PRNGKey(0), a, code)
  la, lb = decoder.apply(params, a, code), decoder.apply(params, b, code)
  np.testing.assert_allclose(np.asarray(la[:, :3]), np.asarray(lb[:, :3]), rtol=1e-6)
  assert not np.allclose(np.asarray(la[:, 3:]), np.asarray(lb[:, 3:]))


# ---- normalisation options
@pytest.mark.parametrize("normalize", ["parts", "concat"])
def test_separation_normalisation(normalize):
  module = FeatureSeparation(modal_dim=3, semantic_dim=4, specific_dim=4, hidden_dim=8, depth=2, normalize=normalize)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 6))
  parts = module.apply(module.init(jax.random.PRNGKey(1), x), x)
  assert {k: v.shape for k, v in parts.items()} == {"mo": (5, 3), "se": (5, 4), "sp": (5, 4)}
  norms = {k: np.linalg.norm(np.asarray(v), axis=1) for k, v in parts.items()}
  whole = np.linalg.norm(np.concatenate([np.asarray(parts[k]) for k in ("mo", "se", "sp")], 1), axis=1)
  if normalize == "parts":
    for n in norms.values():
      np.testing.assert_allclose(n, 1.0, rtol=1e-5)
  else:
    np.testing.assert_allclose(whole, 1.0, rtol=1e-5)
    assert np.all(norms["se"] < 0.999)


# ---- the alternating step
def _steps(config, workdir, devices, num_steps=1):
  setup = trainer.build(make_task(config, workdir), devices)
  step_fn = trainer.make_train_step(setup)
  state = setup.init_state(jax.random.PRNGKey(config.seed))
  start = jax.tree.map(np.asarray, state.params)
  data = setup.task.train_iterator(process_index=0, process_count=1)
  first_bad = jnp.array(-1, jnp.int32)
  losses = []
  for _ in range(num_steps):
    state, first_bad, metrics = step_fn(state, setup.frozen, first_bad,
                                        sharding.global_batch_from_host(next(data), setup.mesh))
    losses.append(float(metrics["loss"]))
  return start, state, losses


def _changed(before, after):
  return {k: any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before[k]),
                                                                        jax.tree.leaves(after[k])))
          for k in before}


def test_each_optimiser_moves_only_its_own_parameters_with_only_its_own_loss(tmp_path):
  disc = {"disc_real", "disc_content"}
  one = jax.devices()[:1]
  # Main optimiser off: only the discriminators move.
  start, main_off, _ = _steps(load_config(SHAPES, "--config.optimizer.groups=(('.*', 0.0),)",
                                          "--config.mesh.shape=(1,1)", NO_WARMUP), tmp_path / "a", one)
  moved = _changed(start, main_off.params)
  assert {k for k, v in moved.items() if v} == disc
  # Discriminators' optimiser off: everything but them moves (the generator with it).
  start, disc_off, _ = _steps(load_config(SHAPES, "--config.gan.optimizer.groups=(('.*', 0.0),)",
                                          "--config.mesh.shape=(1,1)", NO_WARMUP), tmp_path / "b", one)
  moved = _changed(start, disc_off.params)
  assert {k for k, v in moved.items() if v} == set(start) - disc
  assert moved["generator"] and moved["caption_decoder"] and moved["image_separation"]
  assert set(disc_off.model_state["batch_stats"]) == {"generator", "disc_real", "disc_content"}
  # The D update sees only D's loss: with the main optimiser on and the generator's loss weighted 5x, the
  # discriminators end the step bit-identical to the run whose main optimiser was off.
  start, weighted, _ = _steps(load_config(SHAPES, "--config.loss_weights.image=5", "--config.mesh.shape=(1,1)",
                                          NO_WARMUP), tmp_path / "c", one)
  for k in disc:
    for a, b in zip(jax.tree.leaves(main_off.params[k]), jax.tree.leaves(weighted.params[k])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _changed(start, weighted.params)["generator"]


@pytest.mark.slow  # two compilations of the GAN step (the default run has test_trainer.py's 1 vs 8)
def test_alternating_step_on_8_devices_matches_one(tmp_path):
  assert jax.device_count() == 8
  _, one, one_losses = _steps(load_config(SHAPES, "--config.mesh.shape=(1,1)"), tmp_path / "one",
                              jax.devices()[:1], 2)
  _, eight, eight_losses = _steps(load_config(SHAPES, "--config.mesh.shape=(8,1)"), tmp_path / "eight", None, 2)
  np.testing.assert_allclose(eight_losses, one_losses, rtol=2e-4, atol=2e-5)
  for a, b in zip(jax.tree.leaves((one.params, one.model_state)), jax.tree.leaves((eight.params, eight.model_state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-4)


# ---- config errors
@pytest.mark.parametrize("flags, match", [
    (("--config.loss_weights.semantic=0",), "semantic must be > 0"),
    (("--config.loss_weights.modal=-1",), "must be >= 0"),
    (("--config.model.separation.enabled=False",), "need the feature separation"),
    (("--config.loss_weights.image=0",), "image_reconstruction evaluators need"),
    (("--config.model.generator.image_size=48",), "4 \\* 2\\^n"),
    (("--config.model.image.tower=vgg",), "tower='vgg'"),
])
def test_config_errors(tmp_path, flags, match):
  with pytest.raises(errors.ConfigError, match=match):
    make_task(load_config(SHAPES, *flags), tmp_path)


# ---- end to end: cached features of a frozen tower, the PNG grid
@pytest.mark.slow  # two pretrained-tower compilations; `launch/test.sh -m slow`
def test_pretrained_tower_cached_path_matches_raw_images(tmp_path, monkeypatch):
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
  config = load_config("configs/retrieval/mfsr_flickr8k.py:tiny")
  task = make_task(config, tmp_path / "run")
  result = trainer.train_and_evaluate(task)
  assert result["step"] == 4
  grid = tmp_path / "run" / "reconstructions_val.png"
  assert grid.exists() and grid.stat().st_size > 0
  variables = {"params": result["state"].params, **result["state"].model_state, "frozen": trainer.build(
      task, None, training=False).frozen}
  feats = task.eval_data("val").image_inputs["image_feats"][:8]
  images = task.eval_images("val")[:8]
  from_cache = task.embed_image(variables, image_feats=jnp.asarray(feats))
  from_pixels = task.embed_image(variables, images=jnp.asarray(images))
  np.testing.assert_allclose(np.asarray(from_cache), np.asarray(from_pixels), atol=2e-4)


def test_image_grid_and_its_generated_cells():
  from xmodal_jax.systems.vse.image_reconstruction_evaluator import generated_cells, image_grid
  rng = np.random.default_rng(0)
  real = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
  fake = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
  grid = image_grid(real, fake, columns=3)
  np.testing.assert_array_equal(grid[2:10, 2:10], real[0])
  np.testing.assert_array_equal(grid[2:10, 10:18], fake[0])
  alone = generated_cells(grid, 8, columns=3)
  np.testing.assert_array_equal(alone[2:10, 2:10], fake[0])
  np.testing.assert_array_equal(alone[12:20, 12:20], fake[4])   # row 1, column 1
  assert not any(np.array_equal(alone[2:10, 2 + 10 * c:10 + 10 * c], real[c]) for c in range(3))
