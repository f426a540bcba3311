"""The on-disk format of exported embeddings (`xmodal export`), read by the index builder and the search service.

  OUT/
    manifest.json                     what was exported: model step, config hash, source, split, dim, dtype,
                                      normalisation, and per kind its shards (file, rows, count, sha256)
    images-00000-of-00004.npz         vectors float32|float16 [n, dim], ids int64 [n]  (np.savez, no pickle)
    images-00000-of-00004.json        the shard's record: rows [start, stop), count, sha256 of the .npz
    texts-00000-of-00020.npz / .json  the same for captions
    images-pairs-00000-of-00004.npz   pairwise runs (S2, S4) only: the item's pair set, what re-ranking scores
    images-pairs-00000-of-00004.json  (the run's pair_image outputs: "pair/<name>" arrays [n, ...], plus ids [n])
    texts-pairs-...                   the same for captions (pair_text outputs)
    images.jsonl                      one line per image: {"id", "file": "images/<id>.jpg", "captions": [...]}
                                      (an export of a photo folder: also "path", the file under the folder)
    texts.jsonl                       one line per caption: {"id", "image_id", "text"}
    images/<id>.jpg                   a copy of each exported image (what the service shows; nothing outside OUT)

Ids: an image's id is its dataset image id (a photo folder's: the file's position in the sorted file list); a
caption's id is its row in the split's caption table (texts.jsonl maps it to its image). A shard covers rows
[start, stop) of the input (the split, or the folder's file list); it holds `count` items, fewer than its rows
when files of a folder were unusable (its record's "skipped": [{"file", "reason"}]). A shard is finished when its
.json record exists and the .npz hashes to the recorded sha256; the manifest is written last, so a directory
without one is an unfinished export. A "position" is an item's row in the concatenation of a kind's shards (the
order of read_embeddings, of images.jsonl / texts.jsonl and of the faiss index built from the export).

Manifest (version 2; version 1, without pair sets, is still read): per kind {"count", "shards", "items"} and, for
pairwise runs, "pairs": {"shards": [...], "arrays": {name: {"shape": per-item shape, "dtype": as computed}},
"dtype": stored float dtype}; an export of a folder also has "images_dir", "images_fingerprint" and "skipped".

  ids, vectors, manifest = read_embeddings(OUT, "images")   # every shard, checksums verified
  pair_set = read_pair_sets(OUT, "images", positions)       # {name: [len(positions), ...]} (memory-mapped shards)
  sets = PairSets(OUT, "texts"); sets.positions(ids); sets.read(positions); sets.verify()
"""
from __future__ import annotations

import json
import os
import threading
import zipfile
from typing import Any, Sequence

import numpy as np

from xmodal_jax import errors
from xmodal_jax.fileio import file_sha256  # pylint: disable=unused-import  (re-exported: fmt.file_sha256)

FORMAT = "xmodal-embeddings"
VERSION = 2
READABLE_VERSIONS = (1, 2)
KINDS = ("images", "texts")
PAIRS = "pairs"          # the pair-set shards of kind K are named "K-pairs-..."
PAIR_PREFIX = "pair/"    # the .npz key of pair-set array NAME: "pair/NAME"
MANIFEST = "manifest.json"


def shard_name(kind: str, index: int, count: int) -> str:
  return f"{kind}-{index:05d}-of-{count:05d}"


def write_json_atomic(path: str, value: Any) -> None:
  """JSON to `path` through a temporary file and a rename: a reader never sees half a file."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def pairs_kind(kind: str) -> str:
  """The shard-name prefix of the pair sets of `kind` ("images" -> "images-pairs")."""
  return f"{kind}-{PAIRS}"


def _write_npz_shard(out_dir: str, kind: str, index: int, count: int, rows: tuple[int, int],
                     arrays: dict[str, np.ndarray], skipped: Sequence[dict[str, str]]) -> dict[str, Any]:
  """Writes shard `index` of `kind` (.npz of `arrays`, uncompressed so it can be memory-mapped; then its .json
  record) atomically; returns the record."""
  n = len(arrays["ids"])
  if any(len(a) != n for a in arrays.values()) or n + len(skipped) != rows[1] - rows[0]:
    raise ValueError(f"shard {kind} {index}: {[(k, len(a)) for k, a in arrays.items()]}, {len(skipped)} skipped, "
                     f"rows {rows}")
  name = shard_name(kind, index, count)
  tmp = os.path.join(out_dir, f"{name}.tmp-{os.getpid()}.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, os.path.join(out_dir, f"{name}.npz"))
  record = {"file": f"{name}.npz", "index": index, "rows": [int(rows[0]), int(rows[1])], "count": int(n),
            "sha256": file_sha256(os.path.join(out_dir, f"{name}.npz"))}
  if skipped:
    record["skipped"] = [dict(s) for s in skipped]
  write_json_atomic(os.path.join(out_dir, f"{name}.json"), record)
  return record


def write_shard(out_dir: str, kind: str, index: int, count: int, rows: tuple[int, int], ids: np.ndarray,
                vectors: np.ndarray, skipped: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
  """Writes one shard of vectors (.npz, then its .json record) atomically; returns the record.

  Args:
    rows: [start, stop) of the shard in the input's order (the split, or a folder's file list).
    ids: int64 [n]; vectors: [n, dim] (float32 or float16); n = stop - start - len(skipped).
    skipped: the rows' unusable inputs, [{"file", "reason"}] (a folder's bad files).
  """
  return _write_npz_shard(out_dir, kind, index, count, rows,
                          {"ids": np.asarray(ids, np.int64), "vectors": np.asarray(vectors)}, skipped)


def write_pair_shard(out_dir: str, kind: str, index: int, count: int, rows: tuple[int, int], ids: np.ndarray,
                     arrays: dict[str, np.ndarray], skipped: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
  """Writes shard `index` of the pair sets of `kind` (shard name "K-pairs-..."): `arrays` {name: [n, ...]} (a
  pair_image / pair_text output) stored as "pair/<name>" beside ids int64 [n]; returns the record."""
  stored = {"ids": np.asarray(ids, np.int64), **{PAIR_PREFIX + k: np.asarray(v) for k, v in arrays.items()}}
  return _write_npz_shard(out_dir, pairs_kind(kind), index, count, rows, stored, skipped)


def finished_shard(out_dir: str, kind: str, index: int, count: int, rows: tuple[int, int]) -> dict | None:
  """The shard's record if it is finished and intact (its .npz matches the recorded sha256 and rows), else None.
  A damaged or partial shard is removed so that it is written again."""
  name = shard_name(kind, index, count)
  record_path, data_path = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.npz")
  if not os.path.exists(record_path):
    return None
  try:
    with open(record_path) as f:
      record = json.load(f)
    intact = (os.path.exists(data_path) and list(record["rows"]) == [int(rows[0]), int(rows[1])]
              and record["sha256"] == file_sha256(data_path))
  except (OSError, ValueError, KeyError, TypeError):
    intact = False
  if intact:
    return record
  for path in (record_path, data_path):
    if os.path.exists(path):
      os.remove(path)
  return None


def read_manifest(out_dir: str) -> dict[str, Any]:
  path = os.path.join(out_dir, MANIFEST)
  if not os.path.exists(path):
    raise errors.MissingError(f"{path} not found: {out_dir} is not a finished export; run `xmodal export "
                              f"--workdir=RUN --out={out_dir}` (it resumes an unfinished one).")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE_VERSIONS:
    raise errors.DataError(f"{path} is not an {FORMAT} v{VERSION} manifest (format {manifest.get('format')!r}, "
                           f"version {manifest.get('version')!r}).")
  return manifest


def _kind_entry(manifest: dict[str, Any], out_dir: str, kind: str) -> dict[str, Any]:
  if kind not in manifest["kinds"]:
    raise errors.DataError(f"{out_dir} has no exported {kind} (it has {sorted(manifest['kinds'])}); rerun "
                           f"`xmodal export` with --what={kind}.")
  return manifest["kinds"][kind]


def _verify(out_dir: str, shard: dict[str, Any]) -> str:
  path = os.path.join(out_dir, shard["file"])
  if not os.path.exists(path):
    raise errors.MissingError(f"{path} not found: the export is incomplete; rerun the same `xmodal export` command "
                              "to write it again.")
  if file_sha256(path) != shard["sha256"]:
    raise errors.DataError(f"{path} does not match its sha256 in {MANIFEST}: the file was changed or damaged; "
                           "delete it and rerun the same `xmodal export` command to rewrite it.")
  return path


def read_embeddings(out_dir: str, kind: str, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
  """All shards of `kind` ("images" | "texts") of a finished export -> (ids int64 [N], vectors float32 [N, dim],
  manifest), in the export's order (positions 0..N-1). verify: check each shard's sha256 against the manifest."""
  manifest = read_manifest(out_dir)
  ids, vectors = [], []
  for shard in _kind_entry(manifest, out_dir, kind)["shards"]:
    path = _verify(out_dir, shard) if verify else os.path.join(out_dir, shard["file"])
    with np.load(path, allow_pickle=False) as data:
      ids.append(data["ids"])
      vectors.append(data["vectors"].astype(np.float32))
  dim = int(manifest["dim"])
  return (np.concatenate(ids) if ids else np.zeros([0], np.int64),
          np.concatenate(vectors) if vectors else np.zeros([0, dim], np.float32), manifest)


def read_items(out_dir: str, kind: str) -> list[dict[str, Any]]:
  """images.jsonl / texts.jsonl of an export: one dict per item, in the split's order."""
  path = os.path.join(out_dir, f"{kind}.jsonl")
  if not os.path.exists(path):
    raise errors.MissingError(f"{path} not found: rerun `xmodal export` with --what={kind}.")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------- pair sets


def npz_memmap(path: str) -> dict[str, np.ndarray]:
  """The arrays of an uncompressed .npz (np.savez) as read-only memory maps {name: np.memmap}: reading a few rows
  touches only their pages. A compressed member is loaded whole instead."""
  out = {}
  with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
    for info in archive.infolist():
      name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
      if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:
          out[name] = np.lib.format.read_array(member, allow_pickle=False)
        continue
      f.seek(info.header_offset)
      local = f.read(30)  # the local file header: its name and extra field lengths are at bytes 26..29
      start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
      f.seek(start)
      version = np.lib.format.read_magic(f)
      shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
      if dtype.hasobject:
        raise errors.DataError(f"{path}: member {name} holds Python objects; not an xmodal export shard.")
      if int(np.prod(shape)) == 0:
        out[name] = np.zeros(shape, dtype)
      else:
        out[name] = np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                              order="F" if fortran else "C")
  return out


class PairSets:
  """The pair sets of one kind of a finished export of a pairwise run, read by position, for re-ranking.

  Shards are opened lazily as memory maps (`npz_memmap`), so reading K=100 random items costs K small reads, and
  the first read of a shard checks its file size (`verify()` checks every sha256: a start-up check).

  Attributes: kind; count (N); ids int64 [N] (the id at each position); arrays {name: {"shape", "dtype"}}.
  """

  def __init__(self, out_dir: str, kind: str):
    self.out_dir, self.kind = out_dir, kind
    manifest = read_manifest(out_dir)
    entry = _kind_entry(manifest, out_dir, kind)
    if "pairs" not in entry:
      raise errors.DataError(f"{out_dir} holds no pair sets of {kind}: it is an export of a run without pairwise "
                             "scoring (S2 region-word and S4 single-stream runs have them), or of an older version; "
                             "serve it without --rerank, or export a pairwise run again.")
    self._shards = entry["pairs"]["shards"]
    self.arrays = {name: dict(spec) for name, spec in entry["pairs"]["arrays"].items()}
    counts = np.asarray([int(s["count"]) for s in self._shards], np.int64)
    self._starts = np.concatenate([[0], np.cumsum(counts)])
    self.count = int(self._starts[-1])
    if self.count != int(entry["count"]):
      raise errors.DataError(f"{out_dir}: the pair sets of {kind} hold {self.count} items, the manifest says "
                             f"{entry['count']}; rerun the same `xmodal export` command.")
    self._open: dict[int, dict[str, np.ndarray]] = {}
    self._lock = threading.Lock()
    self._ids: np.ndarray | None = None

  def _shard(self, index: int) -> dict[str, np.ndarray]:
    with self._lock:
      if index not in self._open:
        shard = self._shards[index]
        path = os.path.join(self.out_dir, shard["file"])
        if not os.path.exists(path):
          raise errors.MissingError(f"{path} not found: the export is incomplete; rerun the same `xmodal export` "
                                    "command to write it again.")
        self._open[index] = npz_memmap(path)
        if len(self._open[index]["ids"]) != int(shard["count"]):
          del self._open[index]
          raise errors.DataError(f"{path} holds another number of items than its record in {MANIFEST}: it was "
                                 "changed; delete it and rerun the same `xmodal export` command.")
      return self._open[index]

  @property
  def ids(self) -> np.ndarray:
    if self._ids is None:
      self._ids = (np.concatenate([np.asarray(self._shard(i)["ids"]) for i in range(len(self._shards))])
                   if self._shards else np.zeros([0], np.int64))
    return self._ids

  def positions(self, ids: Sequence[int]) -> np.ndarray:
    """ids (as an index search returns them) -> their positions int64 [n]; an unknown id is a DataError."""
    order = np.argsort(self.ids, kind="stable")
    ids = np.asarray(ids, np.int64)
    found = np.clip(np.searchsorted(self.ids[order], ids), 0, max(len(order) - 1, 0))
    if len(order) == 0 or np.any(self.ids[order][found] != ids):
      raise errors.DataError(f"ids not in the {self.kind} of {self.out_dir}: "
                             f"{sorted(set(ids.tolist()) - set(self.ids.tolist()))[:5]}")
    return order[found]

  def read(self, positions: Sequence[int]) -> dict[str, np.ndarray]:
    """The pair sets at `positions` (int [n], any order, repeats allowed) -> {name: [n, *shape]} in the dtypes
    the run computed them in (a float16 export is widened back)."""
    positions = np.asarray(positions, np.int64).reshape(-1)
    if positions.size and (positions.min() < 0 or positions.max() >= self.count):
      raise errors.DataError(f"positions must be in [0, {self.count}) for the {self.kind} of {self.out_dir}; got "
                             f"{positions.min()}..{positions.max()}.")
    out = {name: np.empty([len(positions), *spec["shape"]], spec["dtype"]) for name, spec in self.arrays.items()}
    shard_of = np.searchsorted(self._starts, positions, side="right") - 1
    for index in np.unique(shard_of):
      where = np.nonzero(shard_of == index)[0]
      local = positions[where] - self._starts[index]
      arrays = self._shard(int(index))
      for name in out:
        out[name][where] = arrays[PAIR_PREFIX + name][local]
    return out

  def verify(self) -> None:
    """Checks every pair-set shard against its sha256 (reads them whole); DataError / MissingError naming it."""
    for shard in self._shards:
      _verify(self.out_dir, shard)


_READERS: dict[tuple[str, str], tuple[float, PairSets]] = {}
_READERS_LOCK = threading.Lock()


def read_pair_sets(out_dir: str, kind: str, rows: Sequence[int]) -> dict[str, np.ndarray]:
  """The pair sets of the items at positions `rows` of `kind` ("images" | "texts") of a finished export of a
  pairwise run -> {name: [len(rows), ...]}: the inputs of the run's score_pairs for those items (exported
  `pair_image` / `pair_text` outputs). The reader (`PairSets`) is kept per export and manifest version, so
  repeated calls map each shard once."""
  key = (os.path.abspath(out_dir), kind)
  manifest = os.path.join(out_dir, MANIFEST)
  stamp = os.stat(manifest).st_mtime_ns if os.path.exists(manifest) else 0
  with _READERS_LOCK:
    cached = _READERS.get(key)
    if cached is None or cached[0] != stamp:
      cached = (stamp, PairSets(out_dir, kind))
      _READERS[key] = cached
  return cached[1].read(rows)
