"""The shared transformer block and the towers built on it: KV-cache decoding, remat, masks, ViT, text tower."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.models import vit as vit_lib
from xmodal_jax.models.text_transformer import TextTransformer
from xmodal_jax.models.transformer import Transformer, TransformerBlock
from xmodal_jax.models.vit import ViT

_BLOCK = dict(num_heads=2, mlp_dim=32, causal=True)


def _normal(seed, shape):
  """Host inputs (numpy: no eager device ops, each of which would compile a program)."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _init(module, *args):
  return nn.meta.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), *args))


@pytest.mark.parametrize("cross", [False, True])
def test_incremental_decoding_equals_the_full_causal_forward(cross):
  """Token by token through the KV cache (and a 3-token prefill, then single tokens) gives the full forward's
  outputs at every position, to float32 rounding (atol 1e-5)."""
  batch, length, width = 2, 7, 16
  x = _normal(1, (batch, length, width))
  context = _normal(2, (batch, 5, width)) if cross else None
  block = dict(_BLOCK, cross_attention=cross)
  full_model = Transformer(2, block)
  params = _init(full_model, x, None, context)["params"]
  full = jax.jit(full_model.apply)({"params": params}, x, None, context)

  decoder = Transformer(2, dict(block, decode=True))
  cache = jax.jit(decoder.init)(jax.random.PRNGKey(0), np.zeros_like(x), None, context)["cache"]
  assert cache["layer_0"]["attention"]["cached_key"].shape == (batch, length, 2, width // 2)
  step = jax.jit(lambda c, xt: decoder.apply({"params": params, "cache": c}, xt, None, context, mutable=["cache"]))
  outs = []
  for chunk in (slice(0, 3), *[slice(t, t + 1) for t in range(3, length)]):
    out, mutated = step(cache, x[:, chunk])
    cache = mutated["cache"]
    outs.append(out)
  incremental = np.concatenate(outs, axis=1)
  np.testing.assert_allclose(incremental, full, atol=1e-5, rtol=1e-5)
  assert int(cache["layer_1"]["attention"]["cache_index"]) == length


def test_causal_outputs_ignore_later_positions():
  x = _normal(3, (1, 6, 8))
  model = TransformerBlock(**_BLOCK)
  params = _init(model, x)
  changed = x.copy()
  changed[:, 4:] = 7.0
  apply = jax.jit(model.apply)
  a, b = apply(params, x), apply(params, changed)
  np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
  assert not np.allclose(a[:, 4:], b[:, 4:])


def test_padding_mask_hides_padded_keys_in_bidirectional_attention():
  x = _normal(4, (2, 5, 8))
  mask = np.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)[:, None, None, :]
  model = TransformerBlock(num_heads=2, mlp_dim=16)
  params = _init(model, x, mask)
  apply = jax.jit(model.apply)
  a = apply(params, x, mask)
  other = x.copy()
  other[0, 3:] = -3.0
  b = apply(params, other, mask)
  np.testing.assert_allclose(a[0, :3], b[0, :3], atol=1e-6)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_remat_gives_the_same_loss_and_gradients(norm):
  x = _normal(5, (2, 6, 16))
  plain, remat = Transformer(2, dict(_BLOCK, norm=norm)), Transformer(2, dict(_BLOCK, norm=norm), remat=True)
  params = _init(plain, x)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
  (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(loss(m)))(params) for m in (plain, remat))
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), ga, gb)


def test_dropout_is_active_only_when_not_deterministic():
  x = _normal(9, (2, 4, 8))
  model = TransformerBlock(num_heads=2, mlp_dim=16, dropout_rate=0.5, attention_dropout_rate=0.5)
  params = _init(model, x)
  apply = jax.jit(model.apply, static_argnames="deterministic")
  a = apply(params, x)
  np.testing.assert_allclose(a, apply(params, x), atol=0)
  b = apply(params, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  assert not np.allclose(a, b)


def test_logical_axes_of_the_block():
  x = np.ones((1, 3, 8), np.float32)
  boxed = jax.eval_shape(TransformerBlock(num_heads=2, mlp_dim=16).init, jax.random.PRNGKey(0), x)["params"]
  names = lambda *path: boxed[path[0]][path[1]][path[2]].names if len(path) == 3 else boxed[path[0]][path[1]].names
  assert names("attention", "query", "kernel") == ("embed", "heads", "kv")
  assert names("attention", "out", "kernel") == ("heads", "kv", "embed")
  assert names("mlp", "fc1", "kernel") == ("embed", "mlp")
  assert names("mlp_norm", "scale") == ("embed",)


def test_patch_embedding_equals_a_strided_convolution():
  images = _normal(6, (2, 16, 16, 3))
  kernel = _normal(7, (4, 4, 3, 5))
  conv = jax.lax.conv_general_dilated(images, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  dense = np.asarray(vit_lib.patchify(images, 4)) @ kernel.reshape(-1, 5)
  np.testing.assert_allclose(dense, np.asarray(conv).reshape(2, 16, 5), atol=1e-4)
  with pytest.raises(ValueError, match="not a multiple of the patch size"):
    vit_lib.patchify(images[:, :15], 4)


@pytest.mark.parametrize("pool,posemb", [("cls", "learn"), ("gap", "sincos2d"), ("map", "learn")])
def test_vit_pools_to_width(pool, posemb):
  model = ViT(patch_size=8, width=16, depth=1, num_heads=2, pool=pool, posemb=posemb)
  images = _normal(8, (3, 32, 32, 3))
  params = _init(model, images)
  out = jax.jit(model.apply)(params, images)
  assert out.shape == (3, 16) and np.all(np.isfinite(out))
  assert ("pos_embed" in params["params"]) == (posemb == "learn")
  assert ("cls_token" in params["params"]) == (pool == "cls")


def test_sincos_2d_is_fixed_and_distinct_per_position():
  emb = vit_lib.sincos_2d(4, 4, 16)
  assert emb.shape == (16, 16)
  dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  assert np.all(dist[~np.eye(16, dtype=bool)] > 1e-3)


@pytest.mark.parametrize("pool", ["eot", "argmax", "mean", "first"])
def test_text_transformer_pooling_ignores_padding(pool):
  model = TextTransformer(vocab_size=50, max_len=8, width=16, depth=1, num_heads=2, pool=pool, causal=pool != "first")
  tokens = np.asarray([[5, 6, 49, 0, 0, 0], [7, 8, 9, 10, 49, 0]], np.int32)
  mask = (np.arange(6)[None] < np.asarray([[3], [5]])).astype(np.int32)
  params = _init(model, tokens, mask)
  apply = jax.jit(model.apply)
  a = apply(params, tokens, mask)
  b = apply(params, np.where(mask > 0, tokens, 3), mask)  # other padding ids
  assert a.shape == (2, 16)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_text_transformer_eot_pools_the_last_real_token():
  model = TextTransformer(vocab_size=50, max_len=8, width=16, depth=1, num_heads=2, pool="eot")
  tokens = np.asarray([[5, 6, 7, 0]], np.int32)
  params = _init(model, tokens, np.ones_like(tokens))
  apply = jax.jit(model.apply)
  short = apply(params, tokens, np.asarray([[1, 1, 1, 0]], np.int32))
  prefix = apply(params, tokens[:, :3], np.ones((1, 3), np.int32))
  np.testing.assert_allclose(short, prefix, atol=1e-5)
  with pytest.raises(ValueError, match="max_len=8"):
    apply(params, np.zeros((1, 9), np.int32), np.ones((1, 9), np.int32))


def test_bfloat16_compute_keeps_float32_params():
  model = ViT(patch_size=8, width=16, depth=1, num_heads=2, dtype=jnp.bfloat16)
  images = np.ones((2, 16, 16, 3), np.float32)
  params = _init(model, images)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  out = jax.jit(model.apply)(params, images)
  assert out.dtype == jnp.bfloat16
