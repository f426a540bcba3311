"""Image-text matching (S4, seed EP 3 889 830 A1 [0126]-[0128], [0149]-[0152]): negatives drawn inside a batch in
the seed's three modes, and the binary loss on the matching identifier's logit.

Modes of a negative for batch row i (rows are (image i, its caption i)):
  "image": fixed text, another image  -> (image j, text i)        ([0126])
  "text":  fixed image, another text  -> (image i, text j)        ([0127])
  "both":  another image and another text -> (image j, text k)    ([0128]; j, k drawn independently)
A pair is never made of a text and its own image: every draw is restricted to rows whose image id differs from the
pair's other side (identical ids are the same image, e.g. two captions of one image in a batch). Draws are uniform
over the allowed rows, or proportional to exp(similarity / temperature) of a dual encoder ("hard" negatives,
ALBEF's sampling; not in the seed) when `similarity` is given.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MODES = ("image", "text", "both")
_NEG_INF = -1e9


def _draw(rng, logits, allowed):
  """One column per row by Gumbel-max over the allowed entries of logits [N, B]."""
  gumbel = jax.random.gumbel(rng, logits.shape)
  return jnp.argmax(jnp.where(allowed, logits + gumbel, _NEG_INF), axis=-1)


def sample_negative_pairs(rng: jax.Array, image_ids: jax.Array, num: int, mode_weights: tuple[float, float, float],
                          similarity: jax.Array | None = None, temperature: float = 1.0
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """image_ids [B] (of row i's image and caption) -> (image rows [num], text rows [num], mode index [num]).

  Negative n is built for anchor row n % B in the mode drawn with `mode_weights` (image, text, both).
  similarity [B (images), B (texts)]: the dual encoder's scores; None = uniform draws. The batch must hold at
  least two distinct images.
  """
  b = image_ids.shape[0]
  anchors = jnp.arange(num) % b
  r_mode, r_a, r_b = jax.random.split(rng, 3)
  probs = jnp.asarray(mode_weights, jnp.float32)
  mode = jax.random.choice(r_mode, len(MODES), (num,), p=probs / probs.sum())
  differs = image_ids[:, None] != image_ids[None, :]          # [B, B]: row x column belong to other images
  sim = jnp.zeros((b, b), jnp.float32) if similarity is None else similarity.astype(jnp.float32) / temperature
  # an image for text `anchor` (modes image / both): allowed images have another id; scored sim[image, anchor]
  other_image = _draw(r_a, sim.T[anchors], differs[anchors])
  # a text for image `anchor` (mode text) or for the drawn image (mode both): another id than that image
  text_for = jnp.where(mode == 2, other_image, anchors)
  other_text = _draw(r_b, sim[text_for], differs[text_for])
  image_rows = jnp.where(mode == 1, anchors, other_image)
  text_rows = jnp.where(mode == 0, anchors, other_text)
  return image_rows, text_rows, mode


def matching_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """logits [N] (the matching head), labels [N] (1 = the text describes the image) -> (mean binary CE,
  {"accuracy"})."""
  labels = labels.astype(jnp.float32)
  loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), labels))
  return loss, {"accuracy": jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))}
