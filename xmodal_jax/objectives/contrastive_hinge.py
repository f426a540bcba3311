"""VSE++ bidirectional hinge (triplet) ranking objective.

Implements the image-text ranking losses of Faghri et al., "VSE++: Improving
Visual-Semantic Embeddings with Hard Negatives" (BMVC 2018):

  Sum of hinges (their eq. 2, the loss of Kiros et al. 2014):
    l_SH(i, c) = sum_{c'} [a - s(i, c) + s(i, c')]_+
               + sum_{i'} [a - s(i, c) + s(i', c)]_+

  Max of hinges, "max violation" (their eq. 3):
    l_MH(i, c) = max_{c'} [a - s(i, c) + s(i, c')]_+
               + max_{i'} [a - s(i, c) + s(i', c)]_+

where (i, c) is a positive image/caption pair, c' ranges over the negative
captions and i' over the negative images of the mini-batch, s is the inner
product of L2-normalised embeddings and a is the margin.

Reduction: this module returns the MEAN over the B positive pairs of the batch.
The reference VSE++ code sums over the batch, so `ours == theirs / B`; with a
batch-size-independent scale the learning rate does not need retuning when the
global batch size changes.

Everything is plain `jnp` on the full `[B, D]` arrays (global-batch semantics),
so under `jax.jit` with batch-sharded inputs XLA inserts the collectives needed
to form the `[B, B]` similarity matrix; no per-device code is involved.
"""

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

# Fill for masked entries that enter a `max`. Finite (unlike -inf) so that
# neither the forward value nor the gradient of `jnp.where` can turn into NaN.
_NEG_FILL = -1e9


def similarity_matrix(
    image_emb: jnp.ndarray,
    text_emb: jnp.ndarray,
    *,
    precision: Any = jax.lax.Precision.HIGHEST,
) -> jnp.ndarray:
  """Cosine similarity matrix s[i, j] = <image_i, text_j>.

  Args:
    image_emb: `[B, D]` image embeddings, assumed L2-normalised.
    text_emb: `[B', D]` text embeddings, assumed L2-normalised.
    precision: matmul precision passed to `jnp.einsum`.

  Returns:
    `[B, B']` similarity matrix (float32 at least).
  """
  if image_emb.ndim != 2 or text_emb.ndim != 2:
    raise ValueError(
        'similarity_matrix expects 2-D [batch, dim] embeddings, got shapes '
        f'{image_emb.shape} and {text_emb.shape}.')
  if image_emb.shape[-1] != text_emb.shape[-1]:
    raise ValueError(
        'Embedding dims differ: image_emb has dim '
        f'{image_emb.shape[-1]}, text_emb has dim {text_emb.shape[-1]}; '
        'project both modalities to the same joint-space dim.')
  dtype = jnp.promote_types(
      jnp.result_type(image_emb, text_emb), jnp.float32)
  return jnp.einsum(
      'id,jd->ij', image_emb.astype(dtype), text_emb.astype(dtype),
      precision=precision)


def contrastive_hinge_loss(
    image_emb: jnp.ndarray,
    text_emb: jnp.ndarray,
    *,
    margin: Union[float, jnp.ndarray] = 0.2,
    max_violation: Union[bool, jnp.ndarray] = True,
    image_ids: Optional[jnp.ndarray] = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """VSE++ hinge loss, mean over the B positive pairs (eqs. 2 and 3).

  Pair (image_i, text_i) is the positive for row/column i. For each i:

    i2t_i = agg_{j in neg(i)} [margin - s(i, i) + s(i, j)]_+
    t2i_i = agg_{j in neg(i)} [margin - s(i, i) + s(j, i)]_+
    loss  = mean_i (i2t_i + t2i_i)

  with `agg` = sum (eq. 2) or max (eq. 3, "max violation"). `neg(i)` is every
  j != i, minus those with `image_ids[j] == image_ids[i]` when `image_ids` is
  given (a batch may hold two captions of the same image; they must not be
  pushed apart). A row with no negatives contributes 0.

  Args:
    image_emb: `[B, D]` L2-normalised image embeddings.
    text_emb: `[B, D]` L2-normalised text embeddings; row i pairs with image i.
    margin: hinge margin `a` (0.2 in VSE++).
    max_violation: True for the hardest-negative loss (eq. 3), False for the
      sum of hinges (eq. 2). May be a traced boolean scalar, e.g. to switch
      from sum to max after a warm-up inside a jitted train step.
    image_ids: optional `[B]` integer ids of the image of each pair.

  Returns:
    `(loss, aux)`: scalar loss and a dict of scalars with
    `hinge_i2t` / `hinge_t2i` (mean per-pair term of each direction under the
    selected aggregation), `pos_sim` (mean s(i, i)) and `hardest_neg_sim`
    (mean over image rows having a negative of max_j s(i, j); 0 if none has).
  """
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(
        'contrastive_hinge_loss expects paired [batch, dim] embeddings of the '
        f'same shape, got image_emb {image_emb.shape} and text_emb '
        f'{text_emb.shape}.')
  return hinge_loss_from_similarity(similarity_matrix(image_emb, text_emb), margin=margin,
                                    max_violation=max_violation, image_ids=image_ids)


def hinge_loss_from_similarity(
    sim: jnp.ndarray,
    *,
    margin: Union[float, jnp.ndarray] = 0.2,
    max_violation: Union[bool, jnp.ndarray] = True,
    image_ids: Optional[jnp.ndarray] = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """The hinge loss of `contrastive_hinge_loss` on a given similarity matrix.

  For scores that are not inner products of two embeddings (e.g. S2's cross
  attention over regions and words, computed for every image/caption pair of
  the batch): `sim[i, j]` is the score of image i with text j, the diagonal
  holds the positives. Arguments and returns as in `contrastive_hinge_loss`.

  Args:
    sim: `[B, B]` scores.
    margin: hinge margin.
    max_violation: hardest negative (eq. 3) or sum of hinges (eq. 2).
    image_ids: optional `[B]` image ids (same-image pairs are not negatives).

  Returns:
    `(loss, aux)` as in `contrastive_hinge_loss`.
  """
  if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
    raise ValueError(f'hinge_loss_from_similarity expects a square [B, B] matrix, got {sim.shape}.')
  batch = sim.shape[0]
  if image_ids is not None and jnp.shape(image_ids) != (batch,):
    raise ValueError(
        f'image_ids must have shape [batch] = ({batch},), got '
        f'{jnp.shape(image_ids)}.')
  sim = sim.astype(jnp.promote_types(sim.dtype, jnp.float32))
  pos = jnp.diagonal(sim)  # [B]

  # neg_mask[i, j]: image i / text j (and text i / image j) are a negative pair.
  neg_mask = ~jnp.eye(batch, dtype=bool)
  if image_ids is not None:
    image_ids = jnp.asarray(image_ids)
    neg_mask &= image_ids[:, None] != image_ids[None, :]

  # Hinge costs are >= 0, so zero is a safe fill for both the sum and the max.
  # cost_i2t[i, j]: image query i against negative text j.
  cost_i2t = jnp.where(neg_mask, jax.nn.relu(margin - pos[:, None] + sim), 0.)
  # cost_t2i[j, i]: text query i (column) against negative image j (row).
  cost_t2i = jnp.where(neg_mask, jax.nn.relu(margin - pos[None, :] + sim), 0.)

  if isinstance(max_violation, bool):
    if max_violation:
      i2t = jnp.max(cost_i2t, axis=1)
      t2i = jnp.max(cost_t2i, axis=0)
    else:
      i2t = jnp.sum(cost_i2t, axis=1)
      t2i = jnp.sum(cost_t2i, axis=0)
  else:
    use_max = jnp.asarray(max_violation, dtype=bool)
    i2t = jnp.where(use_max, jnp.max(cost_i2t, axis=1),
                    jnp.sum(cost_i2t, axis=1))
    t2i = jnp.where(use_max, jnp.max(cost_t2i, axis=0),
                    jnp.sum(cost_t2i, axis=0))

  loss = jnp.mean(i2t + t2i)

  has_neg = jnp.any(neg_mask, axis=1)  # [B]
  row_max_neg = jnp.max(jnp.where(neg_mask, sim, _NEG_FILL), axis=1)
  num_rows = jnp.sum(has_neg)
  hardest_neg_sim = (jnp.sum(jnp.where(has_neg, row_max_neg, 0.))
                     / jnp.maximum(num_rows, 1))
  aux = {
      'hinge_i2t': jnp.mean(i2t),
      'hinge_t2i': jnp.mean(t2i),
      'pos_sim': jnp.mean(pos),
      'hardest_neg_sim': hardest_neg_sim,
  }
  return loss, aux
