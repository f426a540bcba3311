"""The on-disk format of exported embeddings (`xmodal export`), read by the index builder and the search service.

  OUT/
    manifest.json                     what was exported: model step, config hash, source, split, dim, dtype,
                                      normalisation, and per kind its shards (file, rows, count, sha256)
    images-00000-of-00004.npz         vectors float32|float16 [n, dim], ids int64 [n]  (np.savez, no pickle)
    images-00000-of-00004.json        the shard's record: rows [start, stop), count, sha256 of the .npz
    texts-00000-of-00020.npz / .json  the same for captions
    images.jsonl                      one line per image: {"id", "file": "images/<id>.jpg", "captions": [...]}
    texts.jsonl                       one line per caption: {"id", "image_id", "text"}
    images/<id>.jpg                   a copy of each exported image (what the service shows; nothing outside OUT)

Ids: an image's id is its dataset image id; a caption's id is its row in the split's caption table (texts.jsonl
maps it to its image). A shard is finished when its .json record exists and the .npz hashes to the recorded
sha256; the manifest is written last, so a directory without one is an unfinished export.

  ids, vectors, manifest = read_embeddings(OUT, "images")   # every shard, checksums verified
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from xmodal_jax import errors
from xmodal_jax.fileio import file_sha256  # pylint: disable=unused-import  (re-exported: fmt.file_sha256)

FORMAT = "xmodal-embeddings"
VERSION = 1
KINDS = ("images", "texts")
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


def write_shard(out_dir: str, kind: str, index: int, count: int, rows: tuple[int, int], ids: np.ndarray,
                vectors: np.ndarray) -> dict[str, Any]:
  """Writes one shard (.npz, then its .json record) atomically; returns the record.

  Args:
    rows: [start, stop) of the shard in the split's order.
    ids: int64 [n]; vectors: [n, dim] (float32 or float16).
  """
  if len(ids) != len(vectors) or len(ids) != rows[1] - rows[0]:
    raise ValueError(f"shard {kind} {index}: {len(ids)} ids, {len(vectors)} vectors, rows {rows}")
  name = shard_name(kind, index, count)
  tmp = os.path.join(out_dir, f"{name}.tmp-{os.getpid()}.npz")
  np.savez(tmp, ids=np.asarray(ids, np.int64), vectors=np.asarray(vectors))
  os.replace(tmp, os.path.join(out_dir, f"{name}.npz"))
  record = {"file": f"{name}.npz", "index": index, "rows": [int(rows[0]), int(rows[1])], "count": int(len(ids)),
            "sha256": file_sha256(os.path.join(out_dir, f"{name}.npz"))}
  write_json_atomic(os.path.join(out_dir, f"{name}.json"), record)
  return record


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
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise errors.DataError(f"{path} is not an {FORMAT} v{VERSION} manifest (format {manifest.get('format')!r}, "
                           f"version {manifest.get('version')!r}).")
  return manifest


def read_embeddings(out_dir: str, kind: str, *, verify: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
  """All shards of `kind` ("images" | "texts") of a finished export -> (ids int64 [N], vectors float32 [N, dim],
  manifest), in the split's order. verify: check each shard's sha256 against the manifest."""
  manifest = read_manifest(out_dir)
  if kind not in manifest["kinds"]:
    raise errors.DataError(f"{out_dir} has no exported {kind} (it has {sorted(manifest['kinds'])}); rerun "
                           f"`xmodal export` with --what={kind}.")
  ids, vectors = [], []
  for shard in manifest["kinds"][kind]["shards"]:
    path = os.path.join(out_dir, shard["file"])
    if verify and file_sha256(path) != shard["sha256"]:
      raise errors.DataError(f"{path} does not match its sha256 in {MANIFEST}: the file was changed or damaged; "
                             "delete it and rerun the same `xmodal export` command to rewrite it.")
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
