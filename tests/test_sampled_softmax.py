"""Tests for the full and sampled softmax over K queries with cosine logits (S1, seed eq. 1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from xmodal_jax.systems.classifier import sampled_softmax as ss
from xmodal_jax.train.sharding import create_mesh


def _data(seed, batch, dim, num_classes):
  """x [B, D], w [K, D] with non-unit row norms, Zipf-ish labels [B]."""
  r = np.random.default_rng(seed)
  x = (r.normal(size=(batch, dim)) * r.uniform(0.2, 3.0, size=(batch, 1))).astype(np.float32)
  w = (r.normal(size=(num_classes, dim)) * r.uniform(0.2, 3.0, size=(num_classes, 1))).astype(np.float32)
  labels = np.minimum(r.zipf(1.5, size=batch) - 1, num_classes - 1).astype(np.int32)
  return x, w, labels


def _np_logits(x, w, scale):
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  return scale * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


def _np_logsumexp(a, axis):
  m = np.max(a, axis=axis, keepdims=True)
  return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def _np_log_q(ids, num_samples, num_classes, distribution):
  ids = np.asarray(ids, np.float64)
  if distribution == "uniform":
    return np.full(ids.shape, np.log(num_samples / num_classes))
  return np.log(num_samples * (np.log(ids + 2) - np.log(ids + 1)) / np.log(num_classes + 1))


def _np_sampled_loss(x, w, labels, ids, scale, distribution, remove_hits=True):
  """Explicit NumPy sampled softmax (float64) for given sampled ids."""
  num_samples, num_classes = len(ids), w.shape[0]
  logits = _np_logits(x, w, scale)
  rows = np.arange(len(labels))
  true_score = logits[rows, labels]
  sampled_score = logits[:, ids]
  true_logit = true_score - _np_log_q(labels, num_samples, num_classes, distribution)
  sampled_logit = sampled_score - _np_log_q(ids, num_samples, num_classes, distribution)[None]
  hit = ids[None, :] == labels[:, None]
  if remove_hits:
    sampled_logit = np.where(hit, -np.inf, sampled_logit)
  all_logits = np.concatenate([true_logit[:, None], sampled_logit], axis=1)
  loss = np.mean(_np_logsumexp(all_logits, 1) - true_logit)
  acc = np.mean(true_score > np.max(np.where(hit, -np.inf, sampled_score), axis=1))
  return loss, acc


def _cos(a, b):
  a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cosine_logits_match_numpy():
  x, w, _ = _data(0, 6, 16, 40)
  got = ss.cosine_logits(jnp.asarray(x), jnp.asarray(w), 7.5)
  assert got.shape == (6, 40) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_logits(x, w, 7.5), rtol=1e-5, atol=1e-5)
  # Zero rows stay finite (eps in the normalisation).
  assert np.all(np.isfinite(ss.cosine_logits(jnp.zeros((2, 16)), jnp.asarray(w), 3.0)))
  # bfloat16 inputs are normalised in float32.
  assert ss.cosine_logits(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), 1.0).dtype == jnp.float32


def test_full_softmax_loss_matches_numpy():
  x, w, labels = _data(1, 12, 16, 30)
  loss, aux = ss.full_softmax_loss(jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels), 5.0)
  logits = _np_logits(x, w, 5.0)
  log_p = logits - _np_logsumexp(logits, 1)[:, None]
  np.testing.assert_allclose(loss, -np.mean(log_p[np.arange(12), labels]), rtol=1e-5)
  np.testing.assert_allclose(aux["accuracy"], np.mean(np.argmax(logits, 1) == labels), rtol=1e-6)
  # Seed eq. 1 form: softmax(-s * (1 - cos)) gives the same distribution.
  np.testing.assert_allclose(log_p, jax.nn.log_softmax(-5.0 * (1.0 - logits / 5.0), axis=1), atol=1e-6)


def test_sample_candidates_log_uniform_frequencies():
  num_classes, n = 1000, 200_000
  ids, log_expected = ss.sample_candidates(jax.random.PRNGKey(0), n, num_classes)
  ids = np.asarray(ids)
  assert ids.shape == (n,) and ids.dtype == np.int32 and log_expected.dtype == jnp.float32
  assert ids.min() >= 0 and ids.max() < num_classes
  k = np.arange(num_classes)
  p = (np.log(k + 2) - np.log(k + 1)) / np.log(num_classes + 1)
  np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-12)
  freq = np.bincount(ids, minlength=num_classes) / n
  z = np.abs(freq - p) / np.sqrt(p * (1 - p) / n)
  assert z[:50].max() < 5.0, z[:50].max()
  assert np.abs(freq[:10] - p[:10]).max() < 0.003
  # Tail mass (ids >= 100) as a whole.
  assert abs(freq[100:].sum() - p[100:].sum()) < 5 * np.sqrt(p[100:].sum() / n)
  np.testing.assert_allclose(log_expected, np.log(n * p[ids]), rtol=1e-5, atol=1e-5)


def test_sample_candidates_uniform_and_errors():
  ids, log_expected = ss.sample_candidates(jax.random.PRNGKey(1), 100_000, 10, "uniform")
  freq = np.bincount(np.asarray(ids), minlength=10) / 100_000
  assert np.abs(freq - 0.1).max() < 0.005
  np.testing.assert_allclose(log_expected, np.log(100_000 / 10), rtol=1e-6)
  # O(S): a huge K is fine (no [K] array).
  ids, _ = ss.sample_candidates(jax.random.PRNGKey(2), 64, 10**9)
  assert ids.shape == (64,) and int(ids.min()) >= 0 and int(ids.max()) < 10**9
  with pytest.raises(ValueError, match="log_uniform.*uniform"):
    ss.sample_candidates(jax.random.PRNGKey(0), 4, 10, "zipf")
  with pytest.raises(ValueError, match="log_uniform"):
    ss.expected_log_count(jnp.arange(3), 4, 10, "unigram")


def test_expected_log_count_formula():
  ids = np.array([0, 1, 2, 10, 999, 123_456, 999_999])
  for dist in ("log_uniform", "uniform"):
    got = ss.expected_log_count(jnp.asarray(ids), 1024, 1_000_000, dist)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_log_q(ids, 1024, 1_000_000, dist), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("distribution", ["log_uniform", "uniform"])
def test_sampled_loss_matches_numpy_reference(distribution):
  x, w, labels = _data(2, 16, 8, 20)
  rng = jax.random.PRNGKey(3)
  ids, _ = ss.sample_candidates(rng, 12, 20, distribution)  # the same draws the loss makes
  loss, aux = ss.sampled_softmax_loss(jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels), rng, num_samples=12,
                                      scale=4.0, distribution=distribution)
  want_loss, want_acc = _np_sampled_loss(x, w, labels, np.asarray(ids), 4.0, distribution)
  assert np.any(np.asarray(ids)[None] == labels[:, None]), "want some accidental hits in this case"
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(aux["sampled_accuracy"], want_acc)


def test_accidental_hits_are_masked():
  """K=2, uniform, label 0 everywhere: sampled 0s must contribute nothing."""
  x, w, _ = _data(4, 8, 4, 2)
  labels = np.zeros(8, np.int32)
  args = (jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels))
  rng = jax.random.PRNGKey(5)
  ids = np.asarray(ss.sample_candidates(rng, 16, 2, "uniform")[0])
  assert 0 < (ids == 0).sum() < 16
  loss, _ = ss.sampled_softmax_loss(*args, rng, num_samples=16, scale=3.0, distribution="uniform")
  # Reference: logsumexp over the true logit and only the samples equal to 1.
  logits = _np_logits(x, w, 3.0) - np.log(16 / 2)
  negatives = np.repeat(logits[:, 1:2], (ids == 1).sum(), axis=1)
  want = np.mean(_np_logsumexp(np.concatenate([logits[:, :1], negatives], 1), 1) - logits[:, 0])
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  unmasked, _ = ss.sampled_softmax_loss(*args, rng, num_samples=16, scale=3.0, distribution="uniform",
                                        remove_accidental_hits=False)
  assert float(unmasked) > float(loss) + 0.1
  # Only hits sampled: nothing to contrast with, so zero loss and zero gradient.
  rng_all_hits = next(jax.random.PRNGKey(i) for i in range(100)
                      if int(ss.sample_candidates(jax.random.PRNGKey(i), 2, 2, "uniform")[0].max()) == 0)
  fn = lambda x, w: ss.sampled_softmax_loss(x, w, args[2], rng_all_hits, num_samples=2, scale=3.0,
                                            distribution="uniform")
  (loss, aux), grads = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(*args[:2])
  assert float(loss) == 0.0 and float(aux["sampled_accuracy"]) == 1.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_sampled_gradient_points_like_full_gradient():
  """E[grad of sampled loss] ~ grad of full loss (biased but consistent: closer with more samples)."""
  num_classes, dim, batch, scale, draws = 50, 16, 32, 10.0, 200
  x, w, labels = (jnp.asarray(a) for a in _data(6, batch, dim, num_classes))
  full_gx, full_gw = jax.grad(lambda x, w: ss.full_softmax_loss(x, w, labels, scale)[0], argnums=(0, 1))(x, w)
  rngs = jax.random.split(jax.random.PRNGKey(7), draws)
  measured = {}
  for num_samples in (4, 32):
    loss = lambda x, w, rng: ss.sampled_softmax_loss(x, w, labels, rng, num_samples=num_samples, scale=scale)[0]
    gx, gw = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, None, 0)))(x, w, rngs)
    measured[num_samples] = (_cos(gx.mean(0), full_gx), _cos(gw.mean(0), full_gw))
  print(f"cos(mean sampled grad, full grad) over {draws} draws, K={num_classes}: "
        + ", ".join(f"S={s}: x {cx:.4f}, W {cw:.4f}" for s, (cx, cw) in measured.items()))
  cos_x, cos_w = measured[32]
  assert cos_x >= 0.95 and cos_w >= 0.95  # measured ~0.98-0.99 on several data seeds
  assert cos_x > measured[4][0] and cos_w > measured[4][1]


def test_sharded_w_matches_unsharded():
  """W [K, D] over `model` along K, x over `data` on a 2x4 mesh: same logits and losses under jit."""
  num_classes, dim, batch, scale = 64, 16, 16, 6.0
  x, w, labels = _data(8, batch, dim, num_classes)
  rng = jax.random.PRNGKey(9)
  mesh = create_mesh((2, 4))
  xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  ws = jax.device_put(w, NamedSharding(mesh, P("model", None)))
  ls = jax.device_put(labels, NamedSharding(mesh, P("data")))
  assert ws.addressable_shards[0].data.shape == (num_classes // 4, dim)

  def all_outputs(x, w, labels, rng):
    sampled = lambda x, w: ss.sampled_softmax_loss(x, w, labels, rng, num_samples=24, scale=scale)
    (s_loss, s_aux), s_grads = jax.value_and_grad(sampled, argnums=(0, 1), has_aux=True)(x, w)
    f_loss, f_aux = ss.full_softmax_loss(x, w, labels, scale)
    return ss.cosine_logits(x, w, scale), f_loss, f_aux, s_loss, s_aux, s_grads

  fn = jax.jit(all_outputs)
  want = fn(jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels), rng)
  got = fn(xs, ws, ls, rng)
  assert len(got[0].sharding.device_set) == 8
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-5)
