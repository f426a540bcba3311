"""The image-reconstruction objectives of mFSR (seed 003, eq. 11-13): a DCGAN with two discriminators.

x: the real image, x' = G(v_i) the image generated from its own features, x'' = G(v_j) one generated from another
sample's (j = i + 1 mod N in the batch). D1(.) real/fake logit; D2(n, x) "n shows x's content" logit. With
BCE(z, y) the sigmoid cross-entropy of logit z against label y, batch means:

  discriminators (eq. 11-12):
    L_D1 = BCE(D1(x), 1) + BCE(D1(x'), 0)
    L_D2 = BCE(D2(x', x), 1) + BCE(D2(x'', x), 0)
  generator and encoders (eq. 13, L_img-re of the total loss):
    L_G  = BCE(D1(x'), 1) + BCE(D2(x', x), 1) + BCE(D2(x'', x), 0)

Readings. Eq. 4 prints the content pairs as {x, x''}; the negative is read as the generated x'' (so D2 compares
two generated images with the same real one and cannot tell them apart by realism alone). The printed signs make
G maximise D2's matching loss, i.e. generate images that do NOT show their source's content; that contradicts
the branch's purpose (the features must keep the image content), so G here minimises D2's loss like D2 does: D2 is
a learned content critic that G and the encoders must satisfy, while D1 is the adversary (non-saturating G loss,
as DCGAN). All three are means over the batch, so under a batch-sharded mesh they are global-batch means.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bce(logits: jax.Array, label: float) -> jax.Array:
  """Mean sigmoid cross-entropy of logits [batch] against a constant label."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), jnp.full_like(logits, label,
                                                                                               jnp.float32)))


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, match_logits: jax.Array,
                       mismatch_logits: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_D1 + L_D2 of logits [batch] D1(x), D1(x'), D2(x', x), D2(x'', x) -> (loss, metrics)."""
  d1 = bce(real_logits, 1.0) + bce(fake_logits, 0.0)
  d2 = bce(match_logits, 1.0) + bce(mismatch_logits, 0.0)
  return d1 + d2, {"d1_loss": d1, "d2_loss": d2,
                   "d1_real_acc": jnp.mean(real_logits > 0), "d1_fake_acc": jnp.mean(fake_logits < 0)}


def generator_loss(fake_logits: jax.Array, match_logits: jax.Array, mismatch_logits: jax.Array
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_G of logits [batch] D1(x'), D2(x', x), D2(x'', x) -> (loss, metrics)."""
  adversarial = bce(fake_logits, 1.0)
  content = bce(match_logits, 1.0) + bce(mismatch_logits, 0.0)
  return adversarial + content, {"g_adversarial": adversarial, "g_content": content}
