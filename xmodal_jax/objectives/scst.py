"""Self-critical sequence training (Rennie et al. 2017) under a contrastive reward (the S5 seed, eq. 1-2).

Reward (seed eq. 1; CLIP-S of Hessel et al. 2021):   R(I, c) = w * max(cos(f_I(I), f_T(c)), 0),  w = 2.5,
with f_I, f_T a frozen two-tower model's image and text embeddings; augmented by the grammar head g(c) in [0, 1]:
R'(I, c) = R(I, c) + lambda * g(c) (the seed's plain sum: lambda = 1).

Policy gradient with a baseline (seed eq. 2):  L = -(R(I, c^s) - b) * sum_t log p(c^s_t | I, c^s_<t),
over the sampled caption's tokens (its words and the <eos> that ended it; never padding). The baseline b is the
reward of the greedy caption of the same image (SCST's "self-critical" baseline, the seed's default), or, with K
samples per image, the mean reward of the image's other K - 1 samples (leave-one-out; Kool et al. 2019). The
advantage R - b is a constant (no gradient flows into the reward or the baseline). The loss is averaged over the
samples of the batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

REWARD_WEIGHT = 2.5


def clip_reward(image_emb: jax.Array, text_emb: jax.Array, w: float = REWARD_WEIGHT) -> jax.Array:
  """[batch, D] x [batch, D] (any norm) -> float32 [batch] = w * max(cos, 0) (seed eq. 1)."""
  image = image_emb.astype(jnp.float32)
  text = text_emb.astype(jnp.float32)
  cos = jnp.sum(image * text, axis=-1) / jnp.maximum(
      jnp.linalg.norm(image, axis=-1) * jnp.linalg.norm(text, axis=-1), 1e-8)
  return w * jnp.maximum(cos, 0.0)


def token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """logits [batch, len, vocab], tokens [batch, len] -> float32 [batch, len]: log p of each token."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def leave_one_out_baseline(rewards: jax.Array) -> jax.Array:
  """rewards [batch, K] (K >= 2 samples per image) -> [batch, K]: each sample's baseline, the mean of the other
  K - 1 samples' rewards."""
  k = rewards.shape[-1]
  if k < 2:
    raise ValueError(f"A leave-one-out baseline needs >= 2 samples per image; got {k}.")
  return (jnp.sum(rewards, axis=-1, keepdims=True) - rewards) / (k - 1)


def scst_loss(log_probs: jax.Array, mask: jax.Array, reward: jax.Array, baseline: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Seed eq. 2, averaged over the samples.

  Args:
    log_probs: float32 [n, len], log p of each sampled token under the current policy (with gradient).
    mask: bool [n, len], the sampled caption's tokens (words + the ending <eos>); padding is False.
    reward, baseline: float32 [n] (treated as constants).

  Returns:
    (loss [], metrics: advantage mean / std, share of positive advantages, mean sampled length).
  """
  advantage = jax.lax.stop_gradient(reward - baseline)
  sequence_logp = jnp.sum(jnp.where(mask, log_probs, 0.0), axis=-1)
  loss = -jnp.mean(advantage * sequence_logp)
  metrics = {"advantage": jnp.mean(advantage), "advantage_std": jnp.std(advantage),
             "positive_advantage": jnp.mean((advantage > 0).astype(jnp.float32)),
             "sample_length": jnp.mean(jnp.sum(mask.astype(jnp.float32), axis=-1))}
  return loss, metrics


def teacher_forcing_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Maximum likelihood (the warm start): mean over real target tokens of -log p(target).

  logits [batch, len, vocab], targets [batch, len] (w_1 .. w_n <eos> <pad>..), mask bool [batch, len]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  weights = mask.astype(jnp.float32)
  loss = jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return loss, {"token_accuracy": accuracy, "perplexity": jnp.exp(loss)}
