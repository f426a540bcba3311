"""Global-batch CLIP / SigLIP losses: the plain forms under jit on a sharded batch and the ring forms, against an
independent float64 NumPy reference (loss, metrics and gradients), on meshes (8, 1) and (4, 2) of the 8 fake CPU
devices of tests/conftest.py.

Tolerance (float32 results vs the float64 reference): the loss and the metrics to rtol 1e-5, atol 1e-6 (`_TOL`);
each gradient array elementwise to rtol 1e-5 and atol 1e-6 + 1e-5 * max|reference| (float32 rounding of logits up
to 100 is absolute, so entries much smaller than the array's largest get no relative bound). Measured worst cases:
loss rel. error 1.5e-7; gradient abs. error 2.0e-6 with max|grad| 3.1 (InfoNCE at exp(logit_scale) = 100), i.e.
6.5e-7 of the array's scale.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from xmodal_jax.objectives import contrastive_sigmoid, contrastive_softmax, ring_contrastive
from xmodal_jax.train.sharding import create_mesh

_TOL = dict(rtol=1e-5, atol=1e-6)
_B, _D = 32, 16


def _unit_rows(rng, b, d):
  x = rng.normal(size=(b, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _duplicate_ids(rng, b):
  """[b] image ids with several captions per image: groups inside a device block and across blocks of both meshes
  (blocks of 4 rows on (8, 1), of 8 rows on (4, 2)); ids are arbitrary numbers, not row indices."""
  group = np.arange(b)
  group[1] = 0                        # same block everywhere
  group[4] = 3                        # blocks 0 / 1 on (8, 1), one block on (4, 2)
  group[8] = 7                        # blocks 1 / 2 on (8, 1), 0 / 1 on (4, 2)
  group[b - 1] = 0                    # first and last block: three captions of image 0
  group[[17, 26]] = 9                 # one image in three far-apart blocks
  return rng.permutation(10 * b)[group].astype(np.int32)


def _sigmoid(u):
  return 1.0 / (1.0 + np.exp(-u))


def _reference_sigmoid(x, y, logit_scale, logit_bias, ids):
  """SigLIP eq. 1 in float64 with its analytic gradient: (loss, metrics, (dx, dy, d_scale, d_bias))."""
  b = x.shape[0]
  t = np.exp(logit_scale)
  sim = x @ y.T
  z = t * sim + logit_bias
  labels = np.where(ids[:, None] == ids[None, :], 1.0, -1.0)  # the diagonal has equal ids
  loss = np.sum(np.logaddexp(0.0, -labels * z)) / b            # -log sigmoid(u) = log(1 + exp(-u))
  dz = -labels * _sigmoid(-labels * z) / b
  grads = (t * dz @ y, t * dz.T @ x, np.sum(dz * t * sim), np.sum(dz))
  pos = labels > 0
  metrics = {"pos_logit": z[pos].mean(), "neg_logit": z[~pos].mean() if (~pos).any() else 0.0}
  return loss, metrics, grads


def _reference_infonce(x, y, logit_scale, ids):
  """CLIP symmetric InfoNCE in float64, false negatives (same image, off the diagonal) left out of both softmaxes,
  with its analytic gradient: (loss, metrics, (dx, dy, d_scale))."""
  b = x.shape[0]
  t = np.exp(logit_scale)
  z = t * (x @ y.T)
  keep = (ids[:, None] != ids[None, :]) | np.eye(b, dtype=bool)
  zk = np.where(keep, z, -np.inf)
  p_rows = np.exp(zk - zk.max(axis=1, keepdims=True))
  p_rows /= p_rows.sum(axis=1, keepdims=True)
  p_cols = np.exp(zk - zk.max(axis=0, keepdims=True))
  p_cols /= p_cols.sum(axis=0, keepdims=True)
  i2t = np.mean(-np.log(np.diagonal(p_rows)))
  t2i = np.mean(-np.log(np.diagonal(p_cols)))
  dz = 0.5 * (p_rows + p_cols - 2.0 * np.eye(b)) / b
  grads = (t * dz @ y, t * dz.T @ x, np.sum(dz * z))
  negatives = np.where(keep & ~np.eye(b, dtype=bool), z, -np.inf)
  metrics = {"i2t_loss": i2t, "t2i_loss": t2i, "pos_logit": np.mean(np.diagonal(z)),
             "pair_accuracy": np.mean(np.diagonal(z) > negatives.max(axis=1))}
  return 0.5 * (i2t + t2i), metrics, grads


def test_references_gradients_match_finite_differences():
  """The analytic gradients of the references, by central differences (float64)."""
  rng = np.random.default_rng(5)
  x, y = _unit_rows(rng, 8, 3), _unit_rows(rng, 8, 3)
  ids = np.array([0, 0, 1, 2, 3, 3, 3, 4])
  cases = [(lambda v: _reference_sigmoid(v[0], v[1], v[2], v[3], ids), [x, y, 1.3, -2.0]),
           (lambda v: _reference_infonce(v[0], v[1], v[2], ids), [x, y, 1.3])]
  eps = 1e-6
  for fn, args in cases:
    grads = fn(args)[2]
    for k, arg in enumerate(args):
      flat = np.array(arg, np.float64).reshape(-1)
      numeric = np.zeros_like(flat)
      for j in range(flat.size):
        up, down = flat.copy(), flat.copy()
        up[j] += eps
        down[j] -= eps
        shape = np.shape(arg)
        numeric[j] = (fn(args[:k] + [up.reshape(shape)] + args[k + 1:])[0]
                      - fn(args[:k] + [down.reshape(shape)] + args[k + 1:])[0]) / (2 * eps)
      np.testing.assert_allclose(np.reshape(grads[k], -1), numeric, rtol=1e-6, atol=1e-8)


def _check(result, reference):
  (loss, metrics), grads = result
  ref_loss, ref_metrics, ref_grads = reference
  np.testing.assert_allclose(float(loss), ref_loss, **_TOL)
  assert loss.dtype == jnp.float32
  assert set(metrics) == set(ref_metrics)
  for key, value in ref_metrics.items():
    np.testing.assert_allclose(float(metrics[key]), value, err_msg=key, **_TOL)
  for k, (grad, ref) in enumerate(zip(grads, ref_grads)):
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=_TOL["rtol"],
                               atol=_TOL["atol"] + _TOL["rtol"] * np.max(np.abs(ref)), err_msg=f"gradient {k}")


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2)])
@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
@pytest.mark.parametrize("duplicates", [False, True])
def test_plain_and_ring_match_reference(mesh_shape, loss, duplicates):
  rng = np.random.default_rng([mesh_shape[0], loss == "sigmoid", duplicates])
  x, y = _unit_rows(rng, _B, _D), _unit_rows(rng, _B, _D)
  ids = _duplicate_ids(rng, _B) if duplicates else np.arange(_B, dtype=np.int32)
  mesh = create_mesh(mesh_shape)
  batch = NamedSharding(mesh, P("data"))
  xs, ys, ids_s = (jax.device_put(a, batch) for a in (x.astype(np.float32), y.astype(np.float32), ids))
  if loss == "sigmoid":
    scale, bias = (np.log(10.0), -10.0) if not duplicates else (1.5, -2.0)  # SigLIP init / a later state
    reference = _reference_sigmoid(x, y, scale, bias, ids)
    scalars = (jnp.float32(scale), jnp.float32(bias))
    plain = contrastive_sigmoid.sigmoid_loss
    ring = functools.partial(ring_contrastive.ring_sigmoid, mesh=mesh)
  else:
    scale = np.log(1 / 0.07) if not duplicates else np.log(100.0)         # CLIP init / CLIP's clamp
    reference = _reference_infonce(x, y, scale, ids)
    scalars = (jnp.float32(scale),)
    plain = contrastive_softmax.infonce_loss
    ring = functools.partial(ring_contrastive.ring_infonce, mesh=mesh)
  argnums = tuple(range(2 + len(scalars)))
  plain_ids = ids_s if duplicates else None  # also covers the default (no ids: only the diagonal)
  for fn in (plain, ring):
    step = jax.jit(jax.value_and_grad(lambda *a, fn=fn: fn(*a), argnums=argnums, has_aux=True))
    _check(step(xs, ys, *scalars, plain_ids), reference)


def test_infonce_loss_equals_symmetric_infonce():
  rng = np.random.default_rng(1)
  x, y = (jnp.asarray(_unit_rows(rng, 12, 5), jnp.float32) for _ in range(2))
  ids = jnp.asarray([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7])
  loss, _ = contrastive_softmax.infonce_loss(x, y, jnp.float32(np.log(10.0)), ids)
  old, _ = contrastive_softmax.symmetric_infonce(x, y, 0.1, a_ids=ids, b_ids=ids)
  np.testing.assert_allclose(float(loss), float(old), rtol=1e-6)


def test_low_precision_inputs_give_float32_losses():
  rng = np.random.default_rng(2)
  x, y = (jnp.asarray(_unit_rows(rng, 8, 4), jnp.bfloat16) for _ in range(2))
  assert contrastive_softmax.infonce_loss(x, y, jnp.float32(2.0))[0].dtype == jnp.float32
  assert contrastive_sigmoid.sigmoid_loss(x, y, jnp.float32(2.0), jnp.float32(-1.0))[0].dtype == jnp.float32


def test_ring_rejects_batch_not_divisible_by_data_axis():
  mesh = create_mesh((8, 1))
  x = jnp.zeros((36, _D), jnp.float32)
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    ring_contrastive.ring_infonce(x, x, jnp.float32(1.0), mesh=mesh)
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    jax.jit(lambda a: ring_contrastive.ring_sigmoid(a, a, 1.0, -1.0, mesh=mesh))(x)


def test_ring_compiled_temp_memory_is_well_below_plain():
  """Per-device temp bytes of value_and_grad at B=2048, D=32 on (8, 1) (memory_analysis of the SPMD program is per
  device: its argument bytes are the [B/8, D] shards). The plain form holds [B/8, B] rows of logits, the ring
  [B/8, B/8] blocks; measured ratios ~5x (SigLIP) and ~7x (InfoNCE); required > 2x."""
  b, d = 2048, 32
  mesh = create_mesh((8, 1))
  emb = jax.ShapeDtypeStruct((b, d), jnp.float32, sharding=NamedSharding(mesh, P("data")))
  ids = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=NamedSharding(mesh, P("data")))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  forms = {
      "sigmoid": (lambda a, c, s, t, i: contrastive_sigmoid.sigmoid_loss(a, c, s, t, i),
                  lambda a, c, s, t, i: ring_contrastive.ring_sigmoid(a, c, s, t, i, mesh=mesh)),
      "infonce": (lambda a, c, s, t, i: contrastive_softmax.infonce_loss(a, c, s, i),
                  lambda a, c, s, t, i: ring_contrastive.ring_infonce(a, c, s, i, mesh=mesh)),
  }
  for name, (plain, ring) in forms.items():
    temps = []
    for fn in (plain, ring):
      compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3), has_aux=True)).lower(
          emb, emb, scalar, scalar, ids).compile()
      stats = compiled.memory_analysis()
      assert stats.argument_size_in_bytes < 2 * b * d * 4 / 8 + 2 * b  # per-device shards, not the global arrays
      temps.append(stats.temp_size_in_bytes)
    assert temps[0] > 2 * temps[1], (name, temps)
