"""S5 on the command line: `xmodal caption` (image files, `--all` -> the caption database), `xmodal search` (by
caption, by embedding, by image) and their errors, over the session's tiny clip run and the MLE captioner trained
under it (tests/conftest.py: s5_tiny_runs); plus the search service's caption-database mode (`xmodal serve
--caption_db`)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import REPO, subprocess_xla_flags
from xmodal_jax.data import shapes_world
from xmodal_jax.serving import caption_search, search_service




def _xmodal(*args):
  env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags(), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "xmodal_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def _ok(result):
  assert result.returncode == 0, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
  return result.stdout


def _fails(result, *words):
  assert result.returncode != 0, (result.stdout[-2000:], result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  for word in words:
    assert word in result.stderr, result.stderr[-3000:]
  return result.stderr


@pytest.fixture(scope="module")
def runs(clip_tiny_run, s5_tiny_runs):
  """(reward model workdir, captioner workdir): the session's tiny clip run (tests/conftest.py) and the MLE
  captioner trained under it (configs/captioning/captioner_shapes.py:tiny, config.reward.workdir the clip run)."""
  return clip_tiny_run[1], s5_tiny_runs["mle"][1]


@pytest.fixture(scope="module")
def num_val(s5_tiny_runs):
  return int(s5_tiny_runs["mle"][0].data.num_val)


@pytest.fixture(scope="module")
def caption_db(runs):
  """`xmodal caption --all --captions_per_image=3` of the captioner: (stdout, the loaded database)."""
  _, mle = runs
  out = _ok(_xmodal("caption", f"--workdir={mle}", "--all", "--captions_per_image=3"))
  return out, caption_search.CaptionDatabase.load(os.path.join(mle, "caption_db"))


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("caption_images")
  world = shapes_world.generate_split("test", 2, seed=3)
  paths = []
  for i, image in enumerate(world.images):
    paths.append(str(folder / f"shape{i}.png"))
    Image.fromarray(image).resize((96, 80)).save(paths[-1])  # not square, not the run's size: resized and cropped
  corrupt = str(folder / "corrupt.png")
  with open(corrupt, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"not a png at all" * 4)
  return paths, corrupt


@pytest.fixture(scope="module")
def captioned(runs, image_files):
  """`xmodal caption` of the two PNG files, a corrupt one and a missing one: (the result, greedy captions)."""
  _, mle = runs
  paths, corrupt = image_files
  result = _xmodal("caption", f"--workdir={mle}", paths[0], corrupt, paths[1], "/no/such/image.jpg")
  lines = result.stdout.strip().splitlines()
  return result, [line.split("\t", 1)[1] if "\t" in line else None for line in lines]


# ---------------------------------------------------------------------------------------------- caption


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_caption_image_files_text_and_json(runs, image_files, captioned):
  _, mle = runs
  paths, corrupt = image_files
  result, greedy = captioned
  _fails(result, corrupt, "corrupt", "/no/such/image.jpg", "does not exist", "2 of 4 image(s)")
  lines = result.stdout.strip().splitlines()
  assert [line.split("\t")[0] for line in lines] == paths, result.stdout  # the readable ones, in order
  assert all(isinstance(c, str) and "\t" not in c for c in greedy)

  rows = [json.loads(line) for line in _ok(_xmodal("caption", f"--workdir={mle}", "--json",
                                                   "--captions_per_image=2", *paths)).strip().splitlines()]
  assert [r["image"] for r in rows] == paths and all(r["decode"] == "greedy" and r["step"] == 4 for r in rows)
  assert [r["caption"] for r in rows] == greedy  # the first caption is the run's config.decode (greedy)
  assert all(len(r["captions"]) == 2 and r["captions"][0] == r["caption"] for r in rows)

  beam = [json.loads(line) for line in _ok(_xmodal("caption", f"--workdir={mle}", "--json", "--decode=beam",
                                                   "--beam_size=2", paths[0])).strip().splitlines()]
  assert len(beam) == 1 and beam[0]["decode"] == "beam" and isinstance(beam[0]["caption"], str)


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_caption_errors(runs, image_files):
  clip, mle = runs
  paths, corrupt = image_files
  _fails(_xmodal("caption", f"--workdir={mle}", corrupt), corrupt, "corrupt", "none of the 1 image(s)")
  _fails(_xmodal("caption", f"--workdir={clip}", paths[0]), "'clip' run, not a captioning run",
         "configs/captioning/captioner_shapes.py")
  _fails(_xmodal("caption", f"--workdir={mle}", "--decode=nucleus", paths[0]), "--decode", "greedy|beam|sample")


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_caption_all_writes_the_caption_database(runs, caption_db, s5_tiny_runs, num_val):
  clip, mle = runs
  out, db = caption_db
  assert os.path.join(mle, "caption_db") in out and "xmodal search" in out
  from xmodal_jax.data import sources
  val = sources.load_split(s5_tiny_runs["mle"][0].data, "val")
  assert db.num_images == num_val == len(val) and db.num_captions == 3 * num_val
  np.testing.assert_array_equal(db.image_ids, val.image_ids)
  assert db.images == [""] * num_val  # the shapes world has no file names
  assert db.references == [list(c) for c in val.captions]
  assert all(len(cs) == 3 for cs in db.captions)
  dim = db.image_embeddings.shape[1]
  assert db.image_embeddings.shape == (num_val, dim) and db.caption_embeddings.shape == (3 * num_val, dim)
  assert np.all(np.isfinite(db.image_embeddings)) and np.all(np.isfinite(db.caption_embeddings))
  meta = db.meta
  assert meta["workdir"] == mle and meta["step"] == 4 and meta["split"] == "val" and meta["embed_workdir"] == clip
  assert meta["decode"]["method"] == "greedy" and meta["captions_per_image"] == 3
  assert meta["extra_captions"] == {"method": "sample", "temperature": 1.0, "seed": 0}


# ---------------------------------------------------------------------------------------------- search


def _search(mle, *args):
  return json.loads(_ok(_xmodal("search", f"--workdir={mle}", "--json", *args)))


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_search_by_caption_finds_the_image_of_a_generated_caption(runs, caption_db, num_val):
  _, mle = runs
  _, db = caption_db
  flat = db.flat_captions
  owner = db.caption_owner
  # A generated caption whose words (as TF-IDF sees them: runs of 2+ letters, in order) no other image's caption
  # has: under the cosine scoring it matches itself best, with score 1.
  words = [re.findall(r"(?u)\b\w\w+\b", c.lower()) for c in flat]
  row = next(r for r, w in enumerate(words) if w and all(words[j] != w for j in np.flatnonzero(owner != owner[r])))
  image = int(db.image_ids[owner[row]])
  body = _search(mle, "--scoring=cosine", "--k=3", flat[row])
  assert body["by"] == "caption" and body["scoring"] == "cosine" and len(body["results"]) <= 3
  top = body["results"][0]
  assert top["image_id"] == image and top["score"] == pytest.approx(1.0, abs=1e-5)
  assert re.findall(r"(?u)\b\w\w+\b", top["caption"].lower()) == words[row]
  assert sorted(top["captions"] + [top["caption"]]) == sorted(db.captions[owner[row]])
  # The seed's "sum" scoring (the default) over the same database, as the library ranks it.
  body = _search(mle, "--k=5", flat[row])
  assert body["scoring"] == "sum"
  expected = db.search(flat[row], 5)
  assert [h["image_id"] for h in body["results"]] == [h["image_id"] for h in expected]
  assert image in [h["image_id"] for h in db.search(flat[row], num_val)]
  # An attribute word keeps only the images with a caption that has it.
  word = db.index().words(flat[row])[0]
  allowed = {int(db.image_ids[i]) for i in np.flatnonzero(db.index().images_with(word))}
  body = _search(mle, f"--attribute={word}", f"--k={num_val}", flat[row])
  assert body["results"] and {h["image_id"] for h in body["results"]} <= allowed
  assert "No image matches 'zebra'; words no generated caption has: zebra." in _ok(
      _xmodal("search", f"--workdir={mle}", "zebra"))


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_search_by_embedding(runs, caption_db):
  clip, mle = runs
  _, db = caption_db
  body = _search(mle, "--by=embedding", "--k=4", "a large red circle")
  assert body["by"] == "embedding" and len(body["results"]) == 4
  from xmodal_jax.systems.captioning import image_captioner
  vector = image_captioner.embed_query(clip, "a large red circle")
  expected = db.search_by_embedding(vector, 4)
  assert [h["image_id"] for h in body["results"]] == [h["image_id"] for h in expected]
  np.testing.assert_allclose([h["score"] for h in body["results"]], [h["score"] for h in expected], atol=1e-4)
  assert [h["caption"] for h in body["results"]] == [h["caption"] for h in expected]


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_search_by_image(runs, caption_db, image_files, captioned):
  _, mle = runs
  _, db = caption_db
  paths, _ = image_files
  greedy = captioned[1][0]
  lines = _ok(_xmodal("search", f"--workdir={mle}", f"--image={paths[0]}", "--k=3")).splitlines()
  assert lines[0] == f"{paths[0]}: generated caption {greedy!r}"  # captioned as `xmodal caption` does
  ranked = [line for line in lines[1:] if not line.startswith("       also: ")]
  expected = db.search(greedy, 3)  # then searched by that caption
  assert ranked == [f"{rank:>3}. {hit['score']:.4f}  image {hit['image_id']}: {hit['caption']}"
                    for rank, hit in enumerate(expected, 1)]


@pytest.mark.slow  # uses the tiny S5 runs (tests/conftest.py)
def test_search_errors(runs, caption_db, image_files, tmp_path):
  clip, mle = runs
  paths, corrupt = image_files
  empty = str(tmp_path / "nothing")
  _fails(_xmodal("search", f"--workdir={mle}", f"--caption_db={empty}", "red"), empty, "no caption database",
         f"xmodal caption --workdir={mle} --all")
  _fails(_xmodal("search", f"--workdir={mle}", f"--image={corrupt}"), corrupt, "corrupt")
  _fails(_xmodal("search", f"--workdir={mle}", "--by=pixels", "red"), "--by", "caption|embedding")
  _fails(_xmodal("search", f"--workdir={clip}", "red"), "'clip' run, not a captioning run")
  db = caption_search.CaptionDatabase.load(os.path.join(mle, "caption_db"))
  db.image_embeddings = db.caption_embeddings = None
  db.meta = dict(db.meta, embed_workdir=None)
  db.save(str(tmp_path / "plain"))
  _fails(_xmodal("search", f"--workdir={mle}", f"--caption_db={tmp_path / 'plain'}", "--by=embedding", "red"),
         "has no image embeddings", "--by=caption")


# --------------------------------------------------------------------------------- the service's caption mode


def _generated_db(image_ids):
  """Generated captions where the two scorings disagree: "red circle" matches image 0's short caption exactly
  (cosine 1) and image 1's long one with both words repeated (the larger summed TF-IDF weights)."""
  captions = [["red circle", "green blob"], ["a red circle beside a red circle and a circle", "noise here"]]
  captions += [[f"a plain {w} thing"] for w in ("blue", "yellow", "purple")]
  return caption_search.CaptionDatabase(image_ids=image_ids, images=[""] * 5, captions=captions)


def test_service_searches_a_caption_database(tmp_path, monkeypatch, capsys):
  from tests import test_search_service as fakes
  export = fakes.write_fake_export(tmp_path)
  ids = [fakes.image_id(c) for c in fakes.NAMES]  # red, green, blue, yellow, purple
  directory = str(tmp_path / "caption_db")
  _generated_db(ids).save(directory)

  ran = {}

  class FakeServer:
    def __init__(self, app):
      self.app = app

    def run(self, sockets):
      ran["app"] = self.app
      sockets[0].close()

  import xmodal_jax.serving
  for name, fn in (("ann_index", lambda index_dir: fakes.FakeIndex(export)),
                   ("exported_encoder", lambda export_dir, **kwargs: fakes.FakeEncoders())):
    module = types.ModuleType(f"xmodal_jax.serving.{name}")
    setattr(module, {"ann_index": "load_search_index", "exported_encoder": "load_encoders"}[name], fn)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(xmodal_jax.serving, name, module, raising=False)
  monkeypatch.setattr(search_service, "uvicorn_server", lambda app, **_: FakeServer(app))
  search_service.serve(str(tmp_path / "index"), port=0, caption_db=directory)
  assert f"caption search on: 5 images' generated captions from {directory}" in capsys.readouterr().out

  with TestClient(ran["app"], raise_server_exceptions=False) as client:
    assert client.get("/api/health").json()["caption_search"] is True
    body = client.post("/api/search/captions", json={"query": "red circle", "k": 5}).json()
    assert body["scoring"] == "sum" and body["attribute"] is None
    first = body["results"][0]
    assert [r["image_id"] for r in body["results"]] == [ids[1], ids[0]]  # "sum": more matched weight first
    assert first["text"] == "a red circle beside a red circle and a circle" and first["text_id"] == 2
    assert first["generated_captions"] == ["noise here"]
    assert first["captions"] == fakes.captions_of("green")  # the export's own captions of that image
    assert first["image_url"] == f"/images/{ids[1]}.jpg"
    cosine = client.post("/api/search/captions?scoring=cosine", json={"query": "red circle"}).json()
    assert cosine["scoring"] == "cosine" and [r["image_id"] for r in cosine["results"]][:2] == [ids[0], ids[1]]
    assert cosine["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    only = client.post("/api/search/captions", json={"query": "red circle", "attribute": "beside"}).json()
    assert [r["image_id"] for r in only["results"]] == [ids[1]] and only["attribute"] == "beside"
    fakes.assert_error(client.post("/api/search/captions?scoring=bm25", json={"query": "red"}), 400, "bm25", "sum")
    fakes.assert_error(client.post("/api/search/captions", json={"query": "red", "attribute": "two words"}), 400,
                       "one word")
    fakes.assert_error(client.post("/api/search/captions", json={"query": "red", "attribute": 3}), 400, "attribute")
    fakes.assert_error(client.post("/api/search/text", json={"query": "red", "attribute": "red"}), 400,
                       "attribute")  # the text search takes no attribute

  # Without --caption_db: the export's texts, as before; the options are refused there.
  app = search_service.create_app(fakes.FakeIndex(export), fakes.FakeEncoders(),
                                  captions=search_service.load_caption_search(export))
  with TestClient(app) as client:
    results = client.post("/api/search/captions", json={"query": "small purple thing", "k": 2}).json()["results"]
    assert results[0]["image_id"] == fakes.image_id("purple") and "generated_captions" not in results[0]
    fakes.assert_error(client.post("/api/search/captions?scoring=sum", json={"query": "red"}), 400, "--caption_db")
  with pytest.raises(Exception, match="meta.json not found"):
    search_service.serve(str(tmp_path / "index"), port=0, caption_db=str(tmp_path / "missing"))
