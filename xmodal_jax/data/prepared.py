"""Local caption folders and Karpathy splits -> a tfds data set (array_record, random access), written once.

`prepare(spec, out_dir, options)` reads and validates the records (data/records.py), decodes every image
(a corrupt one is an error naming the file, or is skipped and counted with skip_bad, up to max_bad_fraction),
resizes it so its shorter side is `image_size`, re-encodes it as JPEG and writes the splits with
`tfds.dataset_builders.store_as_tfds_dataset` into a new directory that replaces `out_dir` only when complete.

A prepared set records the fingerprint of what made it (the records file's bytes, the bytes of every image, the
options, the builder version); `ensure_prepared` rebuilds (our cache) or refuses (a directory the
user named) a set whose source has changed since, so a run never trains on stale data without a word.
Training then always reads one kind of thing: `tfds` array_record data sources (`open_builder(out_dir).as_data_source(split)`).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import time
from typing import Iterator, Sequence

import numpy as np
from absl import logging
from PIL import Image

from xmodal_jax import disk_space, errors, fileio, output_dirs
from xmodal_jax.data import records as records_lib

BUILDER_NAME = "captioned_images"
_INFO_FILE = "xmodal_prepare.json"
_PREPARE_VERSION = "1.1.0"  # 1.1.0: 16-bit / float / EXIF-rotated images decoded correctly, aspect-ratio limit
_FINGERPRINT_VERSION = 2    # 2: image files hashed by content (1: by size and mtime)
_JPEG_QUALITY = 90
_DISK_FIX = ("Free some space, or prepare on another disk (--out / config.data.prepared_dir; XMODAL_CACHE moves "
             "the default location). Nothing was replaced.")
OWNED = (BUILDER_NAME, _INFO_FILE, "downloads")  # what a prepared set holds (tfds adds downloads/); nothing else is replaced


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


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """What, besides the source's files, determines a prepared set's content."""
  image_size: int = 256                 # shorter side of the stored images
  skip_bad: bool = False                # skip (and count) bad records and captions instead of failing
  max_bad_fraction: float = records_lib.DEFAULT_MAX_BAD_FRACTION  # with skip_bad: fail beyond this fraction
  allow_outside: bool = False           # image paths may leave the dataset folder


def options_from_config(data_config) -> PrepareOptions:
  """The prepare options of a `config.data` section."""
  return PrepareOptions(image_size=int(data_config.prepare_size), skip_bad=bool(data_config.skip_bad),
                        max_bad_fraction=float(data_config.get("max_bad_fraction",
                                                               records_lib.DEFAULT_MAX_BAD_FRACTION)),
                        allow_outside=bool(data_config.get("allow_outside_paths", False)))


def _source_paths(spec: str) -> tuple[str, list[str]]:
  kind, _, rest = spec.partition(":")
  return kind, [os.path.abspath(os.path.expanduser(p)) for p in rest.split(":")]


def default_prepared_dir(spec: str, options: PrepareOptions | int) -> str:
  """~/.cache/xmodal_jax/prepared/<kind>-<name>-<hash>-<size>: one folder per (absolute source, options), so
  sets made with different options (e.g. skip_bad) live side by side. XMODAL_CACHE moves the cache."""
  if isinstance(options, int):
    options = PrepareOptions(image_size=options)
  kind, parts = _source_paths(spec)
  key = [kind, parts] + ([] if options == PrepareOptions(image_size=options.image_size) else
                         [dataclasses.asdict(options)])
  digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
  name = os.path.basename(parts[0].rstrip("/")).split(".")[0] or kind
  root = os.environ.get("XMODAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "xmodal_jax"))
  return os.path.join(root, "prepared", f"{kind}-{name}-{digest}-{options.image_size}")


def read_source_records(spec: str, options: PrepareOptions | None = None, *, skip_bad: bool | None = None
                        ) -> tuple[list[records_lib.ImageRecord], records_lib.SkipReport]:
  """`folder:PATH` or `karpathy:JSON:IMAGE_ROOT` -> validated records."""
  options = options or PrepareOptions(skip_bad=bool(skip_bad))
  kwargs = dict(skip_bad=options.skip_bad, max_bad_fraction=options.max_bad_fraction,
                allow_outside=options.allow_outside)
  kind, _, rest = spec.partition(":")
  if kind == "folder" and rest:
    return records_lib.read_caption_folder(os.path.expanduser(rest), **kwargs)
  if kind == "karpathy" and rest.count(":") == 1:
    json_path, image_root = rest.split(":")
    return records_lib.read_karpathy(os.path.expanduser(json_path), os.path.expanduser(image_root), **kwargs)
  raise errors.ConfigError(f"Cannot prepare source {spec!r}: use folder:PATH or karpathy:JSON_FILE:IMAGE_ROOT.")


def _records_file(spec: str) -> str:
  kind, parts = _source_paths(spec)
  return os.path.join(parts[0], records_lib.CAPTIONS_FILE) if kind == "folder" else parts[0]


def source_fingerprint(spec: str, options: PrepareOptions,
                       records: Sequence[records_lib.ImageRecord] | None = None) -> dict:
  """Everything a prepared set's content depends on: the records file's bytes, the bytes of every image the
  records use (hashed: an image replaced by another of the same size and mtime is noticed; Flickr8k's 123 MB
  take about a second), the options and the builder version. Components are kept so a stale set can say what
  changed."""
  if records is None:
    records, _ = read_source_records(spec, options)
  records_sha = fileio.file_sha256(_records_file(spec))
  images = hashlib.sha256()
  for record in records:
    images.update(f"{record.image_path}|{fileio.file_sha256(record.image_path)}\n".encode())
  parts = {"version": _PREPARE_VERSION, "fingerprint_version": _FINGERPRINT_VERSION,
           "options": dataclasses.asdict(options), "records_sha256": records_sha,
           "images_sha256": images.hexdigest(), "images": len(records)}
  parts["sha256"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
  return parts


def _what_changed(old: dict, new: dict) -> str:
  if not old.get("sha256"):
    return "it was made by an older version of xmodal that did not record its source"
  changes = []
  if old.get("version") != new["version"]:
    changes.append(f"the builder changed ({old.get('version')} -> {new['version']})")
  if old.get("fingerprint_version") != new["fingerprint_version"]:
    changes.append("it was fingerprinted by image size and mtime, now by image content")
  diff = [k for k in new["options"] if old.get("options", {}).get(k) != new["options"][k]]
  if diff:
    changes.append("options differ: " + ", ".join(f"{k} {old.get('options', {}).get(k)!r} -> {new['options'][k]!r}"
                                                 for k in diff))
  if old.get("records_sha256") != new["records_sha256"]:
    changes.append("the records file changed")
  if old.get("images_sha256") != new["images_sha256"]:
    changes.append(f"image files changed ({old.get('images')} images before, {new['images']} now)")
  return "; ".join(changes) or "its fingerprint differs"


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 with min(H', W') == size (aspect kept; bicubic down, also up)."""
  h, w = image.shape[:2]
  scale = size / min(h, w)
  new = (max(size, round(w * scale)), max(size, round(h * scale)))
  if new == (w, h):
    return image
  return np.asarray(Image.fromarray(image).resize(new, Image.BICUBIC))


def _example(record: records_lib.ImageRecord, image_size: int) -> dict:
  """One stored example; any failure of decoding, resizing or re-encoding is a BadInputError naming the file."""
  image = records_lib.load_image(record.image_path)
  try:
    h, w = image.shape[:2]
    resized = resize_shorter_side(image, image_size)
    scale = np.array([resized.shape[1] / w, resized.shape[0] / h] * 2, np.float32)
    buffer = io.BytesIO()
    Image.fromarray(resized).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
  except Exception as e:  # pylint: disable=broad-except  (this file's problem, e.g. too large to encode)
    raise records_lib.BadInputError(f"{record.image_path}: could not be resized to {image_size} px and re-encoded "
                                    f"({type(e).__name__}: {e}). Re-encode or crop it, or leave it out.",
                                    "unencodable image") from None
  return {"image": buffer.getvalue(), "image_id": int(record.image_id), "captions": list(record.captions),
          "boxes": (record.boxes * scale).astype(np.float32).reshape(-1, 4), "box_labels": list(record.box_labels)}


def _examples(records: Sequence[records_lib.ImageRecord], options: PrepareOptions, report: records_lib.SkipReport,
              kept: dict, split: str) -> Iterator[tuple[int, dict]]:
  for record in records:
    try:
      example = _example(record, options.image_size)
    except records_lib.BadInputError as e:
      if not options.skip_bad:
        raise
      report.add(e)
      continue
    kept["images"][split] = kept["images"].get(split, 0) + 1
    kept["captions"] += len(record.captions)
    yield int(record.image_id), example


def prepare(spec: str, out_dir: str, *, image_size: int = 256, skip_bad: bool = False,
            splits: Sequence[str] | None = None, options: PrepareOptions | None = None) -> dict:
  """Write `spec` as a tfds array_record data set under `out_dir` (replacing what is there only once the new
  set is complete); returns the summary also saved there (with the source fingerprint)."""
  options = options or PrepareOptions(image_size=image_size, skip_bad=skip_bad)
  check_options(options)
  check_out_dir(out_dir)
  start = time.time()
  all_records, report = read_source_records(spec, options)
  fingerprint = source_fingerprint(spec, options, all_records)
  names = list(splits) if splits else sorted({r.split for r in all_records})
  by_split = {s: records_lib.select_split(all_records, s, spec) for s in names}
  kept = {"images": {}, "captions": 0}
  examples = {s: _examples(recs, options, report, kept, s) for s, recs in by_split.items()}
  building = f"{out_dir.rstrip('/')}.building-{os.getpid()}"
  shutil.rmtree(building, ignore_errors=True)
  os.makedirs(building)
  try:
    with disk_space.full_disk_is_an_error(building, f"preparing {spec}", fix=_DISK_FIX):
      import_tfds().dataset_builders.store_as_tfds_dataset(
          name=BUILDER_NAME, version=_PREPARE_VERSION, features=_features(), split_datasets=examples,
          data_dir=building, file_format="array_record", description="Captioned images prepared by `xmodal prepare`.")
    report.check_fraction(sum(kept["images"].values()), kept["captions"], options.max_bad_fraction, spec)
    summary = {"source": spec, "image_size": options.image_size, "examples": kept["images"],
               "skipped": dict(report.counts), "dropped_captions": dict(report.caption_counts),
               "skipped_examples": report.examples[:10], "seconds": round(time.time() - start, 1),
               "version": _PREPARE_VERSION, "fingerprint": fingerprint}
    with disk_space.full_disk_is_an_error(building, f"preparing {spec}", fix=_DISK_FIX):
      with open(os.path.join(building, _INFO_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    _replace_dir(building, out_dir)
  finally:
    shutil.rmtree(building, ignore_errors=True)
  if report.total() or report.total_captions():
    logging.warning("prepare %s: %s", spec, report.summary())
  logging.info("Prepared %s -> %s: %s in %.0fs.", spec, out_dir, kept["images"], time.time() - start)
  return summary


def check_options(options: PrepareOptions) -> None:
  """Option values that cannot work, named before any image is read."""
  if not isinstance(options.image_size, int) or options.image_size < 1:
    raise errors.ConfigError(f"image_size={options.image_size!r} (--image_size / config.data.prepare_size): the "
                             "shorter side of the stored images must be a positive integer, e.g. 256.")
  if not 0 <= options.max_bad_fraction <= 1:
    raise errors.ConfigError(f"max_bad_fraction={options.max_bad_fraction!r}: must be a fraction in [0, 1].")


def check_out_dir(out_dir: str) -> None:
  """A prepared set replaces `out_dir` whole: refuse one that holds anything a prepared set does not."""
  output_dirs.check_output_dir(
      out_dir, OWNED, what="The prepared data set directory (--out / config.data.prepared_dir)",
      fix="Point it at a new or empty directory (or one an earlier `xmodal prepare` wrote).")


def _replace_dir(new: str, target: str) -> None:
  """Put the finished directory `new` at `target`; an existing target (a prepared set: check_out_dir) is removed
  only after the swap, and only if it still holds nothing but a prepared set's files."""
  old = f"{target.rstrip('/')}.old-{os.getpid()}"
  if os.path.exists(target):
    os.replace(target, old)
  os.replace(new, target)
  if output_dirs.foreign_entries(old, OWNED):  # someone added files meanwhile: keep them
    logging.warning("The previous prepared set is kept at %s: files were added to it while it was rebuilt.", old)
    return
  shutil.rmtree(old, ignore_errors=True)


def is_prepared(out_dir: str) -> bool:
  return os.path.exists(os.path.join(out_dir, _INFO_FILE))


def read_summary(out_dir: str) -> dict:
  with open(os.path.join(out_dir, _INFO_FILE)) as f:
    return json.load(f)


_CHECKED: set[tuple[str, PrepareOptions]] = set()  # sets found fresh by this process (a run loads several splits)


def ensure_prepared(spec: str, out_dir: str, options: PrepareOptions, *, rebuild_stale: bool) -> dict:
  """A fresh prepared set of `spec` at `out_dir`: built when absent; when its source changed (records file,
  image files, options, builder), rebuilt if `rebuild_stale`, else a DataError saying what changed and the fix.
  Concurrent callers on one machine wait for each other (a lock file beside `out_dir`)."""
  if "://" in out_dir:  # a lock file beside it, the source fingerprint check, the build and the swap are local
    raise errors.ConfigError(
        f"The prepared data set directory {out_dir} is a URL; prepared sets are read and built on local paths "
        "only. Copy it to a local disk (`gsutil -m cp -r`) or mount the bucket (gcsfuse, e.g. /gcs/BUCKET/...) "
        "and point config.data.prepared_dir / --out there.")
  if (out_dir, options) in _CHECKED:
    return read_summary(out_dir)
  check_options(options)
  check_out_dir(out_dir)  # before the lock file is made beside it
  os.makedirs(os.path.dirname(os.path.abspath(out_dir)) or ".", exist_ok=True)
  with open(f"{out_dir.rstrip('/')}.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if is_prepared(out_dir):
        summary = read_summary(out_dir)
        current = source_fingerprint(spec, options)
        if summary.get("fingerprint", {}).get("sha256") == current["sha256"]:
          _CHECKED.add((out_dir, options))
          return summary
        what = _what_changed(summary.get("fingerprint", {}), current)
        if not rebuild_stale:
          raise errors.DataError(
              f"The prepared set {out_dir} no longer matches {spec}: {what}. Rebuild it with `xmodal prepare "
              f"--source={spec} --out={out_dir}` (with the same options), or point config.data.prepared_dir "
              "elsewhere.")
        logging.warning("The prepared set %s no longer matches %s (%s); rebuilding it.", out_dir, spec, what)
      else:
        logging.info("Preparing %s into %s (once; later runs reuse it while the source is unchanged).", spec, out_dir)
      summary = prepare(spec, out_dir, options=options)
      _CHECKED.add((out_dir, options))
      return summary
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def open_builder(out_dir: str):
  """The tfds builder of a prepared data set (read mode); `.as_data_source(split)` gives random access."""
  if not is_prepared(out_dir):
    raise errors.MissingError(f"No prepared data set in {out_dir}; run `xmodal prepare --source=... --out={out_dir}`.")
  return import_tfds().builder_from_directory(os.path.join(out_dir, BUILDER_NAME, _PREPARE_VERSION))
