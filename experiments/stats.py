"""Paired differences between two rows of an experiment, with a 95% bootstrap CI and a three-valued verdict.

A claim compares row A with row B ("A beats B by more than `threshold`"). The two rows are paired: the same
seeds (a seed fixes the data order and the initial draws) and the same evaluation items (queries, images). Given
a per-item score for every (seed, item) of both rows, `compare` estimates the mean paired difference and its 95%
CI by a two-level bootstrap: seeds are resampled with replacement, and within the draw the items are resampled
with replacement too, so both the seed-to-seed spread and the finite evaluation set widen the interval. With
only one number per seed (no per-item scores), pass arrays of shape [seeds, 1]: the bootstrap is then over seeds
alone.

Verdict (`Comparison.verdict`):
  holds           the whole CI lies above the threshold;
  does not hold   the whole CI lies below it;
  inconclusive    the CI contains it. The comparison says roughly how many seeds would shrink the interval
                  enough (the CI's half-width scales as 1/sqrt(seeds)), or that the items, not the seeds, are
                  what limit it;
  inconclusive (budget)  training had not converged (`converged`), whatever the CI says: a claim judged before
                  convergence decides nothing.

Convergence (`converged`): the last two evaluations of the validation metric are within `tolerance` of each
other (absolute), for every seed of both rows.

Hand-written on numpy (a one-page two-level bootstrap; scipy.stats.bootstrap resamples one level only).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, INCONCLUSIVE_BUDGET = ("holds", "does not hold", "inconclusive",
                                                           "inconclusive (budget)")


@dataclasses.dataclass(frozen=True)
class Comparison:
  """The paired difference A - B: its estimate, 95% CI, verdict against `threshold`, and what would narrow it."""
  estimate: float
  low: float
  high: float
  threshold: float
  verdict: str
  seeds: int
  items: int
  advice: str = ""

  def summary(self, unit: str = "") -> str:
    """'+2.10 [+0.80, +3.40]: holds (> 0)' and the advice when inconclusive."""
    text = (f"{self.estimate:+.2f}{unit} [{self.low:+.2f}, {self.high:+.2f}]: {self.verdict} "
            f"(> {self.threshold:g}{unit})")
    return f"{text}; {self.advice}" if self.advice else text


def converged(curves: Sequence[Sequence[float]], tolerance: float) -> bool:
  """True if every curve (a run's validation metric, evaluation by evaluation) has at least two evaluations and
  its last two differ by at most `tolerance`."""
  return all(len(c) >= 2 and abs(float(c[-1]) - float(c[-2])) <= tolerance for c in curves)


def bootstrap_mean_differences(a: np.ndarray, b: np.ndarray, *, resamples: int = 10_000,
                               rng: np.random.Generator | None = None) -> np.ndarray:
  """Bootstrap replicates [resamples] of mean(a - b), resampling seeds, then items within each drawn seed.

  a, b: [seeds, items] per-item scores of two rows, paired by seed and item.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 2 or a.size == 0:
    raise ValueError(f"a and b must be paired [seeds, items] arrays of one shape (got {a.shape} and {b.shape}).")
  rng = rng or np.random.default_rng(0)
  diff = a - b
  seeds, items = diff.shape
  out = np.empty(resamples)
  chunk = max(1, 2_000_000 // max(1, seeds * items))  # bounds memory: chunk x seeds x items draws at a time
  for start in range(0, resamples, chunk):
    n = min(chunk, resamples - start)
    seed_draw = rng.integers(0, seeds, (n, seeds))                         # [n, seeds]
    item_draw = rng.integers(0, items, (n, seeds, items))                  # [n, seeds, items]
    out[start:start + n] = diff[seed_draw[..., None], item_draw].mean(axis=(1, 2))
  return out


def compare(a, b, *, threshold: float = 0.0, converged_runs: bool = True, resamples: int = 10_000,
            seed: int = 0) -> Comparison:
  """The paired comparison of rows A and B (module docstring). a, b: [seeds, items] (or [seeds]) scores."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.ndim == 1:
    a, b = a[:, None], b[:, None]
  replicates = bootstrap_mean_differences(a, b, resamples=resamples, rng=np.random.default_rng(seed))
  estimate = float((a - b).mean())
  low, high = (float(x) for x in np.percentile(replicates, [2.5, 97.5]))
  if not converged_runs:
    verdict = INCONCLUSIVE_BUDGET
  elif low > threshold:
    verdict = HOLDS
  elif high < threshold:
    verdict = DOES_NOT_HOLD
  else:
    verdict = INCONCLUSIVE
  advice = ""
  if verdict == INCONCLUSIVE_BUDGET:
    advice = "train until the validation metric's last evaluations agree, then judge"
  elif verdict == INCONCLUSIVE:
    advice = _advice(a - b, estimate, (high - low) / 2, threshold)
  return Comparison(estimate, low, high, float(threshold), verdict, a.shape[0], a.shape[1], advice)


def _advice(diff: np.ndarray, estimate: float, half_width: float, threshold: float) -> str:
  """How many seeds would put the CI on one side of the threshold, if the estimate stayed where it is."""
  gap = abs(estimate - threshold)
  seeds = diff.shape[0]
  if gap < 1e-12:
    return "the estimate sits on the threshold: no number of seeds would decide it"
  if seeds < 2:
    return "one seed: run more seeds to measure the seed-to-seed spread"
  needed = math.ceil(seeds * (half_width / gap) ** 2)
  return f"about {needed} seeds (now {seeds}) would narrow the CI to one side, if the estimate held"
