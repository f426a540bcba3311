"""The zero-shot (CLIP-style) classification evaluator: prompts, prompt ensembling, metrics by hand, errors.

Hand-made predict functions on the 8 fake CPU devices: image and prompt "inputs" are already embeddings (D=4) that
`_embed` scales, so every run compiles one program ([8, 4] float32 batches) once.
"""
from __future__ import annotations

import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation import zero_shot
from xmodal_jax.evaluation.evaluator import EvalData, evaluator_config
from xmodal_jax.train import sharding
from xmodal_jax.train.runtime import Runtime

E = np.eye(4, dtype=np.float32)  # class c's direction is E[c]


def _embed(variables, x):
  """Embeddings that are not unit length: the evaluator normalises them."""
  return 2.0 * x


PREDICT = {"embed_image": _embed, "embed_text": _embed}


@pytest.fixture(scope="module")
def runtime():
  mesh = sharding.create_mesh((8, 1))
  return Runtime(mesh=mesh, variable_shardings={"params": {}})


def _evaluate(runtime, data, **fields):
  spec = evaluator_config("zero_shot", split="val", batch_size=8, **fields)
  return evaluator_lib.create("val", spec).evaluate(PREDICT, {"params": {}}, data, runtime)


def _data(images, labels, prompts, class_of_text, label_names=("a", "b", "c", "d")):
  return EvalData(image_inputs={"x": np.asarray(images, np.float32)}, labels=np.asarray(labels),
                  label_names=tuple(label_names),
                  extras={"class_text_inputs": {"x": np.asarray(prompts, np.float32)},
                          "class_of_text": np.asarray(class_of_text)})


def test_prompt_texts_fills_every_template_with_every_class():
  texts, class_of_text = zero_shot.prompt_texts(["cat", "dog"], ["a photo of a {}.", "a {} toy", "{{{}}}"])
  assert texts == ["a photo of a cat.", "a cat toy", "{cat}", "a photo of a dog.", "a dog toy", "{dog}"]
  assert class_of_text.tolist() == [0, 0, 0, 1, 1, 1] and class_of_text.dtype == np.int32
  with pytest.raises(ValueError, match="class_names is empty"):
    zero_shot.prompt_texts([], ["a {}"])
  with pytest.raises(ValueError, match="templates is empty"):
    zero_shot.prompt_texts(["cat"], [])
  for bad in ("a photo", "{} and {}", "a {name}"):
    with pytest.raises(ValueError, match=r"templates\[1\].*exactly one"):
      zero_shot.prompt_texts(["cat"], ["a {}", bad])
  with pytest.raises(ValueError, match="not a str.format pattern"):
    zero_shot.prompt_texts(["cat"], ["a {"])


def test_metrics_by_hand_and_unlabelled_images_left_out(runtime):
  images = [E[0], E[0], [0.5, 1, 0, 0],   # class 0: right, right, wrong (2nd: 1)
            E[1], [0.3, 0, 1, 0.6],       # class 1: right, wrong (4th)
            E[2],                         # class 2: right
            [0, 0, 1, 0.9], [1, 0.2, 0, 0],  # class 3: wrong (2nd), wrong (4th: the tie with class 2 goes to 2)
            E[3], E[1]]                   # unlabelled
  labels = [0, 0, 0, 1, 1, 2, 3, 3, -1, -1]
  prompts = np.repeat(E, 2, axis=0) * np.asarray([[1.0], [0.5]] * 4, np.float32)  # 2 prompts a class, any norm
  data = _data(images, labels, prompts, np.repeat(np.arange(4), 2))
  metrics = _evaluate(runtime, data, top_k=2)
  assert metrics == pytest.approx({"accuracy": 50.0, "mean_class_accuracy": np.mean([200 / 3, 50, 100, 0]),
                                   "top2_accuracy": 75.0, "count": 8.0, "num_classes": 4.0})
  # top-k only when there are more than k classes (the default k=5 > 4 classes).
  assert "top5_accuracy" not in _evaluate(runtime, data) and "top4_accuracy" not in _evaluate(runtime, data, top_k=4)
  table = evaluator_lib.create("val", evaluator_config("zero_shot", top_k=2)).format(metrics, "zero-shot val")
  assert "top-2 accuracy" in table and "54.17" in table and "75.00" in table and table.startswith("**zero-shot val**")
  assert "top-" not in evaluator_lib.create("val", evaluator_config("zero_shot")).format(
      {k: v for k, v in metrics.items() if k != "top2_accuracy"}, "")


def test_prompt_ensembling_averages_normalised_prompts(runtime):
  # Two templates A, B. Class 0: A -> E[0], B -> E[1]; class 1: A -> 10 * E[2] (a long embedding), B -> E[3].
  a = {0: E[0], 1: 10 * E[2]}
  b = {0: E[1], 1: E[3]}
  images, labels = [[0.5, 0.5, 0.9, 0.0], [0.1, 0.7, 0.6, 0.6]], [0, 1]
  # Template A alone gets image 0 wrong, template B alone image 1; the ensemble gets both right.
  assert _evaluate(runtime, _data(images, labels, [a[0], a[1]], [0, 1], "ab"))["accuracy"] == 50.0
  assert _evaluate(runtime, _data(images, labels, [b[0], b[1]], [0, 1], "ab"))["accuracy"] == 50.0
  # Prompt rows in any order: class_of_text says whose they are.
  ensemble = _data(images, labels, [b[1], a[0], a[1], b[0]], [1, 0, 1, 0], "ab")
  assert _evaluate(runtime, ensemble)["accuracy"] == 100.0
  # The case needs each prompt normalised before the mean: the mean of the raw embeddings is wrong on image 0.
  raw = np.stack([(a[c] + b[c]) / 2 for c in (0, 1)])
  raw /= np.linalg.norm(raw, axis=1, keepdims=True)
  assert np.argmax(np.asarray(images[0]) @ raw.T) == 1
  ensembled = zero_shot.class_embeddings(np.stack([b[1], a[0], a[1], b[0]]), np.asarray([1, 0, 1, 0]), 2)
  np.testing.assert_allclose(ensembled, np.stack([E[0] + E[1], E[2] + E[3]]) / np.sqrt(2), rtol=1e-6)


def test_label_ranks_break_ties_like_argmax():
  scores = np.zeros((3, 4), np.float32)
  scores[2, 1] = 1.0
  ranks = zero_shot.label_ranks(scores, np.asarray([0, 2, 1]))
  assert ranks.tolist() == [0, 2, 0]  # all tied: class 0 is first (argmax), class 2 third


def test_missing_or_inconsistent_prompts_name_the_fix(runtime):
  base = dict(image_inputs={"x": E}, labels=np.arange(4), label_names=("a", "b", "c", "d"))
  with pytest.raises(errors.ConfigError, match=r"extras\['class_text_inputs', 'class_of_text'\].*prompt_texts"):
    _evaluate(runtime, EvalData(**base))
  with pytest.raises(errors.ConfigError, match=r"extras\['class_of_text'\]"):
    _evaluate(runtime, EvalData(**base, extras={"class_text_inputs": {"x": E}}))
  with pytest.raises(errors.ConfigError, match="needs EvalData.labels"):
    _evaluate(runtime, EvalData(image_inputs={"x": E}))
  with pytest.raises(errors.DataError, match="one class per row"):
    _evaluate(runtime, EvalData(**base, extras={"class_text_inputs": {"x": E}, "class_of_text": np.arange(3)}))
  with pytest.raises(errors.DataError, match=r"1 class\(es\) without a prompt, e.g. \['d'\]"):
    _evaluate(runtime, EvalData(**base, extras={"class_text_inputs": {"x": E}, "class_of_text": [0, 1, 2, 2]}))


def test_config_and_create():
  assert "zero_shot" in evaluator_lib.available()
  spec = evaluator_config("zero_shot", split="val")
  assert (spec.embed_image, spec.embed_text, spec.top_k, spec.split) == ("embed_image", "embed_text", 5, "val")
  evaluator = evaluator_lib.create("val", spec)
  assert isinstance(evaluator, zero_shot.ZeroShotEvaluator) and evaluator.prefix == "val"
  with pytest.raises(errors.ConfigError, match="top_k=-1"):
    evaluator_lib.create("val", evaluator_config("zero_shot", top_k=-1))
  with pytest.raises(errors.ConfigError, match="embed_text='missing'.*no predict function"):
    evaluator_lib.create("val", evaluator_config("zero_shot", embed_text="missing")).evaluate(
        {"embed_image": _embed}, {"params": {}}, _data([E[0]], [0], E, np.arange(4)), None)
