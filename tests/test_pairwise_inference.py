"""The raw-input inference interface of the pairwise systems (task_bases/retrieval_task.py): S2 and S4 from uint8
images and tokenizer tokens (the frozen tower, ROI-Align and S4's <eos> inside the predict functions) give the
scores of the cached path their evaluators use, on the same images and boxes.

Tolerance: the cache stores the tower's feature maps in float16 (config.image_tower.cache_dtype), relative error
<= 2^-11 per value; through a freshly initialised tiny model that moves the scores by ~1e-4 (S2 similarities)
and ~1e-5 (S4 matching logits; measured). We allow 2e-3 absolute on S2's similarities in [-1, 1], 1e-2 on S4's
logits, 2e-3 on the unit embeddings, and require the same top-3 captions of each image."""
import types

import jax
import numpy as np
import pytest

from tests.helpers import load_config, make_task

S2_TINY = "configs/retrieval/region_word_shapes.py:tiny"
S4_TINY = "configs/vlp/single_stream_shapes.py:tiny"
N_IMAGES = 4


def _setup(config_path, workdir):
  """A freshly initialised tiny task with its tower's frozen params, its jitted predict functions, and the first
  N_IMAGES val images both ways (raw inputs and the evaluators' cached inputs) with their captions tokenised."""
  task = make_task(load_config(config_path, "--config.mesh.shape=(1,1)"), str(workdir))
  task.setup(training=True)
  assert task.has_pairwise_scoring
  variables = {"params": jax.jit(task.init_variables)(jax.random.PRNGKey(1))["params"],
               "frozen": jax.device_put(task.frozen_params())}
  data = task.eval_data("val")
  return types.SimpleNamespace(
      task=task, variables=variables, fns={name: jax.jit(fn) for name, fn in task.predict_fns().items()}, data=data,
      inputs=task.image_predict_inputs(task.eval_images("val")[:N_IMAGES], "val", np.arange(N_IMAGES)),
      cached_inputs={k: v[:N_IMAGES] for k, v in data.image_inputs.items()},
      encoded=task.encode_texts(_captions(task, "val", N_IMAGES)))


def _captions(task, split, n):
  """The captions of the split's first n images, in the order of task.tokens(split)'s rows."""
  return [c for caps in task.split(split).captions[:n] for c in caps]


def _all_pairs(score, variables, image, text):
  """[n_images, n_texts] scores of every pair through score_pairs on aligned rows."""
  n = len(next(iter(image.values())))
  m = len(next(iter(text.values())))
  rows, cols = np.repeat(np.arange(n), m), np.tile(np.arange(m), n)
  pairs = score(variables, jax.tree.map(lambda x: np.asarray(x)[rows], image),
                jax.tree.map(lambda x: np.asarray(x)[cols], text))
  assert pairs.dtype == np.float32 and pairs.shape == (n * m,)
  return np.asarray(pairs).reshape(n, m)


def _assert_same_scores(raw, cached, atol):
  np.testing.assert_allclose(raw, cached, atol=atol)
  assert np.ptp(cached) > 10 * atol  # the scores differ between pairs: the comparison can fail
  np.testing.assert_array_equal(np.argsort(-raw, axis=1)[:, :3], np.argsort(-cached, axis=1)[:, :3])


def test_region_word_raw_images_score_as_the_cached_feature_maps(tmp_path):
  run = _setup(S2_TINY, tmp_path)
  fns, variables, inputs, encoded = run.fns, run.variables, run.inputs, run.encoded
  np.testing.assert_array_equal(inputs["boxes"], run.cached_inputs["boxes"])  # the evaluation's boxes
  np.testing.assert_array_equal(encoded["tokens"], run.data.text_inputs["tokens"][:len(encoded["tokens"])])

  raw_image = fns["pair_image"](variables, **inputs)
  cached_image = fns["pair_image_features"](variables, **run.cached_inputs)
  text = fns["pair_text"](variables, **encoded)
  assert sorted(raw_image) == sorted(cached_image)
  _assert_same_scores(_all_pairs(fns["score_pairs"], variables, raw_image, text),
                      _all_pairs(fns["score_pairs"], variables, cached_image, text), atol=2e-3)
  np.testing.assert_allclose(fns["embed_image"](variables, **inputs),
                             fns["embed_image_features"](variables, **run.cached_inputs), atol=2e-3)
  np.testing.assert_allclose(fns["embed_text"](variables, **encoded), text["global"], atol=1e-6)

  # A photo without boxes: the grid's 9 cells after the whole image, as `default_boxes` says.
  grid = fns["pair_image"](variables, images=inputs["images"])
  assert grid["regions"].shape[:2] == (N_IMAGES, 10) and bool(np.all(grid["region_mask"]))
  assert np.all(np.isfinite(grid["global"]))
  np.testing.assert_allclose(np.linalg.norm(fns["embed_image"](variables, images=inputs["images"]), axis=1), 1,
                             atol=1e-5)
  with pytest.raises(ValueError, match="centre crops"):
    fns["embed_image"](variables, images=np.zeros((1, 32, 32, 3), np.uint8))


def test_single_stream_raw_images_and_tokens_score_as_the_cached_objects_and_units(tmp_path):
  run = _setup(S4_TINY, tmp_path)
  fns, variables, inputs, encoded = run.fns, run.variables, run.inputs, run.encoded
  assert encoded["tokens"].shape[1] == run.task.config.data.max_len
  units, valid = run.task.units("val")
  cached_text = {"tokens": units[:len(encoded["tokens"])], "mask": valid[:len(encoded["tokens"])]}

  raw_image = fns["pair_image"](variables, **inputs)
  text = fns["pair_text"](variables, **encoded)
  for key in ("tokens", "mask"):  # <eos> appended in the graph
    np.testing.assert_array_equal(text[key], cached_text[key])
  for key in ("features", "geometry", "object_mask"):
    np.testing.assert_allclose(raw_image[key], run.cached_inputs[key], atol=0.05, err_msg=key)
  _assert_same_scores(_all_pairs(fns["score_pairs"], variables, raw_image, text),
                      _all_pairs(fns["score_pairs"], variables, run.cached_inputs, cached_text), atol=1e-2)
  np.testing.assert_allclose(fns["embed_image"](variables, **inputs),
                             fns["embed_image_features"](variables, **run.cached_inputs), atol=2e-3)
  np.testing.assert_allclose(fns["embed_text"](variables, **encoded),
                             fns["embed_text_units"](variables, **cached_text), atol=1e-6)
  # captions by mask filling from raw images = from the cached objects (argmax filling: equal token rows)
  np.testing.assert_array_equal(fns["caption"](variables, **inputs),
                                fns["caption_features"](variables, **run.cached_inputs))


def test_the_other_retrieval_tasks_take_images_alone(tmp_path):
  task = make_task(load_config("configs/retrieval/vsepp_shapes.py:tiny"), str(tmp_path))
  images = np.zeros((2, 8, 8, 3), np.uint8)
  assert not task.has_pairwise_scoring
  assert list(task.image_predict_inputs(images, "val", np.arange(2))) == ["images"]


@pytest.mark.parametrize("config_path,old,new", [
    (S2_TINY, {"embed_image": "embed_image", "pair_image": "pair_image"},
     {"embed_image": "embed_image_features", "pair_image": "pair_image_features"}),
    (S4_TINY, {"embed_image": "embed_image", "embed_text": "embed_text"},
     {"embed_image": "embed_image_features", "embed_text": "embed_text_units"}),
])
def test_a_config_written_before_the_raw_interface_evaluates_on_the_cached_variants(config_path, old, new, tmp_path):
  """A run's config.json from before the raw-input predict functions names `embed_image` / `pair_image` /
  `embed_text` in its evaluators; evaluation data holds cached features, so the task maps them to the cached
  variants (instead of a TypeError from the raw functions on feature inputs)."""
  config = load_config(config_path)
  name = next(n for n, spec in config.evals.items() if spec.type == "retrieval")
  with config.unlocked():
    config.evals[name].update(old)
  task = make_task(config, str(tmp_path))
  assert {field: task.config.evals[name][field] for field in new} == new
  assert all(task.config.evals[name][field] in task.predict_fns() for field in new)
