"""Shapes world end to end through the commands a user runs (tests/serving_processes.py): a trained CLIP run
(tests/conftest.py) -> `xmodal export` -> `xmodal index` -> `xmodal serve` (a real server process on localhost) ->
a test caption's own image comes back first through the HTTP API, with the scores of the in-library encoders; and
`xmodal export --images=DIR` of a folder of photos (a corrupt file and a 16-bit PNG among good ones) searched the
same way. The other systems (VSE++, dual encoder, mFSR, S2 and S4 re-ranked): tests/test_serving_systems.py."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serving_processes import export_and_index, served
from xmodal_jax import systems
from xmodal_jax.serving import embedding_export as fmt


@pytest.fixture(scope="module")
def server(clip_tiny_run, tmp_path_factory):
  """(base url, export dir, workdir): the run's test split exported, indexed and served."""
  _, workdir, _ = clip_tiny_run
  out = str(tmp_path_factory.mktemp("e2e") / "export")
  done = export_and_index(workdir, out, "--split=test", "--shard_size=25")
  assert "Exported step 4" in done.stdout and "images 3 shards written" in done.stdout
  with served(out) as url:
    yield url, out, workdir


def test_a_test_caption_finds_its_own_image_first_through_the_http_api(server):
  url, out, workdir = server
  model = systems.load_run(workdir, mesh_shape=(-1, 1))
  task = model.task
  data, toks = task.split("test"), task.tokens("test")
  images = model.predict("embed_image", {"images": task.eval_images("test")})
  texts = model.predict("embed_text", {"tokens": toks.tokens, "mask": toks.mask})
  scores = texts @ images.T                                  # [captions, images], in-library ranking
  own = scores[np.arange(len(texts)), toks.text_to_image]
  margin = own - np.where(np.eye(len(images), dtype=bool)[toks.text_to_image], -np.inf, scores).max(axis=1)
  row = int(np.argmax(margin))                               # the caption that ranks its image first by most
  assert margin[row] > 0
  caption = [c for caps in data.captions for c in caps][row]
  image_id = int(data.image_ids[toks.text_to_image[row]])

  answer = httpx.post(f"{url}/api/search/text", json={"query": caption, "k": 5}, timeout=60)
  assert answer.status_code == 200, answer.text
  results = answer.json()["results"]
  assert results[0]["image_id"] == image_id and caption in results[0]["captions"]
  np.testing.assert_allclose(results[0]["score"], own[row], atol=1e-4)
  expected = np.argsort(-scores[row])[:5]
  assert [r["image_id"] for r in results] == [int(data.image_ids[i]) for i in expected]

  picture = httpx.get(f"{url}{results[0]['image_url']}", timeout=30)
  assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
  similar = httpx.post(f"{url}/api/search/image", params={"k": 3, "target": "images"},
                       files={"image": ("query.jpg", picture.content, "image/jpeg")}, timeout=60)
  assert similar.status_code == 200, similar.text
  assert similar.json()["results"][0]["image_id"] == image_id  # the image finds itself (JPEG round trip)
  assert httpx.get(f"{url}/images/..%2fmanifest.json", timeout=10).status_code == 404
  health = httpx.get(f"{url}/api/health", timeout=10).json()
  assert health["model_step"] == fmt.read_manifest(out)["step"] == 4


def test_a_photo_folder_exported_with_images_dir_is_searchable_and_shown(clip_tiny_run, tmp_path):
  """`xmodal export --images=DIR` (no captions; a corrupt JPEG, a 16-bit PNG, a WebP among good PNGs) -> index ->
  serve: an exported photo finds itself first, a caption query answers with the folder's photos, each served."""
  _, workdir, _ = clip_tiny_run
  model = systems.load_run(workdir, mesh_shape=(-1, 1))
  pictures = model.task.eval_images("test")[:6]
  photos = tmp_path / "photos"
  (photos / "2024" / "summer").mkdir(parents=True)
  for i, picture in enumerate(pictures[:4]):
    Image.fromarray(picture).save(photos / ("2024/summer" if i % 2 else "") / f"p{i}.png")
  Image.fromarray(pictures[4]).save(photos / "p4.webp", lossless=True)
  Image.fromarray((pictures[5][..., 0].astype(np.uint16) * 257)).save(photos / "gray16.png")
  (photos / "2024" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a photo")
  out = str(tmp_path / "export")
  done = export_and_index(workdir, out, f"--images={photos}", "--shard_size=4")
  assert "2024/bad.jpg" in done.stderr and "skipped 1 of 7" in done.stderr
  items = fmt.read_items(out, "images")
  assert sorted(item["path"] for item in items) == ["2024/summer/p1.png", "2024/summer/p3.png", "gray16.png",
                                                    "p0.png", "p2.png", "p4.webp"]
  with served(out) as url:
    health = httpx.get(f"{url}/api/health", timeout=10).json()
    assert health["counts"]["images"] == 6 and health["counts"]["texts"] == 0
    own = next(item for item in items if item["path"] == "2024/summer/p1.png")
    buffer = io.BytesIO()
    Image.fromarray(pictures[1]).save(buffer, format="PNG")
    answer = httpx.post(f"{url}/api/search/image", params={"k": 3, "target": "images"},
                        files={"image": ("q.png", buffer.getvalue(), "image/png")}, timeout=60)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert results[0]["image_id"] == own["id"]
    np.testing.assert_allclose(results[0]["score"], 1.0, atol=1e-4)  # the same pixels: cosine 1
    answer = httpx.post(f"{url}/api/search/text", json={"query": "a red circle", "k": 6}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert sorted(r["image_id"] for r in answer.json()["results"]) == sorted(item["id"] for item in items)
    picture = httpx.get(f"{url}{results[0]['image_url']}", timeout=30)
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"
