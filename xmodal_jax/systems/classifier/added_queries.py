"""Queries added to a finished S1 pipeline run without retraining (seed eq. 2), kept in the run.

`xmodal classify --workdir=W --add_queries=FILE` reads FILE (phrase -> example images), computes each new
query's prototype phi_c = mean of the L2-normalised text-generator embeddings of its images
(`MultimodalClassifier.add_queries`) and appends it here; every later `MultimodalClassifier` on W (a fresh
`xmodal classify`) loads them after the trained queries, so the images can generate the new phrases.

FILE (UTF-8; image paths relative to FILE's folder, or absolute), one of:

  JSON object   {"striped circle": ["imgs/1.png", "imgs/2.png"], "tiny dot": ["imgs/3.png"]}
  JSON list     [{"phrase": "striped circle", "images": ["imgs/1.png", "imgs/2.png"]}, ...]
  JSON Lines    one {"phrase": ..., "images": [...]} per line (a file named *.jsonl)

What the run holds (WORKDIR, beside config.json):

  added_queries.json     {"format": "xmodal_s1_added_queries", "version": 1,
                          "generator": {"num_queries": K, "dim": D, "sha256": of the trained W [K, D] float32},
                          "vectors": "added_queries.<C>.npz",
                          "queries": [{"phrase": str, "id": K + i, "images": [absolute paths]}, ...]}
  added_queries.<C>.npz  "prototypes" float32 [C, D], row i = queries[i]

Text embeddings are not stored: they are recomputed from the phrases by the run's text model at load.
Writes are atomic and never damage what is there: the new .npz (C counts every added query, so a new name
per version) is written to a temporary file and renamed, then added_queries.json is replaced the same way,
which commits the version; only then is the previous .npz removed. A crash leaves the previous version intact
(and at worst an unreferenced .npz). An exclusive lock (added_queries.lock) serialises concurrent adds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np

from xmodal_jax import errors

QUERIES_FILE = "added_queries.json"
LOCK_FILE = "added_queries.lock"
FORMAT, VERSION = "xmodal_s1_added_queries", 1
_ENTRY = '{"phrase": "a new phrase", "images": ["path/relative/to/the/file.png", ...]}'
REQUEST_FORMATS = (f'a JSON object {{"phrase": ["image.png", ...], ...}}, a JSON list of {_ENTRY}, '
                   "or JSON Lines (*.jsonl) with one such object per line")


@dataclasses.dataclass
class Request:
  """One new query asked for in a request file: its phrase and example image paths (absolute)."""
  phrase: str
  images: list[str]
  where: str  # "FILE" or "FILE line N", for messages


@dataclasses.dataclass
class AddedQueries:
  """The queries stored in a run: C phrases, their prototypes [C, D] and the trained generator they fit."""
  phrases: list[str]
  prototypes: np.ndarray
  images: list[list[str]]
  generator: dict[str, Any]


def generator_signature(w: np.ndarray) -> dict[str, Any]:
  """What prototypes depend on: the trained query table W [K, D] (its size and a sha256 of its float32 bytes).

  A re-trained text generator embeds images differently, so stored prototypes would no longer fit it.
  """
  w = np.ascontiguousarray(w, np.float32)
  return {"num_queries": int(w.shape[0]), "dim": int(w.shape[1]), "sha256": hashlib.sha256(w.data).hexdigest()}


# ---- request files

def read_request(path: str) -> list[Request]:
  """Parses a request FILE (module docstring) into Requests; every problem is a UserError naming FILE (and line
  or entry), the problem and the fix. Image files are checked to exist here, decoded later."""
  if not os.path.isfile(path):
    raise errors.MissingError(f"--add_queries: {path} does not exist. Pass a file with {REQUEST_FORMATS}.")
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise errors.DataError(f"{path}: not UTF-8 text ({e}). Save it as UTF-8 JSON.") from None
  if path.endswith(".jsonl"):
    entries = [(_parse_json(line, f"{path} line {n}"), f"{path} line {n}")
               for n, line in enumerate(text.splitlines(), 1) if line.strip()]
  else:
    data = _parse_json(text, path)
    if isinstance(data, dict):
      entries = [({"phrase": phrase, "images": images}, path) for phrase, images in data.items()]
    elif isinstance(data, list):
      entries = [(entry, f"{path} entry {n}") for n, entry in enumerate(data)]
    else:
      raise errors.DataError(f"{path}: a JSON {type(data).__name__}; write {REQUEST_FORMATS}.")
  if not entries:
    raise errors.DataError(f"{path}: no queries in it. Write {REQUEST_FORMATS}.")
  root = os.path.dirname(os.path.abspath(path))
  requests = [_request(entry, where, root) for entry, where in entries]
  seen: dict[str, str] = {}
  for request in requests:
    if request.phrase in seen:
      raise errors.DataError(f"{request.where}: phrase {request.phrase!r} is already given at {seen[request.phrase]}. "
                             "Give each new phrase once (list all its images there).")
    seen[request.phrase] = request.where
  return requests


def _parse_json(text: str, where: str) -> Any:
  def unique_keys(pairs):
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
      raise errors.DataError(f"{where}: {repeated[0]!r} is given twice in one JSON object. Give each new phrase "
                             "once, with all its images.")
    return dict(pairs)

  try:
    return json.loads(text, object_pairs_hook=unique_keys)
  except json.JSONDecodeError as e:
    raise errors.DataError(f"{where}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}. "
                           f"Write {REQUEST_FORMATS}.") from None


def _request(entry: Any, where: str, root: str) -> Request:
  if not isinstance(entry, dict) or set(entry) != {"phrase", "images"}:
    raise errors.DataError(f"{where}: {json.dumps(entry)[:200]} is not {_ENTRY}.")
  phrase, images = entry["phrase"], entry["images"]
  if not isinstance(phrase, str) or not any(c.isalnum() for c in phrase):
    raise errors.DataError(f"{where}: phrase {phrase!r} is empty or has no letters or digits. Write the query's "
                           "words, e.g. \"striped circle\".")
  phrase = " ".join(phrase.split())
  if isinstance(images, str):
    images = [images]
  if not isinstance(images, list) or not images:
    raise errors.DataError(f"{where}: phrase {phrase!r} has no example images. List at least one image file "
                           "(its prototype is the mean embedding of its images).")
  paths = []
  for image in images:
    if not isinstance(image, str) or not image.strip():
      raise errors.DataError(f"{where}: phrase {phrase!r}: image {image!r} is not a path. Write image paths as "
                             "strings, relative to the file's folder.")
    full = os.path.normpath(os.path.join(root, os.path.expanduser(image)))
    if not os.path.isfile(full):
      raise errors.MissingError(f"{where}: phrase {phrase!r}: image {full} does not exist. Fix the path (relative "
                                f"to {root}) or remove it.")
    paths.append(full)
  return Request(phrase, paths, where)


# ---- what the run holds

def queries_path(workdir: str) -> str:
  return os.path.join(workdir, QUERIES_FILE)


def load(workdir: str) -> AddedQueries | None:
  """The queries added to the run in `workdir` (None if none were). A damaged store is a WorkdirError."""
  path = queries_path(workdir)
  if not os.path.exists(path):
    return None
  fix = (f"Restore it from a backup, or delete {path} (and {workdir}/added_queries.*.npz) and add the queries "
         "again with `xmodal classify --add_queries=FILE`.")
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
      raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}, expected {FORMAT!r} "
                       f"version {VERSION}")
    with np.load(os.path.join(workdir, meta["vectors"])) as f:
      prototypes = np.asarray(f["prototypes"], np.float32)
    queries = meta["queries"]
    if prototypes.shape != (len(queries), meta["generator"]["dim"]):
      raise ValueError(f"{meta['vectors']} holds prototypes {prototypes.shape} for {len(queries)} queries")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise errors.WorkdirError(f"{path}: cannot read the added queries ({type(e).__name__}: {e}). {fix}") from None
  return AddedQueries([q["phrase"] for q in queries], prototypes, [list(q["images"]) for q in queries],
                      dict(meta["generator"]))


def check_generator(added: AddedQueries, signature: dict[str, Any], workdir: str) -> None:
  """Stored prototypes were computed with this run's text generator; a re-trained one is a WorkdirError."""
  if added.generator != signature:
    raise errors.WorkdirError(
        f"{queries_path(workdir)}: its {len(added.phrases)} added queries were computed with another text generator "
        f"(K={added.generator.get('num_queries')}, sha256 {str(added.generator.get('sha256'))[:12]}; this run has "
        f"K={signature['num_queries']}, sha256 {signature['sha256'][:12]}): the stage was re-trained. Move "
        f"{queries_path(workdir)} away and add them again with `xmodal classify --add_queries=FILE` (their images "
        "are listed in it).")


@contextlib.contextmanager
def _locked(workdir: str) -> Iterator[None]:
  with open(os.path.join(workdir, LOCK_FILE), "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def _replace_atomically(path: str, write) -> None:
  """Writes via `write(file)` to a temporary file beside `path`, fsyncs, then renames it over `path`."""
  handle, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def append(workdir: str, phrases: Sequence[str], prototypes: np.ndarray, images: Sequence[Sequence[str]],
           signature: dict[str, Any], trained: Sequence[str]) -> AddedQueries:
  """Adds C new queries (phrases, prototypes [C, D], their image paths) after those already stored; returns all.

  signature: `generator_signature` of the trained W; trained: the K trained phrases. A phrase already trained
  or stored is a DataError, and nothing is written. Atomic (module docstring).
  """
  prototypes = np.asarray(prototypes, np.float32)
  if prototypes.shape != (len(phrases), signature["dim"]) or len(images) != len(phrases):
    raise ValueError(f"append: {len(phrases)} phrases, {len(images)} image lists, prototypes {prototypes.shape}, "
                     f"expected [{len(phrases)}, {signature['dim']}].")
  with _locked(workdir):
    old = load(workdir) or AddedQueries([], np.zeros((0, signature["dim"]), np.float32), [], dict(signature))
    check_generator(old, signature, workdir)
    taken = sorted(set(phrases) & (set(trained) | set(old.phrases)))
    if taken:
      raise errors.DataError(f"Queries {taken} already exist in {workdir} (trained, or added earlier). Choose other "
                             "phrases; an existing query cannot be added again.")
    new = AddedQueries(old.phrases + list(phrases), np.concatenate([old.prototypes, prototypes]),
                       old.images + [list(paths) for paths in images], dict(signature))
    vectors = f"added_queries.{len(new.phrases)}.npz"
    _replace_atomically(os.path.join(workdir, vectors), lambda f: np.savez(f, prototypes=new.prototypes))
    k = signature["num_queries"]
    meta = {"format": FORMAT, "version": VERSION, "generator": new.generator, "vectors": vectors,
            "queries": [{"phrase": p, "id": k + i, "images": paths}
                        for i, (p, paths) in enumerate(zip(new.phrases, new.images))]}
    _replace_atomically(queries_path(workdir), lambda f: f.write(json.dumps(meta, indent=1).encode("utf-8")))
    if old.phrases:
      with contextlib.suppress(OSError):
        os.remove(os.path.join(workdir, f"added_queries.{len(old.phrases)}.npz"))
  return new
