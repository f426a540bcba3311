"""S4's masked text units: span vs single-token masking never leaks a target and never masks padding."""
import numpy as np
import pytest

from xmodal_jax.systems.single_stream import text_masking as tm

TOKENS = np.array([5, 6, 7, 8, 9, 10, 11, 12, 0, 0])
VALID = TOKENS > 0


@pytest.mark.parametrize("mode", tm.MODES)
def test_masks_hide_their_targets_and_skip_padding(mode):
  for seed in range(30):
    inputs, targets, masked = tm.mask_units(TOKENS, VALID, np.random.default_rng(seed), mask_id=3, mode=mode,
                                            ratio=0.25, max_span=3)
    assert masked.any() and not masked[~VALID].any()
    np.testing.assert_array_equal(inputs[masked], 3)                   # the input never shows a target
    np.testing.assert_array_equal(targets[masked], TOKENS[masked])
    np.testing.assert_array_equal(targets[~masked], tm.IGNORE)         # the loss sees masked positions only
    np.testing.assert_array_equal(inputs[~masked], TOKENS[~masked])
    if mode == "token":
      assert masked.sum() == 2                                          # round(0.25 * 8)


def test_span_mode_masks_consecutive_runs():
  lengths = []
  for seed in range(50):
    _, _, masked = tm.mask_units(TOKENS, VALID, np.random.default_rng(seed), mask_id=3, mode="span", ratio=0.25,
                                 max_span=3)
    edges = np.diff(np.concatenate([[0], masked.astype(int), [0]]))
    lengths += (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()
  assert max(lengths) >= 2  # runs longer than one unit occur (single-token masking never has them by design)


def test_empty_caption_and_bad_settings():
  inputs, targets, masked = tm.mask_units(TOKENS, np.zeros(10, bool), np.random.default_rng(0), mask_id=3)
  assert not masked.any() and (inputs == TOKENS).all() and (targets == tm.IGNORE).all()
  with pytest.raises(ValueError, match="mode="):
    tm.mask_units(TOKENS, VALID, np.random.default_rng(0), mask_id=3, mode="word")
  with pytest.raises(ValueError, match="ratio"):
    tm.mask_units(TOKENS, VALID, np.random.default_rng(0), mask_id=3, ratio=0.0)
