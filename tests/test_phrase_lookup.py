"""Tests for nearest-query phrase lookup and class-prototype queries (S1, seed eq. 2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.systems.classifier import phrase_lookup as pl


def _unit(a):
  a = np.asarray(a, np.float64)
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _rows(seed, n, dim):
  r = np.random.default_rng(seed)
  return (r.normal(size=(n, dim)) * r.uniform(0.2, 3.0, size=(n, 1))).astype(np.float32)


def test_exact_top_queries_match_argsort():
  x, w = _rows(0, 8, 16), _rows(1, 1000, 16)
  scores, ids = pl.top_queries(jnp.asarray(x), jnp.asarray(w), 5)
  assert scores.shape == ids.shape == (8, 5) and ids.dtype == jnp.int32
  cos = _unit(x) @ _unit(w).T
  want_ids = np.argsort(-cos, axis=1)[:, :5]
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, np.take_along_axis(cos, want_ids, 1), atol=1e-6)
  # Usable inside a caller's jit with k and method static.
  inner = jax.jit(lambda x, w: pl.top_queries(x, w, 5, method="exact")[1])
  np.testing.assert_array_equal(inner(jnp.asarray(x), jnp.asarray(w)), want_ids)


def test_approx_top_queries_recall():
  x, w = _rows(2, 16, 32), _rows(3, 20_000, 32)
  exact_scores, exact_ids = pl.top_queries(jnp.asarray(x), jnp.asarray(w), 10)
  scores, ids = pl.top_queries(jnp.asarray(x), jnp.asarray(w), 10, method="approx", recall_target=0.95)
  assert ids.shape == (16, 10) and ids.dtype == jnp.int32
  ids, exact_ids = np.asarray(ids), np.asarray(exact_ids)
  recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)])
  print(f"approx_max_k recall@10 on {jax.devices()[0].platform}: {recall:.3f}")
  assert recall >= 0.95
  # Returned scores are the true cosines of the returned ids, best first.
  cos = _unit(x) @ _unit(w).T
  np.testing.assert_allclose(scores, np.take_along_axis(cos, ids, 1), atol=1e-6)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)


def test_top_queries_errors():
  x, w = jnp.ones((2, 4)), jnp.ones((5, 4))
  with pytest.raises(ValueError, match="exact.*approx"):
    pl.top_queries(x, w, 2, method="lsh")
  with pytest.raises(ValueError, match="k=6"):
    pl.top_queries(x, w, 6)
  with pytest.raises(ValueError, match=r"\[batch, D\]"):
    pl.top_queries(x, jnp.ones((5, 3)), 2)


def test_class_prototypes_eq2():
  features = _rows(4, 10, 8)
  members = np.zeros((3, 10), bool)
  members[0, [0, 1, 2]] = True
  members[1, [3]] = True
  members[2, 4:] = True
  got = pl.class_prototypes(jnp.asarray(features), members)
  want = np.stack([_unit(features[m]).mean(0) for m in members])
  np.testing.assert_allclose(got, want, atol=1e-6)
  members[1, 3] = False
  with pytest.raises(ValueError, match="row 1 is empty"):
    pl.class_prototypes(features, members)
  with pytest.raises(ValueError, match=r"\[C, N\]"):
    pl.class_prototypes(features, members[:, :5])


def test_extend_with_prototypes_retrieves_new_classes():
  """Images of 3 new classes (clusters): after extending W, each image's top-1 is its own class's new query."""
  dim, old_k, per_class = 32, 200, 12
  r = np.random.default_rng(5)
  w = _rows(6, old_k, dim)
  centers = _unit(r.normal(size=(3, dim)))
  cls = np.repeat(np.arange(3), per_class)
  # Image features: cluster centre + noise, at arbitrary norms (f(x) normalises them).
  features = (centers[cls] + 0.15 * r.normal(size=(len(cls), dim))) * r.uniform(0.5, 4.0, size=(len(cls), 1))
  members = cls[None, :] == np.arange(3)[:, None]
  protos = pl.class_prototypes(jnp.asarray(features, jnp.float32), members)
  w_new = pl.extend_queries(jnp.asarray(w), protos)
  assert w_new.shape == (old_k + 3, dim) and w_new.dtype == jnp.float32
  np.testing.assert_array_equal(w_new[:old_k], w)  # old ids keep their rows
  _, ids = pl.top_queries(jnp.asarray(features, jnp.float32), w_new, 1)
  np.testing.assert_array_equal(np.asarray(ids)[:, 0], old_k + cls)

  # The same through a PhraseTable.
  table = pl.PhraseTable([f"q{i}" for i in range(old_k)], w)
  bigger = table.extend(["red bike", "old tram", "snow owl"], protos)
  assert len(bigger) == old_k + 3 and len(table) == old_k
  top1 = [row[0][0] for row in bigger.lookup(features, k=1)]
  assert top1 == [["red bike", "old tram", "snow owl"][c] for c in cls]


def test_replace_queries():
  w = _rows(7, 10, 4)
  protos = _rows(8, 2, 4)
  got = np.asarray(pl.replace_queries(w, np.array([7, 2]), protos))
  assert got.shape == (10, 4)
  np.testing.assert_array_equal(got[[7, 2]], protos)
  keep = np.setdiff1d(np.arange(10), [2, 7])
  np.testing.assert_array_equal(got[keep], w[keep])
  with pytest.raises(ValueError, match="distinct"):
    pl.replace_queries(w, np.array([3, 3]), protos)
  with pytest.raises(ValueError, match=r"\[0, K=10\)"):
    pl.replace_queries(w, np.array([3, 10]), protos)
  with pytest.raises(ValueError, match=r"shape \[C\]"):
    pl.replace_queries(w, np.array([3]), protos)
  with pytest.raises(ValueError, match=r"\[K, D\]"):
    pl.extend_queries(w, protos[:, :3])


def test_phrase_table_lookup_best_first():
  phrases = ["cat", "dog", "car", "tree", "boat"]
  vectors = _rows(9, 5, 6)
  table = pl.PhraseTable(phrases, vectors)
  x = _rows(10, 3, 6)
  got = table.lookup(x, k=3)
  cos = _unit(x) @ _unit(vectors).T
  assert len(got) == 3
  for row, c in zip(got, cos):
    order = np.argsort(-c)[:3]
    assert [p for p, _ in row] == [phrases[i] for i in order]
    np.testing.assert_allclose([s for _, s in row], c[order], atol=1e-6)
    assert all(isinstance(s, float) for _, s in row)
  # One query vector [D], and the approximate method.
  (single,) = table.lookup(x[0], k=2)
  assert [p for p, _ in single] == [p for p, _ in got[0][:2]]
  np.testing.assert_allclose([s for _, s in single], [s for _, s in got[0][:2]], atol=1e-6)
  assert [p for p, _ in table.lookup(x, k=3, method="approx")[0]] == [p for p, _ in got[0]]
  # Exact match of a query vector scores 1.
  assert table.lookup(vectors[3] * 5.0, k=1)[0][0][0] == "tree"


def test_phrase_table_errors():
  with pytest.raises(ValueError, match="len\\(phrases\\) = 2"):
    pl.PhraseTable(["a", "b"], np.ones((3, 4)))
  with pytest.raises(ValueError, match="Duplicate phrases: \\['a'\\]"):
    pl.PhraseTable(["a", "b", "a"], np.ones((3, 4)))
  table = pl.PhraseTable(["a", "b"], np.eye(2, 4))
  with pytest.raises(ValueError, match="'b'"):
    table.extend(["c", "b"], np.ones((2, 4)))
  with pytest.raises(ValueError, match="'c'"):
    table.extend(["c", "c"], np.ones((2, 4)))
  with pytest.raises(ValueError, match="len\\(new_phrases\\) = 1"):
    table.extend(["c"], np.ones((2, 4)))
  with pytest.raises(ValueError, match="k=3"):
    table.lookup(np.ones((1, 4)), k=3)
