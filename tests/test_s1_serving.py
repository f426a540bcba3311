"""S1 serving: p(q | x) over all queries, query-space image similarity, new queries kept in the run (seed eq. 2),
new phrases' text embeddings, and the `xmodal classify` flags for them. One tiny shapes run per module."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO, subprocess_xla_flags
from xmodal_jax import errors
from xmodal_jax.data import shapes_world
from xmodal_jax.systems.classifier import added_queries, phrase_lookup

def _softmax(logits):
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _cosines(x, w):
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  return x @ (w / np.linalg.norm(w, axis=-1, keepdims=True)).T


@pytest.fixture(scope="module")
def tiny_run(s1_tiny_run):
  """The session's tiny shapes run (tests/conftest.py), shared with tests/test_s1_pipeline.py: read only here;
  tests that add queries copy it."""
  return s1_tiny_run[:2]


@pytest.fixture(scope="module")
def classifier(tiny_run):
  from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
  return MultimodalClassifier.from_workdir(tiny_run[1], mesh_shape=(-1, 1))


@pytest.fixture(scope="module")
def world():
  return shapes_world.generate_split("test", 8, seed=0)


def _save_images(world, folder, count=8):
  os.makedirs(folder, exist_ok=True)
  paths = [os.path.join(folder, f"img{i}.png") for i in range(count)]
  for image, path in zip(world.images, paths):
    Image.fromarray(image).save(path)
  return paths


def _xmodal(*args):
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags(), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "xmodal_jax.main", "classify", *args], cwd=REPO, env=env,
                        capture_output=True, text=True)


# ---- phrase_lookup: the distribution and the similarity, against numpy

def test_top_query_probabilities_are_the_softmax_over_all_queries():
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(300, 8)).astype(np.float32)
  full = _softmax(16.0 * _cosines(x, w))  # seed eq. 1: softmax(-s (1 - cos)) = softmax(s cos)
  probs, cosines, ids = (np.asarray(a) for a in phrase_lookup.top_query_probabilities(x, w, 4, 16.0))
  np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :4])
  np.testing.assert_allclose(probs, np.take_along_axis(full, ids, axis=1), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(cosines, np.take_along_axis(_cosines(x, w), ids, axis=1), atol=1e-5)
  _, top_ids = phrase_lookup.top_queries(x, w, 4)
  np.testing.assert_array_equal(ids, np.asarray(top_ids))  # the generated phrases are the most probable queries
  everything = np.asarray(phrase_lookup.top_query_probabilities(x, w, 300, 16.0)[0])
  np.testing.assert_allclose(everything.sum(axis=1), 1.0, atol=1e-5)


def test_query_space_similarity_is_the_cosine_of_the_distributions_in_chunks():
  rng = np.random.default_rng(1)
  x_a, x_b = rng.normal(size=(3, 8)), rng.normal(size=(4, 8))
  w = rng.normal(size=(1000, 8)).astype(np.float32)
  p_a, p_b = _softmax(8.0 * _cosines(x_a, w)), _softmax(8.0 * _cosines(x_b, w))
  expected = (p_a @ p_b.T) / np.outer(np.linalg.norm(p_a, axis=1), np.linalg.norm(p_b, axis=1))
  for chunk in (1000, 128):  # one pass, and K in 8 chunks (the last one short)
    np.testing.assert_allclose(phrase_lookup.query_space_similarity(x_a, x_b, w, 8.0, chunk=chunk), expected,
                               rtol=1e-4)
  np.testing.assert_allclose(phrase_lookup.query_log_partition(x_a, w, 8.0, chunk=128),
                             np.log(np.exp(8.0 * _cosines(x_a, w)).sum(axis=1)), rtol=1e-5)
  self_sim = phrase_lookup.query_space_similarity(x_a, x_a, w, 8.0)
  np.testing.assert_allclose(np.diag(self_sim), 1.0, atol=1e-5)


# ---- MultimodalClassifier

def test_classifier_query_probabilities_and_classify_fields(classifier, world):
  images = world.images[:3]
  k = len(classifier.queries)
  x = classifier.image_embeddings(images)
  full = _softmax(classifier.query_scale * _cosines(x, classifier.query_vectors))
  assert classifier.query_scale == 16.0  # configs/s1/common.py text_generator loss.scale
  top = classifier.query_probabilities(images, 5)
  np.testing.assert_allclose(top["probabilities"], np.take_along_axis(full, top["ids"], axis=1), rtol=1e-3)
  assert np.all(np.diff(top["probabilities"], axis=1) <= 0)
  whole = classifier.query_probabilities(images, 10 * k)  # clipped to K: the whole distribution
  assert whole["ids"].shape == (3, k) and sorted(whole["ids"][0].tolist()) == list(range(k))
  np.testing.assert_allclose(whole["probabilities"].sum(axis=1), 1.0, atol=1e-4)
  rows = classifier.classify(images, top_queries=4)
  old_keys = {"label", "probability", "probabilities", "phrases"}
  assert set(classifier.classify(images[:1])[0]) == old_keys  # the default output is unchanged
  for row, ids in zip(rows, top["ids"]):
    assert set(row) == old_keys | {"queries", "num_queries"} and row["num_queries"] == k
    assert [q["id"] for q in row["queries"]] == ids[:4].tolist()
    assert [q["query"] for q in row["queries"][:3]] == [p for p, _ in row["phrases"]]
    assert all(0.0 < q["p"] <= 1.0 for q in row["queries"])


def test_classifier_query_similarity(classifier, world):
  sim = classifier.query_similarity(world.images[:4])
  assert sim.shape == (4, 4)
  np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-4)
  np.testing.assert_allclose(sim, sim.T, atol=1e-5)
  x = classifier.image_embeddings(world.images[:4])
  p = _softmax(classifier.query_scale * _cosines(x, classifier.query_vectors))
  expected = (p @ p.T) / np.outer(np.linalg.norm(p, axis=1), np.linalg.norm(p, axis=1))
  np.testing.assert_allclose(sim, expected, rtol=1e-3, atol=1e-5)
  assert classifier.query_similarity(world.images[:1], world.images[:4]).shape == (1, 4)


def test_new_phrase_of_known_words_is_embedded_from_them_not_from_unk(classifier):
  """A phrase whose words are known but whose bigram is not: its embedding comes from its known n-grams."""
  vocab = classifier.ngrams
  assert vocab.known_ids("triangle blue") == [vocab.known_ids("triangle")[0], vocab.known_ids("blue")[0]]
  new, triangle, blue, unk = classifier.embed_phrases(["triangle blue", "triangle", "blue", "zqx wvj"])
  words = (triangle + blue) / np.linalg.norm(triangle + blue)
  assert float(new @ words) > 0.95
  assert float(new @ unk) < float(new @ words) and not np.allclose(new, unk, atol=1e-3)
  with pytest.raises(errors.DataError, match="none of the words of 'zqx wvj'.*known word"):
    classifier.add_queries(["zqx wvj"], [np.zeros((1, 32, 32, 3), np.uint8)])
  with pytest.raises(errors.DataError, match="already in the vocabulary"):
    classifier.add_queries(["Blue  Circle"], [np.zeros((1, 32, 32, 3), np.uint8)])


def test_add_queries_to_run_errors_name_the_entry(tiny_run, world, tmp_path):
  from xmodal_jax.systems.classifier.classifier import MultimodalClassifier
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run[1], workdir)
  model = MultimodalClassifier.from_workdir(workdir, mesh_shape=(-1, 1))
  paths = _save_images(world, str(tmp_path / "imgs"), 2)
  (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png")
  bad = [added_queries.Request("red blob", [paths[0], str(tmp_path / "imgs" / "bad.png")], "req.json line 3")]
  with pytest.raises(errors.DataError, match=r"req.json line 3: phrase 'red blob': .*bad.png: unreadable or corrupt"):
    model.add_queries_to_run(bad)
  assert not os.path.exists(added_queries.queries_path(workdir))  # nothing written
  ids = model.add_queries_to_run([added_queries.Request("red blob", paths, "req.json line 1")])
  assert ids == [len(model.queries) - 1]
  with pytest.raises(errors.DataError, match="req.json line 1: phrase 'red blob' is already in the vocabulary"):
    model.add_queries_to_run([added_queries.Request("red blob", paths, "req.json line 1")])


# ---- request files and the store, without a model

def test_request_file_formats_and_errors(tmp_path):
  (tmp_path / "imgs").mkdir()
  for name in ("a.png", "b.png"):
    (tmp_path / "imgs" / name).write_bytes(b"x")
  a, b = str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b.png")
  obj = tmp_path / "req.json"
  obj.write_text(json.dumps({" red   blob ": ["imgs/a.png", "imgs/b.png"], "blue blob": "imgs/b.png"}))
  assert [(r.phrase, r.images) for r in added_queries.read_request(str(obj))] == [("red blob", [a, b]),
                                                                                  ("blue blob", [b])]
  lines = tmp_path / "req.jsonl"
  lines.write_text('{"phrase": "red blob", "images": ["imgs/a.png"]}\n\n{"phrase": "big", "images": ["' + b + '"]}\n')
  got = added_queries.read_request(str(lines))
  assert [(r.phrase, r.images, r.where) for r in got] == [("red blob", [a], f"{lines} line 1"),
                                                          ("big", [b], f"{lines} line 3")]
  listed = tmp_path / "list.json"
  listed.write_text(json.dumps([{"phrase": "red blob", "images": ["imgs/a.png"]}]))
  assert added_queries.read_request(str(listed))[0].images == [a]

  def fails(content, error, pattern, name="bad.json"):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(error, match=pattern):
      added_queries.read_request(str(path))

  with pytest.raises(errors.MissingError, match="nope.json does not exist. Pass a file with"):
    added_queries.read_request(str(tmp_path / "nope.json"))
  fails("{", errors.DataError, "malformed JSON at line 1")
  fails('{"phrase": "x", "images": ["imgs/a.png"]}\n{', errors.DataError, "bad.jsonl line 2: malformed JSON",
        name="bad.jsonl")
  fails(json.dumps({"  ": ["imgs/a.png"]}), errors.DataError, "phrase '  ' is empty or has no letters")
  fails(json.dumps({"red blob": []}), errors.DataError, "phrase 'red blob' has no example images. List at least one")
  fails(json.dumps({"red blob": ["imgs/missing.png"]}), errors.MissingError,
        r"phrase 'red blob': image .*missing.png does not exist. Fix the path \(relative to")
  twice = [{"phrase": "red blob", "images": ["imgs/a.png"]}, {"phrase": "red blob", "images": ["imgs/b.png"]}]
  fails(json.dumps(twice), errors.DataError, "entry 1: phrase 'red blob' is already given at .* entry 0")
  fails(json.dumps([{"text": "red blob"}]), errors.DataError, 'entry 0: .* is not {"phrase"')
  fails('{"red blob": ["imgs/a.png"], "red blob": ["imgs/b.png"]}', errors.DataError,
        "'red blob' is given twice in one JSON object")
  fails("[]", errors.DataError, "no queries in it")
  fails("3", errors.DataError, "a JSON int; write a JSON object")


def test_store_appends_atomically_and_refuses_duplicates_and_another_generator(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  w = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
  sig = added_queries.generator_signature(w)
  trained = [f"q{i}" for i in range(10)]
  assert added_queries.load(workdir) is None
  one = added_queries.append(workdir, ["red blob"], np.ones((1, 4)), [["/a.png"]], sig, trained)
  assert one.phrases == ["red blob"] and os.path.exists(tmp_path / "added_queries.1.npz")
  both = added_queries.append(workdir, ["blue blob"], 2 * np.ones((1, 4)), [["/b.png"]], sig, trained)
  assert both.phrases == ["red blob", "blue blob"]
  assert not os.path.exists(tmp_path / "added_queries.1.npz") and os.path.exists(tmp_path / "added_queries.2.npz")
  meta = json.load(open(tmp_path / "added_queries.json"))
  assert [(q["phrase"], q["id"], q["images"]) for q in meta["queries"]] == [("red blob", 10, ["/a.png"]),
                                                                            ("blue blob", 11, ["/b.png"])]
  loaded = added_queries.load(workdir)
  np.testing.assert_array_equal(loaded.prototypes, [[1.0] * 4, [2.0] * 4])

  def snapshot():
    return {name: (tmp_path / name).read_bytes() for name in sorted(os.listdir(tmp_path))}

  before = snapshot()
  for phrase in ("red blob", "q3"):
    with pytest.raises(errors.DataError, match=f"{phrase!r}.* already exist"):
      added_queries.append(workdir, [phrase], np.ones((1, 4)), [["/c.png"]], sig, trained)
  assert snapshot() == before

  def crash(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(json, "dumps", crash)  # dies after the new .npz, before the .json is committed
  with pytest.raises(OSError, match="disk full"):
    added_queries.append(workdir, ["green blob"], np.ones((1, 4)), [["/c.png"]], sig, trained)
  monkeypatch.undo()
  assert added_queries.load(workdir).phrases == ["red blob", "blue blob"]  # the previous version, intact
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]

  other = added_queries.generator_signature(w + 1)
  with pytest.raises(errors.WorkdirError, match="another text generator.*re-trained"):
    added_queries.check_generator(loaded, other, workdir)
  with pytest.raises(errors.WorkdirError, match="another text generator"):
    added_queries.append(workdir, ["green blob"], np.ones((1, 4)), [["/c.png"]], other, trained)
  (tmp_path / "added_queries.json").write_text("{not json")
  with pytest.raises(errors.WorkdirError, match="cannot read the added queries.*delete"):
    added_queries.load(workdir)


# ---- the command line, in fresh processes

def test_cli_add_queries_persist_and_a_fresh_process_uses_them(tiny_run, world, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_run[1], workdir)
  paths = _save_images(world, str(tmp_path / "imgs"))
  request = tmp_path / "new.jsonl"  # image paths relative to the file
  request.write_text(json.dumps({"phrase": "my favourite circle", "images": ["imgs/img0.png", "imgs/img1.png"]}))
  added = _xmodal(f"--workdir={workdir}", f"--add_queries={request}", "--json")
  assert added.returncode == 0, added.stderr[-3000:]
  report = json.loads(added.stdout.strip().splitlines()[-1])
  k = len(shapes_world.all_queries())
  assert report["added"] == [{"query": "my favourite circle", "id": k, "images": 2}]
  assert report["file"] == os.path.join(workdir, "added_queries.json")

  again = _xmodal(f"--workdir={workdir}", f"--add_queries={request}")
  assert again.returncode == 1 and "Traceback" not in again.stderr
  assert "'my favourite circle' is already in the vocabulary" in again.stderr
  missing = tmp_path / "missing.json"
  missing.write_text(json.dumps({"blue blob": ["imgs/nope.png"]}))
  bad = _xmodal(f"--workdir={workdir}", f"--add_queries={missing}")
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  assert "nope.png does not exist. Fix the path" in bad.stderr

  out = _xmodal(f"--workdir={workdir}", "--json", "--top_queries=2", paths[0], paths[5])
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert rows[0]["phrases"][0][0] == "my favourite circle"  # the prototype's image generates the new phrase
  assert rows[0]["queries"][0]["query"] == "my favourite circle" and rows[0]["queries"][0]["id"] == k
  assert all(len(r["queries"]) == 2 and r["num_queries"] == k + 1 for r in rows)

  sim = _xmodal(f"--workdir={workdir}", "--json", f"--similar_to={paths[0]}", *paths[:4])
  assert sim.returncode == 0, sim.stderr[-3000:]
  ranked = [json.loads(line) for line in sim.stdout.splitlines() if line.startswith("{")]
  assert ranked[0]["image"] == paths[0] and ranked[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
  assert sorted(r["image"] for r in ranked) == sorted(paths[:4]) and all(r["similar_to"] == paths[0] for r in ranked)
  assert [r["similarity"] for r in ranked] == sorted((r["similarity"] for r in ranked), reverse=True)
