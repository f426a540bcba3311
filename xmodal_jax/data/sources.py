"""Data sources named by one spec string in configs (`config.data.source`), resolved here only.

  shapes                       the built-in shapes world (generated in memory)
  folder:PATH                  a folder with captions.jsonl (see ../shared/DESIGN.md)   } prepared once into a
  karpathy:JSON:IMAGE_ROOT     a Karpathy split file + its image folder                 } tfds array_record set
  tfds:NAME[:CONFIG]           a tfds data set built as array_record (coco_captions supported)

Every split is a `SplitData`: captions and image ids in memory, images loaded (and cropped) on demand.
"""
from __future__ import annotations

import io
import json
from typing import Any, Sequence

import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from xmodal_jax import errors
from xmodal_jax.data import prepared, preprocess, shapes_world

class SplitData:
  """One split: `captions` (list of caption lists), `image_ids` int64 [N], `boxes` (per image float32
  [num_boxes, 4] (x, y, w, h) in the stored image's pixels; [0, 4] where the data has none), images on demand.

  load_images(indices, size, keys=None, flip=False) -> uint8 [n, size, size, 3]: with `keys` (training) a
  random crop (+ flip) per example drawn from its key, else a centre crop.
  """
  name: str
  captions: list[list[str]]
  image_ids: np.ndarray
  boxes: list[np.ndarray]
  extras: Any = None

  def __len__(self) -> int:
    return len(self.image_ids)

  def _image(self, index: int) -> np.ndarray:
    raise NotImplementedError

  def load_images(self, indices: Sequence[int], size: int, keys: np.ndarray | None = None,
                  flip: bool = False) -> np.ndarray:
    out = np.empty((len(indices), size, size, 3), np.uint8)
    for row, index in enumerate(indices):
      image = self._image(int(index))
      out[row] = (preprocess.center_crop(image, size) if keys is None
                  else preprocess.random_crop_flip(image, size, keys[row], flip))
    return out


class InMemorySplit(SplitData):
  """Images already decoded in one uint8 array [N, H, W, 3] (shapes world)."""

  def __init__(self, name: str, images: np.ndarray, captions, image_ids, boxes, extras=None):
    self.name, self.images, self.captions, self.image_ids, self.extras = name, images, captions, image_ids, extras
    self.boxes = boxes

  def _image(self, index: int) -> np.ndarray:
    return self.images[index]

  def load_images(self, indices, size, keys=None, flip=False):
    if self.images.shape[1:3] == (size, size) and not flip:
      return self.images[np.asarray(indices)]   # fast path: nothing to crop
    return super().load_images(indices, size, keys, flip)


class TfdsSplit(SplitData):
  """A tfds array_record split read by random access; JPEG bytes decoded here (thread-safe)."""

  def __init__(self, name: str, source, fields: "FieldMap"):
    self.name, self._source, self._fields = name, source, fields
    captions, ids, boxes = [], [], []
    for i in range(len(source)):
      example = source[i]
      captions.append(fields.captions(example))
      ids.append(fields.image_id(example, i))
      boxes.append(fields.boxes(example))
    self.captions, self.image_ids, self.boxes = captions, np.asarray(ids, np.int64), boxes
    if len(set(ids)) != len(ids):
      raise errors.DataError(f"Split {name!r} has duplicate image ids; re-prepare the data set.")

  def _image(self, index: int) -> np.ndarray:
    data = self._fields.image_bytes(self._source[index])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class FieldMap:
  """Where a tfds data set keeps the image, its id and its captions (ours vs coco_captions)."""

  def __init__(self, kind: str = "ours"):
    self.kind = kind

  def image_bytes(self, example) -> bytes:
    return example["image"]

  def image_id(self, example, index: int) -> int:
    if self.kind == "coco_captions":
      return int(example["image/id"])
    return int(example["image_id"])

  def boxes(self, example) -> np.ndarray:
    """(x, y, w, h) pixels. coco_captions keeps normalised boxes without the image size: not mapped yet."""
    if self.kind == "coco_captions":
      return np.zeros((0, 4), np.float32)
    return np.asarray(example["boxes"], np.float32).reshape(-1, 4)

  def captions(self, example) -> list[str]:
    raw = example["captions"]["text"] if self.kind == "coco_captions" else example["captions"]
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in raw]


def _open_builder_split(builder, split: str, fields: FieldMap, what: str) -> TfdsSplit:
  """A split of a prepared tfds builder, images left as JPEG bytes (decoded per batch by TfdsSplit)."""
  available = list(builder.info.splits.keys())
  if split not in available:
    raise errors.DataError(f"{what} has no split {split!r}; it has {available}.")
  source = builder.as_data_source(split, decoders={"image": prepared.import_tfds().decode.SkipDecoding()})
  return TfdsSplit(split, source, fields)


def _open_registered_tfds(name: str, config_name: str | None, split: str, data_dir: str | None) -> TfdsSplit:
  tfds = prepared.import_tfds()
  full = f"{name}/{config_name}" if config_name else name
  try:
    builder = tfds.builder(full, data_dir=data_dir or None, file_format="array_record")
  except Exception as e:  # unknown name, bad config
    raise errors.ConfigError(f"tfds data set {full!r} could not be loaded ({e}). Check the name (tfds.list_builders()).") from e
  if not builder.is_prepared():
    raise errors.MissingError(
        f"tfds data set {full!r} is not prepared as array_record in {builder.data_dir_root}. Build it once with "
        f"`tfds build {full} --file_format=array_record --data_dir=DIR` (COCO needs its archives in "
        "--manual_dir; see docs/real-data.md) and set config.data.tfds_data_dir=DIR.")
  fields = FieldMap("coco_captions" if name == "coco_captions" else "ours")
  return _open_builder_split(builder, split, fields, f"tfds data set {full!r}")


def prepared_dir(data_config: ml_collections.ConfigDict) -> str:
  return data_config.prepared_dir or prepared.default_prepared_dir(data_config.source,
                                                                   prepared.options_from_config(data_config))


def load_split(data_config: ml_collections.ConfigDict, split: str) -> SplitData:
  """The `split` of the source named by `data_config.source`."""
  spec = str(data_config.source)
  kind, _, rest = spec.partition(":")
  if kind == "shapes":
    sizes = {"train": data_config.num_train, "val": data_config.num_val, "test": data_config.num_test}
    if split not in sizes:
      raise errors.ConfigError(f"Shapes world has splits {sorted(sizes)}, not {split!r}.")
    world = shapes_world.generate_split(split, sizes[split], seed=data_config.seed, image_size=data_config.image_size)
    boxes = [b[:n] for b, n in zip(world.boxes, world.num_objects)]
    return InMemorySplit(split, world.images, world.captions, world.image_ids, boxes, extras=world)
  if kind in ("folder", "karpathy"):
    out_dir = prepared_dir(data_config)
    # Our cache is rebuilt when the source changed; a directory the user named is refused instead.
    prepared.ensure_prepared(spec, out_dir, prepared.options_from_config(data_config),
                             rebuild_stale=not data_config.prepared_dir)
    return _open_builder_split(prepared.open_builder(out_dir), split, FieldMap("ours"),
                               f"The prepared data set {out_dir} (from {spec})")
  if kind == "tfds" and rest:
    name, _, config_name = rest.partition(":")
    return _open_registered_tfds(name, config_name or None, split, data_config.get("tfds_data_dir") or None)
  raise errors.ConfigError(f"Unknown data source {spec!r} (config.data.source); use one of: shapes, folder:PATH, "
                   "karpathy:JSON:IMAGE_ROOT, tfds:NAME[:CONFIG].")


def source_fingerprint(data_config: ml_collections.ConfigDict) -> str:
  """A string that changes whenever the source's content would: shapes world's generator settings, a prepared
  set's recorded fingerprint (records file, image files, options), or a tfds builder's version and sizes."""
  spec = str(data_config.source)
  kind, _, rest = spec.partition(":")
  if kind == "shapes":
    settings = {k: data_config[k] for k in ("seed", "num_train", "num_val", "num_test", "image_size")}
    return "shapes:" + json.dumps(settings, sort_keys=True)
  if kind in ("folder", "karpathy"):
    out_dir = prepared_dir(data_config)
    summary = prepared.ensure_prepared(spec, out_dir, prepared.options_from_config(data_config),
                                       rebuild_stale=not data_config.prepared_dir)
    return "prepared:" + summary["fingerprint"]["sha256"]
  name, _, config_name = rest.partition(":")
  builder = prepared.import_tfds().builder(f"{name}/{config_name}" if config_name else name,
                                           data_dir=data_config.get("tfds_data_dir") or None,
                                           file_format="array_record")
  return f"tfds:{builder.info.full_name}:" + json.dumps({k: v.num_examples for k, v in builder.info.splits.items()})
