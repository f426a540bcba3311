"""experiments/stats.py: paired bootstrap CIs and the three-valued verdict, on hand-made inputs."""
import numpy as np

from experiments import stats


def test_a_known_difference_holds_and_its_ci_covers_it():
  rng = np.random.default_rng(1)
  base = rng.normal(50, 10, (3, 1000))            # 3 seeds x 1000 items
  better = base + 2.0 + rng.normal(0, 1, base.shape)
  result = stats.compare(better, base, threshold=0.0)
  assert result.verdict == stats.HOLDS and result.low <= 2.0 <= result.high and abs(result.estimate - 2.0) < 0.2
  assert stats.compare(base, better, threshold=0.0).verdict == stats.DOES_NOT_HOLD
  assert stats.compare(better, base, threshold=5.0).verdict == stats.DOES_NOT_HOLD  # beats by 2, not by 5


def test_a_zero_difference_is_inconclusive_and_says_so():
  rng = np.random.default_rng(2)
  a = rng.normal(0, 1, (3, 500))
  b = a + rng.normal(0, 1, a.shape)
  result = stats.compare(a, b, threshold=0.0)
  assert result.verdict == stats.INCONCLUSIVE and result.low < 0 < result.high
  assert "seeds" in result.advice and "inconclusive" in result.summary()


def test_seed_noise_widens_the_interval():
  """Items agree within each seed, but the seeds disagree: the CI must reflect the seeds, not the 2,000 items."""
  rng = np.random.default_rng(3)
  per_seed = np.array([3.0, -2.5, 1.0])[:, None]                 # the difference is mostly seed luck
  a = rng.normal(0, 0.1, (3, 2000)) + per_seed
  b = np.zeros_like(a)
  result = stats.compare(a, b, threshold=0.0)
  assert result.verdict == stats.INCONCLUSIVE and result.high - result.low > 3.0
  items_only = stats.compare(a[:1], b[:1], threshold=0.0)        # one seed: only the items vary
  assert items_only.high - items_only.low < 0.1 and "one seed" not in items_only.advice


def test_not_converged_is_inconclusive_budget_whatever_the_ci():
  a, b = np.full((3, 10), 5.0), np.zeros((3, 10))
  assert stats.compare(a, b, converged_runs=False).verdict == stats.INCONCLUSIVE_BUDGET
  assert stats.converged([[10, 20, 20.4], [11, 19.9, 20.0]], tolerance=0.5)
  assert not stats.converged([[10, 20, 22.0]], tolerance=0.5) and not stats.converged([[10]], tolerance=0.5)


def test_per_seed_numbers_alone_bootstrap_over_seeds():
  result = stats.compare(np.array([70.2, 71.5, 69.8]), np.array([66.3, 67.0, 65.1]))
  assert result.items == 1 and result.seeds == 3 and result.verdict == stats.HOLDS
  assert result.low > 3.0 and result.high < 5.0
