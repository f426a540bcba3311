"""Region boxes per image (host side, NumPy): grid cells, selective search proposals or the data's own boxes.

Boxes are (x1, y1, x2, y2) in pixel-edge coordinates: pixel (row i, column j) spans [j, j + 1) x [i, i + 1),
so the whole H x W image is the box (0, 0, W, H). Batches of boxes are padded to a fixed number of regions
with `pad_boxes`; `box_geometry` gives the normalised box features that go next to pooled region features
(see `xmodal_jax/models/roi_align.py`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import types
import warnings
from typing import Callable, Sequence

import numpy as np

REGION_METHODS = ("grid", "selective_search", "data")
BOX_FORMATS = ("xywh", "xyxy")
GEOMETRY_FEATURES = 7  # box_geometry: x1, y1, x2, y2, w, h, area.
# OpenCV selective search strategies (Uijlings et al., 2013): one colour space and k (single), a few (fast), many
# (quality).
SELECTIVE_SEARCH_MODES = {
    "single": "switchToSingleStrategy",
    "fast": "switchToSelectiveSearchFast",
    "quality": "switchToSelectiveSearchQuality",
}


def grid_boxes(image_height: int, image_width: int, rows: int = 3, cols: int = 3, *,
               include_full: bool = False) -> np.ndarray:
  """float32 [rows * cols (+ 1), 4]: the cells of a rows x cols grid tiling the image, row-major.

  With include_full, the whole-image box comes first.
  """
  if rows < 1 or cols < 1:
    raise ValueError(f"grid_boxes needs rows, cols >= 1, got {rows}, {cols}.")
  ys = np.linspace(0.0, image_height, rows + 1)
  xs = np.linspace(0.0, image_width, cols + 1)
  x1, y1 = np.meshgrid(xs[:-1], ys[:-1])
  x2, y2 = np.meshgrid(xs[1:], ys[1:])
  boxes = np.stack([x1, y1, x2, y2], axis=-1).reshape(rows * cols, 4)
  if include_full:
    boxes = np.concatenate([[[0.0, 0.0, image_width, image_height]], boxes])
  return boxes.astype(np.float32)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
  """float32 [..., 4]: (x, y, w, h) -> (x1, y1, x2, y2)."""
  boxes = np.asarray(boxes, np.float32)
  return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """float32 [n, m]: intersection over union of boxes a [n, 4] and b [m, 4] (x1, y1, x2, y2)."""
  a, b = np.asarray(a, np.float32)[:, None], np.asarray(b, np.float32)[None]
  lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
  area_a = np.prod(np.clip(a[..., 2:] - a[..., :2], 0, None), axis=-1)
  area_b = np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)
  union = area_a + area_b - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def pad_boxes(boxes_list: Sequence[np.ndarray], max_regions: int) -> tuple[np.ndarray, np.ndarray]:
  """Boxes per image ([k_i, 4] each) -> (boxes float32 [N, max_regions, 4], valid bool [N, max_regions]).

  Images with more than max_regions boxes keep their first max_regions; padding boxes are all zeros.
  """
  boxes = np.zeros((len(boxes_list), max_regions, 4), np.float32)
  valid = np.zeros((len(boxes_list), max_regions), bool)
  for i, image_boxes in enumerate(boxes_list):
    image_boxes = np.asarray(image_boxes, np.float32).reshape(-1, 4)[:max_regions]
    boxes[i, :len(image_boxes)] = image_boxes
    valid[i, :len(image_boxes)] = True
  return boxes, valid


def box_geometry(boxes: np.ndarray, image_height: int, image_width: int, *,
                 xp: types.ModuleType = np) -> np.ndarray:
  """float32 [..., 7]: boxes [..., 4] (x1, y1, x2, y2) pixels -> (x1, y1, x2, y2, w, h, area) in [0, 1].

  Coordinates are clipped to the image, then divided by its width / height; w, h and area are those of the
  clipped box (0 for empty or inverted boxes). `xp` is the array module: np here, jax.numpy on device.
  """
  scale = xp.asarray([image_width, image_height, image_width, image_height], xp.float32)
  corners = xp.clip(xp.asarray(boxes, xp.float32) / scale, 0.0, 1.0)
  size = xp.maximum(corners[..., 2:] - corners[..., :2], 0.0)
  area = size[..., :1] * size[..., 1:]
  return xp.concatenate([corners, size, area], axis=-1)


def jitter_boxes(boxes: np.ndarray, fraction: float, rng: np.random.Generator, image_size: int) -> np.ndarray:
  """xyxy boxes [..., 4] -> each box's centre moved by up to `fraction` of its width / height and each side
  scaled by a factor in [1 - fraction, 1 + fraction] (uniform draws), clipped to the image."""
  boxes = np.asarray(boxes, np.float32)
  size = boxes[..., 2:] - boxes[..., :2]
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2 + rng.uniform(-fraction, fraction, size.shape) * size
  size = size * rng.uniform(1 - fraction, 1 + fraction, size.shape)
  out = np.concatenate([centre - size / 2, centre + size / 2], axis=-1)
  return np.clip(out, 0, image_size).astype(np.float32)


def _clip_to_image(boxes: np.ndarray, image_height: int, image_width: int) -> np.ndarray:
  return np.clip(boxes, 0, [image_width, image_height, image_width, image_height]).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _c_srand() -> Callable[[int], None] | None:
  """The C library's srand, which seeds the rand() behind OpenCV's selective search ranking (None if absent)."""
  try:
    return ctypes.CDLL(ctypes.util.find_library("c")).srand
  except (OSError, AttributeError, TypeError):
    warnings.warn("Could not load the C library's srand: selective search proposal order is not reproducible.")
    return None


def _drop_near_duplicates(boxes: np.ndarray, iou_threshold: float, top_n: int) -> np.ndarray:
  """The first top_n boxes [n, 4], in order, whose IoU with every earlier kept box is at most iou_threshold."""
  kept: list[np.ndarray] = []
  for box in boxes:
    if len(kept) == top_n:
      break
    if not kept or box_iou(box[None], np.stack(kept)).max() <= iou_threshold:
      kept.append(box)
  return np.asarray(kept, np.float32).reshape(-1, 4)


def selective_search_boxes(image: np.ndarray, top_n: int = 36, mode: str = "fast", min_size_frac: float = 0.01,
                           max_side: int | None = None, *, iou_threshold: float = 0.9,
                           seed: int = 0) -> np.ndarray:
  """float32 [<= top_n, 4] (x1, y1, x2, y2): OpenCV selective search proposals for image uint8 [H, W, 3] (RGB).

  Proposals keep OpenCV's order (randomised ranking; made reproducible by seeding the C library's rand() with
  `seed` just before the search, so a call is deterministic). Boxes smaller than min_size_frac of the image area
  and near-duplicates (IoU > iou_threshold with an earlier kept box) are dropped. With max_side, an image whose
  longer side exceeds it is searched at that size and the boxes are scaled back. Runs single-threaded.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"selective_search_boxes needs a uint8 [H, W, 3] image, got {image.dtype} {image.shape}.")
  if mode not in SELECTIVE_SEARCH_MODES:
    raise ValueError(f"Unknown selective search mode {mode!r}; valid modes: {', '.join(SELECTIVE_SEARCH_MODES)}.")
  import cv2  # only needed here: keeps the device-side import of box_geometry light

  height, width = image.shape[:2]
  search_image = image
  if max_side is not None and max(height, width) > max_side:
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # OpenCV sizes are (width, height).
    search_image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
  search_height, search_width = search_image.shape[:2]

  threads = cv2.getNumThreads()
  cv2.setNumThreads(1)
  try:
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(search_image[..., ::-1]))  # OpenCV expects BGR.
    getattr(search, SELECTIVE_SEARCH_MODES[mode])()
    srand = _c_srand()
    if srand is not None:
      srand(seed)
    rects = np.asarray(search.process(), np.float32).reshape(-1, 4)
  finally:
    cv2.setNumThreads(threads)

  rects *= np.asarray([width / search_width, height / search_height] * 2, np.float32)
  boxes = _clip_to_image(xywh_to_xyxy(rects), height, width)
  area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
  boxes = boxes[area >= min_size_frac * height * width]
  return _drop_near_duplicates(boxes, iou_threshold, top_n)


def _data_boxes(image: np.ndarray, data_boxes: np.ndarray | None, box_format: str = "xywh") -> np.ndarray:
  """The data's own boxes [k, 4] (e.g. shapes world or COCO, in box_format) as (x1, y1, x2, y2), clipped to the
  image; empty boxes (such as the zero padding of shapes world) are dropped."""
  if data_boxes is None:
    raise ValueError('Region method "data" needs the boxes that come with the data: pass data_boxes.')
  if box_format not in BOX_FORMATS:
    raise ValueError(f"Unknown box format {box_format!r}; valid formats: {', '.join(BOX_FORMATS)}.")
  boxes = np.asarray(data_boxes, np.float32).reshape(-1, 4)
  if box_format == "xywh":
    boxes = xywh_to_xyxy(boxes)
  boxes = _clip_to_image(boxes, *image.shape[:2])
  return boxes[np.all(boxes[:, 2:] > boxes[:, :2], axis=1)]


def region_boxes(method: str, image: np.ndarray, data_boxes: np.ndarray | None = None, **kwargs) -> np.ndarray:
  """float32 [k, 4] (x1, y1, x2, y2) regions of image [H, W, 3] by `method` (one of REGION_METHODS).

  kwargs go to grid_boxes (rows, cols, include_full), selective_search_boxes (top_n, mode, ...) or, for
  "data", box_format ("xywh", the default, as in shapes world and COCO, or "xyxy").
  """
  if method == "grid":
    return grid_boxes(*np.shape(image)[:2], **kwargs)
  if method == "selective_search":
    return selective_search_boxes(image, **kwargs)
  if method == "data":
    return _data_boxes(np.asarray(image), data_boxes, **kwargs)
  raise ValueError(f"Unknown region method {method!r}; valid methods: {', '.join(REGION_METHODS)}.")
