"""S2 (region-word multilayer alignment): cross-attention masking, the relation layer's pairing, the pairwise scorer
against a loop reference, the Bi-GRU's padding, and a tiny run end to end (1 device and 8 fake devices)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import load_config, make_task, one_train_step, subprocess_xla_flags
from xmodal_jax.data import regions
from xmodal_jax.models import layers
from xmodal_jax.systems.region_word import relation_pairs
from xmodal_jax.systems.region_word.bigru_text import BiGRUWordEncoder
from xmodal_jax.systems.region_word.region_word_similarity import aggregate, cross_attention_similarity
from xmodal_jax.train import sharding

TINY = "configs/retrieval/region_word_shapes.py:tiny"


def _unit(rng, *shape):
  return np.asarray(layers.l2_normalize(jnp.asarray(rng.normal(size=shape), jnp.float32)))


def _reference_similarity(x, x_mask, y, y_mask, lam1, lam2, weights=None):
  """One pair, written out per the module docstring with explicit attended vectors (no Gram trick)."""
  x, y = x[x_mask], y[y_mask]
  out = {}
  for name, (q, k, w) in {"t2i": (y, x, None), "i2t": (x, y, None if weights is None else weights[x_mask])}.items():
    c = q @ k.T
    a = np.exp(lam1 * c - (lam1 * c).max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    att = a @ k
    r = np.sum(q * att, 1) / np.linalg.norm(att, axis=1)
    w = np.full(len(r), 1 / len(r)) if w is None else w / w.sum()
    out[name] = np.log(np.sum(w * np.exp(lam2 * r))) / lam2
  return out


def test_cross_attention_matches_reference_and_ignores_padding():
  rng = np.random.default_rng(0)
  x, y = _unit(rng, 3, 5, 8), _unit(rng, 4, 6, 8)
  x_mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  y_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1] * 6, [1, 1, 1, 0, 0, 0]], bool)
  weights = rng.uniform(0.1, 1, (3, 5)).astype(np.float32)
  got = cross_attention_similarity(x, x_mask, y, y_mask, all_pairs=True, image_weights=weights)
  for i in range(3):
    for t in range(4):
      ref = _reference_similarity(x[i], x_mask[i], y[t], y_mask[t], 9.0, 6.0, weights[i])
      for d in ("t2i", "i2t"):
        np.testing.assert_allclose(got[d][i, t], ref[d], atol=1e-4)
  # Padded words and regions: any values there change nothing.
  x2, y2 = x.copy(), y.copy()
  x2[~x_mask], y2[~y_mask] = 5.0, -3.0
  again = cross_attention_similarity(x2, x_mask, y2, y_mask, all_pairs=True, image_weights=weights)
  for d in ("t2i", "i2t", "mean"):
    np.testing.assert_allclose(again[d], got[d], atol=1e-5)
  # Aligned pairs give the matching entries of the all-pairs matrix.
  rows, cols = np.array([0, 2, 1]), np.array([3, 0, 1])
  aligned = cross_attention_similarity(x[rows], x_mask[rows], y[cols], y_mask[cols], all_pairs=False,
                                       image_weights=weights[rows])
  np.testing.assert_allclose(aligned["mean"], got["mean"][rows, cols], atol=1e-5)


def test_aggregate_mean_lse_and_empty_sets():
  scores = jnp.array([[0.1, 0.5, 0.9], [0.2, 0.4, 0.0]])
  mask = jnp.array([[True, True, False], [False, False, False]])
  np.testing.assert_allclose(aggregate(scores, mask, how="mean", lse_temperature=6.0), [0.3, 0.0], atol=1e-6)
  lse = np.log(np.mean(np.exp(6 * np.array([0.1, 0.5])))) / 6
  np.testing.assert_allclose(aggregate(scores, mask, how="lse", lse_temperature=6.0), [lse, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="how="):
    aggregate(scores, mask, how="max", lse_temperature=1.0)


def test_relation_pairs_on_a_hand_made_case():
  a, b = relation_pairs.ordered_pairs(3)
  assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
  mask = jnp.array([[True, True, False, True], [True, False, False, False]])
  first, second, valid = relation_pairs.region_pairs(mask, 3)
  # Image 0: the first three valid regions are 0, 1, 3.
  pairs0 = {(int(f), int(s)) for f, s, v in zip(first[0], second[0], valid[0]) if v}
  assert pairs0 == {(0, 1), (0, 3), (1, 0), (1, 3), (3, 0), (3, 1)}
  assert not bool(valid[1].any())  # one valid region: no pair
  # With weights: the two most salient of regions 0..3.
  weights = jnp.array([[0.1, 0.2, 0.0, 0.7], [1.0, 0.0, 0.0, 0.0]])
  first, second, valid = relation_pairs.region_pairs(mask, 2, weights)
  assert {(int(f), int(s)) for f, s in zip(first[0], second[0])} == {(3, 1), (1, 3)} and bool(valid[0].all())
  geometry = jnp.array([[[0.0, 0.0, 0.2, 0.2, 0.2, 0.2, 0.04], [0.6, 0.0, 1.0, 0.4, 0.4, 0.4, 0.16]]])
  rel = relation_pairs.relative_geometry(geometry, jnp.array([[0]]), jnp.array([[1]]))
  np.testing.assert_allclose(rel[0, 0], [0.7, 0.1, np.log(2), np.log(2)], atol=1e-6)
  np.testing.assert_array_equal(relation_pairs.adjacent_phrases(jnp.array([[True, True, True, False]])),
                                [[True, True, False]])


def test_bigru_word_features_do_not_depend_on_padding():
  enc = BiGRUWordEncoder(vocab_size=20, embed_dim=4, hidden_dim=6)
  tokens = jnp.array([[3, 4, 5, 0, 0], [3, 4, 5, 9, 9]])
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], bool)
  params = enc.init(jax.random.PRNGKey(0), tokens, mask)
  out = enc.apply(params, tokens, mask)
  np.testing.assert_allclose(out[0], out[1], atol=1e-6)
  assert float(jnp.abs(out[0, 3:]).max()) == 0.0
  # The backward direction sees the words after: the first word's feature changes with the last one.
  other = enc.apply(params, jnp.array([[3, 4, 6, 0, 0]]), mask[:1])
  assert not np.allclose(other[0, 0], out[0, 0])


def test_jitter_boxes_stays_in_the_image_and_moves_boxes():
  rng = np.random.default_rng(0)
  boxes = np.array([[10, 10, 30, 30], [0, 0, 64, 64]], np.float32)
  out = regions.jitter_boxes(boxes, 0.2, rng, 64)
  assert out.min() >= 0 and out.max() <= 64 and not np.allclose(out[0], boxes[0])
  assert np.all(np.abs(out[0] - boxes[0]) <= 0.2 * 20 * 1.5 + 1e-4)


def _ranks_from_matrix(scores, text_to_image):
  """1-based ranks from a full score matrix [N, M]; ties count against the query."""
  relevant = text_to_image[None, :] == np.arange(scores.shape[0])[:, None]
  best = np.where(relevant, scores, -np.inf).max(axis=1)
  i2t = 1 + np.array([np.sum((scores[i] >= best[i]) & ~relevant[i]) for i in range(scores.shape[0])])
  t2i = 1 + np.array([np.sum((scores[:, t] >= scores[text_to_image[t], t]) & ~relevant[:, t])
                      for t in range(scores.shape[1])])
  return i2t, t2i


@pytest.mark.slow  # a Python-loop reference over every pair; `launch/test.sh -m slow`
def test_pairwise_scorer_equals_a_loop_reference(tmp_path):
  from xmodal_jax.evaluation import evaluator as evaluator_lib, retrieval
  from xmodal_jax.train.runtime import Runtime
  config = load_config(TINY, "--config.mesh.shape=(1,1)")
  task = make_task(config, str(tmp_path))
  task.setup(training=True)
  variables = {"params": jax.jit(task.init_variables)(jax.random.PRNGKey(1))["params"]}
  data = task.eval_data("val")
  n_img, n_txt = 4, 20  # every image with its 5 captions
  image = {k: v[:n_img] for k, v in data.image_inputs.items()}
  text = {k: v[:n_txt] for k, v in data.text_inputs.items()}
  t2i = data.text_to_image[:n_txt]
  # Loop reference: one pair at a time through the aligned-pair predict functions.
  ims = [task.pair_image_features(variables, **{k: v[i:i + 1] for k, v in image.items()}) for i in range(n_img)]
  txs = [task.pair_text(variables, **{k: v[t:t + 1] for k, v in text.items()}) for t in range(n_txt)]
  score = jax.jit(task.score_pairs)
  ref = np.array([[float(score(variables, im, tx)[0]) for tx in txs] for im in ims], np.float32)
  # The training path: every pair of the batch at once.
  im_all = task.pair_image_features(variables, **image)
  tx_all = task.pair_text(variables, **text)
  from xmodal_jax.systems.region_word.region_word_model import alignment_similarities
  matrix = alignment_similarities(im_all, tx_all, config.similarity, all_pairs=True)["combined"]
  np.testing.assert_allclose(np.asarray(matrix), ref, atol=1e-5)
  # The evaluator (chunked pairwise scoring, small pair batches) gives the reference's ranks.
  spec = config.evals.val.copy_and_resolve_references()
  spec.update(rerank_k=0, pair_batch_size=16, batch_size=8)
  ev = evaluator_lib.create("val", spec)
  sub = type(data)(image_inputs=image, text_inputs=text, text_to_image=t2i)
  mesh = sharding.create_mesh((1, 1), devices=jax.devices()[:1])
  runtime = Runtime(mesh=mesh, variable_shardings=jax.tree.map(lambda _: sharding.replicated(mesh), variables))
  got = ev.evaluate(task.predict_fns(), variables, sub, runtime)
  expected = retrieval.metrics_from_ranks(*_ranks_from_matrix(ref, t2i), ks=(1, 5, 10))
  for k in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum"):
    assert got[k] == pytest.approx(expected[k], abs=1e-6), k


@pytest.mark.slow  # two compilations of the S2 step (the default run has test_trainer.py's 1 vs 8)
def test_one_step_on_one_and_eight_devices_agree(tmp_path):
  one = one_train_step(load_config(TINY, "--config.mesh.shape=(1,1)"), str(tmp_path / "a"), jax.devices()[:1])
  eight = one_train_step(load_config(TINY, "--config.mesh.shape=(8,1)"), str(tmp_path / "b"), jax.devices())
  for k in ("loss", "entity_loss", "relation_loss", "global_loss", "tag_loss"):
    assert eight[k] == pytest.approx(one[k], rel=1e-4, abs=1e-5), k


def test_tiny_run_end_to_end_and_robustness_eval(tmp_path):
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags())
  work = tmp_path / "run"
  cmd = [sys.executable, "-m", "xmodal_jax.main", "train", f"--config={TINY}", f"--workdir={work}"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = json.loads((work / "results.json").read_text())["metrics"]
  for key in ("test/rsum", "val/rsum", "tags/micro_f1", "composition/accuracy_colour", "composition/accuracy_relation"):
    assert np.isfinite(metrics[key]), key
  assert json.loads((work / "tags.json").read_text())["tags"]
  # Evaluation with grid regions instead of the ground-truth boxes runs on the same checkpoint.
  cmd = [sys.executable, "-m", "xmodal_jax.main", "eval", f"--config={TINY}", f"--workdir={work}", "--split=test",
         "--config.regions.eval_method=grid"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "metrics: " in done.stdout


def test_config_errors_name_the_field(tmp_path):
  from xmodal_jax import errors
  for flag, field in (("--config.regions.method=boxes", "regions.method"),
                      ("--config.regions.eval_jitter=1.5", "eval_jitter"),
                      ("--config.image_tower.feature_cut=stage9", "feature_cut")):
    with pytest.raises(errors.ConfigError, match=field):
      make_task(load_config(TINY, flag), str(tmp_path))
  config = load_config(TINY, "--config.model.relation=False")
  with pytest.raises(errors.ConfigError, match="model.relation"):
    make_task(config, str(tmp_path))


def test_tag_heads_on_the_text_side_train_and_evaluate(tmp_path):
  config = load_config(TINY, "--config.mesh.shape=(1,1)", "--config.tags.side=both")
  metrics = one_train_step(config, str(tmp_path / "a"), jax.devices()[:1])
  assert np.isfinite(metrics["tag_loss"]) and np.isfinite(metrics["text_tag_loss"])
  task = make_task(config, str(tmp_path / "b"))
  task.setup(training=True)
  variables = {"params": jax.jit(task.init_variables)(jax.random.PRNGKey(0))["params"]}
  data = task.eval_data("test")
  logits = task.text_tag_logits(variables, data.text_inputs["tokens"][:3], data.text_inputs["mask"][:3])
  assert logits.shape == (3, len(task.tags)) == data.extras["tag_targets_text"][:3].shape
  from xmodal_jax import errors
  with pytest.raises(errors.ConfigError, match="tags.side"):
    make_task(load_config(TINY, "--config.tags.side=caption"), str(tmp_path / "c"))
