"""Local caption folders and Karpathy splits -> a tfds data set (array_record, random access), written once.

`prepare(spec, out_dir, image_size)` reads and validates the records (data/records.py), decodes every image
(a corrupt one is an error naming the file, or is skipped and counted with skip_bad), resizes it so its shorter
side is `image_size`, re-encodes it as JPEG and writes the splits with `tfds.dataset_builders.store_as_tfds_dataset`.
Training then always reads one kind of thing: `tfds` array_record data sources (`open_builder(out_dir).as_data_source(split)`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from typing import Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image

from xmodal_jax.data import records as records_lib

BUILDER_NAME = "captioned_images"
_INFO_FILE = "xmodal_prepare.json"
_PREPARE_VERSION = "1.0.0"
_JPEG_QUALITY = 90


def import_tfds():
  """tensorflow_datasets, imported on first use (heavy: only when real data is used), progress bars off."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  return tfds


def _features():
  """One example per image: JPEG (shorter side resized), captions, image id, boxes and their labels."""
  tfds = import_tfds()
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
      "image_id": np.int64,
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "box_labels": tfds.features.Sequence(tfds.features.Text()),
  })


def default_prepared_dir(spec: str, image_size: int) -> str:
  """~/.cache/xmodal_jax/prepared/<name>-<hash>-<size>: one folder per (absolute source, size)."""
  kind, _, rest = spec.partition(":")
  parts = [os.path.abspath(os.path.expanduser(p)) for p in rest.split(":")]
  digest = hashlib.sha1(json.dumps([kind, parts]).encode()).hexdigest()[:10]
  name = os.path.basename(parts[0].rstrip("/")).split(".")[0] or kind
  root = os.environ.get("XMODAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "xmodal_jax"))
  return os.path.join(root, "prepared", f"{kind}-{name}-{digest}-{image_size}")


def read_source_records(spec: str, *, skip_bad: bool) -> tuple[list[records_lib.ImageRecord], records_lib.SkipReport]:
  """`folder:PATH` or `karpathy:JSON:IMAGE_ROOT` -> validated records."""
  kind, _, rest = spec.partition(":")
  if kind == "folder" and rest:
    return records_lib.read_caption_folder(os.path.expanduser(rest), skip_bad=skip_bad)
  if kind == "karpathy" and rest.count(":") == 1:
    json_path, image_root = rest.split(":")
    return records_lib.read_karpathy(os.path.expanduser(json_path), os.path.expanduser(image_root),
                                     skip_bad=skip_bad)
  raise ValueError(f"Cannot prepare source {spec!r}: use folder:PATH or karpathy:JSON_FILE:IMAGE_ROOT.")


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 with min(H', W') == size (aspect kept; bicubic down, also up)."""
  h, w = image.shape[:2]
  scale = size / min(h, w)
  new = (max(size, round(w * scale)), max(size, round(h * scale)))
  if new == (w, h):
    return image
  return np.asarray(Image.fromarray(image).resize(new, Image.BICUBIC))


def _examples(records: Sequence[records_lib.ImageRecord], image_size: int, report: records_lib.SkipReport,
              skip_bad: bool, counts: dict, split: str) -> Iterator[tuple[int, dict]]:
  for record in records:
    try:
      image = records_lib.load_image(record.image_path)
    except records_lib.BadInputError as e:
      if not skip_bad:
        raise
      report.add(e)
      continue
    h, w = image.shape[:2]
    resized = resize_shorter_side(image, image_size)
    scale = np.array([resized.shape[1] / w, resized.shape[0] / h] * 2, np.float32)
    buffer = io.BytesIO()
    Image.fromarray(resized).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    counts[split] = counts.get(split, 0) + 1
    yield int(record.image_id), {
        "image": buffer.getvalue(), "image_id": int(record.image_id), "captions": list(record.captions),
        "boxes": (record.boxes * scale).astype(np.float32).reshape(-1, 4), "box_labels": list(record.box_labels)}


def prepare(spec: str, out_dir: str, *, image_size: int = 256, skip_bad: bool = False,
            splits: Sequence[str] | None = None) -> dict:
  """Write `spec` as a tfds array_record data set under `out_dir`; returns the summary also saved there."""
  start = time.time()
  all_records, report = read_source_records(spec, skip_bad=skip_bad)
  names = list(splits) if splits else sorted({r.split for r in all_records})
  by_split = {s: records_lib.select_split(all_records, s, spec) for s in names}
  counts: dict[str, int] = {}
  examples = {s: _examples(recs, image_size, report, skip_bad, counts, s) for s, recs in by_split.items()}
  os.makedirs(out_dir, exist_ok=True)
  import_tfds().dataset_builders.store_as_tfds_dataset(
      name=BUILDER_NAME, version=_PREPARE_VERSION, features=_features(), split_datasets=examples, data_dir=out_dir,
      file_format="array_record", description="Captioned images prepared by `xmodal prepare`.")
  summary = {"source": spec, "image_size": image_size, "examples": counts, "skipped": dict(report.counts),
             "skipped_examples": report.examples[:10], "seconds": round(time.time() - start, 1),
             "version": _PREPARE_VERSION}
  with open(os.path.join(out_dir, _INFO_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  if report.total():
    logging.warning("prepare %s: %s", spec, report.summary())
  logging.info("Prepared %s -> %s: %s in %.0fs.", spec, out_dir, counts, time.time() - start)
  return summary


def is_prepared(out_dir: str) -> bool:
  return os.path.exists(os.path.join(out_dir, _INFO_FILE))


def open_builder(out_dir: str):
  """The tfds builder of a prepared data set (read mode); `.as_data_source(split)` gives random access."""
  if not is_prepared(out_dir):
    raise FileNotFoundError(f"No prepared data set in {out_dir}; run `xmodal prepare --source=... --out={out_dir}`.")
  return import_tfds().builder_from_directory(os.path.join(out_dir, BUILDER_NAME, _PREPARE_VERSION))
