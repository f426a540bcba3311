"""Masked text units for masked-language pretraining (S4, seed EP 3 889 830 A1 [0067]): coarse-grained masking of
spans of consecutive units ("red circle", "left of") vs the single-token baseline. Host side, NumPy, per caption.

Both modes mask about `ratio` of the caption's valid units (at least one) and replace every masked unit by
`mask_id` (no BERT 80/10/10 replacement: the seed describes plain masking); targets are the original ids at the
masked positions and IGNORE elsewhere, so a loss never sees an unmasked position and an input never shows a
masked target. With a word-level tokenizer a "whole word" is one token, so the coarse arm masks spans of
1..max_span consecutive words (lengths uniform), drawn until the ratio is reached.
"""
from __future__ import annotations

import numpy as np

IGNORE = -1
MODES = ("span", "token")


def mask_units(tokens: np.ndarray, valid: np.ndarray, rng: np.random.Generator, *, mask_id: int,
               mode: str = "span", ratio: float = 0.15, max_span: int = 3, premasked: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """tokens int [L], valid bool [L] -> (inputs int [L], targets int [L] (IGNORE where not masked), masked bool [L]).

  premasked bool [L]: positions masked already (e.g. the words that name a masked object); they count toward the
  ratio and the mode tops them up. A caption without a valid unit comes back unchanged with nothing masked.
  """
  if mode not in MODES:
    raise ValueError(f"mask_units: mode={mode!r}; use one of {MODES}.")
  if not 0 < ratio <= 1 or max_span < 1:
    raise ValueError(f"mask_units: ratio={ratio} must be in (0, 1] and max_span={max_span} >= 1.")
  tokens, valid = np.asarray(tokens), np.asarray(valid, bool)
  positions = np.flatnonzero(valid)
  masked = np.zeros(len(tokens), bool) if premasked is None else np.asarray(premasked, bool) & valid
  if len(positions):
    budget = max(1, int(round(ratio * len(positions))))
    if mode == "token":
      free = positions[~masked[positions]]
      extra = min(len(free), max(0, budget - int(masked.sum())))
      masked[rng.choice(free, size=extra, replace=False)] = True
    else:
      while masked.sum() < budget:
        start = int(rng.choice(positions[~masked[positions]]))
        length = int(rng.integers(1, max_span + 1))
        span = np.arange(start, min(start + length, len(tokens)))
        masked[span[valid[span]]] = True
  inputs = np.where(masked, mask_id, tokens)
  targets = np.where(masked, tokens, IGNORE)
  return inputs, targets, masked
