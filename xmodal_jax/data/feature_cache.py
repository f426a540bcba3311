"""Activations of the frozen lower part of a tower, computed once per split and stored as array_record.

Training only the upper part of a pretrained tower does not need its lower part at every step: the lower part
is run once over every image (or caption) of a split, and training reads its output. A cache is a directory:

  cache.json                  its key (everything that determines the content), layout, build time, and the size
                              and sha256 of each split's file
  <split>.array_record        one record per example: the bytes of an array [views, *shape] in the cache dtype

Images may have several views (view 0: the evaluation crop; views 1..: augmented crops / flips drawn from fixed
per-image keys), so augmentation survives caching; training picks one view per example and epoch.

The key holds the source's fingerprint, the tower, its weights, the cut point, the input sizes, the views and
their seed, the dtype and the cache version. By default a cache lives in ~/.cache/xmodal_jax/features/<hash of
its key> (XMODAL_CACHE moves the root), so a changed key makes a new cache. A root the user names
(`config.cache.dir=DIR`) holds one cache per side, DIR/<side> (a dual encoder's image and text caches side by
side); each must hold the same key, or the run stops naming the file and the fix, and a directory holding files
a cache does not (output_dirs.py) is refused, never replaced. Building writes into a temporary directory that
becomes the cache only when complete.

Damage is found when a cache is opened, before training: each split's file must have the size and sha256 that
cache.json recorded (hashing runs at disk speed: ~1 s a GB). A damaged cache (flipped bytes, a truncated or
deleted file) is rebuilt with a warning naming it; a read that fails later anyway is a DataError naming the
cache and the fix.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator

import numpy as np
from absl import logging
from array_record.python import array_record_module

from xmodal_jax import disk_space, errors, fileio, output_dirs, progress

CACHE_VERSION = "1"
META_FILE = "cache.json"
OWNED = (META_FILE, "*.array_record")  # what a cache directory holds: nothing else there is ever replaced

Encode = Callable[[str, np.ndarray, int], np.ndarray]  # (split, example rows [b], view) -> activations [b, *shape]


def default_dir(key: dict) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  root = os.environ.get("XMODAL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "xmodal_jax"))
  return os.path.join(root, "features", f"{key.get('side', 'cache')}-{digest}")


@dataclasses.dataclass
class SplitPlan:
  count: int   # examples
  views: int   # arrays stored per example


class FeatureCache:
  """A built cache: `read(split, rows, views)` -> float32 [n, *shape]."""

  def __init__(self, directory: str, meta: dict):
    self.directory, self.meta = directory, meta
    self.shape = tuple(meta["shape"])
    self.dtype = np.dtype(meta["dtype"])
    self._readers: dict[str, Any] = {}

  def _reader(self, split: str):
    if split not in self._readers:
      import grain  # pylint: disable=import-outside-toplevel  (grain's reader is thread-safe for the loaders)
      with _damage_is_an_error(self.directory, split):
        self._readers[split] = grain.sources.ArrayRecordDataSource([os.path.join(self.directory,
                                                                                 f"{split}.array_record")])
    return self._readers[split]

  def views(self, split: str) -> int:
    return int(self.meta["splits"][split]["views"])

  def read(self, split: str, rows: np.ndarray, views: np.ndarray | int = 0) -> np.ndarray:
    """Example `rows` of `split`, view `views` (one per row, or the same for all) -> float32 [n, *shape]."""
    reader = self._reader(split)
    n_views = self.views(split)
    views = np.broadcast_to(np.asarray(views, np.int64), (len(rows),))
    out = np.empty((len(rows), *self.shape), np.float32)
    with _damage_is_an_error(self.directory, split):
      for i, (row, view) in enumerate(zip(np.asarray(rows), views)):
        record = np.frombuffer(reader[int(row)], self.dtype).reshape(n_views, *self.shape)
        out[i] = record[int(view) % n_views]
    return out


@contextlib.contextmanager
def _damage_is_an_error(directory: str, split: str) -> Iterator[None]:
  """A failed read of a cache file (Grain / Riegeli errors, a short record) -> DataError naming the cache."""
  try:
    yield
  except errors.UserError:
    raise
  except (RuntimeError, OSError, ValueError) as e:
    raise errors.DataError(
        f"The feature cache {directory} is damaged: reading {split}.array_record failed "
        f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}). Rerun the command: the damage is found "
        "when the cache is opened, and the cache is rebuilt.") from e


def damage(directory: str, meta: dict) -> str:
  """'' if every split file of the cache has the recorded size and sha256, else what is wrong."""
  for split, info in sorted(meta.get("splits", {}).items()):
    path = os.path.join(directory, f"{split}.array_record")
    if not os.path.isfile(path):
      return f"{split}.array_record is missing"
    size = os.path.getsize(path)
    if info.get("bytes") is not None and size != info["bytes"]:
      return f"{split}.array_record has {size} bytes, {info['bytes']} when it was built"
    if info.get("sha256") and fileio.file_sha256(path) != info["sha256"]:
      return f"{split}.array_record's content changed since it was built (sha256 differs)"
  return ""


def _same_key(directory: str, key: dict) -> tuple[bool, dict | None]:
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    return False, None
  try:
    with open(path) as f:
      meta = json.load(f)
  except ValueError:
    return False, None
  return meta.get("key") == key, meta


def ensure(key: dict, plans: dict[str, SplitPlan], encode: Encode, *, directory: str = "", dtype: str = "float16",
           batch_size: int = 64) -> FeatureCache:
  """The cache of `key` with every split of `plans`: reused when it exists with this key, else built (minutes:
  a progress bar). `directory` '' = the default location; a named directory holding another key is an
  error that names its cache.json and the fix."""
  key = dict(key, version=CACHE_VERSION, dtype=dtype)
  named = bool(directory)
  directory = os.path.join(directory, str(key.get("side", "cache"))) if named else default_dir(key)
  output_dirs.check_output_dir(directory, OWNED, what="The feature cache directory (config.cache.dir)",
                               fix="Point config.cache.dir at a new or empty directory, or '' for the default "
                                   "location (keyed by config).")
  same, meta = _same_key(directory, key)
  if meta is not None and not same and named:
    diff = sorted(k for k in set(key) | set(meta.get("key", {})) if key.get(k) != meta.get("key", {}).get(k))
    raise errors.ConfigError(
        f"{os.path.join(directory, META_FILE)} is a feature cache built for another config (differs in {diff}). "
        "Point config.cache.dir to another directory (or '' for the default location, keyed by config), or "
        "delete that directory to rebuild it.")
  complete = same and all(meta["splits"].get(s, {}).get("count") == p.count and
                          meta["splits"].get(s, {}).get("views") == p.views for s, p in plans.items())
  if complete:
    wrong = damage(directory, meta)
    if not wrong:
      return FeatureCache(directory, meta)
    logging.warning("The feature cache %s is damaged (%s); it will be rebuilt.", directory, wrong)
  return _build(directory, key, plans, encode, dtype, batch_size)


def _build(directory: str, key: dict, plans: dict[str, SplitPlan], encode: Encode, dtype: str,
           batch_size: int) -> FeatureCache:
  start_all = time.time()
  building = f"{directory.rstrip('/')}.building-{os.getpid()}"
  shutil.rmtree(building, ignore_errors=True)
  os.makedirs(building)
  try:
    with disk_space.full_disk_is_an_error(building, f"building the feature cache {directory}",
                                          fix="Free some space, or point config.cache.dir (XMODAL_CACHE for "
                                              "the default location) at another disk."):
      splits, shape = _write_splits(building, key, plans, encode, dtype, batch_size)
    meta = {"key": key, "shape": list(shape), "dtype": dtype, "splits": splits,
            "seconds": round(time.time() - start_all, 1)}
    with open(os.path.join(building, META_FILE), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    old = f"{directory.rstrip('/')}.old-{os.getpid()}"
    if os.path.exists(directory):
      os.replace(directory, old)
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    os.replace(building, directory)
    if output_dirs.foreign_entries(old, OWNED):  # someone added files meanwhile: keep them
      logging.warning("The previous feature cache is kept at %s: files were added to it while it was rebuilt.", old)
    else:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(building, ignore_errors=True)
  logging.info("Feature cache %s built in %.0fs: %s (sizes and checksums in its %s).", directory, meta["seconds"],
               ", ".join(f"{split} {info['count']} examples" for split, info in splits.items()), META_FILE)
  return FeatureCache(directory, meta)


def _write_splits(building: str, key: dict, plans: dict[str, SplitPlan], encode: Encode, dtype: str,
                  batch_size: int) -> tuple[dict, tuple]:
  """Each split's file in `building` -> ({split: plan, bytes, sha256, seconds}, the activation shape)."""
  splits, shape = {}, None
  for split, plan in plans.items():
    start = time.time()
    path = os.path.join(building, f"{split}.array_record")
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    views_text = f", {plan.views} views each" if plan.views > 1 else ""
    with progress.bar(plan.count, f"Caching {key.get('side', 'tower')} features of {split}{views_text}",
                      unit="examples") as bar:
      for begin in range(0, plan.count, batch_size):
        rows = np.arange(begin, min(begin + batch_size, plan.count))
        views = np.stack([np.asarray(encode(split, rows, v), np.float32) for v in range(plan.views)], axis=1)
        if not np.all(np.isfinite(views)):
          raise errors.DataError(f"The tower produced non-finite activations for {split} rows {rows[0]}..{rows[-1]}; "
                                 "check the weights and the images.")
        shape = views.shape[2:] if shape is None else shape
        for record in views.astype(dtype):
          writer.write(record.tobytes())
        bar.update(len(rows))
    writer.close()
    splits[split] = dict(dataclasses.asdict(plan), bytes=os.path.getsize(path), sha256=fileio.file_sha256(path),
                         seconds=round(time.time() - start, 1))
  return splits, shape
