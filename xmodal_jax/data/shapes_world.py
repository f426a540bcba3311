"""Shapes world: the embedded, procedurally generated, deterministic default image-text data set.

Each image shows 1-4 coloured geometric objects (5 shapes x 6 colours x 2 sizes) on a dark, lightly noisy
background, each object in a distinct cell of a 3x3 grid (later objects drawn on top, every object at least
`MIN_VISIBLE_FRACTION` visible). Annotations per image: 5 captions that name every object's colour and shape
(so a caption is true of almost no other image), tight boxes with labels, a 10-way class (dominant visible
shape x crowdedness) and 3-5 search queries from a finite grammar (`all_queries`, `query_matches`).

Image i of a split depends only on (seed, split, image_size, i): every random draw for it is the next value of
its own counter-based stream (SplitMix64 keyed by a hash of seed, split id and i), so a split's first images
are the same whatever its length, and the draws of many images are computed at once. Rendering is vectorised
over chunks of images; only the text is produced image by image.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (225, 35, 35),
    "green": (40, 195, 65),
    "blue": (45, 95, 240),
    "yellow": (240, 220, 40),
    "purple": (165, 60, 215),
    "orange": (250, 140, 20),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CROWDEDNESS = ("sparse", "crowded")  # sparse: 1-2 objects, crowded: 3-4.
LABEL_NAMES = tuple(f"{shape}/{crowd}" for shape in SHAPES for crowd in CROWDEDNESS)
MAX_OBJECTS = 4
CAPTIONS_PER_IMAGE = 5
MAX_CAPTION_WORDS = 40  # Counting "," and ":" as words.
SPLITS = {"train": 0, "val": 1, "test": 2}

MIN_IMAGE_SIZE = 32
SIZE_RADIUS = (0.09, 0.16)  # Object half-extent / image_size, per entry of SIZES.
RADIUS_JITTER = 0.05  # Relative, uniform in [-RADIUS_JITTER, RADIUS_JITTER].
CELL_JITTER = 0.06  # Largest offset of an object centre from its cell centre / image_size.
MIN_VISIBLE_FRACTION = 0.6
BRIGHTNESS_RANGE = (0.9, 1.0)  # Per-object factor on its colour.
BACKGROUND_RANGE = (12, 44)  # Per-image, per-channel background level.
NOISE_AMPLITUDE = 6  # Per-pixel, per-channel noise, uniform in [-NOISE_AMPLITUDE, NOISE_AMPLITUDE].

_COLOR_NAMES = tuple(COLORS)
_COLOR_RGB = np.asarray([COLORS[name] for name in _COLOR_NAMES], np.float64)
_COUNT_WORDS = ("one", "two", "three", "four")
_ID_STRIDE = 10**7  # image_ids = split_id * _ID_STRIDE + index.
_CHUNK = 1024  # Images rendered together.
_MAX_LAYOUT_ATTEMPTS = 1000
_NOISE_SEED = 20240601
# Positions in each image's random stream. Attributes: count, 5 per object (shape, colour, size, radius,
# brightness), background RGB, noise window offset. Each layout attempt: 9 (cell order) + 2 per object (jitter).
_ATTRIBUTE_DRAWS = 1 + 5 * MAX_OBJECTS + 3 + 2
_LAYOUT_DRAWS = 9 + 2 * MAX_OBJECTS
_LAYOUT_STREAM = 1 << 20
_TEXT_STREAM = 1 << 40
_TEXT_BLOCK = 64


@dataclasses.dataclass(frozen=True, repr=False)
class ShapesWorldSplit:
  """One split; per-object arrays are padded to MAX_OBJECTS (ints with -1, boxes with zeros).

  images uint8 [N, H, W, 3]; boxes float32 [N, MAX_OBJECTS, 4] as (x, y, w, h) pixels, the tight extent of
  the whole (also occluded) shape; object_shape, object_color, object_size int32 [N, MAX_OBJECTS] index SHAPES,
  COLORS (in order), SIZES; object_cell int32 [N, MAX_OBJECTS] is the row-major 3x3 grid cell (index into
  POSITIONS); objects are in drawing order (later on top); num_objects int32 [N]; box_labels per image and
  object, e.g. "large red circle"; captions N x 5; label int32 [N] index into LABEL_NAMES; queries N x (3..5);
  image_ids int64 [N].
  """
  images: np.ndarray
  boxes: np.ndarray
  object_shape: np.ndarray
  object_color: np.ndarray
  object_size: np.ndarray
  object_cell: np.ndarray
  num_objects: np.ndarray
  box_labels: list[list[str]]
  captions: list[list[str]]
  label: np.ndarray
  queries: list[list[str]]
  image_ids: np.ndarray

  def __len__(self) -> int:
    return len(self.images)

  @property
  def image_size(self) -> int:
    return self.images.shape[1]

  def __repr__(self) -> str:
    return f"ShapesWorldSplit({len(self)} images of {self.image_size}x{self.image_size})"


_ARRAY_FIELDS = ("boxes", "object_shape", "object_color", "object_size", "object_cell", "num_objects",
                 "label")
_TEXT_FIELDS = ("box_labels", "captions", "queries")


def generate_split(split: str, num_images: int, *, seed: int = 0, image_size: int = 64) -> ShapesWorldSplit:
  """The first `num_images` images of `split` (image i is the same for any num_images > i)."""
  if split not in SPLITS:
    raise ValueError(f"Unknown shapes world split {split!r}; valid splits: {sorted(SPLITS)}.")
  if not 0 < num_images <= _ID_STRIDE:
    raise ValueError(f"num_images must be in [1, {_ID_STRIDE}], got {num_images}.")
  if image_size < MIN_IMAGE_SIZE:
    raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} pixels for the shapes to stay recognisable, "
                     f"got {image_size}.")
  if not 0 <= seed < 2**64:
    raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}.")
  images = np.empty((num_images, image_size, image_size, 3), np.uint8)  # Painted in place, chunk by chunk.
  chunks = [_generate_chunk(_image_keys(seed, SPLITS[split], np.arange(start, min(start + _CHUNK, num_images))),
                            images[start:start + _CHUNK]) for start in range(0, num_images, _CHUNK)]
  arrays = {key: np.concatenate([chunk[key] for chunk in chunks]) for key in _ARRAY_FIELDS}
  texts = {key: [item for chunk in chunks for item in chunk[key]] for key in _TEXT_FIELDS}
  image_ids = SPLITS[split] * _ID_STRIDE + np.arange(num_images, dtype=np.int64)
  return ShapesWorldSplit(images=images, **arrays, **texts, image_ids=image_ids)


# ---------------------------------------------------------------------------------------------- random streams


def _mix(x: np.ndarray) -> np.ndarray:
  """SplitMix64 output function on uint64 arrays (a bijection with full avalanche)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _image_keys(seed: int, split_id: int, indices: np.ndarray) -> np.ndarray:
  """uint64 [n]: the key of each image's random stream."""
  split_key = _mix(_mix(np.array([seed], np.uint64)) + np.array([split_id], np.uint64) * _GOLDEN)
  return _mix(split_key ^ (indices.astype(np.uint64) * _GOLDEN))


def _uniforms(keys: np.ndarray, start: int, count: int) -> np.ndarray:
  """float64 [n, count] in [0, 1): draws start, ..., start + count - 1 of the streams `keys` [n]."""
  counters = np.arange(start, start + count, dtype=np.uint64) + np.uint64(1)
  bits = _mix(keys[:, None] + counters * _GOLDEN)
  return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _generate_chunk(keys: np.ndarray, images: np.ndarray) -> dict:
  """Paints `images` uint8 [n, S, S, 3], the images with stream keys `keys` [n]; returns their other fields."""
  n, size = images.shape[:2]
  u = _uniforms(keys, 0, _ATTRIBUTE_DRAWS)
  num = 1 + (u[:, 0] * MAX_OBJECTS).astype(np.int32)
  per_object = u[:, 1:1 + 5 * MAX_OBJECTS].reshape(n, MAX_OBJECTS, 5)
  shape = (per_object[..., 0] * len(SHAPES)).astype(np.int32)
  color = (per_object[..., 1] * len(COLORS)).astype(np.int32)
  size_index = (per_object[..., 2] * len(SIZES)).astype(np.int32)
  radius = np.asarray(SIZE_RADIUS)[size_index] * size * (1 + RADIUS_JITTER * (2 * per_object[..., 3] - 1))
  brightness = BRIGHTNESS_RANGE[0] + (BRIGHTNESS_RANGE[1] - BRIGHTNESS_RANGE[0]) * per_object[..., 4]
  background = BACKGROUND_RANGE[0] + (BACKGROUND_RANGE[1] - BACKGROUND_RANGE[0]) * u[:, 21:24]
  noise_offset = (u[:, 24:26] * (_noise_pool(size).shape[0] - size + 1)).astype(np.int64)

  # Lay out, render and check visibility; an image with a too hidden object draws its next layout attempt.
  cell = np.zeros((n, MAX_OBJECTS), np.int32)
  centre = np.zeros((n, MAX_OBJECTS, 2))
  owner = np.full((n, size, size), -1, np.int8)
  visible = np.zeros((n, MAX_OBJECTS), np.int64)
  boxes = np.zeros((n, MAX_OBJECTS, 4), np.float32)
  pending = np.arange(n)
  for attempt in range(_MAX_LAYOUT_ATTEMPTS):
    layout = _uniforms(keys[pending], _LAYOUT_STREAM + attempt * _LAYOUT_DRAWS, _LAYOUT_DRAWS)
    cell[pending], centre[pending] = _decode_layout(layout, radius[pending], size)
    drawn = _render(num[pending], shape[pending], radius[pending], centre[pending], size)
    ok = np.all(drawn.visible >= MIN_VISIBLE_FRACTION * drawn.area, axis=1)
    done = pending[ok]
    owner[done], visible[done], boxes[done] = drawn.owner[ok], drawn.visible[ok], drawn.boxes[ok]
    pending = pending[~ok]
    if not pending.size:
      break
  else:
    raise RuntimeError(f"No layout with every object visible after {_MAX_LAYOUT_ATTEMPTS} attempts.")

  _paint(owner, color, brightness, background, noise_offset, images)
  valid = np.arange(MAX_OBJECTS) < num[:, None]
  shape, color, size_index, cell = (np.where(valid, a, -1).astype(np.int32) for a in (shape, color, size_index, cell))
  # Class: the shape with the most visible pixels (ties to the earlier one in SHAPES) x crowdedness.
  area_by_shape = np.stack([np.sum(np.where(shape == s, visible, 0), axis=1) for s in range(len(SHAPES))], axis=1)
  label = (np.argmax(area_by_shape, axis=1) * len(CROWDEDNESS) + (num > 2)).astype(np.int32)

  box_labels, captions, queries = [], [], []
  text_uniforms = _uniforms(keys, _TEXT_STREAM, _TEXT_BLOCK).tolist()
  for j, attributes in enumerate(zip(shape.tolist(), color.tolist(), size_index.tolist(), cell.tolist())):
    objects = [_object(*a) for a in list(zip(*attributes))[:num[j]]]
    choices = _Choices(keys[j:j + 1], text_uniforms[j])
    box_labels.append([o.label for o in objects])
    captions.append(_captions(objects, choices))
    queries.append(_queries(objects, choices))
  return dict(boxes=boxes, object_shape=shape, object_color=color, object_size=size_index,
              object_cell=cell, num_objects=num, box_labels=box_labels, captions=captions, label=label,
              queries=queries)


# ------------------------------------------------------------------------------------------------- rendering
# Shape masks over pixel-centre offsets dx, dy from the object centre, for half-extent r: every shape lies
# within |dx|, |dy| <= r, so the tight box of each is about 2r x 2r.


def _circle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  return dx * dx + dy * dy <= r * r


def _square(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82 * r


def _triangle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Apex up at dy = -r, base at dy = 0.85 r, 2r wide."""
  base = 0.85 * r
  return (dy <= base) & (np.abs(dx) <= (dy + r) * r / (base + r))


def _diamond(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  return np.abs(dx) + np.abs(dy) <= r


def _cross(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Plus sign with arms 0.68 r thick."""
  ax, ay = np.abs(dx), np.abs(dy)
  return (np.maximum(ax, ay) <= r) & (np.minimum(ax, ay) <= 0.34 * r)


_SHAPE_MASKS: tuple[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], ...] = (
    _circle, _square, _triangle, _diamond, _cross)


class _Drawn(NamedTuple):
  """owner int8 [m, S, S] (object slot on top, -1 background); area, visible int64 [m, MAX_OBJECTS] pixels
  of each object's full and unoccluded shape (0 for padding); boxes float32 [m, MAX_OBJECTS, 4] (x, y, w, h)."""
  owner: np.ndarray
  area: np.ndarray
  visible: np.ndarray
  boxes: np.ndarray


def _decode_layout(u: np.ndarray, radius: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Uniforms [m, _LAYOUT_DRAWS] -> distinct grid cells int32 [m, MAX_OBJECTS], centres [m, MAX_OBJECTS, 2]."""
  cell = np.argsort(u[:, :9], axis=1, kind="stable")[:, :MAX_OBJECTS].astype(np.int32)
  jitter = (2 * u[:, 9:].reshape(-1, MAX_OBJECTS, 2) - 1) * CELL_JITTER * size
  grid = np.stack([cell % 3, cell // 3], axis=-1)
  # Clipping keeps every shape inside the image; the centre stays well inside its cell.
  lo = (radius + 1)[..., None]
  return cell, np.clip((grid + 0.5) * (size / 3) + jitter, lo, size - lo)


def _window(size: int) -> int:
  """Side of a square pixel window that holds any object."""
  return 2 * int(np.ceil(SIZE_RADIUS[-1] * (1 + RADIUS_JITTER) * size)) + 3


def _render(num: np.ndarray, shape: np.ndarray, radius: np.ndarray, centre: np.ndarray, size: int) -> _Drawn:
  """Draws num [m] objects per image in slot order; masks are computed in a small window per object."""
  m, win = len(num), _window(size)
  image, slot = np.nonzero(np.arange(MAX_OBJECTS) < num[:, None])  # Objects [M], by image then slot.
  r = radius[image, slot][:, None, None]
  cx, cy = centre[image, slot, 0], centre[image, slot, 1]
  x0 = np.clip(np.floor(cx).astype(np.int64) - win // 2, 0, size - win)
  y0 = np.clip(np.floor(cy).astype(np.int64) - win // 2, 0, size - win)
  xs, ys = x0[:, None] + np.arange(win), y0[:, None] + np.arange(win)  # [M, win]
  dx, dy = (xs + 0.5 - cx[:, None])[:, None, :], (ys + 0.5 - cy[:, None])[:, :, None]
  masks = np.zeros((len(image), win, win), bool)
  object_shape = shape[image, slot]
  for s, mask_fn in enumerate(_SHAPE_MASKS):
    sel = object_shape == s
    masks[sel] = mask_fn(dx[sel], dy[sel], r[sel])

  flat = (image * size * size)[:, None, None] + ys[:, :, None] * size + xs[:, None, :]  # [M, win, win]
  owner = np.full(m * size * size, -1, np.int8)
  for k in range(MAX_OBJECTS):  # Later objects on top.
    sel = slot == k
    owner[flat[sel][masks[sel]]] = k
  area = np.zeros((m, MAX_OBJECTS), np.int64)
  visible = np.zeros((m, MAX_OBJECTS), np.int64)
  area[image, slot] = np.count_nonzero(masks, axis=(1, 2))
  visible[image, slot] = np.count_nonzero(masks & (owner[flat] == slot[:, None, None]), axis=(1, 2))

  rows, cols = masks.any(axis=2), masks.any(axis=1)  # [M, win]
  top, left = np.argmax(rows, axis=1), np.argmax(cols, axis=1)
  bottom, right = win - np.argmax(rows[:, ::-1], axis=1), win - np.argmax(cols[:, ::-1], axis=1)
  boxes = np.zeros((m, MAX_OBJECTS, 4), np.float32)
  boxes[image, slot] = np.stack([x0 + left, y0 + top, right - left, bottom - top], axis=1)
  return _Drawn(owner.reshape(m, size, size), area, visible, boxes)


@functools.lru_cache(maxsize=8)
def _noise_pool(size: int) -> np.ndarray:
  """Fixed noise texture uint8 [3 size, 3 size, 3] in [0, 2 NOISE_AMPLITUDE] (offset by +NOISE_AMPLITUDE);
  each image shows a window of it at its own offset."""
  rng = np.random.default_rng(_NOISE_SEED)
  return rng.integers(0, 2 * NOISE_AMPLITUDE + 1, size=(3 * size, 3 * size, 3), dtype=np.uint8)


def _paint(owner: np.ndarray, color: np.ndarray, brightness: np.ndarray, background: np.ndarray,
           noise_offset: np.ndarray, images: np.ndarray):
  """Object-index maps [n, S, S] -> `images` uint8 [n, S, S, 3] (in place): flat colours plus windowed noise."""
  n, size = owner.shape[:2]
  palette = np.concatenate([background[:, None], _COLOR_RGB[color] * brightness[..., None]], axis=1)
  # Colours kept NOISE_AMPLITUDE away from 0 and 255 so that uint8 noise never wraps.
  palette = np.clip(np.round(palette), NOISE_AMPLITUDE, 255 - NOISE_AMPLITUDE).astype(np.uint8) - NOISE_AMPLITUDE
  palette = palette.reshape(n * (MAX_OBJECTS + 1), 3)
  index = (np.arange(n) * (MAX_OBJECTS + 1))[:, None, None] + owner + 1
  for c in range(3):
    images[..., c] = palette[:, c].take(index)
  pool = _noise_pool(size)
  images += np.stack([pool[y:y + size, x:x + size] for x, y in noise_offset.tolist()])


# ------------------------------------------------------------------------------------------------------ text


class _Object(NamedTuple):
  """One object's attribute indices (into SHAPES, COLORS, SIZES, POSITIONS) and its cached phrases."""
  shape: int
  color: int
  size: int
  cell: int
  label: str  # "large red circle".
  phrases: tuple[str, str]  # Noun phrase without / with size: ("a red circle", "a large red circle").
  positions: tuple[str, ...]  # Ways to say where it is: "in the top left", ...
  queries: tuple[tuple[str, dict[str, int]], ...]  # One query per kind, with the attributes it constrains.


def _article(words: str) -> str:
  return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"


@functools.lru_cache(maxsize=None)
def _object(shape: int, color: int, size: int, cell: int) -> _Object:
  shape_word, color_word, size_word, position = SHAPES[shape], _COLOR_NAMES[color], SIZES[size], POSITIONS[cell]
  queries = ((f"{color_word} {shape_word}", dict(color=color, shape=shape)),
             (f"{size_word} {color_word} {shape_word}", dict(size=size, color=color, shape=shape)),
             (f"{size_word} {shape_word}", dict(size=size, shape=shape)),
             (f"{shape_word} {position}", dict(shape=shape, cell=cell)),
             (f"{color_word} {shape_word} {position}", dict(color=color, shape=shape, cell=cell)))
  label = f"{size_word} {color_word} {shape_word}"
  return _Object(shape, color, size, cell, label, (_article(f"{color_word} {shape_word}"), _article(label)),
                 _position_phrases(position), queries)


def _position_phrases(position: str) -> tuple[str, ...]:
  """Ways to say "at cell `position`"; none contains a relation word ("left of", "above", "below")."""
  if position == "center":
    return ("in the center", "at the center", "in the middle")
  if " " in position:
    return (f"in the {position}", f"at the {position}", f"in the {position} corner")
  if position in ("top", "bottom"):
    return (f"at the {position}", f"near the {position}", f"along the {position}")
  return (f"on the {position}", f"at the {position}", f"on the {position} side")


class _Choices:
  """Deterministic random choices for one image from its text stream, given the stream's first block."""

  def __init__(self, key: np.ndarray, first_block: list[float]):
    self._key = key  # uint64 [1].
    self._block = 0
    self._uniforms = first_block[::-1]  # Consumed from the end.

  def index(self, n: int) -> int:
    """Uniform integer in [0, n)."""
    if not self._uniforms:
      self._block += 1
      start = _TEXT_STREAM + self._block * _TEXT_BLOCK
      self._uniforms = _uniforms(self._key, start, _TEXT_BLOCK)[0, ::-1].tolist()
    return int(self._uniforms.pop() * n)

  def choice(self, options: Sequence):
    return options[self.index(len(options))]

  def coin(self) -> bool:
    return self.index(2) == 1

  def shuffled(self, items: Sequence) -> list:
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
      j = self.index(i + 1)
      items[i], items[j] = items[j], items[i]
    return items


_RELATION_PHRASES = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
                     "above": ("above",), "below": ("below",)}
_LIST_OPENERS = ("", "there is ", "an image with ", "a picture of ", "this image shows ", "we see ")
_CLAUSE_OPENERS = ("", "in this image ", "here ")
_SINGLE_OPENERS = ("a single", "just one", "only one")
_SUFFIXES = ("", " on a dark background", " against a dark background")  # Only for one-object captions.
_MAX_CAPTION_TRIES = 50


def _relations(a: _Object, b: _Object) -> list[str]:
  """Keys of _RELATION_PHRASES true of "a REL b" by grid column and row (never empty: cells differ)."""
  (row_a, col_a), (row_b, col_b) = divmod(a.cell, 3), divmod(b.cell, 3)
  horizontal = [] if col_a == col_b else ["left" if col_a < col_b else "right"]
  vertical = [] if row_a == row_b else ["above" if row_a < row_b else "below"]
  return horizontal + vertical


def _join(parts: Sequence[str]) -> str:
  return parts[0] if len(parts) == 1 else f"{' , '.join(parts[:-1])} and {parts[-1]}"


def _suffix(objects: Sequence[_Object], choices: _Choices) -> str:
  return choices.choice(_SUFFIXES) if len(objects) == 1 else ""


def _listing(objects: Sequence[_Object], choices: _Choices, with_size: bool, with_position: bool) -> str:
  """e.g. "there is a large red circle in the top left and a small blue square at the bottom"."""
  parts = [o.phrases[with_size] + (f" {choices.choice(o.positions)}" if with_position else "")
           for o in choices.shuffled(objects)]
  return choices.choice(_LIST_OPENERS) + _join(parts) + _suffix(objects, choices)


def _clauses(objects: Sequence[_Object], choices: _Choices, with_size: bool) -> str:
  """e.g. "a red circle is in the top left and a blue square is at the bottom"."""
  parts = [f"{o.phrases[with_size]} is {choices.choice(o.positions)}" for o in choices.shuffled(objects)]
  return choices.choice(_CLAUSE_OPENERS) + _join(parts) + _suffix(objects, choices)


def _counted(objects: Sequence[_Object], choices: _Choices) -> str:
  """e.g. "three shapes : a small green cross , a large red circle and a small blue triangle"."""
  k = len(objects)
  noun = choices.choice(("shape", "object")) + ("s" if k > 1 else "")
  count = _COUNT_WORDS[k - 1]
  head = choices.choice((f"{count} {noun} :", f"there {'is' if k == 1 else 'are'} {count} {noun} :",
                         f"{count} {noun} , namely"))
  # A lone object also gets its position: there are only 60 size/colour/shape combinations.
  parts = [o.phrases[True] + (f" {choices.choice(o.positions)}" if k == 1 else "")
           for o in choices.shuffled(objects)]
  return f"{head} {_join(parts)}{_suffix(objects, choices)}"


def _related(objects: Sequence[_Object], choices: _Choices, with_size: bool) -> str:
  """Needs >= 2 objects; chain, e.g. "a red circle is left of a blue square , which is above a green cross"."""
  order = choices.shuffled(objects)

  def relation(a: _Object, b: _Object) -> str:
    return choices.choice(_RELATION_PHRASES[choices.choice(_relations(a, b))])

  first, second = order[0].phrases[with_size], order[1].phrases[with_size]
  text = choices.choice((f"{first} is {{}} {second}", f"there is {first} {{}} {second}",
                         f"{first} {{}} {second}")).format(relation(order[0], order[1]))
  for a, b in zip(order[1:], order[2:]):
    text += f" , which is {relation(a, b)} {b.phrases[with_size]}"
  return text


def _single(objects: Sequence[_Object], choices: _Choices) -> str:
  """One object only, e.g. "just one small red circle at the top" or "the only shape is a ..."."""
  (o,) = objects
  where = choices.choice(o.positions)
  text = choices.choice((f"{choices.choice(_SINGLE_OPENERS)} {o.label} {where}",
                         f"the only {choices.choice(('shape', 'object'))} is {o.phrases[True]} {where}"))
  return text + _suffix(objects, choices)


def _fronted(objects: Sequence[_Object], choices: _Choices) -> str:
  """One object only, position first, e.g. "at the top there is a small red circle"."""
  (o,) = objects
  verb = choices.choice(("there is", "is"))
  return f"{choices.choice(o.positions)} {verb} {o.phrases[True]}{_suffix(objects, choices)}"


def _caption_makers(objects: Sequence[_Object], choices: _Choices) -> list[Callable[[], str]]:
  """Five caption templates for the image (one per caption), each naming every object's colour and shape."""
  if len(objects) == 1:  # Every caption gives size and position; templates in random order for variety.
    # Templates repeated about in proportion to their number of wordings, so all wordings are equally likely
    # and two images with the same object rarely share a caption.
    makers = ([lambda: _listing(objects, choices, True, True)] * 3 + [lambda: _counted(objects, choices)] * 3 +
              [lambda: _clauses(objects, choices, True)] * 2 + [lambda: _single(objects, choices)] * 2 +
              [lambda: _fronted(objects, choices)])
    return [lambda: choices.choice(makers)()] * CAPTIONS_PER_IMAGE
  # Same colour and shape twice: sizes tell the objects apart in relations.
  twins = len({o.phrases[False] for o in objects}) < len(objects)
  extra = (lambda: _listing(objects, choices, False, True), lambda: _listing(objects, choices, True, False),
           lambda: _related(objects, choices, twins or choices.coin()))
  return [lambda: _listing(objects, choices, True, True), lambda: _counted(objects, choices),
          lambda: _related(objects, choices, twins or choices.coin()),
          lambda: _clauses(objects, choices, choices.coin()), lambda: choices.choice(extra)()]


def _captions(objects: Sequence[_Object], choices: _Choices) -> list[str]:
  """CAPTIONS_PER_IMAGE captions, distinct ignoring punctuation, of at most MAX_CAPTION_WORDS words."""
  makers = _caption_makers(objects, choices)
  captions, seen = [], set()
  for position, maker in enumerate(makers):
    for attempt in range(_MAX_CAPTION_TRIES):
      # Retry the scheduled template, then fall back to any of them.
      caption = (maker if attempt < _MAX_CAPTION_TRIES // 2 else choices.choice(makers))()
      key = _strip_punctuation(caption)
      if key not in seen and caption.count(" ") < MAX_CAPTION_WORDS:
        break
    else:
      raise RuntimeError(f"Could not make caption {position + 1} distinct for objects {objects}.")
    seen.add(key)
    captions.append(caption)
  return captions


def _strip_punctuation(caption: str) -> str:
  return caption.replace(" ,", "").replace(" :", "")


# --------------------------------------------------------------------------------------------------- queries


@functools.lru_cache(maxsize=1)
def _query_grammar() -> dict[str, tuple[str, object]]:
  """Every query -> (kind, constraint): ("objects", {field: index}), ("count", n) or ("colors", (c1, c2))."""
  grammar: dict[str, tuple[str, object]] = {}
  for attributes in np.ndindex(len(SHAPES), len(COLORS), len(SIZES), len(POSITIONS)):
    for text, fields in _object(*attributes).queries:
      grammar[text] = ("objects", fields)
  for k in range(1, MAX_OBJECTS + 1):
    grammar[_count_query(k)] = ("count", k)
  for c1 in range(len(COLORS)):
    for c2 in range(c1 + 1, len(COLORS)):
      grammar[_colors_query(c1, c2)] = ("colors", (c1, c2))
  return grammar


def _count_query(k: int) -> str:
  return f"{_COUNT_WORDS[k - 1]} shape{'s' if k > 1 else ''}"


def _colors_query(c1: int, c2: int) -> str:
  return f"{_COLOR_NAMES[c1]} and {_COLOR_NAMES[c2]} shapes"


def _queries(objects: Sequence[_Object], choices: _Choices) -> list[str]:
  """3-5 distinct true queries, each of a different kind."""
  kinds = [sorted(set(texts)) for texts in zip(*([text for text, _ in o.queries] for o in objects))]
  kinds.append([_count_query(len(objects))])
  colors = sorted({o.color for o in objects})
  pairs = [_colors_query(a, b) for i, a in enumerate(colors) for b in colors[i + 1:]]
  if pairs:
    kinds.append(pairs)
  return [choices.choice(options) for options in choices.shuffled(kinds)[:3 + choices.index(3)]]


def label_prompts() -> list[list[str]]:
  """Zero-shot prompts per class of LABEL_NAMES (dominant shape x crowdedness), in the captions' own words: the
  count of shapes (one or two: sparse; three or four: crowded) and a large shape of the class (the dominant
  shape covers the most area, so it is usually a large one). 4 prompts per class."""
  out = []
  for shape in SHAPES:
    for crowd in CROWDEDNESS:
      counts = _COUNT_WORDS[:2] if crowd == "sparse" else _COUNT_WORDS[2:]
      prompts = []
      for count in counts:
        noun = "shape" if count == "one" else "shapes"
        verb = "is" if count == "one" else "are"
        prompts += [f"there {verb} {count} {noun} : a large {shape}", f"{count} {noun} , namely a large {shape}"]
      out.append(prompts)
  return out


def all_queries() -> list[str]:
  """The whole finite query vocabulary, sorted."""
  return sorted(_query_grammar())


def query_matches(world: ShapesWorldSplit, query: str) -> np.ndarray:
  """bool [N]: which images of `world` the query (one of all_queries()) is true of."""
  try:
    kind, constraint = _query_grammar()[query]
  except KeyError:
    raise ValueError(f"{query!r} is not a shapes world query; see all_queries().") from None
  if kind == "count":
    return world.num_objects == constraint
  if kind == "colors":
    return np.all([np.any(world.object_color == c, axis=1) for c in constraint], axis=0)
  hit = world.object_shape >= 0
  for field, value in constraint.items():
    hit &= getattr(world, f"object_{field}") == value
  return hit.any(axis=1)
