"""S4's spliced input sequence: positions start at 2, every object has the same order id, type ids, shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.systems.single_stream import single_stream_inputs as ssi


def test_sequence_ids():
  positions, types = ssi.sequence_ids(3, 4)
  np.testing.assert_array_equal(positions, [0, 1, 1, 1, 2, 3, 4, 5])  # text positions start at 2
  np.testing.assert_array_equal(types, [0, 1, 1, 1, 2, 2, 2, 2])      # MATCH, [IMG] x 3, [Text] x 4
  assert len(set(positions[1:4].tolist())) == 1                        # every object: the same order id


def test_assembly_shapes_mask_and_object_order_invariance():
  module = ssi.SingleStreamInputs(vocab_size=30, width=8, max_text_len=6)
  feats = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5))
  obj_mask = jnp.array([[True, True, False], [True, True, True]])
  tokens = jnp.array([[4, 5, 6, 0], [7, 8, 0, 0]])
  params = module.init(jax.random.PRNGKey(1), feats, obj_mask, tokens, tokens > 0)
  x, mask = module.apply(params, feats, obj_mask, tokens, tokens > 0)
  assert x.shape == (2, 1 + 3 + 4, 8)
  np.testing.assert_array_equal(mask[0], [True, True, True, False, True, True, True, False])
  # Objects carry no order: permuting them permutes their outputs and changes nothing else.
  perm = jnp.array([2, 0, 1])
  y, _ = module.apply(params, feats[:, perm], obj_mask[:, perm], tokens, tokens > 0)
  np.testing.assert_allclose(y[:, 1:4], x[:, 1:4][:, perm], atol=1e-6)
  np.testing.assert_allclose(y[:, 4:], x[:, 4:], atol=1e-6)
  with pytest.raises(ValueError, match="position table"):
    module.apply(params, feats, obj_mask, jnp.ones((2, 7), jnp.int32), jnp.ones((2, 7), bool))
