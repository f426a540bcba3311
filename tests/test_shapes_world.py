"""Tests of the shapes world: determinism, array contracts, and annotations checked against the pixels."""
import collections
import dataclasses

import numpy as np
import pytest

from xmodal_jax.data import shapes_world as sw

_COLOR_NAMES = list(sw.COLORS)
_PALETTE = np.asarray(list(sw.COLORS.values()), np.float32)
_PREPOSITIONS = {"in", "at", "on", "near", "along"}
_COUNTS = {"one": 1, "two": 2, "three": 3, "four": 4}


@pytest.fixture(scope="module")
def world_1000():
  return sw.generate_split("test", 1000)


@pytest.fixture(scope="module")
def world_300():
  return sw.generate_split("train", 300, seed=3)


def _assert_same(a: sw.ShapesWorldSplit, b: sw.ShapesWorldSplit, n: int):
  for field in dataclasses.fields(sw.ShapesWorldSplit):
    x, y = getattr(a, field.name)[:n], getattr(b, field.name)[:n]
    if isinstance(x, np.ndarray):
      assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field.name
    else:
      assert x == y, field.name


def _classify(images: np.ndarray) -> np.ndarray:
  """int [N, S, S]: index of the nearest COLORS entry per pixel, -1 for the dark background."""
  pixels = images.astype(np.float32)
  distance = np.sum((pixels[..., None, :] - _PALETTE) ** 2, axis=-1)
  return np.where(images.max(axis=-1) < 100, -1, np.argmin(distance, axis=-1))


def test_deterministic_and_independent_of_num_images():
  a = sw.generate_split("train", 40, seed=5)
  _assert_same(a, sw.generate_split("train", 40, seed=5), 40)
  _assert_same(a, sw.generate_split("train", 1100, seed=5), 40)
  longer = sw.generate_split("val", 1030, seed=2, image_size=48)  # Prefixes across a chunk boundary, too.
  _assert_same(sw.generate_split("val", 1025, seed=2, image_size=48), longer, 1025)


def test_seeds_and_splits_differ():
  base = sw.generate_split("train", 30, seed=0)
  for other in (sw.generate_split("train", 30, seed=1), sw.generate_split("val", 30, seed=0)):
    assert all(not np.array_equal(x, y) for x, y in zip(base.images, other.images))
    assert sum(x != y for x, y in zip(base.captions, other.captions)) >= 28
  assert not np.array_equal(base.image_ids, sw.generate_split("val", 30).image_ids)


def test_shapes_dtypes_and_padding(world_300):
  w, n, k = world_300, len(world_300), sw.MAX_OBJECTS
  assert len(w) == n == 300
  assert w.images.shape == (n, 64, 64, 3) and w.images.dtype == np.uint8
  assert w.boxes.shape == (n, k, 4) and w.boxes.dtype == np.float32
  for name in ("object_shape", "object_color", "object_size", "object_cell"):
    assert getattr(w, name).shape == (n, k) and getattr(w, name).dtype == np.int32, name
  assert w.num_objects.dtype == np.int32 and w.label.dtype == np.int32 and w.image_ids.dtype == np.int64
  assert set(w.num_objects.tolist()) == {1, 2, 3, 4}
  assert len(set(w.image_ids.tolist())) == n
  valid = np.arange(k) < w.num_objects[:, None]
  for array, limit in ((w.object_shape, len(sw.SHAPES)), (w.object_color, len(sw.COLORS)),
                       (w.object_size, len(sw.SIZES)), (w.object_cell, len(sw.POSITIONS))):
    assert np.all(array[~valid] == -1) and np.all((array[valid] >= 0) & (array[valid] < limit))
  assert np.all(w.boxes[~valid] == 0) and np.all(w.boxes[valid][:, 2:] > 0)
  for i in range(n):
    cells = w.object_cell[i, :w.num_objects[i]]
    assert len(set(cells.tolist())) == len(cells)
    attributes = zip(w.object_shape[i, valid[i]], w.object_color[i, valid[i]], w.object_size[i, valid[i]])
    assert w.box_labels[i] == [f"{sw.SIZES[z]} {_COLOR_NAMES[c]} {sw.SHAPES[s]}" for s, c, z in attributes]
  assert len(sw.LABEL_NAMES) == 10 and "circle/sparse" in sw.LABEL_NAMES
  assert sw.generate_split("test", 3, image_size=40).images.shape == (3, 40, 40, 3)


def test_boxes_inside_image_in_their_cells_and_sized(world_1000):
  w, size = world_1000, world_1000.image_size
  valid = w.object_shape >= 0
  x, y, bw, bh = (w.boxes[..., i][valid] for i in range(4))
  assert np.all((x >= 0) & (y >= 0) & (x + bw <= size) & (y + bh <= size))
  col = ((x + bw / 2) // (size / 3)).astype(int)
  row = ((y + bh / 2) // (size / 3)).astype(int)
  np.testing.assert_array_equal(row * 3 + col, w.object_cell[valid])
  extent, shape, large = np.maximum(bw, bh), w.object_shape[valid], w.object_size[valid] == 1
  for s in range(len(sw.SHAPES)):  # Sizes are obvious: no overlap of extents, per shape.
    assert extent[(shape == s) & ~large].max() * 1.4 < extent[(shape == s) & large].min()


def _fill_ratios(w: sw.ShapesWorldSplit, classes: np.ndarray) -> dict[int, float]:
  """Median pixels / box area per shape index, from the one-object images (nothing occluded)."""
  fill = collections.defaultdict(list)
  for i in np.flatnonzero(w.num_objects == 1):
    fill[w.object_shape[i, 0]].append(np.count_nonzero(classes[i] >= 0) / np.prod(w.boxes[i, 0, 2:]))
  assert len(fill) == len(sw.SHAPES)
  return {s: np.median(v) for s, v in fill.items()}


def _visible_fractions(w: sw.ShapesWorldSplit, classes: np.ndarray) -> np.ndarray:
  """Estimated visible / full area of each object that is the only one of its colour in its image."""
  fill, fractions = _fill_ratios(w, classes), []
  for i in range(len(w)):
    colors = w.object_color[i, :w.num_objects[i]]
    for j, color in enumerate(colors):
      if np.count_nonzero(colors == color) == 1:
        full = fill[w.object_shape[i, j]] * np.prod(w.boxes[i, j, 2:])
        fractions.append(np.count_nonzero(classes[i] == color) / full)
  return np.asarray(fractions)


def test_pixels_agree_with_annotations(world_300):
  w = world_300
  classes = _classify(w.images)
  # One object: its colour's pixels are all the non-background pixels, and exactly fill its box.
  for i in np.flatnonzero(w.num_objects == 1):
    ys, xs = np.nonzero(classes[i] == w.object_color[i, 0])
    np.testing.assert_array_equal(w.boxes[i, 0], [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1])
    assert np.count_nonzero(classes[i] >= 0) == len(xs)
  fill = _fill_ratios(w, classes)
  assert 0.7 < fill[sw.SHAPES.index("circle")] < 0.85 and fill[sw.SHAPES.index("square")] > 0.95
  assert fill[sw.SHAPES.index("diamond")] < 0.6 and fill[sw.SHAPES.index("triangle")] < 0.6
  for i in range(len(w)):
    for j in range(w.num_objects[i]):  # Many pixels of the object's colour inside its box.
      x, y, bw, bh = w.boxes[i, j].astype(int)
      in_box = np.count_nonzero(classes[i, y:y + bh, x:x + bw] == w.object_color[i, j])
      assert in_box >= 0.9 * sw.MIN_VISIBLE_FRACTION * fill[w.object_shape[i, j]] * bw * bh, (i, j)
  fractions = _visible_fractions(w, classes)
  assert len(fractions) > 500 and fractions.min() > 0.9 * sw.MIN_VISIBLE_FRACTION


def test_visibility_rule_when_objects_can_hide_each_other(monkeypatch):
  monkeypatch.setattr(sw, "SIZE_RADIUS", (0.09, 0.25))  # Large objects now often overlap neighbours.
  w = sw.generate_split("train", 300, seed=4)
  fractions = _visible_fractions(w, _classify(w.images))
  assert np.mean(fractions < 0.9) > 0.05  # Occlusion happens...
  assert fractions.min() > 0.55  # ...but never below MIN_VISIBLE_FRACTION (with slack for the estimate).


def test_label_is_dominant_visible_shape_and_crowdedness(world_300, world_1000):
  for w in (world_300, world_1000):
    crowded = np.asarray([sw.LABEL_NAMES[l].split("/")[1] == "crowded" for l in w.label])
    np.testing.assert_array_equal(crowded, w.num_objects >= 3)
    dominant = w.label // len(sw.CROWDEDNESS)
    assert all(d in w.object_shape[i] for i, d in enumerate(dominant))
  assert set(world_1000.label.tolist()) == set(range(len(sw.LABEL_NAMES)))

  w = world_300
  classes = _classify(w.images)
  compared = 0
  for i in range(len(w)):
    k = w.num_objects[i]
    colors = w.object_color[i, :k]
    if len(set(colors.tolist())) < k:
      continue
    area = np.zeros(len(sw.SHAPES))
    for shape, color in zip(w.object_shape[i, :k], colors):
      area[shape] += np.count_nonzero(classes[i] == color)
    top_two = np.sort(area)[-2:]
    if top_two[1] - top_two[0] > 0.03 * top_two[1]:
      assert np.argmax(area) == w.label[i] // 2, i
      compared += 1
  assert compared > 150


def _noun_phrases(tokens: list[str]) -> list[tuple[int, int, str | None, str, str]]:
  """(start, end, size, colour, shape) of each "[size] colour shape" in the caption; end is the shape token."""
  phrases = []
  for i in range(len(tokens) - 1):
    if tokens[i] in sw.COLORS and tokens[i + 1] in sw.SHAPES:
      size = tokens[i - 1] if i and tokens[i - 1] in sw.SIZES else None
      phrases.append((i - (size is not None), i + 1, size, tokens[i], tokens[i + 1]))
  return phrases


def _matching(w: sw.ShapesWorldSplit, i: int, phrase) -> list[int]:
  """Objects of image i fitting a parsed noun phrase."""
  _, _, size, color, shape = phrase
  return [j for j in range(w.num_objects[i])
          if (sw.SHAPES[w.object_shape[i, j]], _COLOR_NAMES[w.object_color[i, j]]) == (shape, color)
          and (size is None or sw.SIZES[w.object_size[i, j]] == size)]


def _position(tokens: list[str], i: int) -> int | None:
  """Grid cell named by "<preposition> the <position words>" starting at token i, else None."""
  if tokens[i] not in _PREPOSITIONS or i + 2 >= len(tokens) or tokens[i + 1] != "the":
    return None
  words = []
  for token in tokens[i + 2:i + 4]:
    if token not in ("top", "bottom", "left", "right", "center", "middle") or (words and token in words):
      break
    words.append("center" if token == "middle" else token)
  return sw.POSITIONS.index(" ".join(words))


def _holds(relation: str, a: int, b: int) -> bool:
  (row_a, col_a), (row_b, col_b) = divmod(a, 3), divmod(b, 3)
  return {"left": col_a < col_b, "right": col_a > col_b, "above": row_a < row_b, "below": row_a > row_b}[relation]


def test_captions_are_true_and_complete(world_1000):
  w = world_1000
  relation_captions = sized_or_placed = 0
  for i, captions in enumerate(w.captions):
    k = w.num_objects[i]
    assert len(captions) == sw.CAPTIONS_PER_IMAGE
    assert len({c.replace(" ,", "").replace(" :", "") for c in captions}) == len(captions)
    objects = sorted(zip(w.object_color[i, :k].tolist(), w.object_shape[i, :k].tolist()))
    for caption in captions:
      tokens = caption.split(" ")
      assert caption == caption.lower() and all(t.isalpha() or t in (",", ":") for t in tokens), caption
      assert len(tokens) <= 40, caption
      phrases = _noun_phrases(tokens)
      # Every object named by colour and shape, nothing else named.
      assert sorted((_COLOR_NAMES.index(p[3]), sw.SHAPES.index(p[4])) for p in phrases) == objects, caption
      assert all(_matching(w, i, p) for p in phrases), caption  # Sizes right.
      for t, token in enumerate(tokens[:-1]):
        if token in _COUNTS and tokens[t + 1].startswith(("shape", "object")):
          assert _COUNTS[token] == k, caption
      # Positions: after a noun phrase (optionally "is"), or leading the caption of a lone object.
      placed = False
      for t in range(len(tokens)):
        cell = _position(tokens, t)
        if cell is None:
          continue
        placed = True
        end = t - 2 if tokens[t - 1] == "is" else t - 1
        owner = [p for p in phrases if p[1] == end]
        candidates = _matching(w, i, owner[0]) if owner else ([0] if k == 1 and t == 0 else [])
        assert any(w.object_cell[i, j] == cell for j in candidates), caption
      # Relations: subject is the last noun phrase before, object the first after.
      for t, token in enumerate(tokens):
        relation = token if token in ("above", "below") else (
            token if token in ("left", "right") and tokens[t + 1:t + 2] == ["of"] else None)
        if relation is None:
          continue
        relation_captions += 1
        subject = [p for p in phrases if p[1] < t][-1]
        target = [p for p in phrases if p[0] > t][0]
        assert any(a != b and _holds(relation, w.object_cell[i, a], w.object_cell[i, b])
                   for a in _matching(w, i, subject) for b in _matching(w, i, target)), caption
      sized_or_placed += placed or any(p[2] for p in phrases)
  assert relation_captions > 1000
  assert sized_or_placed > 0.8 * sw.CAPTIONS_PER_IMAGE * len(w)


def test_captions_discriminate_test_images(world_1000):
  owners = collections.defaultdict(set)
  for i, captions in enumerate(world_1000.captions):
    for caption in captions:
      owners[" ".join(t for t in caption.split() if t.isalpha())].add(i)
  shared = set().union(*(images for images in owners.values() if len(images) > 1))
  fraction_sharing = len(shared) / len(world_1000)
  assert fraction_sharing < 0.05
  vocabulary = {t for captions in world_1000.captions for c in captions for t in c.split()}
  assert len(vocabulary) < 80


def _query_true(w: sw.ShapesWorldSplit, i: int, query: str) -> bool:
  """Whether a query holds for image i, parsed independently of the generator's grammar."""
  tokens, k = query.split(" "), w.num_objects[i]
  colors = {_COLOR_NAMES[c] for c in w.object_color[i, :k]}
  if tokens[0] in _COUNTS and tokens[1] in ("shape", "shapes"):
    return _COUNTS[tokens[0]] == k
  if len(tokens) == 4 and tokens[1::2] == ["and", "shapes"]:
    return {tokens[0], tokens[2]} <= colors
  size = tokens.pop(0) if tokens[0] in sw.SIZES else None
  color = tokens.pop(0) if tokens[0] in sw.COLORS else None
  shape = sw.SHAPES.index(tokens.pop(0))
  cell = sw.POSITIONS.index(" ".join(tokens)) if tokens else None
  return any(w.object_shape[i, j] == shape and (size is None or sw.SIZES[w.object_size[i, j]] == size)
             and (color is None or _COLOR_NAMES[w.object_color[i, j]] == color)
             and (cell is None or w.object_cell[i, j] == cell) for j in range(k))


def test_queries(world_1000):
  w = world_1000
  vocabulary = sw.all_queries()
  assert vocabulary == sorted(set(vocabulary)) and {"red circle", "two shapes", "circle top left",
                                                     "red and blue shapes", "small blue square"} <= set(vocabulary)
  for i, queries in enumerate(w.queries):
    assert 3 <= len(queries) <= 5 and len(set(queries)) == len(queries)
    assert all(q in vocabulary and _query_true(w, i, q) for q in queries), (i, queries)
  assert {len(q) for q in w.queries} == {3, 4, 5}
  used = sorted({q for queries in w.queries for q in queries})
  for query in used[::7] + ["one shape", "four shapes", "purple and orange shapes"]:
    expected = [_query_true(w, i, query) for i in range(len(w))]
    np.testing.assert_array_equal(sw.query_matches(w, query), expected, err_msg=query)
  with pytest.raises(ValueError, match="not a shapes world query"):
    sw.query_matches(w, "a dog")


@pytest.mark.parametrize("args, message", [
    (("training", 10), "valid splits"),
    (("train", 0), "num_images"),
    (("train", -3), "num_images"),
])
def test_bad_arguments(args, message):
  with pytest.raises(ValueError, match=message):
    sw.generate_split(*args)


def test_bad_image_size():
  with pytest.raises(ValueError, match="image_size"):
    sw.generate_split("train", 4, image_size=16)
