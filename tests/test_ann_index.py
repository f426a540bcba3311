"""Nearest-neighbour indexes (serving/ann_index.py): exact = numpy, recall of ivf / hnsw, files, errors, exports."""
import json
import os
import shutil

import faiss
import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.serving import ann_index, embedding_export


def _unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random(n, dim, seed=0):
  return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


def _clustered(n, queries, dim=64, per_cluster=200, rank=16, seed=0):
  """(database [n, dim], queries [queries, dim]): unit vectors around n / per_cluster centres, varying along a
  rank-16 basis; the queries are near-duplicates of more points of the same clusters (as bench/ann.py)."""
  rng = np.random.default_rng(seed)
  centres = _random(n // per_cluster, dim, seed + 1)
  basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T

  def make(size):
    x = centres[rng.integers(len(centres), size=size)] + rng.standard_normal((size, rank)) @ basis / np.sqrt(rank)
    return _unit(x + 0.5 * rng.standard_normal((size, dim)) / np.sqrt(dim))
  return make(n), _unit(make(queries) + 0.2 * rng.standard_normal((queries, dim)) / np.sqrt(dim))


def _recall(found, truth):
  return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth)]))


@pytest.fixture(name="threads")
def _threads():
  before = faiss.omp_get_max_threads()
  yield
  faiss.omp_set_num_threads(before)


def test_exact_equals_numpy_brute_force():
  vectors, queries = _random(500, 16), _random(20, 16, seed=1)
  ids = np.random.default_rng(2).permutation(100_000)[:500].astype(np.int64) * 3 + 7
  index = ann_index.build_index(vectors, ids, "exact")
  scores, found = index.search(queries, 10)
  assert index.method == "exact" and scores.dtype == np.float32 and found.dtype == np.int64
  dots = queries @ vectors.T
  order = np.argsort(-dots, axis=1)[:, :10]
  np.testing.assert_array_equal(found, ids[order])
  np.testing.assert_allclose(scores, np.take_along_axis(dots, order, axis=1), atol=1e-5)


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_recall_at_10(method):
  vectors, queries = _clustered(20_000, 200)
  ids = np.arange(20_000, dtype=np.int64)
  _, truth = ann_index.build_index(vectors, ids, "exact").search(queries, 10)
  index = ann_index.build_index(vectors, ids, method)
  assert index.method == method
  _, found = index.search(queries, 10)
  assert _recall(found, truth) >= 0.9, (method, index.params)
  if method == "ivf":  # every list probed = exact
    _, found = index.search(queries, 10, nprobe=index.params["nlist"])
    np.testing.assert_array_equal(found, truth)
  else:
    assert _recall(index.search(queries, 10, ef_search=256)[1], truth) >= _recall(found, truth) - 0.01


def test_auto_and_small_ivf_build_exact():
  vectors = _random(1000, 8)
  index = ann_index.build_index(vectors, np.arange(1000), "auto")
  assert (index.method, index.requested) == ("exact", "auto")
  assert ann_index.build_index(vectors, np.arange(1000), "ivf", nlist=200).method == "exact"  # 1000 < 10 * 200
  assert ann_index.build_index(vectors, np.arange(1000), "ivf", nlist=20).method == "ivf"


@pytest.mark.parametrize("method", ["exact", "ivf", "hnsw"])
def test_save_load_round_trip(tmp_path, method):
  vectors, queries = _clustered(3000, 50, dim=32, per_cluster=100)
  ids = np.arange(3000, dtype=np.int64)[::-1].copy()
  index = ann_index.build_index(vectors, ids, method, nprobe=4, ef_search=20)
  index.save(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["index.faiss", "index.ids.npy", "index.json"]
  loaded = ann_index.load_index(str(tmp_path))
  assert (loaded.method, loaded.params, loaded.size, loaded.dim) == (index.method, index.params, 3000, 32)
  for a, b in zip(index.search(queries, 7), loaded.search(queries, 7)):
    np.testing.assert_array_equal(a, b)
  info = json.loads((tmp_path / "index.json").read_text())
  assert info["faiss_version"] == faiss.__version__ and info["count"] == 3000 and info["dim"] == 32


@pytest.mark.parametrize("method", ["exact", "ivf", "hnsw"])
def test_k_larger_than_n_returns_every_vector(method):
  vectors = _random(400, 8)
  ids = np.arange(1000, 1400, dtype=np.int64)
  index = ann_index.build_index(vectors, ids, method, nlist=20, nprobe=1, ef_search=4)
  scores, found = index.search(_random(30, 8, seed=1), 1000)
  assert scores.shape == found.shape == (30, 400)
  for row in found:  # no -1 padding: every row is a permutation of the ids
    np.testing.assert_array_equal(np.sort(row), ids)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_short_ivf_rows_are_searched_exhaustively():
  vectors, queries = _random(2000, 16), _random(40, 16, seed=1)
  ids = np.arange(2000, dtype=np.int64)
  index = ann_index.build_index(vectors, ids, "ivf", nlist=100, nprobe=1)  # ~20 vectors per list < k = 50
  _, found = index.search(queries, 50)
  _, truth = ann_index.build_index(vectors, ids, "exact").search(queries, 50)
  assert (found >= 0).all()
  raw = index.index.search(queries, 50, params=faiss.SearchParametersIVF(nprobe=1))[1]
  short = (raw < 0).any(axis=1)
  assert short.any()
  np.testing.assert_array_equal(found[short], truth[short])


def test_num_threads_option(threads):
  del threads
  index = ann_index.build_index(_random(100, 8), np.arange(100), "exact", num_threads=1)
  assert faiss.omp_get_max_threads() == 1
  index.search(_random(3, 8), 2, num_threads=2)
  assert faiss.omp_get_max_threads() == 2


def test_bad_inputs_are_user_errors(tmp_path):
  vectors, ids = _random(100, 8), np.arange(100)
  index = ann_index.build_index(vectors, ids, "exact")
  with pytest.raises(errors.DataError, match=r"queries must be \[n, 8\].*got shape \(2, 9\)"):
    index.search(_random(2, 9), 3)
  with pytest.raises(errors.DataError, match=r"q\[None\]"):
    index.search(vectors[0], 3)
  with pytest.raises(errors.ConfigError, match="k=0"):
    index.search(vectors[:2], 0)
  bad = vectors.copy()
  bad[7, 3] = np.nan
  with pytest.raises(errors.DataError, match="1 row.*NaN or inf.*row 7"):
    ann_index.build_index(bad, ids)
  with pytest.raises(errors.DataError, match="queries has 1 row"):
    index.search(bad[5:10], 3)
  with pytest.raises(errors.DataError, match=r"not unique.*\[5\]"):
    ann_index.build_index(vectors, np.r_[np.arange(99), 5])
  with pytest.raises(errors.DataError, match="99 entries but vectors has 100"):
    ann_index.build_index(vectors, np.arange(99))
  with pytest.raises(errors.DataError, match="must be float"):
    ann_index.build_index(np.ones((4, 3), np.int32), np.arange(4))
  with pytest.raises(errors.DataError, match="2-D"):
    ann_index.build_index(vectors[None], ids)
  with pytest.raises(errors.DataError, match="no rows"):
    ann_index.build_index(np.zeros((0, 8), np.float32), np.zeros([0], np.int64))
  with pytest.raises(errors.ConfigError, match="unknown index method 'scann'"):
    ann_index.build_index(vectors, ids, "scann")
  with pytest.raises(errors.ConfigError, match=r"unknown index option\(s\) \['nprobes'\]"):
    ann_index.build_index(vectors, ids, "ivf", nprobes=3)

  with pytest.raises(errors.MissingError, match="index.json not found"):
    ann_index.load_index(str(tmp_path / "nowhere"))
  index.save(str(tmp_path / "saved"))
  faiss_file = tmp_path / "saved" / "index.faiss"
  faiss_file.write_bytes(faiss_file.read_bytes()[:100])
  with pytest.raises(errors.DataError, match="index.faiss does not match its sha256"):
    ann_index.load_index(str(tmp_path / "saved"))
  with pytest.raises(errors.DataError, match="index.faiss is not a readable faiss index"):
    ann_index.load_index(str(tmp_path / "saved"), verify=False)
  os.remove(tmp_path / "saved" / "index.ids.npy")
  with pytest.raises(errors.MissingError, match="index.ids.npy not found"):
    ann_index.load_index(str(tmp_path / "saved"))
  (tmp_path / "saved" / "index.json").write_text("{not json")
  with pytest.raises(errors.DataError, match="cannot be read as JSON"):
    ann_index.load_index(str(tmp_path / "saved"))


# ----------------------------------------------------------------------------------------------------------------
# From an export.

DIM = 16


def _write_export(out_dir, step=100, image_seed=0):
  """A finished export (manifest.json last) with 2 image shards (300 + 200 rows) and 1 text shard (800 rows)."""
  os.makedirs(out_dir, exist_ok=True)
  kinds, data = {}, {}
  for kind, sizes, first_id, seed in (("images", (300, 200), 5000, image_seed), ("texts", (800,), 0, 99)):
    vectors, ids = _random(sum(sizes), DIM, seed), np.arange(first_id, first_id + sum(sizes), dtype=np.int64)
    shards, start = [], 0
    for index, size in enumerate(sizes):
      shards.append(embedding_export.write_shard(out_dir, kind, index, len(sizes), (start, start + size),
                                                 ids[start:start + size], vectors[start:start + size]))
      start += size
    kinds[kind] = {"count": int(sum(sizes)), "shards": shards}
    data[kind] = (ids, vectors)
  manifest = {"format": embedding_export.FORMAT, "version": embedding_export.VERSION, "dim": DIM, "dtype": "float32",
              "normalized": True, "step": step, "config_hash": "c0ffee", "source": "shapes", "split": "val",
              "created_time": "2026-01-01T00:00:00", "kinds": kinds}
  embedding_export.write_json_atomic(os.path.join(out_dir, embedding_export.MANIFEST), manifest)
  return manifest, data


def _set_manifest(export_dir, **changes):
  path = os.path.join(export_dir, embedding_export.MANIFEST)
  manifest = json.load(open(path))
  manifest.update(changes)
  embedding_export.write_json_atomic(path, manifest)


def test_build_from_export_and_load(tmp_path):
  export = str(tmp_path / "export")
  manifest, data = _write_export(export)
  search = ann_index.build_from_export(export, method="exact")
  out = os.path.join(export, "index")
  assert search.kinds == ("images", "texts") and search.export_dir == export and search.out_dir == out
  assert search.manifest["step"] == 100
  assert sorted(os.listdir(out)) == ["images.faiss", "images.ids.npy", "index.json", "texts.faiss", "texts.ids.npy"]
  info = json.load(open(os.path.join(out, "index.json")))
  assert info["export_dir"] == export and info["export_dir_abs"] == os.path.abspath(export)
  assert {k: (v["method"], v["count"], v["dim"]) for k, v in info["kinds"].items()} == {
      "images": ("exact", 500, DIM), "texts": ("exact", 800, DIM)}
  assert info["export"]["fields"]["step"] == 100 and "created_time" not in info["export"]["fields"]

  queries = _random(5, DIM, seed=7)
  for kind in ("images", "texts"):
    ids, vectors = data[kind]
    expected = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :4]]
    np.testing.assert_array_equal(search.search(kind, queries, 4)[1], expected)
  loaded = ann_index.load_search_index(out)
  assert loaded.kinds == search.kinds and loaded.manifest == manifest
  for kind in loaded.kinds:
    np.testing.assert_array_equal(loaded.search(kind, queries, 4)[1], search.search(kind, queries, 4)[1])
  np.testing.assert_array_equal(ann_index.load_index(out, "texts").search(queries, 4)[1],
                                search.search("texts", queries, 4)[1])
  with pytest.raises(errors.DataError, match="pass kind="):
    ann_index.load_index(out)
  with pytest.raises(errors.DataError, match="no 'captions' index"):
    loaded.search("captions", queries, 4)

  # A time stamp is not the export's identity; the model step is.
  _set_manifest(export, created_time="2026-02-02T00:00:00")
  ann_index.load_search_index(out)
  _set_manifest(export, step=200)
  with pytest.raises(errors.DataError, match=r"step 100 -> 200.*xmodal index --export="):
    ann_index.load_search_index(out)


def test_load_detects_reexported_shards(tmp_path):
  export, out = str(tmp_path / "export"), str(tmp_path / "idx")
  _write_export(export)
  ann_index.build_from_export(export, out, kinds="images", method="auto")
  _write_export(export, image_seed=5)  # same step and config, other vectors
  with pytest.raises(errors.DataError, match="images shards"):
    ann_index.load_search_index(out)
  _write_export(export)
  assert ann_index.load_search_index(out).kinds == ("images",)


def test_moved_export_and_index_load_together(tmp_path):
  export = str(tmp_path / "a" / "export")
  _write_export(export)
  summary = ann_index.build_command(export, None, "hnsw", "images,texts")
  assert "images: hnsw" in summary and "texts: hnsw" in summary and "N=500" in summary
  moved = str(tmp_path / "b" / "export")
  shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
  loaded = ann_index.load_search_index(os.path.join(moved, "index"))
  assert os.path.samefile(loaded.export_dir, moved)
  os.remove(os.path.join(moved, embedding_export.MANIFEST))
  with pytest.raises(errors.MissingError, match="pass export_dir="):
    ann_index.load_search_index(os.path.join(moved, "index"))


def test_build_from_export_errors(tmp_path):
  with pytest.raises(errors.MissingError, match="manifest.json not found"):
    ann_index.build_from_export(str(tmp_path / "none"))
  export = str(tmp_path / "export")
  _write_export(export)
  with pytest.raises(errors.ConfigError, match="kinds"):
    ann_index.build_from_export(export, kinds="pictures")
  manifest = json.load(open(os.path.join(export, embedding_export.MANIFEST)))
  del manifest["kinds"]["texts"]
  embedding_export.write_json_atomic(os.path.join(export, embedding_export.MANIFEST), manifest)
  with pytest.raises(errors.DataError, match=r"no exported texts \(it has \['images'\]\).*--what=images"):
    ann_index.build_from_export(export, kinds=("images", "texts"))
  assert ann_index.build_from_export(export, kinds=()).kinds == ("images",)
  with pytest.raises(errors.MissingError, match="index.json not found"):
    ann_index.load_search_index(str(tmp_path / "export"))
