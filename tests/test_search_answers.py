"""What the search page needs from the service's answers (issue 30, section 3), over the fake export of
tests/test_search_service.py: score kinds and ranks, unknown query words (serving/query_words.py, with the real
tokenizer kinds), caption-database warnings and example queries in /api/health (and on stderr at start-up), and
"more like this" by an indexed image id."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.test_search_service import COLOURS, NAMES, FakeEncoders, FakeIndex, _FakeCaptions, assert_error, \
    captions_of, colour_vector, image_id, jpeg_bytes, make_app, write_fake_export
from xmodal_jax.data import tokenizers
from xmodal_jax.data.text import WordVocab
from xmodal_jax.serving import caption_search, query_words, search_service


@pytest.fixture
def client(tmp_path):
  app, encoders, index = make_app(tmp_path, captions=_FakeCaptions())
  with TestClient(app, raise_server_exceptions=False) as test_client:
    yield test_client, encoders, index


# ------------------------------------------------------------------------------------------- score kinds


def test_every_result_says_its_score_kind_and_rank(client):
  test_client, _, _ = client
  body = test_client.post("/api/search/text", json={"query": "a red square", "k": 3}).json()
  assert body["score_kind"] == "cosine" and body["rerank"] is None
  assert [(r["rank"], r["score_kind"]) for r in body["results"]] == [(1, "cosine"), (2, "cosine"), (3, "cosine")]
  files = {"image": ("q.png", jpeg_bytes(COLOURS["blue"], fmt="PNG"), "image/png")}
  for target in ("images", "captions"):
    body = test_client.post("/api/search/image", params={"k": 2, "target": target}, files=files).json()
    assert body["score_kind"] == "cosine" and [r["score_kind"] for r in body["results"]] == ["cosine"] * 2
  body = test_client.post("/api/search/captions", json={"query": "yellow", "k": 2}).json()
  assert body["score_kind"] == "tfidf" and [(r["rank"], r["score_kind"]) for r in body["results"]] == [
      (1, "tfidf"), (2, "tfidf")]


# ----------------------------------------------------------------------------------------- unknown words


def test_unknown_query_words_are_flagged(client):
  test_client, _, _ = client
  body = test_client.post("/api/search/text", json={"query": "xyzzy qwerty foo"}).json()
  assert body["unknown_words"] == {"count": 3, "total": 3, "words": ["xyzzy", "qwerty", "foo"]}
  assert body["warning"] == "3 of 3 words unknown: results are not meaningful"
  assert len(body["results"]) == 5  # still answered: the page shows the warning beside them
  body = test_client.post("/api/search/text", json={"query": "A red, XYZZY square!"}).json()
  assert body["unknown_words"] == {"count": 1, "total": 4, "words": ["xyzzy"]}
  assert body["warning"] == "1 of 4 words unknown (xyzzy): results may be off"
  body = test_client.post("/api/search/text", json={"query": "a small green thing"}).json()
  assert body["unknown_words"] == {"count": 0, "total": 4, "words": []} and body["warning"] is None


def test_unknown_words_with_each_tokenizer_kind():
  vocab = WordVocab.build(["a red circle", "a blue square"])
  assert query_words.unknown_words(vocab, "A red zebra, zebra!") == {"count": 2, "total": 4, "words": ["zebra"]}
  wordpiece = tokenizers.WordPieceTokenizer.build()  # [UNK] is id 100, not the shared layout's 1
  report = query_words.unknown_words(wordpiece, "a red ☃ circle")
  assert report == {"count": 1, "total": 4, "words": ["☃"]}
  assert query_words.unknown_words(wordpiece, "xyzzy")["count"] == 0  # split into known pieces: not flagged
  sentencepiece = tokenizers.SentencePieceTokenizer.build(["a red circle above a blue square"] * 40
                                                          + ["green triangles left of it"] * 40, vocab_size=24)
  report = query_words.unknown_words(sentencepiece, "red ζζζ circle")
  assert report["words"] == ["ζζζ"] and report["total"] == 3
  assert query_words.unknown_words(None, "red circle") == {"count": 0, "total": 2, "words": []}
  assert query_words.warning({"count": 0, "total": 2, "words": []}) is None


# ------------------------------------------------------------------------------- warnings and examples


def _caption_db(tmp_path, image_ids):
  db = caption_search.CaptionDatabase(image_ids=image_ids, images=[""] * len(image_ids),
                                      captions=[[f"generated caption {i}", "another"] for i in image_ids])
  directory = str(tmp_path / "caption_db")
  db.save(directory)
  return directory


def test_caption_database_of_another_split_is_a_warning(tmp_path, monkeypatch, capsys):
  pytest.importorskip("sklearn")
  directory = _caption_db(tmp_path, [image_id("red"), 7001, 7002])
  export = write_fake_export(tmp_path)
  from xmodal_jax.serving import ann_index, exported_encoder
  monkeypatch.setattr(ann_index, "load_search_index", lambda index_dir: FakeIndex(export))
  monkeypatch.setattr(exported_encoder, "load_encoders", lambda export_dir, **_: FakeEncoders())
  served = {}
  monkeypatch.setattr(search_service, "uvicorn_server", lambda app, **_: served.setdefault("app", app) and
                      type("S", (), {"run": lambda self, sockets: sockets[0].close()})())
  search_service.serve(str(tmp_path / "index"), port=0, caption_db=directory, warm_up=False)
  err = capsys.readouterr().err
  assert f"warning: {directory} has 3 images, 2 of which are not in the export {export}" in err
  assert "image ids [7001, 7002]" in err and "--split=SPLIT" in err
  with TestClient(served["app"]) as test_client:
    health = test_client.get("/api/health").json()
  assert len(health["warnings"]) == 1 and "2 of which are not in the export" in health["warnings"][0]
  assert health["example_queries"][:3] == [f"generated caption {i}" for i in (image_id("red"), 7001, 7002)]


def test_health_example_queries_and_extra_warnings(tmp_path):
  app, _, _ = make_app(tmp_path, app_kwargs={"warnings": ["something to know"]})
  with TestClient(app) as test_client:
    health = test_client.get("/api/health").json()
  assert health["warnings"] == ["something to know"] and health["ready"] is True
  assert health["rerank"] is None and health["warmup_ms"] is None
  examples = health["example_queries"]
  all_captions = [c for colour in NAMES for c in captions_of(colour)]
  assert len(examples) == 6 and len(set(examples)) == 6 and set(examples) <= set(all_captions)
  assert {e.split()[-1] for e in examples if e.startswith("a small")} | {e.split()[1] for e in examples} >= {
      "red", "green"}  # spread over the export, not the first image's captions only


# --------------------------------------------------------------------------------------- more like this


def test_more_like_this_by_image_id(client):
  test_client, _, index = client
  body = test_client.get("/api/search/similar", params={"image_id": image_id("green"), "k": 3}).json()
  assert body["target"] == "images" and body["image_id"] == image_id("green") and body["score_kind"] == "cosine"
  ids = [r["image_id"] for r in body["results"]]
  assert len(ids) == 3 and image_id("green") not in ids  # the image itself is left out
  expected = sorted((float(colour_vector(1) @ colour_vector(i)), -image_id(c)) for i, c in enumerate(NAMES) if i != 1)
  assert body["results"][0]["score"] == pytest.approx(expected[-1][0])
  assert [r["rank"] for r in body["results"]] == [1, 2, 3]
  post = test_client.post("/api/search/similar", json={"image_id": image_id("green"), "k": 3}).json()
  assert [r["image_id"] for r in post["results"]] == ids
  body = test_client.post("/api/search/similar", json={"image_id": image_id("red"), "k": 2,
                                                       "target": "captions"}).json()
  assert body["target"] == "captions" and {r["image_id"] for r in body["results"]} == {image_id("red")}
  assert all(r["text"] in captions_of("red") for r in body["results"])
  assert index.calls[-1][0] == "texts"


def test_more_like_this_errors(client):
  test_client, _, _ = client
  assert_error(test_client.get("/api/search/similar", params={"image_id": 999}), 404, "image_id=999")
  assert_error(test_client.get("/api/search/similar", params={"image_id": "abc"}), 400, "image_id")
  assert_error(test_client.get("/api/search/similar"), 400, "image_id")
  assert_error(test_client.get("/api/search/similar", params={"image_id": 100, "k": 0}), 400, "out of range")
  assert_error(test_client.get("/api/search/similar", params={"image_id": 100, "target": "faces"}), 400, "target")
  assert_error(test_client.post("/api/search/similar", json={"image_id": "100"}), 400, "image_id")
  assert_error(test_client.post("/api/search/similar", json={"image_id": True}), 400, "image_id")
  assert_error(test_client.post("/api/search/similar", json={"image_id": 100, "target": "faces"}), 400, "target")
  assert_error(test_client.post("/api/search/similar", json={"image_id": 100, "extra": 1}), 400)
  assert_error(test_client.post("/api/search/similar", content=b"{", headers={"content-type": "application/json"}),
               400, "malformed JSON")
  assert_error(test_client.post("/api/search/similar", data={"image_id": "100"}), 415, "JSON")
  assert np.isfinite(test_client.get("/api/search/similar", params={"image_id": 100}).json()["results"][0]["score"])
