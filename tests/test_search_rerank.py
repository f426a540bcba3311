"""Re-ranking in the search service (`xmodal serve --rerank=K`, serving/rerank.py) over the fake export: the pair
scorer of tests/test_search_service.py's FakeEncoders prefers the LAST colour a text names, the cosine the first,
so a re-ranked answer is visibly reordered; each result says which stage produced its score; concurrent queries
share score_pairs calls; exports without pair sets are refused."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.test_search_service import COLOURS, NAMES, FakeEncoders, FakeIndex, captions_of, \
    colour_vector, image_id, jpeg_bytes, last_first_vector, make_app, text_vector, write_fake_export
from xmodal_jax import errors
from xmodal_jax.serving import rerank, search_service


@pytest.fixture
def reranked(tmp_path):
  app, encoders, index = make_app(tmp_path, app_kwargs={"rerank": 3})
  with TestClient(app, raise_server_exceptions=False) as client:
    yield client, encoders, index


def test_text_search_is_reranked_by_the_pair_scorer(reranked):
  client, encoders, index = reranked
  query = "something blue, then red"
  body = client.post("/api/search/text", json={"query": query, "k": 2}).json()
  assert body["score_kind"] == "reranked" and body["rerank"]["k"] == 3 and body["rerank"]["took_ms"] >= 0
  results = body["results"]
  assert [r["image_id"] for r in results] == [image_id("red"), image_id("blue")]  # cosine says blue first
  assert [r["rank"] for r in results] == [1, 2] and all(r["score_kind"] == "reranked" for r in results)
  assert results[0]["score"] == pytest.approx(float(last_first_vector(query)[NAMES.index("red")]))
  assert results[0]["ann_rank"] == 2 and results[1]["ann_rank"] == 1
  assert results[0]["ann_score"] == pytest.approx(float(text_vector(query) @ colour_vector(NAMES.index("red"))))
  assert results[0]["captions"] == captions_of("red")
  assert index.calls[-1] == ("images", (1, 8), 3)  # the shortlist is K = 3 though k = 2
  assert encoders.pair_calls == [3]


def test_shortlist_is_at_least_k(reranked):
  client, encoders, index = reranked
  body = client.post("/api/search/text", json={"query": "red", "k": 5}).json()
  assert len(body["results"]) == 5 and index.calls[-1][2] == 5 and body["rerank"]["k"] == 5
  assert encoders.pair_calls == [5]


def test_image_to_captions_is_reranked_image_to_images_is_not(reranked):
  client, encoders, _ = reranked
  files = {"image": ("q.png", jpeg_bytes(COLOURS["purple"], fmt="PNG"), "image/png")}
  body = client.post("/api/search/image", params={"k": 2, "target": "captions"}, files=files).json()
  assert body["score_kind"] == "reranked" and all(r["score_kind"] == "reranked" for r in body["results"])
  assert all(r["image_id"] == image_id("purple") and r["score"] == pytest.approx(1.0) for r in body["results"])
  assert encoders.pair_calls == [3]
  body = client.post("/api/search/image", params={"k": 2}, files=files).json()
  assert body["score_kind"] == "cosine" and body["rerank"] is None and encoders.pair_calls == [3]
  assert body["results"][0]["image_id"] == image_id("purple") and "ann_score" not in body["results"][0]


def test_more_like_this_captions_are_reranked(reranked):
  client, encoders, _ = reranked
  body = client.get("/api/search/similar", params={"image_id": image_id("green"), "target": "captions",
                                                   "k": 2}).json()
  assert body["score_kind"] == "reranked" and body["image_id"] == image_id("green")
  assert {r["text"] for r in body["results"]} == set(captions_of("green"))
  assert encoders.pair_calls == [3]


def test_caption_word_search_keeps_tfidf_scores(tmp_path):
  pytest.importorskip("sklearn")
  export = write_fake_export(tmp_path)
  app, _, _ = make_app(tmp_path / "other", captions=search_service.load_caption_search(export),
                       app_kwargs={"rerank": 3})
  with TestClient(app) as client:
    body = client.post("/api/search/captions", json={"query": "small purple thing", "k": 2}).json()
  assert body["score_kind"] == "tfidf" and body["rerank"] is None
  assert body["results"][0]["score_kind"] == "tfidf" and body["results"][0]["image_id"] == image_id("purple")


def test_concurrent_reranks_share_padded_score_pairs_calls(tmp_path):
  app, encoders, _ = make_app(tmp_path, limits=search_service.ServiceLimits(batch_wait_ms=30), max_batch=16,
                              delay_s=0.05, app_kwargs={"rerank": 3})
  queries = [f"{NAMES[i % 5]} and {NAMES[(i + 1) % 5]} things" for i in range(12)]

  async def go():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
      return await asyncio.gather(*(client.post("/api/search/text", json={"query": q, "k": 1}) for q in queries))

  responses = asyncio.run(go())
  assert [r.status_code for r in responses] == [200] * 12
  for query, response in zip(queries, responses):  # the colour named last wins after re-ranking
    assert response.json()["results"][0]["image_id"] == image_id(query.split()[2])
  assert len(encoders.pair_calls) < 12, encoders.pair_calls
  assert all(n % 3 == 0 and n <= 12 for n in encoders.pair_calls), encoders.pair_calls  # <= 16 // 4 jobs of K
  assert app.state.reranker.pairs == 36


def test_warm_up_compiles_every_stage_before_the_first_request(tmp_path):
  app, encoders, _ = make_app(tmp_path, app_kwargs={"rerank": 3, "warm_up": True})
  assert encoders.text_calls == [] and encoders.pair_calls == []  # nothing runs at create_app
  with TestClient(app) as client:
    assert encoders.text_calls == [1] and encoders.image_shapes == [(1, 32, 32, 3)]
    assert encoders.pair_calls == [3, 3]  # text -> images and image -> captions, one query's shape each
    health = client.get("/api/health").json()
  assert health["warmup_ms"] >= 0 and health["ready"] is True and health["rerank"]["k"] == 3


def test_no_pair_sets_is_refused_with_the_fix(tmp_path):
  with pytest.raises(errors.ConfigError, match="no pair sets.*S2.*S4.*without --rerank"):
    make_app(tmp_path, app_kwargs={"rerank": 5}, pairs=False)
  for bad in (0, -1, True, 1001, 2.5):
    with pytest.raises(errors.ConfigError, match="--rerank"):
      rerank.check_k(bad)


def test_serve_refuses_rerank_without_pair_sets(tmp_path, monkeypatch):
  export = write_fake_export(tmp_path)
  from xmodal_jax.serving import ann_index, exported_encoder
  monkeypatch.setattr(ann_index, "load_search_index", lambda index_dir: FakeIndex(export))
  monkeypatch.setattr(exported_encoder, "load_encoders", lambda export_dir, **_: FakeEncoders())
  monkeypatch.setattr(search_service, "uvicorn_server", lambda *a, **k: pytest.fail("must not serve"))
  with pytest.raises(errors.ConfigError, match=f"--rerank=20: the export {export} has no pair sets"):
    search_service.serve(str(tmp_path / "index"), port=0, rerank=20)
  with pytest.raises(errors.ConfigError, match="from 1 to 1000"):  # before anything is loaded
    search_service.serve(str(tmp_path / "no-such-index"), port=0, rerank=0)


def test_reranker_scores_jobs_in_one_call():
  encoders = FakeEncoders(pairs=True)
  sets = {"images": lambda rows: {"colour": np.eye(8, dtype=np.float32)[rows]},
          "texts": lambda rows: {"words": np.stack([last_first_vector(f"a {NAMES[r]} one") for r in rows])}}
  reranker = rerank.Reranker(encoders, "EXPORT", 4, {"images": {10 + i: i for i in range(5)},
                                                     "texts": {20 + i: i for i in range(5)}},
                             read_sets=lambda export_dir, kind, rows: sets[kind](np.asarray(rows)))
  jobs = [rerank.RerankJob("text", "green then red", "images", [10, 11, 12]),
          rerank.RerankJob("image_id", 13, "texts", [23, 20]),
          rerank.RerankJob("text", "blue", "images", [])]
  out = reranker.score_jobs(jobs)
  assert encoders.pair_calls == [5]  # one call for both jobs
  np.testing.assert_allclose(out[0], [1.0, 0.5, 0.0])  # red (last) 1, green 1/2, blue 0
  np.testing.assert_allclose(out[1], [1.0, 0.0])
  assert out[2].shape == (0,) and reranker.pairs == 5
  with pytest.raises(errors.DataError, match="images id 99 is not in the export EXPORT"):
    reranker.score_jobs([rerank.RerankJob("text", "red", "images", [99])])
