"""Shared evaluators fed predict functions: retrieval by embeddings, by a pairwise scorer, by re-ranking; the
registry; classification and label ranking. Runs on the 8 fake CPU devices (a 4x2 mesh)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xmodal_jax.evaluation import evaluator as evaluator_lib, retrieval
from xmodal_jax.evaluation.evaluator import EvalData, evaluator_config
from xmodal_jax.systems.classifier import label_ranking_evaluator as label_ranking
from xmodal_jax.train import sharding
from xmodal_jax.train.runtime import Runtime


def _runtime():
  mesh = sharding.create_mesh((4, 2))
  return Runtime(mesh=mesh, variable_shardings={"params": {"w": sharding.replicated(mesh)}})


def _embed(variables, x):
  y = x @ variables["params"]["w"]
  return y / jnp.linalg.norm(y, axis=-1, keepdims=True)


def _dot_pairs(variables, image, text):
  """A pairwise scorer that happens to be a dot product of the two embeddings: [P] scores of aligned pairs."""
  return jnp.sum(_embed(variables, image["x"]) * _embed(variables, text["x"]), axis=-1)


PREDICT = {"embed_image": _embed, "embed_text": _embed, "score_pairs": _dot_pairs}


def _data(num_images=60, captions=3, dim=12, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(num_images, dim)).astype(np.float32)
  t2i = np.repeat(np.arange(num_images), captions)
  texts = (images[t2i] + rng.normal(scale=1.5, size=(len(t2i), dim))).astype(np.float32)  # noisy views
  return EvalData(image_inputs={"x": images}, text_inputs={"x": texts}, text_to_image=t2i)


def _variables(dim=12, seed=1):
  w = np.random.default_rng(seed).normal(size=(dim, 8)).astype(np.float32)
  return {"params": {"w": jnp.asarray(w)}}


def _run(**fields):
  spec = evaluator_config("retrieval", split="val", batch_size=16, **fields)
  return evaluator_lib.create("val", spec).evaluate(PREDICT, _variables(), _data(), _runtime())


def test_pairwise_dot_product_scorer_equals_the_embedding_path():
  by_embeddings = _run()
  pairwise = _run(scorer="pairwise", pair_batch_size=64)
  assert set(pairwise) == set(by_embeddings)
  for key, value in by_embeddings.items():
    assert pairwise[key] == pytest.approx(value, abs=1e-9), key
  assert 0 < by_embeddings["i2t_r1"] < 100 and 0 < by_embeddings["t2i_r1"] < 100  # neither trivial nor perfect
  # Control: the pairwise path really ranks by score_pairs (a negated scorer ranks the other way round).
  spec = evaluator_config("retrieval", split="val", batch_size=16, scorer="pairwise", score_pairs="negated")
  negated = evaluator_lib.create("val", spec).evaluate(
      dict(PREDICT, negated=lambda v, image, text: -_dot_pairs(v, image, text)), _variables(), _data(), _runtime())
  assert negated["i2t_r1"] < by_embeddings["i2t_r1"] and negated["i2t_meanr"] > by_embeddings["i2t_meanr"]


def test_pairwise_folds_equal_embedding_folds():
  by_embeddings = _run(fold_size=20)
  pairwise = _run(scorer="pairwise", fold_size=20, pair_batch_size=64)
  assert any(k.startswith("fold20_") for k in by_embeddings)
  for key, value in by_embeddings.items():
    assert pairwise[key] == pytest.approx(value, abs=1e-9), key


def test_rerank_with_k_all_equals_full_pairwise_scoring():
  full = _run(scorer="pairwise", pair_batch_size=64)
  reranked = _run(scorer="pairwise", rerank_k=180, pair_batch_size=64)  # 180 = all captions >= all images
  assert reranked == full
  short = _run(scorer="pairwise", rerank_k=3, pair_batch_size=64)
  assert short["i2t_r1"] == full["i2t_r1"] and short["i2t_r5"] <= full["i2t_r5"]


def test_max_images_scores_the_first_images_and_their_texts_only():
  first = _run(scorer="pairwise", max_images=20, pair_batch_size=64)
  whole = _run()
  spec = evaluator_config("retrieval", split="val", batch_size=16)
  data = _data()
  sub = EvalData(image_inputs={"x": data.image_inputs["x"][:20]}, text_inputs={"x": data.text_inputs["x"][:60]},
                 text_to_image=data.text_to_image[:60])
  alone = evaluator_lib.create("val", spec).evaluate(PREDICT, _variables(), sub, _runtime())
  for key, value in alone.items():
    assert first[key] == pytest.approx(value, abs=1e-9), key
  assert first["i2t_r1"] > whole["i2t_r1"]  # 20 candidates, not 60: an easier problem than the whole split


def test_pairwise_ranks_score_in_bounded_blocks_and_keep_the_tie_rule():
  rng = np.random.default_rng(0)
  n, per = 40, 5
  t2i = np.repeat(np.arange(n), per)
  image, text = rng.normal(size=(n, 6)), rng.normal(size=(n * per, 6))
  calls = []

  def score(i, t):
    calls.append(len(i))
    return np.sum(image[i] * text[t], axis=1)

  i2t, t2i_ranks = retrieval.pairwise_ranks(score, t2i, n, max_pairs=500)
  want = retrieval.retrieval_metrics(image, text, t2i)
  assert retrieval.metrics_from_ranks(i2t, t2i_ranks) == pytest.approx(want)
  assert max(calls[1:]) <= 500  # image x caption blocks never exceed max_pairs (the first call: M positives)
  # A collapsed scorer (every pair scores the same) ranks every query last, not first.
  flat_i2t, flat_t2i = retrieval.pairwise_ranks(lambda i, t: np.zeros(len(i)), t2i, n)
  assert np.all(flat_i2t == n * per - per + 1) and np.all(flat_t2i == n)


def test_reranked_query_whose_item_missed_the_shortlist_ranks_after_it():
  image = np.eye(3, dtype=np.float32)
  text = np.asarray([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)  # text 0 belongs to image 0 but points at 1
  t2i = np.arange(3)
  i2t, t2i_ranks = retrieval.reranked_ranks(image, text, t2i, lambda i, t: np.sum(image[i] * text[t], 1), k=1)
  assert i2t[0] >= 2 and t2i_ranks[0] >= 2 and i2t[2] == 1 and t2i_ranks[2] == 1


def test_registry_errors_name_the_fix():
  with pytest.raises(ValueError, match="Unknown evaluator type 'nope'.*retrieval"):
    evaluator_config("nope")
  with pytest.raises(ValueError, match="has no field"):
    evaluator_config("retrieval", foldsize=3)
  spec = evaluator_config("retrieval", split="val")
  spec.unlock()
  spec.bogus = 1
  with pytest.raises(ValueError, match="unknown field.*bogus"):
    evaluator_lib.create("val", spec)
  evals = ml_collections.ConfigDict({"a": evaluator_config("retrieval", best_metric="rsum"),
                                     "b": evaluator_config("retrieval", best_metric="rsum")})
  with pytest.raises(ValueError, match="only one evaluator"):
    evaluator_lib.create_all(evals)
  with pytest.raises(ValueError, match="no predict function"):
    evaluator_lib.create("val", evaluator_config("retrieval", embed_image="missing")).evaluate(
        PREDICT, _variables(), _data(), _runtime())
  with pytest.raises(ValueError, match="needs EvalData.text_to_image"):
    _run_on = evaluator_lib.create("val", evaluator_config("retrieval"))
    _run_on.evaluate(PREDICT, _variables(), EvalData(image_inputs={"x": np.zeros((4, 12))}), _runtime())


def test_schedule_prefix_and_best_metric():
  evals = ml_collections.ConfigDict({
      "test": evaluator_config("retrieval", split="test"),
      "val": evaluator_config("retrieval", split="val", every=5, best_metric="rsum", prefix="dev")})
  ordered = evaluator_lib.create_all(evals)
  assert [e.name for e in ordered] == ["val", "test"]  # evaluators that run during training come first
  val = ordered[0]
  assert val.due(10) and not val.due(7) and not ordered[1].due(10)
  assert val.best_metric == "dev/rsum" and evaluator_lib.best_metric(evals) == ("dev/rsum", "max")


def test_classification_evaluator_leaves_out_unlabelled_rows():
  mesh = sharding.create_mesh((8, 1))
  runtime = Runtime(mesh=mesh, variable_shardings={"params": {}})
  logits = np.asarray([[2, 0], [0, 3], [5, 1], [0, 1], [1, 0]], np.float32)
  data = EvalData(image_inputs={"x": logits}, labels=np.asarray([0, 1, 1, -1, 1]), label_names=("a", "b"))
  spec = evaluator_config("classification", split="val", batch_size=8)
  metrics = evaluator_lib.create("val", spec).evaluate({"classify": lambda v, x: x}, {"params": {}}, data, runtime)
  assert metrics["count"] == 4 and metrics["accuracy"] == pytest.approx(50.0)
  assert metrics["mean_class_accuracy"] == pytest.approx(np.mean([100.0, 100.0 / 3]))


def test_label_ranking_metrics_by_hand():
  top = np.asarray([[3, 1, 0, 2], [0, 1, 2, 3], [1, 0, 2, 3]])
  sets = [np.asarray([1, 2]), np.asarray([3]), np.asarray([], int)]
  complete = np.asarray([[1, 1, 1, 1], [0, 1, 0, 1], [1, 0, 0, 0]], bool)
  m = label_ranking.ranking_metrics(top, sets, precision_at=(1, 3), recall_at=(4,), complete_truth=complete)
  assert m["images"] == 2
  assert m["p_at_1"] == pytest.approx(0.0) and m["p_at_3"] == pytest.approx(100 * (1 / 3) / 2)
  assert m["r_at_4"] == pytest.approx(100.0)
  assert m["p_at_3_any_true"] == pytest.approx(100 * (3 + 1 + 1) / 9)
  # Through the evaluator: top-k taken on device from the task's label scores.
  mesh = sharding.create_mesh((8, 1))
  runtime = Runtime(mesh=mesh, variable_shardings={"params": {}})
  scores = np.asarray([[0.3, 0.5, 0.1, 0.9], [0.9, 0.5, 0.2, 0.1], [0.5, 0.9, 0.2, 0.1]], np.float32)
  spec = evaluator_config("label_ranking", split="val", precision_at=(1, 3), recall_at=(4,), batch_size=8)
  data = EvalData(image_inputs={"x": scores}, label_sets=sets, complete_truth=complete)
  got = evaluator_lib.create("val", spec).evaluate({"label_scores": lambda v, x: x}, {"params": {}}, data, runtime)
  assert got == pytest.approx(m)
