"""Every retrieval system end to end through the commands a user runs (tests/serving_processes.py): a tiny shapes
world run -> `xmodal export --split=test` -> `xmodal index` -> `xmodal serve` (a real server process) -> over
HTTP, a test caption's own image comes back first with the score the library gives it: VSE++, the dual encoder
over pretrained towers, mFSR, and S2 region-word / S4 single-stream re-ranked by their pairwise scorer
(`serve --rerank=K`, the exported pair sets and score_pairs). CLIP: tests/test_serving_end_to_end.py.

Each test trains its own tiny run once (a few steps); slow as a group (a training run, three processes each)."""
from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from tests.helpers import load_config, make_task, skip_without_pretrained_weights
from tests.serving_processes import export_and_index, served
from xmodal_jax import systems
from xmodal_jax.serving import embedding_export as fmt
from xmodal_jax.train import trainer

K = 5  # results asked for; also the re-ranked shortlist (the tiny S2 config's rerank_k)
SYSTEMS = {  # name: (config, --rerank=K or None, needs the pretrained weights packages)
    "vsepp": ("configs/retrieval/vsepp_shapes.py:tiny", None, False),
    "dual_encoder": ("configs/retrieval/vsepp_flickr8k_pretrained.py:tiny", None, True),
    "mfsr": ("configs/retrieval/mfsr_shapes.py:tiny", None, False),
    "region_word": ("configs/retrieval/region_word_shapes.py:tiny", K, True),
    "single_stream": ("configs/vlp/single_stream_shapes.py:tiny", K, True),
}


def _in_library_ranking(workdir: str, rerank: int | None) -> dict:
  """The library's text -> image ranking of the test split (cosine; re-ranked by score_pairs over the cosine
  shortlist of max(rerank, K) with rerank), and the caption whose own image it puts first by the widest margin:
  {"caption", "image_id", "score", "ann_score", "top" (image ids of the first K)}."""
  model = systems.load_run(workdir, mesh_shape=(-1, 1))
  task = model.task
  data, toks = task.split("test"), task.tokens("test")
  image_inputs = task.image_predict_inputs(task.eval_images("test"), split="test")
  text_inputs = {"tokens": toks.tokens, "mask": toks.mask}
  cosine = model.predict("embed_text", text_inputs) @ model.predict("embed_image", image_inputs).T  # [T, I]
  shortlist = np.argsort(-cosine, axis=1, kind="stable")[:, :max(rerank or 0, K)]                   # [T, S]
  if rerank:
    image_sets, text_sets = model.predict("pair_image", image_inputs), model.predict("pair_text", text_inputs)
    width = shortlist.shape[1]
    pairs = {"image": {k: v[shortlist.reshape(-1)] for k, v in image_sets.items()},
             "text": {k: np.repeat(v, width, axis=0) for k, v in text_sets.items()}}
    scores = np.asarray(model.predict("score_pairs", pairs)).reshape(-1, width)
  else:
    scores = np.take_along_axis(cosine, shortlist, axis=1)
  order = np.argsort(-scores, axis=1, kind="stable")
  ranked, ranked_scores = np.take_along_axis(shortlist, order, 1), np.take_along_axis(scores, order, 1)
  own = np.asarray(toks.text_to_image)
  margin = np.where(ranked[:, 0] == own, ranked_scores[:, 0] - ranked_scores[:, 1], -np.inf)
  row = int(np.argmax(margin))
  assert margin[row] > 1e-3, "no test caption ranks its own image first: the tiny run did not train"
  return {"caption": [c for caps in data.captions for c in caps][row], "image_id": int(data.image_ids[own[row]]),
          "score": float(ranked_scores[row, 0]), "ann_score": float(cosine[row, own[row]]),
          "top": [int(data.image_ids[i]) for i in ranked[row, :K]]}


@pytest.mark.slow
@pytest.mark.parametrize("system", list(SYSTEMS))
def test_a_test_caption_finds_its_own_image_first_through_the_http_api(system, tmp_path, monkeypatch):
  config_path, rerank, pretrained = SYSTEMS[system]
  if pretrained:
    skip_without_pretrained_weights()
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))  # the run's feature caches (children inherit it)
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(make_task(load_config(config_path, "--config.mesh.shape=(-1,1)"), workdir))
  out = str(tmp_path / "export")
  export_and_index(workdir, out, "--split=test", "--shard_size=16")
  manifest = fmt.read_manifest(out)
  assert manifest["pairs"] == bool(rerank) and ("pairs" in manifest["kinds"]["images"]) == bool(rerank)
  expected = _in_library_ranking(workdir, rerank)
  with served(out, *([f"--rerank={rerank}"] if rerank else [])) as url:
    answer = httpx.post(f"{url}/api/search/text", json={"query": expected["caption"], "k": K}, timeout=120)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    results = body["results"]
    assert results[0]["image_id"] == expected["image_id"] and expected["caption"] in results[0]["captions"]
    np.testing.assert_allclose(results[0]["score"], expected["score"], atol=1e-4)
    assert [r["image_id"] for r in results] == expected["top"]
    assert body["score_kind"] == ("reranked" if rerank else "cosine")
    if rerank:
      np.testing.assert_allclose(results[0]["ann_score"], expected["ann_score"], atol=1e-4)
      assert body["rerank"]["k"] == rerank
    picture = httpx.get(f"{url}{results[0]['image_url']}", timeout=30)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
  assert os.path.isdir(os.path.join(out, "index"))
