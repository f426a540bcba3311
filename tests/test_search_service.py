"""The search service (serving/search_service.py) over a tiny fake export: results, limits and error bodies,
image uploads, path traversal, the query queue and batching. The index and encoders are fakes with known vectors;
the fakes and the export writer are shared with tests/test_search_load.py and tests/test_search_page.py."""
from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import sys
import threading
import time
import types
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from xmodal_jax import errors
from xmodal_jax.data.text import WordVocab
from xmodal_jax.serving import embedding_export, search_service

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
           "purple": (140, 50, 170)}
NAMES = list(COLOURS)
DIM = 8
STEP = 42
HTML_CAPTION = "<b>bold</b> & <img src=x onerror=alert(1)> red"


def image_id(colour: str) -> int:
  return 100 + NAMES.index(colour)


def _unit(v: np.ndarray) -> np.ndarray:
  return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def colour_vector(i: int) -> np.ndarray:
  return _unit(np.eye(DIM)[i] + 0.05)


def text_vector(text: str) -> np.ndarray:
  """The colours a text names, weighted 1, 1/2, 1/3... by order of appearance; a hash-seeded vector otherwise."""
  words = [w.strip(".,!?&<>") for w in text.lower().split()]
  v = np.zeros(DIM)
  seen = [w for i, w in enumerate(words) if w in COLOURS and w not in words[:i]]
  for rank, word in enumerate(seen):
    v[NAMES.index(word)] += 1.0 / (rank + 1)
  if not seen:
    v = np.random.default_rng(zlib.crc32(text.encode())).normal(size=DIM)
  return _unit(v + 0.01)


def captions_of(colour: str) -> list[str]:
  extra = [HTML_CAPTION] if colour == "red" else []
  return [f"a {colour} square", f"a small {colour} thing on grey", *extra]


def jpeg_bytes(rgb, size=(40, 30), fmt="JPEG") -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, rgb).save(buffer, format=fmt)
  return buffer.getvalue()


def write_fake_export(root) -> str:
  """A finished-looking export: manifest, images.jsonl, texts.jsonl, images/<id>.jpg, plus bait for traversal
  tests (a JPEG and the manifest outside images/, a .txt inside, a symlink inside pointing outside)."""
  out = os.path.join(str(root), "export")
  os.makedirs(os.path.join(out, "images"))
  images, texts = [], []
  for colour, rgb in COLOURS.items():
    i = image_id(colour)
    with open(os.path.join(out, "images", f"{i}.jpg"), "wb") as f:
      f.write(jpeg_bytes(rgb, (64, 48)))
    images.append({"id": i, "file": f"images/{i}.jpg", "captions": captions_of(colour)})
    for caption in captions_of(colour):
      texts.append({"id": len(texts), "image_id": i, "text": caption})
  for kind, items in (("images", images), ("texts", texts)):
    with open(os.path.join(out, f"{kind}.jsonl"), "w") as f:
      f.writelines(json.dumps(item) + "\n" for item in items)
  manifest = {"format": embedding_export.FORMAT, "version": embedding_export.VERSION, "step": STEP, "dim": DIM,
              "kinds": {"images": {"count": len(images), "shards": []}, "texts": {"count": len(texts), "shards": []}}}
  embedding_export.write_json_atomic(os.path.join(out, embedding_export.MANIFEST), manifest)
  with open(os.path.join(out, "secret.jpg"), "wb") as f:
    f.write(jpeg_bytes((1, 2, 3)))
  with open(os.path.join(out, "images", "notes.txt"), "w") as f:
    f.write("not an image\n")
  os.symlink(os.path.join(out, "secret.jpg"), os.path.join(out, "images", "leak.jpg"))
  return out


def last_first_vector(text: str) -> np.ndarray:
  """The pair scorer's view of a text: the colours it names weighted by REVERSE order of appearance (the last one
  counts most), so re-ranking visibly reorders what the cosine (`text_vector`) ranked."""
  words = [w.strip(".,!?&<>") for w in text.lower().split()]
  seen = [w for i, w in enumerate(words) if w in COLOURS and w not in words[:i]]
  v = np.zeros(DIM, np.float32)
  for rank, word in enumerate(reversed(seen)):
    v[NAMES.index(word)] += 1.0 / (rank + 1)
  return v


def colour_set(indices) -> dict:
  """Image pair sets: {"colour": one-hot float32 [n, DIM]} (a dict: pair sets are pytrees)."""
  return {"colour": np.eye(DIM, dtype=np.float32)[np.asarray(indices, np.int64)]}


def fake_read_pair_sets(export_dir, kind, rows):
  """`embedding_export.read_pair_sets` over the fake export: images -> colour_set, texts -> {"words": [n, DIM]}."""
  items = embedding_export.read_items(export_dir, kind)
  rows = np.asarray(rows, np.int64)
  if kind == "images":
    return colour_set([next(NAMES.index(c) for c in NAMES if image_id(c) == items[r]["id"]) for r in rows])
  return {"words": np.stack([last_first_vector(items[r]["text"]) for r in rows]).reshape(len(rows), DIM)}


class FakeEncoders:
  """Known vectors: a text's colours (text_vector); an image's nearest colour by its mean RGB. Records the size
  of every encode_texts call; `delay_s` per call simulates the jitted encoder, `gate` (a threading.Event) blocks
  each call until set, `fail` raises. `tokenizer`: a word vocabulary of the fake captions. `pairs=True`: a pair
  scorer too (`score_pairs` = colour one-hot . last_first_vector), recording the pair count of every call."""

  def __init__(self, *, max_batch=8, delay_s=0.0, gate=None, fail=False, pairs=False):
    self.image_size, self.max_len, self.max_batch, self.dim, self.step = 32, 16, max_batch, DIM, STEP
    self.delay_s, self.gate, self.fail, self.has_pairs = delay_s, gate, fail, pairs
    self.text_calls: list[int] = []
    self.image_shapes: list[tuple] = []
    self.pair_calls: list[int] = []
    self.started = threading.Event()
    self.tokenizer = WordVocab.build([c for colour in NAMES for c in captions_of(colour)] + ["something then things"])

  def pair_texts(self, texts):
    return {"words": np.stack([last_first_vector(t) for t in texts])}

  def pair_images(self, images):
    return colour_set(self._nearest_colours(images))

  def score_pairs(self, image_set, text_set):
    assert set(image_set) == {"colour"} and set(text_set) == {"words"}
    assert len(image_set["colour"]) == len(text_set["words"])
    self.pair_calls.append(len(image_set["colour"]))
    if self.delay_s:
      time.sleep(self.delay_s)
    return (image_set["colour"] * text_set["words"]).sum(-1)

  def encode_texts(self, texts):
    self.text_calls.append(len(texts))
    self.started.set()
    if self.gate is not None:
      assert self.gate.wait(30), "test gate never opened"
    if self.delay_s:
      time.sleep(self.delay_s)
    if self.fail:
      raise RuntimeError("encoder exploded")
    if any(not any(ch.isalnum() for ch in t) for t in texts):  # as the real tokenizer refuses a text of no words
      raise errors.DataError("Caption is empty after normalisation.")
    return np.stack([text_vector(t) for t in texts])

  def _nearest_colours(self, images):
    images = np.asarray(images)
    assert images.dtype == np.uint8 and images.shape[1:] == (self.image_size, self.image_size, 3), images.shape
    means = images.reshape(len(images), -1, 3).mean(axis=1)
    palette = np.asarray(list(COLOURS.values()), np.float64)
    return np.argmin(((means[:, None] - palette[None]) ** 2).sum(-1), axis=1)

  def encode_images(self, images):
    self.image_shapes.append(np.asarray(images).shape)
    return np.stack([colour_vector(i) for i in self._nearest_colours(images)])


class FakeIndex:
  """Exact cosine search over the fake export's vectors (images: colour vectors; texts: their text vectors)."""

  def __init__(self, export_dir):
    self.export_dir = export_dir
    self.manifest = embedding_export.read_manifest(export_dir)
    self.kinds = ("images", "texts")
    images = embedding_export.read_items(export_dir, "images")
    texts = embedding_export.read_items(export_dir, "texts")
    self._ids = {"images": np.asarray([x["id"] for x in images], np.int64),
                 "texts": np.asarray([x["id"] for x in texts], np.int64)}
    self._vectors = {"images": np.stack([colour_vector(NAMES.index(
                         next(c for c in NAMES if image_id(c) == x["id"]))) for x in images]),
                     "texts": np.stack([text_vector(x["text"]) for x in texts])}
    self.calls = []

  def search(self, kind, queries, k):
    queries = np.asarray(queries)
    assert queries.dtype == np.float32 and queries.shape[1:] == (DIM,)
    self.calls.append((kind, queries.shape, k))
    scores = queries @ self._vectors[kind].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1).astype(np.float32), self._ids[kind][order]

  def vectors(self, kind, ids):
    positions = [int(np.flatnonzero(self._ids[kind] == i)[0]) for i in ids]
    return self._vectors[kind][positions].astype(np.float32)


def make_app(tmp_path, limits=None, captions=None, app_kwargs=None, **encoder_kwargs):
  """create_app over the fake export, FakeIndex and FakeEncoders(**encoder_kwargs); app_kwargs go to create_app
  (e.g. rerank=K, which also gives the encoders a pair scorer and reads the fake pair sets)."""
  export = write_fake_export(tmp_path)
  app_kwargs = dict(app_kwargs or {})
  if app_kwargs.get("rerank") is not None:
    encoder_kwargs.setdefault("pairs", True)
    app_kwargs.setdefault("read_pair_sets", fake_read_pair_sets)
  encoders = FakeEncoders(**encoder_kwargs)
  index = FakeIndex(export)
  app = search_service.create_app(index, encoders, limits=limits or search_service.ServiceLimits(),
                                  captions=captions, **app_kwargs)
  return app, encoders, index


@pytest.fixture
def served(tmp_path):
  app, encoders, index = make_app(tmp_path, limits=search_service.ServiceLimits(max_k=20, max_query_chars=50,
                                                                               max_upload_bytes=20_000))
  with TestClient(app, raise_server_exceptions=False) as client:
    yield client, encoders, index


def assert_error(response, status, *words):
  assert response.status_code == status, (response.status_code, response.text)
  assert response.headers["content-type"].startswith("application/json")
  body = response.json()
  assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and body["error"], body
  for word in words:
    assert word in body["error"], body
  return body


# ------------------------------------------------------------------------------------------------- results


def test_text_search_ranks_images_by_score(served):
  client, encoders, index = served
  response = client.post("/api/search/text", json={"query": "something blue, then red", "k": 3})
  assert response.status_code == 200, response.text
  body = response.json()
  results = body["results"]
  assert [r["image_id"] for r in results[:2]] == [image_id("blue"), image_id("red")]
  assert len(results) == 3
  scores = [r["score"] for r in results]
  assert scores == sorted(scores, reverse=True)
  expected = float(text_vector("something blue, then red") @ colour_vector(NAMES.index("blue")))
  assert scores[0] == pytest.approx(expected, abs=1e-6)
  assert results[0]["image_url"] == f"/images/{image_id('blue')}.jpg"
  assert results[0]["captions"] == captions_of("blue")
  assert body["query"] == "something blue, then red" and body["took_ms"] >= 0
  assert index.calls[-1] == ("images", (1, DIM), 3)
  image = client.get(results[0]["image_url"])
  assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
  assert Image.open(io.BytesIO(image.content)).size == (64, 48)


def test_k_defaults_and_is_capped_by_the_index_size(served):
  client, _, index = served
  assert len(client.post("/api/search/text", json={"query": "red"}).json()["results"]) == len(COLOURS)
  assert index.calls[-1][2] == len(COLOURS)  # default_k=10 > 5 images: asks the index for 5
  assert len(client.post("/api/search/text", json={"query": "red", "k": 20}).json()["results"]) == len(COLOURS)
  assert len(client.post("/api/search/text", json={"query": "red", "k": 1}).json()["results"]) == 1


def test_health_and_page(served):
  client, _, _ = served
  health = client.get("/api/health").json()
  assert health["status"] == "ok" and health["model_step"] == STEP and health["dim"] == DIM
  assert health["counts"] == {"images": 5, "texts": 11} and health["image_size"] == 32
  assert health["caption_search"] is False and health["limits"]["max_k"] == 20
  page = client.get("/")
  assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
  assert 'id="query"' in page.text and "/static/app.js" in page.text
  assert "default-src 'self'" in page.headers["content-security-policy"]
  assert page.headers["x-content-type-options"] == "nosniff"
  script = client.get("/static/app.js")
  assert script.status_code == 200 and "innerHTML" not in script.text.replace("never innerHTML", "")
  assert client.get("/static/style.css").status_code == 200
  assert_error(client.get("/static/index.html"), 404)
  assert_error(client.get("/static/../search_service.py"), 404)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_image_search_similar_images(served, fmt):
  client, encoders, _ = served
  data = jpeg_bytes(COLOURS["green"], (90, 50), fmt)
  response = client.post("/api/search/image?k=2", files={"image": ("query.bin", data, "application/octet-stream")})
  assert response.status_code == 200, response.text
  body = response.json()
  assert body["target"] == "images" and [r["image_id"] for r in body["results"]][0] == image_id("green")
  assert len(body["results"]) == 2 and body["results"][0]["captions"] == captions_of("green")
  assert encoders.image_shapes[-1] == (1, 32, 32, 3)


def test_image_search_captions(served):
  client, _, index = served
  response = client.post("/api/search/image", params={"k": 3, "target": "captions"},
                         files={"image": ("q.png", jpeg_bytes(COLOURS["red"], fmt="PNG"), "image/png")})
  assert response.status_code == 200, response.text
  results = response.json()["results"]
  assert index.calls[-1] == ("texts", (1, DIM), 3)
  assert {r["text"] for r in results} == set(captions_of("red"))
  assert all(r["image_id"] == image_id("red") and r["image_url"] == f"/images/{image_id('red')}.jpg"
             for r in results)
  assert all(isinstance(r["text_id"], int) for r in results)


def test_image_upload_is_judged_by_its_content(served, tmp_path):
  client, _, _ = served
  def post(data, name="x.jpg", kind="image/jpeg"):
    return client.post("/api/search/image", files={"image": (name, data, kind)})
  assert_error(post(b"this is not an image at all"), 415, "JPEG, PNG or WebP")
  assert_error(post(jpeg_bytes((1, 2, 3), fmt="GIF")), 415)  # a real image, of a format we do not take
  truncated = jpeg_bytes(COLOURS["red"], (200, 200))[:300]
  assert_error(post(truncated), 400, "corrupt")
  assert_error(post(b""), 400, "empty")
  # A PNG header that claims a huge canvas: refused from the header, before decoding.
  huge = io.BytesIO()
  Image.new("1", (8000, 6000)).save(huge, format="PNG")
  assert_error(post(huge.getvalue(), "big.png", "image/png"), 413, "pixels")
  # A PNG declared as JPEG still works: the declared type is ignored.
  assert post(jpeg_bytes(COLOURS["blue"], fmt="PNG")).status_code == 200
  rgba = io.BytesIO()
  Image.new("RGBA", (20, 60), (0, 0, 0, 0)).save(rgba, format="PNG")  # transparent: composited over white
  assert post(rgba.getvalue()).status_code == 200
  response = client.post("/api/search/image", files={"picture": ("x.jpg", jpeg_bytes((0, 0, 0)), "image/jpeg")})
  assert_error(response, 400, "'image'")


def test_upload_preprocessing_crops_the_centre():
  left_red_right_blue = Image.new("RGB", (300, 100), COLOURS["red"])
  left_red_right_blue.paste(Image.new("RGB", (200, 100), COLOURS["blue"]), (100, 0))
  buffer = io.BytesIO()
  left_red_right_blue.save(buffer, format="PNG")
  out = search_service.decode_upload(buffer.getvalue(), 32, 10_000_000)
  assert out.shape == (32, 32, 3) and out.dtype == np.uint8
  assert np.abs(out.reshape(-1, 3).mean(0) - COLOURS["blue"]).max() < 2  # the centre square is all blue


# -------------------------------------------------------------------------------------------------- limits


def test_query_limits(served):
  client, encoders, _ = served
  assert_error(client.post("/api/search/text", json={"query": "x" * 51}), 400, "51 characters")
  assert client.post("/api/search/text", json={"query": "red " + "x" * 46}).status_code == 200
  assert_error(client.post("/api/search/text", json={"query": "   "}), 400, "empty")
  for k in (0, -1, 21, 10**9):
    body = assert_error(client.post("/api/search/text", json={"query": "red", "k": k}), 400, "out of range")
    assert body["detail"]["max_k"] == 20
  assert_error(client.post("/api/search/text", json={"query": "red", "k": "5"}), 400)
  assert_error(client.post("/api/search/text", json={"query": "red", "k": True}), 400)
  assert_error(client.post("/api/search/text", json={"query": 5}), 400, "query")
  assert_error(client.post("/api/search/text", json={"k": 5}), 400, "query")
  assert_error(client.post("/api/search/text", json={"query": "red", "colour": 1}), 400)
  assert_error(client.post("/api/search/text", json=["red"]), 400)
  for k in ("0", "21", "abc"):
    files = {"image": ("x.jpg", jpeg_bytes((0, 0, 0)), "image/jpeg")}
    assert_error(client.post(f"/api/search/image?k={k}", files=files), 400)
  assert_error(client.post("/api/search/image?target=faces",
                           files={"image": ("x.jpg", jpeg_bytes((0, 0, 0)), "image/jpeg")}), 400, "target")
  assert encoders.text_calls == [1]  # none of the refused queries reached the encoder


def test_malformed_json_and_content_types(served):
  client, _, _ = served
  headers = {"content-type": "application/json"}
  body = assert_error(client.post("/api/search/text", content=b'{"query": "red",', headers=headers), 400,
                      "malformed JSON")
  assert body["detail"] is None
  assert_error(client.post("/api/search/text", content=b"\xff\xfe", headers=headers), 400, "malformed JSON")
  assert_error(client.post("/api/search/text", content=b'{"query": "red"}', headers={"content-type": "text/plain"}),
               415, "JSON")
  assert_error(client.post("/api/search/text", data={"query": "red"}), 415)
  assert_error(client.post("/api/search/image", json={"image": "red"}), 415, "multipart")
  assert_error(client.post("/api/search/image", content=jpeg_bytes((0, 0, 0)),
                           headers={"content-type": "image/jpeg"}), 415, "multipart")
  assert_error(client.get("/api/search/text"), 405)
  assert_error(client.get("/api/nothing"), 404)


def test_oversize_bodies(served):
  client, _, _ = served
  big = b"\xff\xd8" + os.urandom(30_000)  # limit 20,000 bytes
  assert_error(client.post("/api/search/image", files={"image": ("x.jpg", big, "image/jpeg")}), 413, "limit")
  assert_error(client.post("/api/search/text", json={"query": "x" * 70_000}), 413)  # JSON bodies: 64 KiB

  def chunks():  # no Content-Length: counted while reading
    yield b'{"query": "'
    for _ in range(100):
      yield b"x" * 1000
    yield b'"}'
  response = client.post("/api/search/text", content=chunks(), headers={"content-type": "application/json"})
  assert "content-length" not in response.request.headers
  assert_error(response, 413, "over the limit")
  boundary = "b0undary"

  def multipart():
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'.encode()
    yield b"Content-Type: image/jpeg\r\n\r\n"
    for _ in range(200):
      yield os.urandom(1000)
    yield f"\r\n--{boundary}--\r\n".encode()
  response = client.post("/api/search/image", content=multipart(),
                         headers={"content-type": f"multipart/form-data; boundary={boundary}"})
  assert_error(response, 413)
  # Just under the file limit, with the multipart around it: accepted (and then judged by its content).
  response = client.post("/api/search/image", files={"image": ("x.jpg", b"x" * 19_990, "image/jpeg")})
  assert_error(response, 415)


def test_limits_are_checked():
  with pytest.raises(errors.ConfigError, match="max_k"):
    search_service.ServiceLimits(max_k=0)
  with pytest.raises(errors.ConfigError, match="default_k"):
    search_service.ServiceLimits(max_k=5, default_k=10)


# --------------------------------------------------------------------------------------------- image files


@pytest.mark.parametrize("path", [
    "/images/../manifest.json", "/images/%2e%2e/manifest.json", "/images/%2E%2E%2Fmanifest.json",
    "/images/..%2Fsecret.jpg", "/images/..%5Csecret.jpg", "/images/%2e%2e/secret.jpg", "/images/../secret.jpg",
    "/images//etc/passwd", "/images/%2Fetc%2Fpasswd", "/images/%2F" + "%2F".join(["..", "export", "secret.jpg"]),
    "/images/leak.jpg", "/images/notes.txt", "/images/.hidden.jpg", "/images/", "/images/100.jpg%00.txt",
    "/images/999.jpg", "/images/100.JPG/", "/images/images/100.jpg", "/manifest.json", "/secret.jpg",
])
def test_image_files_stay_inside_the_images_folder(served, path):
  client, _, _ = served
  response = client.get(path)
  assert response.status_code == 404, (path, response.status_code)
  assert response.headers["content-type"].startswith("application/json") and "error" in response.json()
  assert b"JFIF" not in response.content and b"xmodal-embeddings" not in response.content


def test_image_file_served(served):
  client, _, index = served
  response = client.get(f"/images/{image_id('red')}.jpg")
  assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
  with open(os.path.join(index.export_dir, "images", f"{image_id('red')}.jpg"), "rb") as f:
    assert response.content == f.read()


def test_symlink_inside_the_folder_is_served(tmp_path):
  app, _, index = make_app(tmp_path)
  os.symlink(os.path.join(index.export_dir, "images", "101.jpg"), os.path.join(index.export_dir, "images", "a.jpg"))
  with TestClient(app) as client:
    assert client.get("/images/a.jpg").status_code == 200
    assert client.get("/images/leak.jpg").status_code == 404


# ------------------------------------------------------------------------------------------ caption search


def test_caption_search_needs_a_caption_database(served):
  client, _, _ = served
  assert_error(client.post("/api/search/captions", json={"query": "red"}), 501, "no caption database")


class _FakeCaptions:
  def search(self, query, k):
    return [{"image_id": image_id("yellow"), "score": 0.9, "text": "a yellow square", "text_id": 9},
            {"image_id": image_id("red"), "score": 0.2}][:k]


def test_caption_search_hook(tmp_path):
  app, _, _ = make_app(tmp_path, captions=_FakeCaptions())
  with TestClient(app) as client:
    assert client.get("/api/health").json()["caption_search"] is True
    results = client.post("/api/search/captions", json={"query": "yellow", "k": 5}).json()["results"]
  assert [r["image_id"] for r in results] == [image_id("yellow"), image_id("red")]
  assert results[0]["text"] == "a yellow square" and results[0]["captions"] == captions_of("yellow")
  assert results[1]["image_url"] == f"/images/{image_id('red')}.jpg" and "text" not in results[1]


def test_tfidf_caption_search(tmp_path):
  pytest.importorskip("sklearn", reason="scikit-learn is not installed: TF-IDF caption search is off")
  export = write_fake_export(tmp_path)
  captions = search_service.load_caption_search(export)
  assert isinstance(captions, search_service.TfidfCaptionSearch)
  hits = captions.search("small purple thing", 3)
  assert hits[0]["image_id"] == image_id("purple") and hits[0]["text"] == "a small purple thing on grey"
  assert len({h["image_id"] for h in hits}) == len(hits) and hits[0]["score"] > hits[-1]["score"] > 0
  assert captions.search("zebra", 3) == []
  app = search_service.create_app(FakeIndex(export), FakeEncoders(), captions=captions)
  with TestClient(app) as client:
    results = client.post("/api/search/captions", json={"query": "a small purple thing", "k": 2}).json()["results"]
  assert results[0]["image_id"] == image_id("purple") and results[0]["text"] == "a small purple thing on grey"
  assert results[0]["image_url"] == f"/images/{image_id('purple')}.jpg" and len(results) == 2


def test_no_tfidf_without_texts(tmp_path):
  export = write_fake_export(tmp_path)
  os.remove(os.path.join(export, "texts.jsonl"))
  assert search_service.load_caption_search(export) is None


# ----------------------------------------------------------------------------------- queue and batching


def _post_all(app, queries):
  """POSTs each query concurrently (one event loop, like one server) -> the responses, in order."""
  async def go():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
      return await asyncio.gather(*(client.post("/api/search/text", json={"query": q}) for q in queries))
  return asyncio.run(go())


def test_queue_full_is_503(tmp_path):
  gate = threading.Event()
  app, encoders, _ = make_app(tmp_path, limits=search_service.ServiceLimits(max_pending=3, batch_wait_ms=0),
                              max_batch=1, gate=gate)
  batcher = app.state.batcher
  colours = ("red", "green", "yellow", "purple")

  async def go():
    async def wait_for(condition):
      for _ in range(3000):
        if condition():
          return
        await asyncio.sleep(0.01)
      raise AssertionError(f"timed out: {encoders.text_calls} calls, {batcher.pending} pending")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
      post = lambda q: asyncio.create_task(client.post("/api/search/text", json={"query": q}))
      tasks = [post(colours[0])]
      await wait_for(encoders.started.is_set)  # the first query is in the (blocked) encoder
      tasks += [post(q) for q in colours[1:]]
      await wait_for(lambda: batcher.pending == 3)  # three more wait in the queue: it is full
      start = time.monotonic()
      refused = await client.post("/api/search/text", json={"query": "blue"})
      elapsed = time.monotonic() - start
      gate.set()
      return await asyncio.gather(*tasks), refused, elapsed

  responses, refused, elapsed = asyncio.run(go())
  assert_error(refused, 503, "queue is full")
  assert refused.json()["detail"] == {"pending": 3, "max_pending": 3}
  assert elapsed < 5  # answered at once, not after the blocked encoder (generous: no timing claim)
  assert [r.status_code for r in responses] == [200] * 4
  assert [r.json()["results"][0]["image_id"] for r in responses] == [image_id(c) for c in colours]
  assert encoders.text_calls == [1, 1, 1, 1]


def test_concurrent_queries_share_encoder_calls(tmp_path):
  app, encoders, _ = make_app(tmp_path, limits=search_service.ServiceLimits(batch_wait_ms=20), max_batch=8,
                              delay_s=0.05)
  queries = [NAMES[i % 5] + " things" for i in range(24)]
  responses = _post_all(app, queries)
  assert all(r.status_code == 200 for r in responses)
  assert [r.json()["results"][0]["image_id"] for r in responses] == [image_id(q.split()[0]) for q in queries]
  assert sum(encoders.text_calls) == 24 and max(encoders.text_calls) <= 8
  assert len(encoders.text_calls) < 24 / 2, encoders.text_calls
  assert app.state.batcher.batches == len(encoders.text_calls) and app.state.batcher.items == 24


def test_a_query_the_tokenizer_refuses_is_a_400_and_spares_its_batch(tmp_path):
  app, encoders, _ = make_app(tmp_path, limits=search_service.ServiceLimits(batch_wait_ms=20), max_batch=8,
                              delay_s=0.05)
  queries = ["red things", "?!", "blue things", "green things"]
  responses = _post_all(app, queries)
  assert_error(responses[1], 400, "cannot be encoded", "empty after normalisation")
  for i in (0, 2, 3):
    assert responses[i].status_code == 200
    assert responses[i].json()["results"][0]["image_id"] == image_id(queries[i].split()[0])


def test_encoder_failure_is_a_json_500(tmp_path):
  app, _, _ = make_app(tmp_path, fail=True)
  with TestClient(app, raise_server_exceptions=False) as client:
    assert_error(client.post("/api/search/text", json={"query": "red"}), 500, "internal error")
    assert_error(client.post("/api/search/text", json={"query": "red"}), 500)  # the worker survives


def test_inconsistent_export_is_refused(tmp_path):
  export = write_fake_export(tmp_path)
  with open(os.path.join(export, "images.jsonl"), "a") as f:
    f.write(json.dumps({"id": 7, "file": "images/7.jpg", "captions": []}) + "\n")
  with pytest.raises(errors.DataError, match="manifest says 5"):
    search_service.create_app(_index_over(export), FakeEncoders())


def _index_over(export):
  index = FakeIndex.__new__(FakeIndex)
  index.export_dir, index.manifest, index.kinds = export, embedding_export.read_manifest(export), ("images",)
  return index


# ------------------------------------------------------------------------------------------------ hosting


def test_remote_hosts_are_refused_unless_allowed(tmp_path):
  for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
    search_service.check_host(host)
  for host in ("0.0.0.0", "::", "192.168.1.4", "example.com"):
    with pytest.raises(errors.ConfigError, match="allow_remote"):
      search_service.check_host(host)
    search_service.check_host(host, allow_remote=True)
  with pytest.raises(errors.ConfigError, match="not a loopback address"):  # before the index is even looked for
    search_service.serve(str(tmp_path / "no-index"), host="0.0.0.0")
  sock = search_service.open_socket("127.0.0.1", 0)
  try:
    assert search_service.socket_url(sock).startswith("http://127.0.0.1:")
  finally:
    sock.close()


def test_serve_loads_index_encoders_and_captions(tmp_path, monkeypatch, capsys):
  export = write_fake_export(tmp_path)
  loaded, ran = {}, {}

  def load_search_index(index_dir):
    loaded["index_dir"] = index_dir
    return FakeIndex(export)

  def load_encoders(export_dir, **kwargs):
    loaded["encoders"] = (export_dir, kwargs)
    return FakeEncoders()

  class FakeServer:
    def __init__(self, app):
      self.app = app

    def run(self, sockets):
      ran["app"], ran["address"] = self.app, sockets[0].getsockname()
      sockets[0].close()

  import xmodal_jax.serving
  for name, fn in (("ann_index", load_search_index), ("exported_encoder", load_encoders)):
    module = types.ModuleType(f"xmodal_jax.serving.{name}")
    setattr(module, fn.__name__, fn)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(xmodal_jax.serving, name, module, raising=False)
  monkeypatch.setattr(search_service, "uvicorn_server", lambda app, **_: FakeServer(app))
  search_service.serve(str(tmp_path / "index"), port=0, max_batch=4)
  assert loaded == {"index_dir": str(tmp_path / "index"), "encoders": (export, {"max_batch": 4})}
  host, port = ran["address"]
  out = capsys.readouterr().out
  assert f"http://127.0.0.1:{port}/" in out and "5 images, 11 texts" in out and "model step 42" in out
  with TestClient(ran["app"]) as client:
    assert client.get("/api/health").json()["caption_search"] == (importlib.util.find_spec("sklearn") is not None)
