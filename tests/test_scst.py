"""S5's objective: the SCST loss (sign, masking, baselines), the clipped and scaled CLIP reward, teacher forcing."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax.data.captions import teacher_forcing
from xmodal_jax.objectives import scst
from xmodal_jax.systems.captioning import sampling
from xmodal_jax.data.text import TokenizerBase

BOS, EOS, PAD = TokenizerBase.bos_id, TokenizerBase.eos_id, TokenizerBase.pad_id


def test_scst_loss_on_a_hand_made_case():
  """Two samples: advantages +0.5 and -0.25; the masked sums of log p are -1.5 and -0.7 (padding ignored)."""
  log_probs = jnp.asarray([[-0.5, -1.0, -9.0], [-0.3, -0.4, -9.0]])
  mask = jnp.asarray([[True, True, False], [True, True, False]])
  reward, baseline = jnp.asarray([1.0, 0.5]), jnp.asarray([0.5, 0.75])
  loss, metrics = scst.scst_loss(log_probs, mask, reward, baseline)
  expected = -np.mean([0.5 * -1.5, -0.25 * -0.7])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["positive_advantage"], 0.5)
  np.testing.assert_allclose(metrics["sample_length"], 2.0)


def test_scst_gradient_raises_log_p_of_better_than_baseline_samples_only_on_real_tokens():
  log_probs = jnp.asarray([[-0.5, -1.0, -2.0], [-0.3, -0.4, -2.0]])
  mask = jnp.asarray([[True, True, False], [True, False, False]])
  reward, baseline = jnp.asarray([1.0, 0.0]), jnp.asarray([0.2, 0.6])
  grad = jax.grad(lambda lp: scst.scst_loss(lp, mask, reward, baseline)[0])(log_probs)
  # d loss / d log p_t = -(R - b) / n on real tokens: descending it raises log p where R > b, lowers it where R < b.
  np.testing.assert_allclose(grad, [[-0.4, -0.4, 0.0], [0.3, 0.0, 0.0]], rtol=1e-6)
  # No gradient flows into the reward or the baseline.
  g_reward = jax.grad(lambda r: scst.scst_loss(log_probs, mask, r, baseline)[0])(reward)
  np.testing.assert_array_equal(g_reward, 0.0)


def test_equal_reward_and_baseline_give_no_update():
  log_probs = -jnp.ones((3, 4))
  grad = jax.grad(lambda lp: scst.scst_loss(lp, jnp.ones((3, 4), bool), jnp.ones(3), jnp.ones(3))[0])(log_probs)
  np.testing.assert_array_equal(grad, 0.0)


def test_clip_reward_is_clipped_at_zero_and_scaled_by_w():
  image = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
  text = jnp.asarray([[1.0, 1.0], [-1.0, 0.2], [3.0, 0.0]])   # cos 1/sqrt(2), negative, 1 (any norm)
  np.testing.assert_allclose(scst.clip_reward(image, text), [2.5 / np.sqrt(2), 0.0, 2.5], rtol=1e-6)
  np.testing.assert_allclose(scst.clip_reward(image, text, w=1.0), [1 / np.sqrt(2), 0.0, 1.0], rtol=1e-6)


def test_leave_one_out_baseline():
  rewards = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
  np.testing.assert_allclose(scst.leave_one_out_baseline(rewards), [[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]])


def test_caption_mask_and_words_only_stop_at_the_first_eos():
  tokens = jnp.asarray([[5, 6, EOS, PAD, PAD], [7, EOS, 8, EOS, PAD], [5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(sampling.caption_mask(tokens, EOS), [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0],
                                                                     [1, 1, 1, 1, 1]])
  words, mask = sampling.words_only(tokens, EOS)
  np.testing.assert_array_equal(words, [[5, 6, 0, 0, 0], [7, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
  np.testing.assert_array_equal(mask, words != 0)


def test_teacher_forcing_inputs_and_targets():
  out = teacher_forcing(np.asarray([[5, 6, 0], [7, 8, 9]], np.int32), seq_len=4)
  np.testing.assert_array_equal(out["targets"], [[5, 6, EOS, PAD], [7, 8, 9, EOS]])
  np.testing.assert_array_equal(out["inputs"], [[BOS, 5, 6, PAD], [BOS, 7, 8, 9]])


def test_teacher_forcing_loss_ignores_padding():
  logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]]]))
  loss, metrics = scst.teacher_forcing_loss(logits, jnp.asarray([[0, 1]]), jnp.asarray([[True, False]]))
  np.testing.assert_allclose(loss, -np.log(0.5), rtol=1e-6)
  np.testing.assert_allclose(metrics["perplexity"], 2.0, rtol=1e-6)
