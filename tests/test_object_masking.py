"""S4's overlap-aware object selection on hand-made boxes."""
import numpy as np
import pytest

from xmodal_jax.systems.single_stream import object_masking as om

# 0 and 1 overlap, 1 and 2 overlap (so 0-1-2 is one group), 3 is alone, 4 touches 3 only at an edge (no area),
# 5 is padding.
BOXES = np.array([[0, 0, 10, 10], [8, 8, 20, 20], [18, 0, 30, 10], [40, 40, 50, 50], [50, 40, 60, 50],
                  [0, 0, 0, 0]], np.float32)
VALID = np.array([True, True, True, True, True, False])


def test_overlap_groups_are_connected_components_of_positive_area_intersections():
  groups = om.overlap_groups(BOXES, VALID)
  assert [g.tolist() for g in groups] == [[0, 1, 2], [3], [4]]
  assert om.overlap_groups(BOXES, np.zeros(6, bool)) == []
  degenerate = np.array([[5, 5, 5, 5], [0, 0, 10, 10]], np.float32)  # a zero-area box overlaps nothing
  assert [g.tolist() for g in om.overlap_groups(degenerate, np.array([True, True]))] == [[0], [1]]
  assert om.box_overlaps(BOXES[:2]).all() and not om.box_overlaps(BOXES[3:5])[0, 1]


def test_overlap_mode_masks_a_whole_group_or_one_isolated_object():
  seen = set()
  for seed in range(40):
    mask = om.select_masked_objects(BOXES, VALID, np.random.default_rng(seed))
    chosen = tuple(np.flatnonzero(mask).tolist())
    assert chosen in {(0, 1, 2), (3,), (4,)} and not mask[5]
    seen.add(chosen)
  assert seen == {(0, 1, 2), (3,), (4,)}


def test_random_mode_masks_as_many_valid_objects_and_errors():
  for seed in range(20):
    mask = om.select_masked_objects(BOXES, VALID, np.random.default_rng(seed), mode="random")
    assert mask.sum() in (1, 3) and not mask[5]
  assert not om.select_masked_objects(BOXES, np.zeros(6, bool), np.random.default_rng(0)).any()
  with pytest.raises(ValueError, match="mode="):
    om.select_masked_objects(BOXES, VALID, np.random.default_rng(0), mode="all")
