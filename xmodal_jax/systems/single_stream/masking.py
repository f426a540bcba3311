"""One S4 training example's masks (host side, NumPy): which objects and text units are hidden, and their targets.

Per example (config.masking):
  * objects: one unit by `object_mode` (systems/single_stream/object_masking.py: an overlap group or an isolated object, or the
    same number drawn at random);
  * text: `text_mode` ("span": coarse-grained spans of consecutive units, "token": single units) up to `text_ratio`
    of the caption's units (systems/single_stream/text_masking.py);
  * joint ("aligned", Fig. 3 of the seed): with probability `aligned_fraction` the words that name the masked
    objects (data/object_masking.referring_positions) are masked with them and count toward the ratio; otherwise
    text and objects are masked independently ("independent" = aligned_fraction 0);
  * suffix (captioning by mask filling, our reading of [0072]; `suffix_fraction`, 0 in pretraining): every unit
    from a uniform position to the end of the text slots is masked, objects visible; the targets after the caption's
    <eos> are <pad>, so filling slots left to right learns where a caption ends.
Targets: the unit's id / the object's label index at masked positions, IGNORE elsewhere.
"""
from __future__ import annotations

import ml_collections
import numpy as np

from xmodal_jax.systems.single_stream import object_masking, text_masking

IGNORE = text_masking.IGNORE


def mask_example(rng: np.random.Generator, cfg: ml_collections.ConfigDict, *, tokens: np.ndarray, valid: np.ndarray,
                 boxes: np.ndarray, object_mask: np.ndarray, object_labels: np.ndarray, label_tokens: np.ndarray,
                 mask_id: int) -> dict[str, np.ndarray]:
  """tokens / valid [L] (the caption with <eos>), boxes [R, 4], object_mask [R], object_labels [R] (-1 none),
  label_tokens [R, Lb] -> {"masked_tokens", "masked_token_mask", "word_targets" [L], "masked_objects",
  "object_targets" [R]}."""
  if float(cfg.suffix_fraction) and rng.random() < float(cfg.suffix_fraction):
    length = int(valid.sum())
    start = int(rng.integers(0, length))  # at least the <eos> (the last valid unit) is masked
    slots = np.arange(len(tokens)) >= start
    return {"masked_tokens": np.where(slots, mask_id, tokens).astype(np.int32),
            "masked_token_mask": (valid | slots),
            "word_targets": np.where(slots, np.where(valid, tokens, 0), IGNORE).astype(np.int32),
            "masked_objects": np.zeros(len(object_mask), bool),
            "object_targets": np.full(len(object_mask), IGNORE, np.int32)}
  masked_objects = object_masking.select_masked_objects(boxes, object_mask, rng, mode=cfg.object_mode)
  premasked = np.zeros(len(tokens), bool)
  if masked_objects.any() and rng.random() < float(cfg.aligned_fraction):
    for r in np.flatnonzero(masked_objects):
      premasked |= object_masking.referring_positions(tokens, valid, label_tokens[r])
  inputs, targets, _ = text_masking.mask_units(tokens, valid, rng, mask_id=mask_id, mode=cfg.text_mode,
                                               ratio=float(cfg.text_ratio), max_span=int(cfg.max_span),
                                               premasked=premasked)
  return {"masked_tokens": inputs.astype(np.int32), "masked_token_mask": valid.copy(),
          "word_targets": targets.astype(np.int32), "masked_objects": masked_objects,
          "object_targets": np.where(masked_objects, object_labels, IGNORE).astype(np.int32)}


def mask_batch(seed: int, keys: np.ndarray, cfg: ml_collections.ConfigDict, *, tokens, valid, boxes, object_mask,
               object_labels, label_tokens, mask_id: int) -> dict[str, np.ndarray]:
  """`mask_example` over a batch (rows of the arrays), each row's generator seeded by (seed, its key)."""
  rows = [mask_example(np.random.default_rng([int(seed), 9001, int(k)]), cfg, tokens=tokens[i], valid=valid[i],
                       boxes=boxes[i], object_mask=object_mask[i], object_labels=object_labels[i],
                       label_tokens=label_tokens[i], mask_id=mask_id) for i, k in enumerate(keys)]
  return {name: np.stack([r[name] for r in rows]) for name in rows[0]}
