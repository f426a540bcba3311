"""Tests for the VSE++ hinge objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from xmodal_jax.objectives import contrastive_hinge as ch


def _unit_rows(rng, b, d):
  x = rng.normal(size=(b, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _reference(image, text, margin, max_violation, image_ids=None):
  """Explicit-loop NumPy VSE++ loss (mean over pairs) and aux stats."""
  image = np.asarray(image, np.float64)
  text = np.asarray(text, np.float64)
  b = image.shape[0]
  ids = np.arange(b) if image_ids is None else np.asarray(image_ids)
  s = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      s[i, j] = sum(image[i, k] * text[j, k] for k in range(image.shape[1]))
  agg = max if max_violation else sum
  i2t_terms, t2i_terms, hardest = [], [], []
  for i in range(b):
    i2t, t2i, neg_sims = [], [], []
    for j in range(b):
      if j == i or ids[j] == ids[i]:
        continue
      i2t.append(max(0.0, margin - s[i, i] + s[i, j]))
      t2i.append(max(0.0, margin - s[i, i] + s[j, i]))
      neg_sims.append(s[i, j])
    i2t_terms.append(agg(i2t) if i2t else 0.0)
    t2i_terms.append(agg(t2i) if t2i else 0.0)
    if neg_sims:
      hardest.append(max(neg_sims))
  loss = sum(a + c for a, c in zip(i2t_terms, t2i_terms)) / b
  aux = {
      'hinge_i2t': sum(i2t_terms) / b,
      'hinge_t2i': sum(t2i_terms) / b,
      'pos_sim': sum(s[i, i] for i in range(b)) / b,
      'hardest_neg_sim': sum(hardest) / len(hardest) if hardest else 0.0,
  }
  return loss, aux


@pytest.mark.parametrize('max_violation', [True, False])
@pytest.mark.parametrize('with_ids', [False, True])
def test_matches_loop_reference(max_violation, with_ids):
  rng = np.random.default_rng(0 + 2 * max_violation + with_ids)
  b, d = 12, 8
  image, text = _unit_rows(rng, b, d), _unit_rows(rng, b, d)
  ids = None
  if with_ids:
    # Rows 0/1, 4/5/6 and 10/11 are captions of the same image.
    ids = np.array([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7], np.int32)
    image[1] = image[0]
    image[5] = image[6] = image[4]
    image[11] = image[10]
  ref_loss, ref_aux = _reference(image, text, 0.2, max_violation, ids)
  loss, aux = ch.contrastive_hinge_loss(
      image, text, margin=0.2, max_violation=max_violation,
      image_ids=None if ids is None else jnp.asarray(ids))
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
  for key, value in ref_aux.items():
    np.testing.assert_allclose(aux[key], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)
  assert float(loss) > 0


def test_image_ids_change_the_loss():
  rng = np.random.default_rng(1)
  image, text = _unit_rows(rng, 6, 4), _unit_rows(rng, 6, 4)
  ids = jnp.array([0, 0, 1, 1, 2, 2])
  for mv in (True, False):
    plain, _ = ch.contrastive_hinge_loss(image, text, max_violation=mv)
    masked, _ = ch.contrastive_hinge_loss(image, text, max_violation=mv,
                                          image_ids=ids)
    assert not np.isclose(plain, masked)


def test_hand_computed_b2():
  # s = image @ text.T = [[1.0, 0.6], [0.0, 0.8]], margin 0.5:
  # i2t: row 0 -> [0.5 - 1.0 + 0.6]_+ = 0.1; row 1 -> [0.5 - 0.8 + 0.0]_+ = 0.
  # t2i: col 0 -> [0.5 - 1.0 + 0.0]_+ = 0;   col 1 -> [0.5 - 0.8 + 0.6]_+ = 0.3.
  # loss = mean(0.1 + 0, 0 + 0.3) = 0.2 (B=2: sum and max coincide).
  image = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  text = jnp.array([[1.0, 0.0], [0.6, 0.8]])
  np.testing.assert_allclose(ch.similarity_matrix(image, text),
                             [[1.0, 0.6], [0.0, 0.8]], atol=1e-7)
  for mv in (True, False):
    loss, aux = ch.contrastive_hinge_loss(image, text, margin=0.5,
                                          max_violation=mv)
    np.testing.assert_allclose(loss, 0.2, atol=1e-6)
    np.testing.assert_allclose(aux['hinge_i2t'], 0.05, atol=1e-6)
    np.testing.assert_allclose(aux['hinge_t2i'], 0.15, atol=1e-6)
    np.testing.assert_allclose(aux['pos_sim'], 0.9, atol=1e-6)
    np.testing.assert_allclose(aux['hardest_neg_sim'], 0.3, atol=1e-6)
  # Same image for both captions: no negatives at all.
  loss, aux = ch.contrastive_hinge_loss(image, text, margin=0.5,
                                        image_ids=jnp.array([7, 7]))
  assert float(loss) == 0.0
  assert float(aux['hardest_neg_sim']) == 0.0


def test_hand_computed_b3_sum_vs_max():
  # With identity images, s[i, j] = text[j, i], so text = s.T.
  s = np.array([[1.0, 0.5, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
  image, text = jnp.eye(3), jnp.asarray(s.T)
  # margin 1: i2t row 0 -> {0.5, 0.25}; t2i col 1 -> {0.5, 0},
  # t2i col 2 -> {0.25, 0}; every other term is 0.
  loss_sum, _ = ch.contrastive_hinge_loss(image, text, margin=1.0,
                                          max_violation=False)
  loss_max, _ = ch.contrastive_hinge_loss(image, text, margin=1.0,
                                          max_violation=True)
  np.testing.assert_allclose(loss_sum, (0.75 + 0.5 + 0.25) / 3, atol=1e-6)
  np.testing.assert_allclose(loss_max, (0.5 + 0.5 + 0.25) / 3, atol=1e-6)


def _loss_fn(image, text, mv, ids):
  return ch.contrastive_hinge_loss(image, text, max_violation=mv,
                                   image_ids=ids)


def test_grad_finite_and_traced_switch_matches_python_bool():
  rng = np.random.default_rng(2)
  image, text = _unit_rows(rng, 8, 6), _unit_rows(rng, 8, 6)
  ids = jnp.array([0, 1, 1, 2, 3, 4, 5, 5])
  grad_fn = jax.value_and_grad(_loss_fn, argnums=(0, 1), has_aux=True)
  jit_grad = jax.jit(grad_fn)
  for python_mv in (True, False):
    (loss_py, aux_py), grads_py = grad_fn(image, text, python_mv, ids)
    (loss_jit, aux_jit), grads_jit = jit_grad(image, text,
                                              jnp.asarray(python_mv), ids)
    np.testing.assert_allclose(loss_jit, loss_py, rtol=1e-6)
    for key in aux_py:
      np.testing.assert_allclose(aux_jit[key], aux_py[key], rtol=1e-6)
    for g_py, g_jit in zip(grads_py, grads_jit):
      assert np.all(np.isfinite(g_py))
      assert np.abs(g_py).sum() > 0
      np.testing.assert_allclose(g_jit, g_py, rtol=1e-5, atol=1e-7)
  # The traced switch really switches: sum >= max, strictly here.
  (l_max, _), _ = jit_grad(image, text, jnp.asarray(True), ids)
  (l_sum, _), _ = jit_grad(image, text, jnp.asarray(False), ids)
  assert float(l_sum) > float(l_max)


def test_grad_finite_with_no_negatives():
  rng = np.random.default_rng(3)
  image, text = _unit_rows(rng, 4, 3), _unit_rows(rng, 4, 3)
  ids = jnp.zeros((4,), jnp.int32)
  for mv in (True, False):
    grads = jax.grad(lambda i, t: _loss_fn(i, t, mv, ids)[0],
                     argnums=(0, 1))(image, text)
    for g in grads:
      assert np.all(np.isfinite(g))
      np.testing.assert_array_equal(g, 0.0)


def test_sharded_inputs_match_unsharded():
  devices = np.array(jax.devices())
  mesh = Mesh(devices, ('data',))
  b = 2 * len(devices)
  rng = np.random.default_rng(4)
  image, text = _unit_rows(rng, b, 8), _unit_rows(rng, b, 8)
  ids = np.arange(b) // 2
  sharding = NamedSharding(mesh, P('data'))
  image_s, text_s, ids_s = (jax.device_put(x, sharding)
                            for x in (image, text, ids))
  fn = jax.jit(_loss_fn)
  for mv in (True, False):
    loss_s, aux_s = fn(image_s, text_s, jnp.asarray(mv), ids_s)
    loss, aux = _loss_fn(image, text, mv, jnp.asarray(ids))
    ref_loss, _ = _reference(image, text, 0.2, mv, ids)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
    np.testing.assert_allclose(loss_s, ref_loss, rtol=1e-5)
    for key in aux:
      np.testing.assert_allclose(aux_s[key], aux[key], rtol=1e-6)


def test_bfloat16_inputs_computed_in_float32():
  rng = np.random.default_rng(5)
  image, text = _unit_rows(rng, 6, 4), _unit_rows(rng, 6, 4)
  loss, _ = ch.contrastive_hinge_loss(jnp.asarray(image, jnp.bfloat16),
                                      jnp.asarray(text, jnp.bfloat16))
  assert loss.dtype == jnp.float32
  ref, _ = _reference(image, text, 0.2, True)
  np.testing.assert_allclose(loss, ref, atol=3e-2)


def test_shape_errors():
  with pytest.raises(ValueError, match='same shape'):
    ch.contrastive_hinge_loss(jnp.ones((4, 3)), jnp.ones((5, 3)))
  with pytest.raises(ValueError, match='image_ids'):
    ch.contrastive_hinge_loss(jnp.ones((4, 3)), jnp.ones((4, 3)),
                              image_ids=jnp.arange(3))
  with pytest.raises(ValueError, match='dim'):
    ch.similarity_matrix(jnp.ones((4, 3)), jnp.ones((4, 2)))
