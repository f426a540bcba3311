"""Tests of region boxes (data/regions.py) and ROI-Align pooling (models/roi_align.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.data import regions
from xmodal_jax.data import shapes_world as sw
from xmodal_jax.models import roi_align as ra

_PALETTE = np.asarray(list(sw.COLORS.values()), np.float32)


def _bilinear_reference(feature_map: np.ndarray, y: float, x: float) -> np.ndarray:
  """[C]: the feature map [h, w, C] at (y, x), clamped to it, by tent weights max(0, 1 - distance) per axis."""
  height, width = feature_map.shape[:2]
  y, x = min(max(y, 0.0), height - 1.0), min(max(x, 0.0), width - 1.0)
  tent_y = np.maximum(0.0, 1.0 - np.abs(np.arange(height) - y))
  tent_x = np.maximum(0.0, 1.0 - np.abs(np.arange(width) - x))
  return np.einsum("h,w,hwc->c", tent_y, tent_x, feature_map)


def _roi_align_reference(feature_map, boxes, image_size, output_size, sampling_ratio):
  """Explicit loops over boxes, bins and samples; same conventions as ra.roi_align."""
  batch, height, width, channels = feature_map.shape
  scale_y, scale_x = height / image_size[0], width / image_size[1]
  out = np.zeros((batch, boxes.shape[1], output_size, output_size, channels))
  for b in range(batch):
    for r, (x1, y1, x2, y2) in enumerate(boxes[b].tolist()):
      box_w, box_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)  # Thin boxes: 1 pixel about their centre.
      left = ((x1 + x2) / 2 - box_w / 2) * scale_x - 0.5
      top = ((y1 + y2) / 2 - box_h / 2) * scale_y - 0.5
      bin_w, bin_h = box_w * scale_x / output_size, box_h * scale_y / output_size
      for p in range(output_size):
        for q in range(output_size):
          for i in range(sampling_ratio):
            for j in range(sampling_ratio):
              y = top + (p + (i + 0.5) / sampling_ratio) * bin_h
              x = left + (q + (j + 0.5) / sampling_ratio) * bin_w
              out[b, r, p, q] += _bilinear_reference(feature_map[b], y, x) / sampling_ratio**2
  return out


# Boxes in a 48 x 56 image: inside, whole image, partly outside, fully outside, thin, zero-size, inverted.
_BOXES = np.asarray([
    [[3.0, 5.0, 30.0, 20.0], [0.0, 0.0, 56.0, 48.0], [-10.0, 30.0, 12.0, 60.0], [50.0, -4.0, 70.0, 8.0]],
    [[20.5, 11.2, 21.0, 40.0], [17.0, 17.0, 17.0, 17.0], [40.0, 30.0, 33.0, 25.0], [-30.0, -30.0, -20.0, -5.0]],
], np.float32)


@pytest.mark.parametrize("output_size, sampling_ratio", [(1, 2), (2, 2), (2, 3)])
def test_roi_align_matches_reference(output_size, sampling_ratio):
  feature_map = np.random.default_rng(0).normal(size=(2, 6, 7, 3)).astype(np.float32)
  expected = _roi_align_reference(feature_map, _BOXES, (48, 56), output_size, sampling_ratio)
  actual = ra.roi_align(jnp.asarray(feature_map), jnp.asarray(_BOXES), (48, 56), (output_size,) * 2,
                        sampling_ratio)
  assert actual.shape == (2, 4, output_size, output_size, 3)
  np.testing.assert_allclose(actual, expected, atol=1e-5)
  jitted = jax.jit(ra.roi_align, static_argnums=(2, 3, 4))
  np.testing.assert_allclose(jitted(feature_map, _BOXES, (48, 56), (output_size,) * 2, sampling_ratio),
                             expected, atol=1e-5)


def test_roi_align_vmap_and_gradient():
  feature_map = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 7, 3)), jnp.float32)
  pool = lambda f, b: ra.pooled_region_features(f, b, (48, 56))
  stacked = jax.vmap(pool)(jnp.stack([feature_map, 2 * feature_map]), jnp.stack([_BOXES, _BOXES]))
  np.testing.assert_allclose(stacked[1], 2 * pool(feature_map, _BOXES), rtol=1e-6, atol=1e-6)
  # One backward pass per region r of image 1, for d(sum over channels of its pooled features) / d feature_map.
  pooled, backward = jax.vjp(lambda f: pool(f, _BOXES), feature_map)
  one_hot = jnp.zeros((4, *pooled.shape)).at[jnp.arange(4), 1, jnp.arange(4)].set(1.0)
  (grads,) = jax.vmap(backward)(one_hot)  # [regions, 2, 6, 7, 3].
  assert np.all(np.isfinite(grads))
  # The weights of a bin sum to 1, so does the gradient, per channel; image 0 gets none.
  np.testing.assert_allclose(grads[:, 1].sum(axis=(1, 2)), np.ones((4, 3)), rtol=1e-5)
  np.testing.assert_array_equal(grads[:, 0], 0.0)


def test_roi_align_constant_and_rectangle_maps():
  constant = jnp.broadcast_to(jnp.asarray([1.5, -2.0, 7.0]), (2, 6, 7, 3))
  pooled = ra.roi_align(constant, jnp.asarray(_BOXES), (48, 56), (2, 2))
  np.testing.assert_allclose(pooled, np.broadcast_to([1.5, -2.0, 7.0], pooled.shape), rtol=1e-6)
  # 1 on the 10 x 8 pixel rectangle x in [12, 22), y in [20, 28) of a 32 x 40 map the size of the image.
  rectangle = np.zeros((1, 32, 40, 1), np.float32)
  rectangle[0, 20:28, 12:22] = 1.0
  boxes = jnp.asarray([[[12.0, 20.0, 22.0, 28.0], [25.0, 2.0, 38.0, 16.0], [0.0, 0.0, 11.0, 32.0]]])
  for output_size in (1, 2):
    pooled = ra.roi_align(jnp.asarray(rectangle), boxes, (32, 40), output_size)[0, ..., 0]
    np.testing.assert_allclose(pooled[0], 1.0, atol=1e-6)
    np.testing.assert_allclose(pooled[1:], 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def world():
  return sw.generate_split("test", 48)


def _later_box_cover(boxes: np.ndarray, num_objects: int, k: int, size: int) -> float:
  """Fraction of object k's box [4 objects, 4] (x1, y1, x2, y2, integer pixels) under later objects' boxes."""
  covered = np.zeros((size, size), bool)
  for x1, y1, x2, y2 in boxes[k + 1:num_objects].astype(int):
    covered[y1:y2, x1:x2] = True
  x1, y1, x2, y2 = boxes[k].astype(int)
  return float(covered[y1:y2, x1:x2].mean())


def test_pooled_object_boxes_give_object_colours(world):
  images = world.images.astype(np.float32)
  boxes = regions.xywh_to_xyxy(world.boxes)
  mean_colour = np.asarray(ra.pooled_region_features(jnp.asarray(images), jnp.asarray(boxes), (64, 64),
                                                     sampling_ratio=8))
  # A box mean blends the object's colour with the dark background (about half of a cross or triangle's box),
  # so each palette colour is compared as the segment of its blends with the image's background colour.
  background = np.stack([image[image.max(axis=-1) < 100].mean(axis=0) for image in images])[:, None, None]
  direction = _PALETTE - background  # [N, 1, colours, 3]
  offset = mean_colour[:, :, None] - background  # [N, objects, 1, 3]
  blend = np.clip(np.sum(offset * direction, -1) / np.sum(direction**2, -1), 0.0, 1.0)
  distance = np.sum((offset - blend[..., None] * direction)**2, axis=-1)
  correct, total = 0, 0
  for i in range(len(world)):
    for k in range(world.num_objects[i]):
      if _later_box_cover(boxes[i], world.num_objects[i], k, 64) < 0.25:  # Not heavily occluded.
        correct += int(np.argmin(distance[i, k]) == world.object_color[i, k])
        total += 1
  assert total >= 60 and correct >= 0.9 * total, (correct, total)


def test_object_boxes_cover_their_objects(world):
  colour_distance = np.sum((world.images[..., None, :].astype(np.float32) - _PALETTE)**2, axis=-1)
  pixel_colour = np.where(world.images.max(axis=-1) < 100, -1, np.argmin(colour_distance, axis=-1))
  checked = 0
  for i in range(len(world)):
    colours = world.object_color[i, :world.num_objects[i]].tolist()
    for k, colour in enumerate(colours):
      if colours.count(colour) > 1:  # Pixels of a shared colour cannot be told apart.
        continue
      x, y, w, h = world.boxes[i, k].astype(int)
      ys, xs = np.nonzero(pixel_colour[i] == colour)
      inside = (xs >= x) & (xs < x + w) & (ys >= y) & (ys < y + h)
      assert len(xs) and inside.mean() >= 0.95, (i, k, inside.mean())
      checked += 1
  assert checked >= 60


def test_region_inputs():
  feature_map = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 7, 5)), jnp.float32)
  inputs = jax.jit(ra.region_inputs, static_argnums=2)(feature_map, jnp.asarray(_BOXES), (48, 56))
  assert inputs.shape == (2, 4, 5 + regions.GEOMETRY_FEATURES)
  np.testing.assert_allclose(inputs[..., :5], ra.pooled_region_features(feature_map, _BOXES, (48, 56)))
  np.testing.assert_allclose(inputs[..., 5:], regions.box_geometry(_BOXES, 48, 56), atol=1e-6)


def test_grid_boxes_tile_the_image():
  boxes = regions.grid_boxes(48, 56, rows=3, cols=4, include_full=True)
  assert boxes.shape == (13, 4) and boxes.dtype == np.float32
  np.testing.assert_array_equal(boxes[0], [0, 0, 56, 48])
  cells = boxes[1:]
  coverage = np.zeros((48, 56), int)
  for x1, y1, x2, y2 in cells.astype(int):
    coverage[y1:y2, x1:x2] += 1
  np.testing.assert_array_equal(coverage, 1)  # Every pixel in exactly one cell.
  np.testing.assert_allclose(np.prod(cells[:, 2:] - cells[:, :2], axis=1).sum(), 48 * 56)
  np.testing.assert_array_equal(cells[:4, 1], 0)  # Row-major.
  np.testing.assert_array_equal(regions.region_boxes("grid", np.zeros((48, 56, 3), np.uint8), rows=3, cols=4),
                                cells)


def test_box_geometry_and_padding():
  geometry = regions.box_geometry(_BOXES, 48, 56)
  assert geometry.shape == (2, 4, 7) and geometry.dtype == np.float32
  assert geometry.min() >= 0 and geometry.max() <= 1
  np.testing.assert_allclose(geometry[0, 1], [0, 0, 1, 1, 1, 1, 1])
  np.testing.assert_allclose(geometry[0, 0], [3 / 56, 5 / 48, 30 / 56, 20 / 48, 27 / 56, 15 / 48,
                                              27 * 15 / (56 * 48)], rtol=1e-6)
  np.testing.assert_allclose(geometry[1, 2:, 4:], 0)  # Inverted and outside boxes are empty.
  np.testing.assert_allclose(regions.xywh_to_xyxy([[1, 2, 3, 4]]), [[1, 2, 4, 6]])

  boxes, valid = regions.pad_boxes([np.ones((2, 4)), np.zeros((0, 4)), np.arange(20).reshape(5, 4)], 3)
  assert boxes.shape == (3, 3, 4) and boxes.dtype == np.float32 and valid.dtype == bool
  np.testing.assert_array_equal(valid, [[1, 1, 0], [0, 0, 0], [1, 1, 1]])
  np.testing.assert_array_equal(boxes[0, 2], 0)
  np.testing.assert_array_equal(boxes[2], np.arange(12).reshape(3, 4))  # The first max_regions kept.


def test_selective_search_finds_large_objects(world):
  found, large = 0, 0
  for i in range(8):
    image = np.repeat(np.repeat(world.images[i], 2, axis=0), 2, axis=1)  # 128 x 128.
    proposals = regions.region_boxes("selective_search", image, top_n=36)
    assert proposals.dtype == np.float32 and 0 < len(proposals) <= 36
    assert np.all(proposals >= 0) and np.all(proposals <= 128)
    assert np.all(proposals[:, 2:] > proposals[:, :2])
    iou = regions.box_iou(proposals, proposals)
    assert np.all(iou[np.triu_indices(len(proposals), 1)] <= 0.9)
    objects = 2 * regions.xywh_to_xyxy(world.boxes[i])
    best = regions.box_iou(objects, proposals).max(axis=1)
    for k in range(world.num_objects[i]):
      if world.object_size[i, k] == 1 and _later_box_cover(objects / 2, world.num_objects[i], k, 64) < 0.25:
        large += 1
        found += int(best[k] >= 0.5)
  assert large >= 8 and found == large, (found, large)


def test_selective_search_is_deterministic_and_downscales(world):
  image, other = (np.repeat(np.repeat(world.images[i], 2, axis=0), 2, axis=1) for i in (0, 1))
  first = regions.selective_search_boxes(image, mode="single")
  regions.selective_search_boxes(other, mode="single")
  np.testing.assert_array_equal(regions.selective_search_boxes(image, mode="single"), first)
  small = regions.selective_search_boxes(image, mode="single", max_side=64)
  assert len(small) and np.all(small >= 0) and np.all(small <= 128)
  assert small.max() > 64  # Scaled back to the full image.


def test_region_boxes_dispatch():
  image = np.zeros((64, 64, 3), np.uint8)
  with pytest.raises(ValueError, match="grid, selective_search, data"):
    regions.region_boxes("edge_boxes", image)
  with pytest.raises(ValueError, match="data_boxes"):
    regions.region_boxes("data", image)
  with pytest.raises(ValueError, match="mode"):
    regions.region_boxes("selective_search", image, mode="slow")
  data = np.asarray([[10, 12, 20, 8], [0, 0, 0, 0], [50, 50, 30, 30]], np.float32)  # Padding; past the edge.
  np.testing.assert_array_equal(regions.region_boxes("data", image, data), [[10, 12, 30, 20], [50, 50, 64, 64]])
  np.testing.assert_array_equal(regions.region_boxes("data", image, [[1, 2, 3, 4]], box_format="xyxy"),
                                [[1, 2, 3, 4]])
