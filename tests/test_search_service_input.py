"""Hostile input to the search service (serving/search_service.py), issue 28: values that Python's json / the
multipart parser accept but the API cannot take (NaN, Infinity, overflowing floats, huge integers, booleans for
ints, lone UTF-16 surrogates in any string, field name or file name) are 400s whose JSON body names the field and
the fix, never 500s; uploads beyond training data's aspect-ratio rule are refused with that same rule; importing
the index module prints none of faiss's loader chatter."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from tests.helpers import REPO
from tests.test_search_service import COLOURS, _FakeCaptions, assert_error, jpeg_bytes, make_app
from xmodal_jax.data import records
from xmodal_jax.serving import search_service

JSON = {"content-type": "application/json"}


@pytest.fixture
def client(tmp_path):
  app, encoders, _ = make_app(tmp_path, limits=search_service.ServiceLimits(max_k=20, max_query_chars=50),
                              captions=_FakeCaptions())
  with TestClient(app, raise_server_exceptions=False) as test_client:
    yield test_client, encoders


def _post_json(client, path, raw: bytes):
  return client.post(path, content=raw, headers=JSON)


# ---------------------------------------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize("raw, field, words", [
    (b'{"query": "red", "k": NaN}', "k", ("NaN", "an integer from 1 to 20")),
    (b'{"query": "red", "k": Infinity}', "k", ("Infinity", "an integer from 1 to 20")),
    (b'{"query": "red", "k": -Infinity}', "k", ("-Infinity", "an integer from 1 to 20")),
    (b'{"query": "red", "k": 1e400}', "k", ("1e400", "infinity")),
    (b'{"query": "red", "k": 1' + b"0" * 5000 + b"}", "k", ("5001 digits", "an integer from 1 to 20")),
    (b'{"query": NaN}', "query", ("NaN", "a non-empty string")),
    (b'{"query": {"a": [Infinity]}}', "query.a[0]", ("Infinity", "a non-empty string")),
    (b'{"query": "red", "extra": NaN}', "extra", ("NaN", "leave the field out")),
    (b"[NaN]", "body[0]", ("NaN", "JSON object")),
    (b"NaN", "body", ("NaN", "JSON object")),
])
@pytest.mark.parametrize("path", ["/api/search/text", "/api/search/captions"])
def test_non_finite_and_huge_numbers_are_400s_naming_the_field(client, path, raw, field, words):
  test_client, encoders = client
  body = assert_error(_post_json(test_client, path, raw), 400, f"{field}:", *words)
  assert body["detail"]["field"] == field and body["detail"]["problem"] == "invalid number"
  assert encoders.text_calls == []


@pytest.mark.parametrize("path", ["/api/search/text", "/api/search/captions"])
def test_lone_surrogates_in_json_are_400s_naming_the_field(client, path):
  test_client, encoders = client
  body = assert_error(_post_json(test_client, path, b'{"query": "\\ud800 dog"}'), 400, "query:", "surrogate",
                      "\\ud800", "character 0", "send query as")
  assert body["detail"] == {"field": "query", "position": 0, "problem": "lone surrogate"}
  assert_error(_post_json(test_client, path, b'{"query": "a dog \\udfff"}'), 400, "query:", "character 6")
  assert_error(_post_json(test_client, path, b'{"query": "red", "\\ud800": 1}'), 400, "field name", "\\ud800")
  assert_error(_post_json(test_client, path, b'{"query": ["\\udc00"]}'), 400, "query[0]:", "surrogate")
  assert_error(_post_json(test_client, path, b'"\\ud800"'), 400, "body:", "surrogate")
  # A surrogate pair is a valid character (U+1F600), as is the raw UTF-8 of one.
  assert _post_json(test_client, path, b'{"query": "\\ud83d\\ude00 red"}').status_code == 200
  assert test_client.post(path, json={"query": "\U0001F600 red"}).status_code == 200
  assert all(n == 1 for n in encoders.text_calls)


def test_caption_attribute_field(client):
  test_client, _ = client
  path = "/api/search/captions"
  assert_error(_post_json(test_client, path, b'{"query": "red", "attribute": NaN}'), 400, "attribute:", "one word")
  assert_error(_post_json(test_client, path, b'{"query": "red", "attribute": "\\ud800"}'), 400, "attribute:",
               "surrogate")
  assert_error(test_client.post(path, json={"query": "red", "attribute": 5}), 400, "attribute")
  assert_error(test_client.post(path, json={"query": "red", "attribute": ["red"]}), 400, "attribute")


def test_ill_typed_ints_and_text_stay_400s(client):
  test_client, _ = client
  for k in (True, False, 5.0, 5.5, "5", [5], {"k": 5}):
    assert_error(test_client.post("/api/search/text", json={"query": "red", "k": k}), 400, "k")
  assert_error(test_client.post("/api/search/text", json={"query": "red", "k": 10**29}), 400, "out of range")
  for query in (5, 5.5, True, None, ["red"], {"text": "red"}):
    assert_error(test_client.post("/api/search/text", json={"query": query}), 400, "query")
  assert_error(_post_json(test_client, "/api/search/text", b"[" * 60_000), 400, "nested too deeply")
  for k in ("nan", "inf", "-inf", "true", "1e3", "9" * 5000, "%ED%A0%80"):
    files = {"image": ("x.jpg", jpeg_bytes((0, 0, 0)), "image/jpeg")}
    assert_error(test_client.post(f"/api/search/image?k={k}", files=files), 400, "k")


def test_error_bodies_never_fail_to_serialise():
  response = search_service._error_response(400, "bad \ud800 text", {"k": float("nan"), "\udfff": [float("inf")]})
  assert response.status_code == 400
  assert json.loads(response.body) == {"error": "bad \\ud800 text", "detail": {"k": "nan", "\\udfff": ["inf"]}}


# ------------------------------------------------------------------------------------------------ multipart


def _multipart(name: bytes, filename: bytes, before: bytes = b"") -> bytes:
  return (before + b'--XYZ\r\nContent-Disposition: form-data; name="' + name + b'"; filename="' + filename
          + b'"\r\nContent-Type: image/jpeg\r\n\r\n' + jpeg_bytes(COLOURS["red"]) + b"\r\n--XYZ--\r\n")


@pytest.mark.parametrize("charset, surrogate", [("utf-7", b"+2AA-"), ("unicode_escape", b"\\ud800")])
def test_lone_surrogates_in_multipart_are_400s(client, charset, surrogate):
  """A part's charset decodes names to lone surrogates (starlette honours charset=); each is a named 400."""
  test_client, encoders = client
  headers = {"content-type": f"multipart/form-data; boundary=XYZ; charset={charset}"}
  def post(body):
    return test_client.post("/api/search/image", content=body, headers=headers)
  body = assert_error(post(_multipart(b"image", surrogate + b".jpg")), 400, "file name", "'image'", "surrogate",
                      "rename the file")
  assert body["detail"]["field"] == "image"
  assert_error(post(_multipart(surrogate, b"x.jpg")), 400, "field name", "surrogate", "'image'")
  assert_error(post(_multipart(b"image" + surrogate, b"x.jpg")), 400, "field name", "surrogate")
  note = b'--XYZ\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + surrogate + b"\r\n"
  assert_error(post(_multipart(b"image", b"x.jpg", before=note)), 400, "value", "'note'", "surrogate")
  assert post(_multipart(b"image", b"x.jpg")).status_code == 200  # the same charset, plain names: fine
  assert encoders.image_shapes == [(1, 32, 32, 3)]


# ------------------------------------------------------------------------------------- the aspect-ratio rule


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (2000, 10), (21 * 30, 30)])
def test_uploads_beyond_the_training_aspect_ratio_are_400s(client, size):
  test_client, encoders = client
  files = {"image": ("strip.png", jpeg_bytes(COLOURS["red"], size, "PNG"), "image/png")}
  body = assert_error(test_client.post("/api/search/image", files=files), 400, "aspect ratio",
                      f"{size[0]}x{size[1]}", f"{records.MAX_ASPECT_RATIO}:1", "crop")
  assert body["detail"] == {"width": size[0], "height": size[1], "max_aspect_ratio": records.MAX_ASPECT_RATIO}
  assert encoders.image_shapes == []


def test_the_service_and_prepare_share_one_aspect_ratio_rule(client, tmp_path, monkeypatch):
  test_client, _ = client
  limit = records.MAX_ASPECT_RATIO
  files = {"image": ("ok.png", jpeg_bytes(COLOURS["red"], (limit * 30, 30), "PNG"), "image/png")}
  assert test_client.post("/api/search/image", files=files).status_code == 200  # exactly 20:1 is allowed
  monkeypatch.setattr(records, "MAX_ASPECT_RATIO", 4)  # one constant: both sides follow it
  data = jpeg_bytes(COLOURS["red"], (150, 30), "PNG")
  assert_error(test_client.post("/api/search/image", files={"image": ("x.png", data, "image/png")}), 400, "4:1")
  (tmp_path / "wide.png").write_bytes(data)
  with pytest.raises(records.BadInputError, match="aspect ratio 150x30 is beyond 4:1"):
    records.load_image(str(tmp_path / "wide.png"))


# ---------------------------------------------------------------------------------------------- faiss chatter


def _import_with_info_logging(code: str) -> subprocess.CompletedProcess:
  script = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from absl import logging as absl_logging; absl_logging.set_verbosity(absl_logging.INFO)\n" + code)
  return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                        check=False)


def test_faiss_loader_chatter_is_silenced_but_its_warnings_are_not():
  done = _import_with_info_logging(
      "import xmodal_jax.serving.ann_index as a\n"
      "assert a.faiss is not None\n"
      "logging.getLogger('faiss.loader').warning('a real faiss loader warning')\n")
  assert done.returncode == 0, done.stderr
  output = done.stdout + done.stderr
  assert "a real faiss loader warning" in output
  for chatter in ("Loading faiss", "Could not load library", "Successfully loaded faiss", "ModuleNotFoundError"):
    assert chatter not in output, output


def test_a_failing_faiss_import_names_its_cause():
  done = _import_with_info_logging(
      "sys.modules['faiss'] = None  # import faiss -> ImportError\n"
      "import xmodal_jax.serving.ann_index as a\n"
      "try:\n  a._faiss()\nexcept Exception as e:\n  print('ERROR', e)\n")
  assert done.returncode == 0, done.stderr
  assert "ERROR faiss cannot be imported (ModuleNotFoundError: import of faiss halted" in done.stdout, done.stdout
