"""Nearest-neighbour indexes over exported embeddings (faiss): exact, IVF and HNSW, by inner product.

Exported vectors are L2-normalised (serving/embedding_export.py), so the inner product is the cosine and every
index here uses it (faiss METRIC_INNER_PRODUCT); scores are cosines, best first.

  method  faiss index                       build                          search (per query)
  exact   IndexFlatIP                       copy, O(N D)                   brute force O(N D): the ground truth
  ivf     IndexIVFFlat, nlist = 4 sqrt(N)   k-means on a sample + assign   nprobe of the nlist lists, ~nprobe/nlist of N
  hnsw    IndexHNSWFlat, M = 32             graph insertion, O(N log N)    greedy graph walk, beam efSearch
  auto    exact below 20,000 vectors (`AUTO_EXACT_BELOW`), else ivf

"auto" prefers ivf to hnsw: on bench/ann.py (N = 100K, D = 256) it builds 2-3x faster, needs no graph
memory (hnsw adds about 2 M links of 4 bytes per vector) and at the defaults has the same or better recall@10
(1.000 vs 0.989) at a similar batch-1 latency (0.3 vs 0.2 ms).

"ivf" with fewer than 10 * nlist vectors builds "exact" instead (too few vectors per list to be worth it); the
index records both the method asked for and the one built. ScaNN is not offered: it is not installable in this
project's environment.

Ids: faiss holds the vectors at positions 0..N-1 in the order added, and `AnnIndex.ids` (int64 [N], a numpy
array saved beside the index as `<name>.ids.npy`) maps a position to its id. That is one code path for the three
index types (IndexHNSWFlat has no `add_with_ids`, so it would need an IndexIDMap2 wrapper and its id hash map
besides), and positions are also what the exact re-search below returns.

No -1 leaks out: `search` returns min(k, N) columns, and a row where an approximate index found fewer than that
(IVF probing lists that hold too few vectors, an HNSW walk that ends early) is searched again exhaustively (IVF
with every list probed, HNSW on its flat storage), so every returned id is a real one.

  index = build_index(vectors, ids, method="ivf")          # vectors float32 [N, D], ids int64 [N]
  scores, ids = index.search(queries, k=10, nprobe=32)      # [n, D] -> float32 [n, k], int64 [n, k]
  index.save(DIR); index = load_index(DIR)                  # DIR/index.faiss, index.ids.npy, index.json

  search = build_from_export(EXPORT)                        # EXPORT/index/{images,texts}.faiss + index.json
  search = load_search_index(EXPORT + "/index")             # refuses an index older than the export
  scores, ids = search.search("images", text_vectors, k=10)

Files are written through a temporary file and a rename, index.json last, so a directory without index.json is an
unfinished build. Loading reads faiss's own format, a .npy with allow_pickle=False and JSON: nothing is unpickled.
Threads: faiss uses OpenMP with its default thread count; `num_threads=` sets `faiss.omp_set_num_threads`, which
is global to the process (the last index to build or search with it wins).
"""
from __future__ import annotations

import dataclasses
import json
import logging as std_logging
import math
import os
import time
from typing import Any, Sequence

from absl import logging
import numpy as np

from xmodal_jax import errors, progress
from xmodal_jax.serving import embedding_export

# faiss's loader logs at INFO each optimised build it tries and lacks ("Could not load library with AVX512 support
# due to: ModuleNotFoundError ...", "Loading faiss with AVX2 support."): chatter on every start under absl's INFO
# logging, not errors. Its warnings and errors still show; a level set beforehand (e.g. DEBUG) is kept.
_FAISS_LOADER_LOG = std_logging.getLogger("faiss.loader")
if _FAISS_LOADER_LOG.level == std_logging.NOTSET:
  _FAISS_LOADER_LOG.setLevel(std_logging.WARNING)
_FAISS_IMPORT_ERROR = None
try:
  import faiss  # pylint: disable=g-import-not-at-top
except ImportError as e:  # pragma: no cover - faiss is in requirements.txt
  faiss, _FAISS_IMPORT_ERROR = None, f"{type(e).__name__}: {e}"

FORMAT = "xmodal-ann-index"
SEARCH_FORMAT = "xmodal-ann-search-index"
VERSION = 1
INDEX_JSON = "index.json"
METHODS = ("auto", "exact", "ivf", "hnsw")
AUTO_EXACT_BELOW = 20_000      # "auto" builds exact below this many vectors (brute force is fast enough there)
IVF_MIN_PER_LIST = 10          # "ivf" with N < 10 * nlist builds exact instead
IVF_TRAIN_PER_LIST = 64        # k-means trains on 64 * nlist sampled vectors (faiss asks for at least 39)
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 64
DEFAULT_EF_SEARCH = 64
OPTIONS = {"nlist", "nprobe", "train_size", "seed", "m", "ef_construction", "ef_search", "num_threads"}
# Manifest fields that change between two runs of the same export without changing what was exported.
_VOLATILE = ("time", "date", "created", "seconds", "duration", "host", "pid")
_CHUNK = 65536  # rows per block for input checks (no [N, D] boolean temporary)
_ADD_CHUNK = 65536  # rows added to the index at once (a progress update each)


def _faiss():
  if faiss is None:
    raise errors.MissingError(f"faiss cannot be imported ({_FAISS_IMPORT_ERROR}): `pip install faiss-cpu==1.15.1` (it "
                              "is in requirements.txt).")
  return faiss


def default_nlist(n: int) -> int:
  """IVF lists for n vectors: 4 sqrt(n), at most n / 39 (faiss's minimum of training points per list), >= 1."""
  return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def default_nprobe(nlist: int) -> int:
  """Lists probed per query: nlist / 32 (~3% of the vectors), at least 16. On bench/ann.py recall@10 is 0.951 at
  N = 10K (16 of 256 lists) and 1.000 at N = 100K (39 of 1,265; 16 give 0.999, 4 give 0.69): the margin is for
  real embeddings, which are less neatly clustered than the bench's."""
  return max(1, min(nlist, max(16, nlist // 32)))


# ----------------------------------------------------------------------------------------------------------------
# Input checks: each names the problem and the array.

def _check_vectors(vectors: Any, name: str) -> np.ndarray:
  """A 2-D float array of finite values -> float32 C-contiguous [N, D] (no copy if it already is)."""
  arr = np.asarray(vectors)
  if arr.ndim != 2:
    raise errors.DataError(f"{name} must be a 2-D float array [N, D], got shape {arr.shape}"
                           + (" (for one vector use v[None])." if arr.ndim == 1 else "."))
  if not np.issubdtype(arr.dtype, np.floating):
    raise errors.DataError(f"{name} must be float (float32, or float16/64 converted), got dtype {arr.dtype}.")
  if arr.shape[1] == 0:
    raise errors.DataError(f"{name} has shape {arr.shape}: vectors of dimension 0 cannot be indexed.")
  arr = np.ascontiguousarray(arr, dtype=np.float32)
  for start in range(0, arr.shape[0], _CHUNK):
    finite = np.isfinite(arr[start:start + _CHUNK]).all(axis=1)
    if not finite.all():
      bad = start + np.flatnonzero(~finite)
      total = bad.size + sum(int((~np.isfinite(arr[s:s + _CHUNK]).all(axis=1)).sum())
                             for s in range(start + _CHUNK, arr.shape[0], _CHUNK))
      raise errors.DataError(f"{name} has {total} row(s) with NaN or inf (first: row {int(bad[0])}); "
                             "remove them or fix what produced them (e.g. re-export the embeddings).")
  return arr


def _check_ids(ids: Any, n: int) -> np.ndarray:
  arr = np.asarray(ids)
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
    raise errors.DataError(f"ids must be a 1-D integer array [N], got shape {arr.shape} dtype {arr.dtype}.")
  if arr.shape[0] != n:
    raise errors.DataError(f"ids has {arr.shape[0]} entries but vectors has {n} rows: give one id per vector.")
  arr = arr.astype(np.int64, copy=False)
  ordered = np.sort(arr)
  dups = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
  if dups.size:
    raise errors.DataError(f"ids are not unique: {dups.size} id(s) occur more than once (e.g. "
                           f"{dups[:5].tolist()}); give each vector its own id.")
  return arr


def _check_options(options: dict) -> None:
  unknown = sorted(set(options) - OPTIONS)
  if unknown:
    raise errors.ConfigError(f"unknown index option(s) {unknown}; the options are {sorted(OPTIONS)}.")
  for key, value in options.items():
    if value is None:
      continue
    low = 0 if key == "seed" else 1
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
      raise errors.ConfigError(f"index option {key}={value!r} must be an integer >= {low}.")


def _set_threads(num_threads: int | None) -> None:
  if num_threads is not None:
    _faiss().omp_set_num_threads(int(num_threads))


# ----------------------------------------------------------------------------------------------------------------
# One index.

@dataclasses.dataclass
class AnnIndex:
  """A faiss index over N vectors of dimension D and the ids of its rows.

  Attributes:
    index: the faiss index (IndexFlatIP | IndexIVFFlat | IndexHNSWFlat), rows at positions 0..N-1.
    ids: int64 [N], the id of each position.
    method: the method built ("exact" | "ivf" | "hnsw").
    params: its parameters (ivf: nlist, nprobe, train_size, seed; hnsw: m, ef_construction, ef_search).
    requested: the method asked for ("auto" or one of the above).
    source: identifying fields of the export it was built from (see `export_identity`), or None.
    build_seconds: time to build it.
    num_threads: if set, `faiss.omp_set_num_threads(num_threads)` before each search.
  """
  index: Any
  ids: np.ndarray
  method: str
  params: dict
  requested: str = ""
  source: dict | None = None
  build_seconds: float = 0.0
  num_threads: int | None = None

  @property
  def size(self) -> int:
    return int(self.index.ntotal)

  @property
  def dim(self) -> int:
    return int(self.index.d)

  def _search_params(self, nprobe: int | None, ef_search: int | None):
    fa = _faiss()
    if self.method == "ivf":
      value = nprobe if nprobe is not None else self.params["nprobe"]
      if value < 1:
        raise errors.ConfigError(f"nprobe={value} must be >= 1 (the index has nlist={self.params['nlist']}).")
      return fa.SearchParametersIVF(nprobe=int(min(value, self.params["nlist"])))
    if self.method == "hnsw":
      value = ef_search if ef_search is not None else self.params["ef_search"]
      if value < 1:
        raise errors.ConfigError(f"ef_search={value} must be >= 1.")
      return fa.SearchParametersHNSW(efSearch=int(value))
    return None

  def _exhaustive(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k positions of the same index (the fallback for rows an approximate search left short)."""
    fa = _faiss()
    if self.method == "ivf":
      return self.index.search(queries, k, params=fa.SearchParametersIVF(nprobe=int(self.params["nlist"])))
    if self.method == "hnsw":
      return fa.downcast_index(self.index.storage).search(queries, k)
    return self.index.search(queries, k)

  def search(self, queries: Any, k: int, *, nprobe: int | None = None, ef_search: int | None = None,
             num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest vectors of each query by inner product (cosine for unit vectors), best first.

    Args:
      queries: float [n, D] (D = the index's dimension).
      k: neighbours per query, >= 1. k > N returns N columns (every vector), never padding.
      nprobe: ivf only, lists probed (default: the index's `params["nprobe"]`; nlist = exhaustive).
      ef_search: hnsw only, search beam width (default: `params["ef_search"]`; higher = better recall, slower).
      num_threads: OpenMP threads for this and later faiss calls (default: this index's, else faiss's own).

    Returns:
      (scores float32 [n, min(k, N)], ids int64 [n, min(k, N)]), descending scores per row.
    """
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[-1] != self.dim:
      raise errors.DataError(f"queries must be [n, {self.dim}] (the index's dimension D={self.dim}), got shape "
                             f"{queries.shape}" + ("; for one query use q[None]." if queries.ndim == 1 else
                                                   "; embed them with the model this index was built from."))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise errors.ConfigError(f"k={k!r} must be a positive integer.")
    k = int(min(k, self.size))
    if queries.shape[0] == 0 or k == 0:
      return np.zeros([queries.shape[0], k], np.float32), np.zeros([queries.shape[0], k], np.int64)
    queries = _check_vectors(queries, "queries")
    _set_threads(num_threads if num_threads is not None else self.num_threads)
    scores, positions = self.index.search(queries, k, params=self._search_params(nprobe, ef_search))
    short = (positions < 0).any(axis=1)
    if short.any():
      scores[short], positions[short] = self._exhaustive(queries[short], k)
    return scores.astype(np.float32, copy=False), self.ids[positions]

  def vectors(self, ids: Sequence[int]) -> np.ndarray:
    """The stored vectors of `ids` (ids this index returns) -> float32 [n, D] (faiss `reconstruct`; an IVF
    index gets its direct map on first use). Unknown ids: errors.DataError naming them."""
    if not hasattr(self, "_positions"):
      self._positions = {int(i): p for p, i in enumerate(self.ids)}
    missing = [int(i) for i in ids if int(i) not in self._positions]
    if missing:
      raise errors.DataError(f"ids {missing[:5]} are not in this index ({self.size} vectors).")
    if self.method == "ivf" and not getattr(self, "_direct_map", False):
      _faiss().extract_index_ivf(self.index).make_direct_map()
      self._direct_map = True
    out = np.zeros([len(ids), self.dim], np.float32)
    for row, i in enumerate(ids):
      out[row] = self.index.reconstruct(self._positions[int(i)])
    return out

  def record(self) -> dict[str, Any]:
    """What index.json says about this index (no file names)."""
    return {"method": self.method, "requested_method": self.requested, "params": dict(self.params),
            "count": self.size, "dim": self.dim, "build_seconds": round(float(self.build_seconds), 3)}

  def write_files(self, out_dir: str, name: str) -> dict[str, Any]:
    """Writes `<name>.faiss` and `<name>.ids.npy` into out_dir (atomically); returns their record for index.json."""
    fa = _faiss()
    os.makedirs(out_dir, exist_ok=True)
    files = {"index": f"{name}.faiss", "ids": f"{name}.ids.npy"}
    tmp = os.path.join(out_dir, f"{files['index']}.tmp-{os.getpid()}")
    fa.write_index(self.index, tmp)
    os.replace(tmp, os.path.join(out_dir, files["index"]))
    tmp = os.path.join(out_dir, f"{name}.tmp-{os.getpid()}.ids.npy")
    np.save(tmp, self.ids, allow_pickle=False)
    os.replace(tmp, os.path.join(out_dir, files["ids"]))
    sha = {key: embedding_export.file_sha256(os.path.join(out_dir, f)) for key, f in files.items()}
    return {**self.record(), "files": files, "sha256": sha}

  def save(self, out_dir: str) -> str:
    """Writes out_dir/index.faiss, index.ids.npy and index.json (last); returns out_dir. Load with `load_index`."""
    _remove(os.path.join(out_dir, INDEX_JSON))
    record = self.write_files(out_dir, "index")
    embedding_export.write_json_atomic(os.path.join(out_dir, INDEX_JSON), {
        "format": FORMAT, "version": VERSION, "faiss_version": _faiss().__version__, **record, "source": self.source})
    return out_dir


def build_index(vectors: Any, ids: Any, method: str = "auto", **options) -> AnnIndex:
  """Builds a nearest-neighbour index over `vectors` (inner product).

  Args:
    vectors: float [N, D], finite; L2-normalised for cosine scores (exported embeddings are).
    ids: integer [N], unique: the id `search` returns for each row.
    method: "auto" | "exact" | "ivf" | "hnsw" (see the module docstring).
    **options: nlist (ivf lists, default `default_nlist(N)` = 4 sqrt(N)), nprobe (default `default_nprobe`),
      train_size (k-means sample, default 64 * nlist), seed (sample and k-means seed, default 0); m (hnsw graph
      degree M, default 32), ef_construction (default 64), ef_search (default 64); num_threads (OpenMP threads
      for building and, kept on the index, for searching). Options of another method than the one built are
      ignored (so "auto" takes both), unknown names are an error.

  Returns:
    the AnnIndex (method = the one built: "auto" and small "ivf" may build "exact").
  """
  fa = _faiss()
  if method not in METHODS:
    raise errors.ConfigError(f"unknown index method {method!r}; choose one of {METHODS}.")
  _check_options(options)
  vectors = _check_vectors(vectors, "vectors")
  n, dim = vectors.shape
  if n == 0:
    raise errors.DataError("vectors has no rows: there is nothing to index.")
  ids = _check_ids(ids, n)
  num_threads = options.get("num_threads")
  _set_threads(num_threads)
  built = method
  if method == "auto":
    built = "exact" if n < AUTO_EXACT_BELOW else "ivf"
  nlist = int(options.get("nlist") or default_nlist(n))
  if built == "ivf" and n < IVF_MIN_PER_LIST * nlist:
    logging.info("ann_index: %d vectors < %d x nlist=%d: building exact instead of ivf", n, IVF_MIN_PER_LIST, nlist)
    built = "exact"

  start = time.perf_counter()
  if built == "exact":
    index, params = fa.IndexFlatIP(dim), {}
  elif built == "ivf":
    seed = int(options.get("seed") or 0)
    train_size = int(min(n, options.get("train_size") or IVF_TRAIN_PER_LIST * nlist))
    index = fa.index_factory(dim, f"IVF{nlist},Flat", fa.METRIC_INNER_PRODUCT)  # owns its quantizer
    ivf = fa.extract_index_ivf(index)
    ivf.cp.spherical = True  # unit-norm centroids: the cells of inner-product search over unit vectors
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = max(ivf.cp.max_points_per_centroid, -(-train_size // nlist))
    rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False)) if train_size < n else None
    index.train(vectors[rows] if rows is not None else vectors)
    nprobe = int(min(nlist, options.get("nprobe") or default_nprobe(nlist)))
    params = {"nlist": nlist, "nprobe": nprobe, "train_size": train_size, "seed": seed}
  else:  # hnsw
    m = int(options.get("m") or DEFAULT_HNSW_M)
    index = fa.IndexHNSWFlat(dim, m, fa.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(options.get("ef_construction") or DEFAULT_EF_CONSTRUCTION)
    params = {"m": m, "ef_construction": int(index.hnsw.efConstruction),
              "ef_search": int(options.get("ef_search") or DEFAULT_EF_SEARCH)}
  with progress.bar(n, f"Building the {built} index", unit="vectors",
                    enabled=None if n > _ADD_CHUNK else False) as bar:
    for begin in range(0, n, _ADD_CHUNK):  # one block for small indexes (no bar): the same index as one add
      index.add(vectors[begin:begin + _ADD_CHUNK])
      bar.update(min(_ADD_CHUNK, n - begin))
  return AnnIndex(index=index, ids=ids, method=built, params=params, requested=method,
                  build_seconds=time.perf_counter() - start, num_threads=num_threads)


# ----------------------------------------------------------------------------------------------------------------
# Loading.

def _remove(path: str) -> None:
  if os.path.exists(path):
    os.remove(path)


def _read_json(path: str, what: str, fix: str) -> dict:
  if not os.path.exists(path):
    raise errors.MissingError(f"{path} not found: {what}; {fix}")
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.DataError(f"{path} cannot be read as JSON ({e}); {fix}") from e
  if not isinstance(value, dict):
    raise errors.DataError(f"{path} is not an index description (a JSON object); {fix}")
  return value


def _read_files(in_dir: str, record: dict, fix: str, verify: bool, num_threads: int | None) -> AnnIndex:
  """The AnnIndex that `record` (from index.json) describes, its files in in_dir, checked against the record."""
  fa = _faiss()
  try:
    files, method, count, dim = record["files"], record["method"], int(record["count"]), int(record["dim"])
    paths = {key: os.path.join(in_dir, files[key]) for key in ("index", "ids")}
  except (KeyError, TypeError, ValueError) as e:
    raise errors.DataError(f"{os.path.join(in_dir, INDEX_JSON)} lacks {e} in an index record; {fix}") from e
  for path in paths.values():
    if not os.path.exists(path):
      raise errors.MissingError(f"{path} not found (listed in {os.path.join(in_dir, INDEX_JSON)}); {fix}")
  if verify:
    for key, path in paths.items():
      if embedding_export.file_sha256(path) != record.get("sha256", {}).get(key):
        raise errors.DataError(f"{path} does not match its sha256 in {INDEX_JSON}: it was changed or damaged; {fix}")
  try:
    index = fa.read_index(paths["index"])
  except RuntimeError as e:
    raise errors.DataError(f"{paths['index']} is not a readable faiss index ({str(e).splitlines()[-1]}); {fix}") from e
  try:
    ids = np.load(paths["ids"], allow_pickle=False)
  except (OSError, ValueError) as e:
    raise errors.DataError(f"{paths['ids']} is not a readable .npy of ids ({e}); {fix}") from e
  if index.ntotal != count or index.d != dim or ids.shape != (count,) or ids.dtype != np.int64:
    raise errors.DataError(f"{paths['index']} holds {index.ntotal} vectors of dim {index.d} and {paths['ids']} "
                           f"{ids.shape} {ids.dtype} ids, but {INDEX_JSON} records {count} of dim {dim}; {fix}")
  return AnnIndex(index=index, ids=ids, method=method, params=dict(record.get("params", {})),
                  requested=record.get("requested_method", method), source=record.get("source"),
                  build_seconds=float(record.get("build_seconds", 0.0)), num_threads=num_threads)


def load_index(in_dir: str, kind: str | None = None, *, verify: bool = True,
               num_threads: int | None = None) -> AnnIndex:
  """An index saved by `AnnIndex.save` (or, with `kind`, one kind of a `build_from_export` directory).

  verify: check the files' sha256 against index.json first (reads them once more; a damaged file is then a
  DataError rather than whatever faiss makes of it).
  """
  fix = "rebuild the index (`AnnIndex.save`, or `xmodal index --export=DIR`)."
  info = _read_json(os.path.join(in_dir, INDEX_JSON), f"{in_dir} is not a saved index (or its build did not finish)",
                    fix)
  if info.get("format") == SEARCH_FORMAT and info.get("version") == VERSION:
    kinds = sorted(info.get("kinds", {}))
    if kind not in kinds:
      raise errors.DataError(f"{in_dir} is an index of an export with kinds {kinds}: pass kind= one of them, or "
                             "use load_search_index.")
    return _read_files(in_dir, {**info["kinds"][kind], "source": info.get("export")}, fix, verify, num_threads)
  if info.get("format") != FORMAT or info.get("version") != VERSION:
    raise errors.DataError(f"{os.path.join(in_dir, INDEX_JSON)} is not an {FORMAT} v{VERSION} description (format "
                           f"{info.get('format')!r}, version {info.get('version')!r}); {fix}")
  return _read_files(in_dir, info, fix, verify, num_threads)


# ----------------------------------------------------------------------------------------------------------------
# One index per exported kind.

def export_identity(manifest: dict, kinds: Sequence[str]) -> dict[str, Any]:
  """What identifies an export for an index built from it: the manifest's top-level fields (model step, config
  hash, source, split, dim, dtype, normalisation ...; not "kinds" and not time stamps) and, per kind in `kinds`,
  its shards as [file, count, sha256]."""
  fields = {key: value for key, value in manifest.items()
            if key != "kinds" and not any(word in key.lower() for word in _VOLATILE)}
  shards = {kind: [[s["file"], int(s["count"]), s["sha256"]] for s in manifest["kinds"][kind]["shards"]]
            for kind in kinds}
  return {"fields": fields, "shards": shards}


def _identity_changes(old: dict, new: dict) -> list[str]:
  changes = []
  old_fields, new_fields = old.get("fields", {}), new.get("fields", {})
  for key in sorted(set(old_fields) | set(new_fields)):
    if old_fields.get(key) != new_fields.get(key):
      changes.append(f"{key} {old_fields.get(key)!r} -> {new_fields.get(key)!r}")
  for kind in sorted(old.get("shards", {})):
    if old["shards"][kind] != new.get("shards", {}).get(kind):
      changes.append(f"{kind} shards (sha256 / counts)")
  return changes


@dataclasses.dataclass
class SearchIndex:
  """One AnnIndex per exported kind ("images", "texts") and the export they were built from.

  Attributes:
    indexes: kind -> AnnIndex.
    export_dir: the export directory (as found at load time).
    manifest: the export's manifest.json.
    out_dir: where the index files are.
  """
  indexes: dict[str, AnnIndex]
  export_dir: str
  manifest: dict
  out_dir: str

  @property
  def kinds(self) -> tuple[str, ...]:
    return tuple(self.indexes)

  def search(self, kind: str, queries: Any, k: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """`AnnIndex.search` on kind's index: queries [n, D] -> (scores float32 [n, k'], ids int64 [n, k']),
    k' = min(k, N). Ids are the export's (image ids for "images", caption rows for "texts")."""
    if kind not in self.indexes:
      raise errors.DataError(f"{self.out_dir} has no {kind!r} index (it has {list(self.indexes)}); rebuild it with "
                             f"`xmodal index --export={self.export_dir} --out={self.out_dir}` (all exported kinds).")
    return self.indexes[kind].search(queries, k, **options)

  def vectors(self, kind: str, ids: Sequence[int]) -> np.ndarray:
    """`AnnIndex.vectors` of kind's index: the indexed vectors of `ids` -> float32 [n, D]."""
    if kind not in self.indexes:
      raise errors.DataError(f"{self.out_dir} has no {kind!r} index (it has {list(self.indexes)}).")
    return self.indexes[kind].vectors(ids)


def default_out_dir(export_dir: str) -> str:
  return os.path.join(export_dir, "index")


def _parse_kinds(kinds: str | Sequence[str] | None, manifest: dict, export_dir: str) -> tuple[str, ...]:
  """The kinds to index: None or empty = every kind the export has; else each must be exported."""
  kinds = tuple(k.strip() for k in kinds.split(",") if k.strip()) if isinstance(kinds, str) else tuple(kinds or ())
  exported = [kind for kind in embedding_export.KINDS if kind in manifest["kinds"]]
  if not kinds:
    return tuple(exported)
  bad = [kind for kind in kinds if kind not in embedding_export.KINDS]
  if bad:
    raise errors.ConfigError(f"kinds {list(kinds)}: choose from {list(embedding_export.KINDS)}.")
  missing = [kind for kind in kinds if kind not in manifest["kinds"]]
  if missing:
    raise errors.DataError(f"{export_dir} has no exported {', '.join(missing)} (it has {exported}): index only "
                           f"those (--what={','.join(exported)}), or rerun `xmodal export` with "
                           f"--what={','.join(kinds)}.")
  return kinds


def build_from_export(export_dir: str, out_dir: str | None = None, kinds: str | Sequence[str] | None = None,
                      method: str = "auto", *, verify: bool = True, **options) -> SearchIndex:
  """Builds one index per exported kind from a finished export (`xmodal export`).

  Writes out_dir/<kind>.faiss and <kind>.ids.npy for each kind, then out_dir/index.json: the export dir (as
  given and absolute), the export's identity (`export_identity`) and per kind its method, params, N, D and files.

  Args:
    export_dir: the export directory (it has manifest.json).
    out_dir: where to write; default `<export_dir>/index`.
    kinds: "images", "texts" (a sequence or a comma list); None or empty: every kind the export has.
    method: "auto" | "exact" | "ivf" | "hnsw", for every kind; **options as for `build_index`.
    verify: check each shard's sha256 while reading it.

  Returns:
    the SearchIndex (as `load_search_index(out_dir)` would return it).
  """
  out_dir = out_dir or default_out_dir(export_dir)
  manifest = embedding_export.read_manifest(export_dir)
  kinds = _parse_kinds(kinds, manifest, export_dir)
  os.makedirs(out_dir, exist_ok=True)
  _remove(os.path.join(out_dir, INDEX_JSON))  # unfinished until the new one is written
  indexes, records = {}, {}
  for kind in kinds:
    ids, vectors, manifest = embedding_export.read_embeddings(export_dir, kind, verify=verify)
    if len(ids) == 0:
      raise errors.DataError(f"{export_dir} has no exported {kind} vectors: nothing to index; pass "
                             f"kinds= without {kind} or re-export.")
    index = build_index(vectors, ids, method, **options)
    del vectors
    records[kind] = index.write_files(out_dir, kind)
    indexes[kind] = index
    logging.info("ann_index: %s: %s over %d x %d in %.1f s", kind, index.method, index.size, index.dim,
                 index.build_seconds)
  identity = export_identity(manifest, kinds)
  for index in indexes.values():
    index.source = identity
  embedding_export.write_json_atomic(os.path.join(out_dir, INDEX_JSON), {
      "format": SEARCH_FORMAT, "version": VERSION, "faiss_version": _faiss().__version__,
      "export_dir": export_dir, "export_dir_abs": os.path.abspath(export_dir),
      "export_dir_from_index": os.path.relpath(os.path.abspath(export_dir), os.path.abspath(out_dir)),
      "export": identity, "kinds": records})
  return SearchIndex(indexes=indexes, export_dir=export_dir, manifest=manifest, out_dir=out_dir)


def load_search_index(out_dir: str, export_dir: str | None = None, *, verify: bool = True,
                      num_threads: int | None = None) -> SearchIndex:
  """Loads a `build_from_export` directory and checks that the export has not changed since the build.

  Args:
    out_dir: the index directory.
    export_dir: the export; default the recorded one (absolute path, else relative to out_dir, else as given).
    verify: check the index files' sha256.
    num_threads: OpenMP threads for searches (see the module docstring).

  Raises:
    MissingError: out_dir or the export is missing. DataError: a damaged file, or the export's manifest no longer
    matches (model step, config hash, shard checksums ...): rebuild with `xmodal index`.
  """
  fix = f"rebuild it with `xmodal index --export=EXPORT_DIR --out={out_dir}`."
  info = _read_json(os.path.join(out_dir, INDEX_JSON), f"{out_dir} is not a built index (or its build did not "
                    "finish)", fix)
  if info.get("format") != SEARCH_FORMAT or info.get("version") != VERSION:
    raise errors.DataError(f"{os.path.join(out_dir, INDEX_JSON)} is not an {SEARCH_FORMAT} v{VERSION} description "
                           f"(format {info.get('format')!r}); load a single index with load_index, or {fix}")
  if export_dir is None:
    candidates = [info.get("export_dir_abs"), os.path.join(out_dir, info.get("export_dir_from_index") or ""),
                  info.get("export_dir")]
    found = [c for c in candidates if c and os.path.exists(os.path.join(c, embedding_export.MANIFEST))]
    if not found:
      raise errors.MissingError(f"the export {out_dir} was built from is not found (tried "
                                f"{[c for c in candidates if c]}); pass export_dir= where it is now, or {fix}")
    export_dir = os.path.normpath(found[0])
  fix = f"rebuild it with `xmodal index --export={export_dir} --out={out_dir}`."
  manifest = embedding_export.read_manifest(export_dir)
  kinds = tuple(info.get("kinds", {}))
  missing = [kind for kind in kinds if kind not in manifest["kinds"]]
  changes = ([f"{kind} no longer exported" for kind in missing] if missing else
             _identity_changes(info.get("export", {}), export_identity(manifest, kinds)))
  if changes:
    raise errors.DataError(f"{out_dir} was built from another version of the export {export_dir} (changed: "
                           f"{'; '.join(changes)}); {fix}")
  indexes = {kind: _read_files(out_dir, {**info["kinds"][kind], "source": info.get("export")}, fix, verify,
                               num_threads) for kind in kinds}
  return SearchIndex(indexes=indexes, export_dir=export_dir, manifest=manifest, out_dir=out_dir)


def build_command(export_dir: str, out_dir: str | None = None, method: str = "auto",
                  kinds: str | Sequence[str] | None = None) -> str:
  """`xmodal index --export=DIR [--out=DIR] [--method=auto] [--kinds=images,texts]`: builds and saves the
  indexes (`build_from_export`); returns the summary to print."""
  out_dir = out_dir or default_out_dir(export_dir)
  search = build_from_export(export_dir, out_dir, kinds, method)
  lines = [f"index of {export_dir} -> {out_dir} (faiss {_faiss().__version__}, inner product)"]
  for kind, index in search.indexes.items():
    params = ", ".join(f"{k}={v}" for k, v in index.params.items())
    lines.append(f"  {kind}: {index.method}" + (f" ({params})" if params else "")
                 + (f" [asked: {index.requested}]" if index.requested != index.method else "")
                 + f"  N={index.size:,} D={index.dim}  built in {index.build_seconds:.1f} s")
  lines.append(f"next: xmodal serve --index={out_dir}")
  return "\n".join(lines)
