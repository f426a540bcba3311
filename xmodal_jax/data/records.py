"""Reads real captioned-image datasets into validated per-image records.

Two on-disk formats:

* Caption folder: `ROOT/captions.jsonl`, one JSON object per image:
  `{"image": "images/x.jpg", "captions": [...], "split": "train", "boxes": [[x, y, w, h, "label"], ...],
  "image_id": 7}` (`boxes` and `image_id` optional, other keys ignored; paths relative to ROOT).
* Karpathy split JSON (`dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`): images at
  `IMAGE_ROOT/filepath/filename`, captions from `sentences[*].raw`.

Every bad input raises `BadInputError` naming the file (and line or entry), the problem and the fix. With
`skip_bad=True` bad records are skipped and counted per reason in a `SkipReport` instead. Images are only
checked for existence here; `load_image` decodes (and so validates) them at prepare time.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from xmodal_jax import errors

SPLITS = ("train", "val", "test")
# Kept as they are (Karpathy's "restval" may be mapped to "train"); any other split value is an error.
EXTRA_SPLITS = ("unassigned", "restval")
CAPTIONS_FILE = "captions.jsonl"
MAX_SKIP_EXAMPLES = 10

_JSONL_FORMAT = ('one JSON object per line: {"image": "images/x.jpg", "captions": ["...", ...], '
                 '"split": "train|val|test"}')


class BadInputError(errors.DataError):
  """A dataset input is unusable; the message names the file (line / entry), the problem and the fix."""

  def __init__(self, message: str, reason: str = "bad input"):
    super().__init__(message)
    self.reason = reason


class MissingFileError(BadInputError, errors.MissingError):
  """A file the dataset needs does not exist (also a `FileNotFoundError`)."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageRecord:
  """One image with its captions. `eq=False`: records compare by identity (`boxes` is an array)."""
  image_id: int
  image_path: str  # Absolute.
  captions: tuple[str, ...]
  split: str
  boxes: np.ndarray  # float32 [num_boxes, 4] (x, y, w, h) in pixels of the original image; read-only.
  box_labels: tuple[str, ...]


DEFAULT_MAX_BAD_FRACTION = 0.01


@dataclasses.dataclass
class SkipReport:
  """What `skip_bad=True` left out: whole records (an image with its captions) and single bad captions of
  records that were kept, each counted per reason, plus the first few full messages."""
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  caption_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: list[str] = dataclasses.field(default_factory=list)

  def add(self, error: BadInputError) -> None:
    """A whole record skipped."""
    self.counts[error.reason] += 1
    self._example(error)

  def add_caption(self, error: BadInputError) -> None:
    """One caption dropped; its image keeps its other captions."""
    self.caption_counts[error.reason] += 1
    self._example(error)

  def _example(self, error: BadInputError) -> None:
    if len(self.examples) < MAX_SKIP_EXAMPLES:
      self.examples.append(str(error))

  def total(self) -> int:
    return sum(self.counts.values())

  def total_captions(self) -> int:
    return sum(self.caption_counts.values())

  def summary(self) -> str:
    """One line, e.g. "skipped 3 bad records: 2 missing image file, 1 malformed JSON; dropped 1 caption: ..."."""
    if not self.total() and not self.total_captions():
      return "skipped 0 bad records"
    parts = []
    if self.total():
      parts.append(f"skipped {self.total()} bad records: "
                   + ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common()))
    if self.total_captions():
      parts.append(f"dropped {self.total_captions()} bad captions of kept images: "
                   + ", ".join(f"{n} {reason}" for reason, n in self.caption_counts.most_common()))
    return "; ".join(parts) + f" (first: {self.examples[0]})"

  def check_fraction(self, kept_records: int, kept_captions: int, max_fraction: float, source: str) -> None:
    """BadInputError when more than `max_fraction` of the records (or of the captions) were left out: a file
    that is mostly unreadable (wrong encoding, wrong format) is a broken file, not a few bad records."""
    for what, bad, kept, counts in (("records", self.total(), kept_records, self.counts),
                                    ("captions", self.total_captions(), kept_captions, self.caption_counts)):
      seen = bad + kept
      if seen and bad / seen > max_fraction:
        reason, count = counts.most_common(1)[0]
        raise BadInputError(
            f"{source}: {bad} of {seen} {what} are bad ({100 * bad / seen:.1f}%, more than max_bad_fraction="
            f"{max_fraction}); the commonest reason is {reason!r} ({count}), e.g. {self.examples[0]} Fix the data "
            "(a wrong encoding or format fails every line), or raise max_bad_fraction if these losses are "
            "acceptable.", "too many bad records")


def _bad(where: str, problem: str, fix: str, reason: str) -> BadInputError:
  return BadInputError(f"{where}: {problem}. {fix}", reason)


def validate_caption(caption: Any, where: str) -> str:
  """`caption` stripped; `BadInputError` if it is not a string, is blank or has no letters or digits."""
  if not isinstance(caption, str):
    raise _bad(where, f"caption {caption!r} is a {type(caption).__name__}, not text",
               "Write every caption as a JSON string.", "non-text caption")
  stripped = caption.strip()
  if not stripped:
    raise _bad(where, f"caption {caption!r} is empty", "Remove it or write a real caption.", "empty caption")
  if not any(c.isalnum() for c in stripped):
    raise _bad(where, f"caption {caption!r} has no letters or digits", "Remove it or write a real caption.",
               "non-text caption")
  return stripped


def _captions(captions: Any, where: str, key: str, skips: SkipReport | None = None) -> tuple[str, ...]:
  """The record's captions; with `skips` (skip_bad) a bad caption is dropped and counted, and the record fails
  only when none is left."""
  if not isinstance(captions, list):
    raise _bad(where, f'"{key}" is a {type(captions).__name__}, not a list',
               f'Write "{key}" as a JSON list of captions.', "captions not a list")
  if not captions:
    raise _bad(where, f'"{key}" is empty', "Give every image at least one caption, or remove the image.",
               "empty captions")
  good, dropped = [], []
  for i, caption in enumerate(captions):
    try:
      good.append(validate_caption(caption, f"{where} ({key}[{i}])"))
    except BadInputError as e:
      if skips is None:
        raise
      dropped.append(e)
  if not good:
    raise _bad(where, f'no usable caption in "{key}" ({dropped[0]})', "Give the image at least one real caption.",
               "no usable caption")
  for error in dropped:
    skips.add_caption(error)
  return tuple(good)


def _inside(path: str, root: str, where: str, allow_outside: bool) -> str:
  """`path` (absolute), refused when it leaves `root` (via ../, an absolute path, or a symlink whose target lies
  outside) unless `allow_outside`: prepared sets and the search service serve these files."""
  if allow_outside:
    return path
  real_root = os.path.realpath(root)
  outside = os.path.commonpath([path, root]) != root
  target = os.path.realpath(path)
  if not outside and os.path.commonpath([target, real_root]) != real_root:
    raise _bad(where, f"image path {path} is a symlink to {target}, outside the dataset folder {root}",
               "Copy the image into the folder, or allow it explicitly (config.data.allow_outside_paths=True, "
               "`xmodal prepare --allow_outside_paths`).", "path outside the dataset folder")
  if outside:
    raise _bad(where, f"image path {path} is outside the dataset folder {root}",
               "Move the image inside the folder, or allow it explicitly (config.data.allow_outside_paths=True, "
               "`xmodal prepare --allow_outside_paths`).", "path outside the dataset folder")
  return path


def _split(split: Any, where: str, restval_to_train: bool = False) -> str:
  if split not in SPLITS + EXTRA_SPLITS:  # Also rejects missing (None) and non-string values.
    raise _bad(where, f"split {split!r} is missing or unknown",
               f'Set "split" to one of {", ".join(SPLITS + EXTRA_SPLITS)} (lower case).', "bad split")
  return "train" if restval_to_train and split == "restval" else split


def _image_id(value: Any, where: str, key: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int):
    raise _bad(where, f'"{key}" {value!r} is not an integer', f'Write "{key}" as a JSON integer or leave it out.',
               "bad image id")
  return value


def _path_part(value: Any, where: str, key: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise _bad(where, f'"{key}" {value!r} is not a non-empty path string',
               f'Write "{key}" as a relative image path such as "images/x.jpg".', "bad image path")
  return value


_NO_BOXES = np.zeros((0, 4), np.float32)
_NO_BOXES.flags.writeable = False


def _boxes(boxes: Any, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
  """Parses `[[x, y, w, h(, label)], ...]` (None or missing: no boxes)."""
  if boxes is None:
    return _NO_BOXES, ()
  fix = 'Write "boxes" as [[x, y, w, h, "label"], ...] in pixels with w, h > 0 (label optional).'
  if not isinstance(boxes, list):
    raise _bad(where, f'"boxes" is a {type(boxes).__name__}, not a list', fix, "malformed boxes")
  coords, labels = [], []
  for i, box in enumerate(boxes):
    ok = isinstance(box, list) and len(box) in (4, 5)
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box[:4])
    ok = ok and (len(box) == 4 or isinstance(box[4], str))
    if not ok:
      raise _bad(where, f"box {i} {box!r} is not 4 finite numbers and an optional text label", fix, "malformed boxes")
    if box[2] <= 0 or box[3] <= 0:
      raise _bad(where, f"box {i} {box!r} has width or height <= 0", fix, "malformed boxes")
    coords.append(box[:4])
    labels.append(box[4] if len(box) == 5 else "")
  if not coords:
    return _NO_BOXES, ()
  array = np.asarray(coords, np.float32)
  array.flags.writeable = False
  return array, tuple(labels)


class _Collector:
  """Accepts records one at a time: checks duplicates and image files, and raises or skips bad ones."""

  def __init__(self, source: str, skip_bad: bool, check_images: bool, max_bad_fraction: float):
    self.source = source
    self.skip_bad = skip_bad
    self.check_images = check_images
    self.max_bad_fraction = max_bad_fraction
    self.records: list[ImageRecord] = []
    self.report = SkipReport()
    self._id_where: dict[int, str] = {}
    self._path_where: dict[str, str] = {}

  def add(self, where: str, build: Callable[[], ImageRecord]) -> None:
    try:
      record = build()
      self._check(record, where)
    except BadInputError as e:
      if not self.skip_bad:
        raise
      self.report.add(e)
      return
    self.records.append(record)
    self._id_where[record.image_id] = where
    self._path_where[record.image_path] = where

  def _check(self, record: ImageRecord, where: str) -> None:
    if record.image_path in self._path_where:
      raise _bad(where, f"image {record.image_path} is already used by {self._path_where[record.image_path]}",
                 "Merge the captions of both into one record.", "duplicate image path")
    if record.image_id in self._id_where:
      raise _bad(where, f"image id {record.image_id} is already used by {self._id_where[record.image_id]}",
                 "Give every image a unique id.", "duplicate image id")
    if self.check_images and not os.path.isfile(record.image_path):
      raise _bad(where, f"image file {record.image_path} does not exist",
                 "Fix the path (relative to the dataset root), add the file, or pass skip_bad=True to skip it.",
                 "missing image file")

  @property
  def caption_skips(self) -> SkipReport | None:
    """Where bad captions of otherwise good records go under skip_bad (None: strict, they raise)."""
    return self.report if self.skip_bad else None

  def finish(self) -> tuple[list[ImageRecord], SkipReport]:
    if not self.records:
      skipped = f" ({self.report.summary()})" if self.report.total() else ""
      raise BadInputError(f"{self.source}: no usable records{skipped}. Check the file's format and paths.",
                          "no records")
    self.report.check_fraction(len(self.records), sum(len(r.captions) for r in self.records), self.max_bad_fraction,
                               self.source)
    return self.records, self.report


def _check_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise MissingFileError(f"{path}: {what} is not a directory. Pass the folder that holds the images.", "missing file")


def read_caption_folder(root: str, *, skip_bad: bool = False, check_images: bool = True,
                        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                        allow_outside: bool = False) -> tuple[list[ImageRecord], SkipReport]:
  """Reads `root/captions.jsonl` (see module docstring); raises on the first bad line unless `skip_bad`, which
  skips bad records and drops bad captions (counted), failing if more than `max_bad_fraction` is bad. Image
  paths must stay inside `root` unless `allow_outside`."""
  root = os.path.abspath(root)
  path = os.path.join(root, CAPTIONS_FILE)
  _check_dir(root, "caption folder")
  if not os.path.isfile(path):
    raise MissingFileError(f"{path}: not found. A caption folder needs {CAPTIONS_FILE} with {_JSONL_FORMAT}.",
                           "missing file")
  collector = _Collector(path, skip_bad, check_images, max_bad_fraction)
  with open(path, "rb") as f:
    for line_no, line in enumerate(f, start=1):
      if line.strip():  # Blank lines (e.g. a trailing one) are allowed.
        where = f"{path}:{line_no}"
        collector.add(where, functools.partial(_jsonl_record, line, where, line_no - 1, root, allow_outside,
                                               collector.caption_skips))
  return collector.finish()


def _jsonl_record(line: bytes, where: str, index: int, root: str, allow_outside: bool = False,
                  caption_skips: SkipReport | None = None) -> ImageRecord:
  try:
    obj = json.loads(line.strip())
  except json.JSONDecodeError as e:
    raise _bad(where, f"malformed JSON at column {e.colno}: {e.msg}", f"Write {_JSONL_FORMAT}.",
               "malformed JSON") from None
  except UnicodeDecodeError as e:
    raise _bad(where, f"malformed JSON, not UTF-8 text ({e})", "Save the file as UTF-8.", "malformed JSON") from None
  if not isinstance(obj, dict):
    raise _bad(where, f"line is a JSON {type(obj).__name__}, not an object", f"Write {_JSONL_FORMAT}.", "not an object")
  for key in ("image", "captions"):
    if key not in obj:
      raise _bad(where, f'missing key "{key}"', f"Write {_JSONL_FORMAT}.", "missing key")
  image = _path_part(obj["image"], where, "image")
  image_id = _image_id(obj["image_id"], where, "image_id") if "image_id" in obj else index
  boxes, labels = _boxes(obj.get("boxes"), where)
  image_path = _inside(os.path.abspath(os.path.join(root, image)), root, where, allow_outside)
  return ImageRecord(image_id=image_id, image_path=image_path,
                     captions=_captions(obj["captions"], where, "captions", caption_skips),
                     split=_split(obj.get("split"), where), boxes=boxes, box_labels=labels)


def read_karpathy(json_path: str, image_root: str, *, skip_bad: bool = False, check_images: bool = True,
                  restval_to_train: bool = True, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
                  allow_outside: bool = False) -> tuple[list[ImageRecord], SkipReport]:
  """Reads a Karpathy split JSON; images at `image_root/filepath/filename`, ids from cocoid / imgid / index.
  skip_bad, max_bad_fraction and allow_outside as for `read_caption_folder`."""
  json_path = os.path.abspath(json_path)
  image_root = os.path.abspath(image_root)
  fix = ('Pass a Karpathy split file such as dataset_coco.json: {"images": [{"filename": ..., "split": ..., '
         '"sentences": [{"raw": ...}, ...]}, ...]}.')
  if not os.path.isfile(json_path):
    raise MissingFileError(f"{json_path}: not found. {fix}", "missing file")
  if check_images:
    _check_dir(image_root, "image root")
  try:
    with open(json_path, "rb") as f:
      data = json.load(f)
  except ValueError as e:
    raise BadInputError(f"{json_path}: malformed JSON ({e}). {fix}", "malformed JSON") from None
  if not isinstance(data, dict) or not isinstance(data.get("images"), list):
    raise BadInputError(f'{json_path}: no "images" list at the top level. {fix}', "not an object")
  collector = _Collector(json_path, skip_bad, check_images, max_bad_fraction)
  for index, entry in enumerate(data["images"]):
    where = f"{json_path}: images[{index}]"
    collector.add(where, functools.partial(_karpathy_record, entry, where, index, image_root, restval_to_train,
                                           allow_outside, collector.caption_skips))
  return collector.finish()


def _karpathy_record(entry: Any, where: str, index: int, image_root: str, restval_to_train: bool,
                     allow_outside: bool = False, caption_skips: SkipReport | None = None) -> ImageRecord:
  fix = 'Write each entry as {"filename": "x.jpg", "split": "train", "sentences": [{"raw": "..."}, ...]}.'
  if not isinstance(entry, dict):
    raise _bad(where, f"entry is a JSON {type(entry).__name__}, not an object", fix, "not an object")
  for key in ("filename", "sentences"):
    if key not in entry:
      raise _bad(where, f'missing key "{key}"', fix, "missing key")
  sentences = entry["sentences"]
  if isinstance(sentences, list):
    for i, sentence in enumerate(sentences):
      if not isinstance(sentence, dict) or "raw" not in sentence:
        raise _bad(where, f"sentences[{i}] is not an object with a \"raw\" caption", fix, "malformed sentence")
    sentences = [s["raw"] for s in sentences]
  parts = [_path_part(entry["filename"], where, "filename")]
  if entry.get("filepath") is not None:
    parts.insert(0, _path_part(entry["filepath"], where, "filepath"))
  id_key = next((k for k in ("cocoid", "imgid") if k in entry), None)
  return ImageRecord(image_id=_image_id(entry[id_key], where, id_key) if id_key else index,
                     image_path=_inside(os.path.abspath(os.path.join(image_root, *parts)), image_root, where,
                                        allow_outside),
                     captions=_captions(sentences, where, "sentences", caption_skips),
                     split=_split(entry.get("split"), where, restval_to_train), boxes=_NO_BOXES, box_labels=())


def select_split(records: Sequence[ImageRecord], split: str, source: str) -> list[ImageRecord]:
  """The records of `split`; `BadInputError` naming the splits that do exist if there are none."""
  selected = [r for r in records if r.split == split]
  if not selected:
    present = collections.Counter(r.split for r in records)
    available = ", ".join(f"{s} ({n})" for s, n in sorted(present.items())) or "none (no records at all)"
    raise BadInputError(f"{source}: no examples in split {split!r}; splits present: {available}. Pick one of "
                        "those, or assign images to this split in the data.", "empty split")
  return selected


MAX_ASPECT_RATIO = 20  # longer / shorter side; beyond it resizing the shorter side makes absurd (or unencodable) images


def check_aspect_ratio(width: int, height: int, where: str, fix: str = "crop the image or leave it out") -> None:
  """The one aspect-ratio rule for training data (`load_image`, `xmodal prepare`) and search uploads (`xmodal
  serve`): BadInputError "extreme aspect ratio" when the longer side is over MAX_ASPECT_RATIO times the shorter."""
  if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
    raise BadInputError(f"{where}: aspect ratio {width}x{height} is beyond {MAX_ASPECT_RATIO}:1 (longer side over "
                        f"shorter side, MAX_ASPECT_RATIO); {fix}.", "extreme aspect ratio")


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PLAIN = ("1", "L", "P", "RGB", "CMYK", "YCbCr")


def _to_rgb8(img: Image.Image, path: str) -> np.ndarray:
  """Any mode PIL decodes -> uint8 [H, W, 3], values scaled from their bit depth (not clipped); alpha and
  palette transparency composited over white; an unsupported mode is a named error."""
  mode = img.mode
  if mode in _SIXTEEN_BIT or mode == "I":
    values = np.asarray(img).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise BadInputError(f"{path}: {mode} image with values {values.min()}..{values.max()}, beyond 16 bits. "
                          "Convert it to 8-bit RGB.", "unsupported image")
    sixteen = mode in _SIXTEEN_BIT or (values.size and values.max() > 255)  # "I" may hold 8-bit data
    gray = np.round(values / 257.0).astype(np.uint8) if sixteen else values.astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "F":
    values = np.asarray(img, np.float64)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
      raise BadInputError(f"{path}: floating-point image with values outside [0, 255] (or not finite). Convert it "
                          "to 8-bit RGB.", "unsupported image")
    scale = 255.0 if values.max() <= 1.0 else 1.0  # [0, 1] images are the common float convention
    return np.repeat(np.round(values * scale).astype(np.uint8)[..., None], 3, axis=-1)
  if mode in ("RGBA", "LA", "PA") or (mode in ("P", "L", "RGB") and "transparency" in img.info):
    opaque = Image.new("RGBA", img.size, (255, 255, 255, 255))
    opaque.alpha_composite(img.convert("RGBA"))
    return np.asarray(opaque.convert("RGB"), dtype=np.uint8)
  if mode in _PLAIN:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
  raise BadInputError(f"{path}: colour mode {mode} is not supported. Convert the image to RGB.", "unsupported image")


def load_image(path: str) -> np.ndarray:
  """Decodes the whole image at `path` into uint8 [H, W, 3] RGB, upright (EXIF orientation applied).

  High bit depths are scaled to 8 bits, greyscale / palette / CMYK converted, alpha composited over white.
  Every failure is a BadInputError naming the file: missing, empty, corrupt or truncated data, an unsupported
  mode, or an aspect ratio beyond MAX_ASPECT_RATIO.
  """
  if not os.path.isfile(path):
    raise MissingFileError(f"{path}: image file does not exist. Fix the path (or leave the image out).", "missing file")
  if os.path.getsize(path) == 0:
    raise BadInputError(f"{path}: image file is empty (0 bytes). Re-download or remove it.", "empty image")
  try:
    with Image.open(path) as img:
      img.load()  # Full decode: catches truncated and corrupt data now, not inside the input pipeline.
      if img.getexif().get(0x0112, 1) != 1:  # EXIF orientation: store the image upright
        img = ImageOps.exif_transpose(img)
      array = _to_rgb8(img, path)
  except BadInputError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any decoder failure is this file's problem)
    raise BadInputError(f"{path}: unreadable or corrupt image ({type(e).__name__}: {e}). Re-download or "
                        "re-encode it, or remove its record.", "corrupt image") from None
  if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
    raise BadInputError(f"{path}: image has no pixels (shape {array.shape}). Remove its record.", "empty image")
  height, width = array.shape[:2]
  check_aspect_ratio(width, height, path)
  return array
