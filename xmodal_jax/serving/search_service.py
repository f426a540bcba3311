"""The search service: an HTTP API and a web page over an embedding index (`xmodal serve`).

`serve(INDEX_DIR)` loads the index (`serving/ann_index.py`), the exported encoders of the export it was built
from (`serving/exported_encoder.py`) and, where there is one, a caption database, and serves on
http://127.0.0.1:8000/ (loopback only unless `allow_remote=True`). `create_app(index, encoders)` builds the
FastAPI app alone (tests pass fakes). Every answer is JSON; every error is `{"error": "...", "detail": ...}` with
the status below. No pickle is read or written anywhere.

  GET  /                       the search page (web/index.html: a query box, drag-and-drop image search)
  GET  /api/health             model step, dim, counts, encoder sizes, whether caption search is on, queue depth
  POST /api/search/text        {"query": str, "k": int = 10} -> the images nearest to the text
  POST /api/search/image       multipart field `image` (JPEG, PNG or WebP), ?k=10&target=images|captions
  POST /api/search/captions    {"query": str, "k": int = 10, "attribute": str?} ?scoring=sum|cosine -> images by
                               word match on their captions (TF-IDF); attribute / scoring: caption databases only
  GET  /api/search/similar     ?image_id=ID&k=10&target=images|captions (or POST the same as JSON): "more like
                               this" by an indexed image; target=images leaves the image itself out
  GET  /images/<name>          an exported image (only files inside EXPORT/images/)
  GET  /api/openapi.json       the OpenAPI description of the above

  curl -s localhost:8000/api/health
  curl -s localhost:8000/api/search/text -H 'Content-Type: application/json' -d '{"query": "a red circle", "k": 5}'
    -> {"query": "a red circle", "results": [{"image_id": 7, "score": 0.83, "image_url": "/images/7.jpg",
        "captions": ["a red circle above a blue square", ...]}, ...], "took_ms": 3.1}
  curl -s 'localhost:8000/api/search/image?k=5&target=captions' -F image=@photo.jpg
    -> {"target": "captions", "results": [{"text_id": 31, "text": "...", "image_id": 6, "score": 0.71,
        "image_url": "/images/6.jpg"}, ...], "took_ms": 12.0}     (target=images: results as for text search)
  curl -s localhost:8000/api/search/captions -H 'Content-Type: application/json' -d '{"query": "red circle"}'
    -> results as for text search, each with the best-matching caption as "text"

Every result has "rank", "score" and "score_kind" ("cosine" | "tfidf" | "reranked"; re-ranked ones add "ann_score"
and "ann_rank"); every answer "score_kind" and "rerank" ({"k", "took_ms"} | null); text search adds
"unknown_words" {"count", "total", "words"} and "warning" (`serving/query_words.py`). With `rerank=K`
(`xmodal serve --rerank=K`, `serving/rerank.py`) text -> images, image -> captions and similar captions are
re-ranked by the export's score_pairs over a shortlist of max(K, k), micro-batched like text queries.

Errors: 400 malformed JSON, a missing or ill-typed field, an empty or too long query (`max_query_chars`), k
outside [1, max_k], NaN / Infinity / an overflowing float / an integer of over 30 digits anywhere in a JSON body, a
lone UTF-16 surrogate in any text (JSON values and field names, multipart field names, file names and values), a
corrupt image, an image beyond training data's aspect-ratio rule (`records.MAX_ASPECT_RATIO`, 20:1); every error
names the field and the fix; 404 an unknown path or image, or a kind this index lacks; 405 wrong
method; 413 a body over `max_upload_bytes` (Content-Length checked first, then counted while reading) or an image
over `max_image_pixels`; 415 a request that is not JSON / multipart, or an upload that is not JPEG, PNG or WebP
by its content (the declared type is ignored); 501 caption search without a caption database; 503 the query
queue (`max_pending`) or the upload slots (`max_pending_uploads`) are full: retry later.

Text queries are batched: each request queues its query, and one worker encodes up to `encoders.max_batch`
pending queries (waiting at most `batch_wait_ms` for more) in one `encode_texts` call in a worker thread, so
concurrent requests share one jitted encoder call. All encoder calls (text batches, images) go through one lock.

Caption search: a `captions` object with `.search(query, k) -> [{"image_id", "score", "text"?, "text_id"?}]`.
`load_caption_search(export_dir)` gives a TF-IDF one over texts.jsonl when scikit-learn is installed
(`TfidfCaptionSearch`, built on `caption_search.TfidfCaptionIndex`, scoring="cosine"). `serve(..., caption_db=DIR)`
(`xmodal serve --caption_db=DIR`) uses S5's database of generated captions instead (`CaptionDatabaseSearch` over a
`caption_search.CaptionDatabase` written by `xmodal caption --all`): the seed's "sum" TF-IDF scoring by default,
`?scoring=cosine` on request, an optional `"attribute"` word in the body (only images with a caption that has it);
its results add the image's other generated captions as "generated_captions". A captions object that takes these
options says so with `.scorings` (the scorings it offers, the first the default); one without answers 400 to them.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib.util
import io
import ipaddress
import json
import math
import os
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Literal, Sequence

import numpy as np
import pydantic
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmodal_jax import errors
from xmodal_jax.data import records as records_lib
from xmodal_jax.serving import caption_search, embedding_export, query_words

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP")  # what Pillow may sniff an upload as
_MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers around the uploaded file
_PAGE_POLICY = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_NO_CAPTIONS = ("no caption database in this index (S5: xmodal serve --caption_db=DIR, DIR written by `xmodal "
                "caption --workdir=RUN --all`)")


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
  """What one request may ask for, and how much the service queues.

  Attributes:
    max_k: the most results one query may ask for (k in [1, max_k]); default_k when a request names none.
    max_query_chars: the longest text query, in characters.
    max_json_bytes: the largest JSON body.
    max_upload_bytes: the largest uploaded image file (the request may add `_MULTIPART_SLACK` of multipart).
    max_image_pixels: the largest uploaded image, width x height, checked before it is decoded.
    max_pending: text queries waiting for the encoder; one more is answered 503 at once.
    max_pending_uploads: image searches in progress; one more is answered 503 at once.
    batch_wait_ms: how long the batcher waits for more queries before encoding a batch that is not full.
  """
  max_k: int = 100
  default_k: int = 10
  max_query_chars: int = 1000
  max_json_bytes: int = 64 * 1024
  max_upload_bytes: int = 10 * 1024 * 1024
  max_image_pixels: int = 40_000_000
  max_pending: int = 256
  max_pending_uploads: int = 16
  batch_wait_ms: float = 2.0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not value > 0 and not (field.name == "batch_wait_ms" and value == 0):
        raise errors.ConfigError(f"ServiceLimits.{field.name}={value!r} must be > 0.")
    if self.default_k > self.max_k:
      raise errors.ConfigError(f"ServiceLimits.default_k={self.default_k} must be <= max_k={self.max_k}.")


class ApiError(Exception):
  """An answer other than 200: `status` and the JSON body {"error": message, "detail": detail}."""

  def __init__(self, status: int, message: str, detail: Any = None):
    super().__init__(message)
    self.status, self.message, self.detail = status, message, detail


def _safe_text(text: str) -> str:
  """`text` with lone surrogates written as \\udXXX escapes, so that it encodes as UTF-8."""
  return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_safe(value: Any) -> Any:
  """A JSON-encoded value that JSONResponse can always write: lone surrogates escaped, NaN / Infinity as strings."""
  if isinstance(value, str):
    return _safe_text(value)
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)
  if isinstance(value, dict):
    return {_json_safe(str(key)): _json_safe(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(item) for item in value]
  return value


def _error_response(status: int, message: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
  # Error text may echo what the client sent: it must never turn the answer into a 500 of its own.
  return JSONResponse({"error": _safe_text(str(message)), "detail": _json_safe(jsonable_encoder(detail))},
                      status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------- micro-batcher


class MicroBatcher:
  """Collects single items from concurrent requests into batches for one call of `fn` in a worker thread.

  `await submit(item)` queues the item and returns `fn(batch)[i]` for it. One worker per event loop takes up to
  `max_batch` queued items (after waiting at most `max_wait_s` for the batch to fill), calls `fn` once in a
  thread, and resolves every item's future (or sets `fn`'s exception on all of them). At most `max_pending` items
  wait; `submit` beyond that raises ApiError 503 at once. Items whose request went away are dropped unencoded.
  """

  def __init__(self, fn: Callable[[list], Sequence], *, max_batch: int, max_wait_s: float, max_pending: int):
    self._fn, self.max_batch, self.max_wait_s, self.max_pending = fn, int(max_batch), float(max_wait_s), max_pending
    if self.max_batch < 1:
      raise errors.ConfigError(f"max_batch={max_batch} must be >= 1.")
    self._loop = None
    self._items: collections.deque = collections.deque()
    self._wake: asyncio.Event | None = None
    self._task: asyncio.Task | None = None
    self.batches = 0   # calls of fn so far
    self.items = 0     # items encoded so far

  @property
  def pending(self) -> int:
    return len(self._items)

  def _ensure_worker(self) -> None:
    loop = asyncio.get_running_loop()
    if loop is not self._loop:  # first use, or a new event loop (the old one's worker died with it)
      self._loop, self._items, self._wake = loop, collections.deque(), asyncio.Event()
      self._task = None
    if self._task is None or self._task.done():
      self._task = loop.create_task(self._work(), name="xmodal-micro-batcher")

  async def submit(self, item: Any) -> Any:
    self._ensure_worker()
    if len(self._items) >= self.max_pending:
      raise ApiError(503, f"the query queue is full ({self.max_pending} waiting); retry shortly.",
                     {"pending": len(self._items), "max_pending": self.max_pending})
    future = self._loop.create_future()
    self._items.append((item, future))
    self._wake.set()
    return await future

  async def _next_batch(self) -> list:
    while not self._items:
      self._wake.clear()
      await self._wake.wait()
    deadline = self._loop.time() + self.max_wait_s
    while len(self._items) < self.max_batch:
      remaining = deadline - self._loop.time()
      if remaining <= 0:
        break
      self._wake.clear()
      try:
        await asyncio.wait_for(self._wake.wait(), remaining)
      except TimeoutError:
        break
    batch = [self._items.popleft() for _ in range(min(self.max_batch, len(self._items)))]
    return [(item, future) for item, future in batch if not future.done()]  # done: cancelled by a gone client

  async def _work(self) -> None:
    while True:
      batch = await self._next_batch()
      if not batch:
        continue
      try:
        results = await asyncio.to_thread(self._fn, [item for item, _ in batch])
        if len(results) != len(batch):
          raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items.")
      except Exception as e:  # pylint: disable=broad-except  (each waiting request gets the failure)
        for _, future in batch:
          if not future.done():
            future.set_exception(e)
        continue
      self.batches += 1
      self.items += len(batch)
      for (_, future), result in zip(batch, results):
        if not future.done():
          future.set_result(result)

  async def close(self) -> None:
    """Stops the worker; requests still queued get a 503."""
    if self._task is not None and not self._task.done():
      self._task.cancel()
      try:
        await self._task
      except (asyncio.CancelledError, Exception):  # pylint: disable=broad-except
        pass
    while self._items:
      _, future = self._items.popleft()
      if not future.done():
        future.set_exception(ApiError(503, "the service is shutting down."))
    self._task = None


# ------------------------------------------------------------------------------------------------- uploads


def decode_upload(data: bytes, size: int, max_pixels: int) -> np.ndarray:
  """An uploaded image file -> uint8 [size, size, 3]: upright (EXIF), RGB (alpha over white, 16-bit scaled, as in
  training data), the central square resized to `size`.

  The format is sniffed from the content by Pillow and must be JPEG, PNG or WebP (else ApiError 415); the
  dimensions are checked against `max_pixels` (413) and training data's aspect-ratio rule
  (`records.check_aspect_ratio`, 400) from the header, before decoding; the file is verified,
  then decoded from scratch; any decoder failure is a 400.
  """
  kind = "uploaded"
  try:
    with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
      kind = img.format
      width, height = img.size
      if width * height > max_pixels:
        raise ApiError(413, f"the image is {width}x{height} pixels, more than the limit of {max_pixels}.",
                       {"width": width, "height": height, "max_pixels": max_pixels})
      try:  # the rule `xmodal prepare` applies to training images (records.check_aspect_ratio)
        records_lib.check_aspect_ratio(width, height, "the uploaded image",
                                       f"crop it to at most {records_lib.MAX_ASPECT_RATIO}:1 and upload it again")
      except errors.UserError as e:
        raise ApiError(400, str(e), {"width": width, "height": height,
                                     "max_aspect_ratio": records_lib.MAX_ASPECT_RATIO}) from None
      img.verify()
  except ApiError:
    raise
  except UnidentifiedImageError:
    raise ApiError(415, "the upload is not a JPEG, PNG or WebP image (judged by its content).") from None
  except Image.DecompressionBombError as e:
    raise ApiError(413, f"the image is too large to decode ({e}).") from None
  except Exception as e:  # pylint: disable=broad-except  (a corrupt file: the client's problem)
    raise ApiError(400, f"the {kind} image is corrupt or truncated ({type(e).__name__}: {e}).") from None
  try:
    with Image.open(io.BytesIO(data), formats=[kind]) as img:
      img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale that is still >= 2x the output
      img.load()
      if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
      rgb = records_lib._to_rgb8(img, "the uploaded image")  # pylint: disable=protected-access  (training's rules)
  except errors.UserError as e:
    raise ApiError(400, str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    raise ApiError(400, f"the {kind} image could not be decoded ({type(e).__name__}: {e}).") from None
  square = ImageOps.fit(Image.fromarray(rgb), (size, size), method=Image.BICUBIC, centering=(0.5, 0.5))
  return np.asarray(square, dtype=np.uint8)


# ----------------------------------------------------------------------------------------- caption search


class TfidfCaptionSearch:
  """Word search over captions: `caption_search.TfidfCaptionIndex` with scoring="cosine" (scikit-learn's
  TfidfVectorizer, unigrams and bigrams, sublinear tf) over texts.jsonl; an image scores as its best caption,
  ties by ascending image id.

  Args:
    texts: the export's texts.jsonl items, {"id", "image_id", "text"}.
  """

  def __init__(self, texts: Sequence[dict]):
    if not texts:
      raise errors.DataError("TfidfCaptionSearch needs at least one caption.")
    self._text_ids = np.asarray([int(t["id"]) for t in texts], np.int64)
    images = np.asarray([int(t["image_id"]) for t in texts], np.int64)
    image_ids, owner = np.unique(images, return_inverse=True)
    self._index = caption_search.TfidfCaptionIndex([str(t["text"]) for t in texts], owner, "cosine",
                                                   image_ids=image_ids)

  def search(self, query: str, k: int) -> list[dict[str, Any]]:
    """The k best images: [{"image_id", "score", "text_id", "text"}], "text" the best-matching caption."""
    return [{"image_id": hit["image_id"], "score": hit["score"], "text_id": int(self._text_ids[hit["caption_row"]]),
             "text": hit["caption"]} for hit in self._index.search(query, k)]


class CaptionDatabaseSearch:
  """The service's caption search over S5's generated captions: a `caption_search.CaptionDatabase`.

  `.search(query, k, attribute=None, scoring=None)` -> [{"image_id", "score", "text": the best-matching generated
  caption, "text_id": its row in the database, "generated_captions": the image's other generated captions}].
  """
  scorings = caption_search.SCORINGS  # ("sum", "cosine"): "sum" the default

  def __init__(self, db: caption_search.CaptionDatabase, directory: str | None = None):
    self.db, self.directory = db, directory

  @property
  def image_ids(self) -> np.ndarray:
    """int64 [N]: the database's images (the service warns about those its export lacks)."""
    return self.db.image_ids

  def example_captions(self) -> list[str]:
    """Each image's first generated caption, in database order."""
    return [captions[0] for captions in self.db.captions]

  def search(self, query: str, k: int, attribute: str | None = None, scoring: str | None = None) -> list[dict]:
    hits = self.db.search(query, k, attribute, scoring or self.scorings[0])
    return [{"image_id": hit["image_id"], "score": hit["score"], "text": hit["caption"], "text_id": hit["caption_row"],
             "generated_captions": hit["captions"]} for hit in hits]


def load_caption_db_search(directory: str) -> CaptionDatabaseSearch:
  """`CaptionDatabaseSearch` over the caption database in `directory` (errors name the file and the fix)."""
  return CaptionDatabaseSearch(caption_search.CaptionDatabase.load(directory), directory)


def load_caption_search(export_dir: str):
  """The caption database of an export: TF-IDF over texts.jsonl when it exists and scikit-learn is installed,
  else None (the captions endpoint then answers 501)."""
  if not os.path.exists(os.path.join(export_dir, "texts.jsonl")):
    return None
  if importlib.util.find_spec("sklearn") is None:
    return None
  texts = embedding_export.read_items(export_dir, "texts")
  return TfidfCaptionSearch(texts) if texts else None


# --------------------------------------------------------------------------------------------------- the app


class TextQuery(pydantic.BaseModel):
  """The body of POST /api/search/text."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  query: str
  k: int | None = None


class SimilarQuery(pydantic.BaseModel):
  """The body of POST /api/search/similar: an indexed image's id, k, and what to find."""
  model_config = pydantic.ConfigDict(extra="forbid", strict=True)
  image_id: int
  k: int | None = None
  target: str = "images"


class CaptionQuery(TextQuery):
  """The body of POST /api/search/captions: a text query, and optionally an attribute word the image's generated
  captions must have (caption databases only)."""
  attribute: str | None = None


def _answer(results: list[dict], score_kind: str, rerank: dict | None) -> dict[str, Any]:
  """The ranked part of a search answer: results numbered from 1, the kind of their scores, the re-ranking."""
  for rank, result in enumerate(results, 1):
    result["rank"] = rank
  return {"results": results, "score_kind": score_kind, "rerank": rerank}


def caption_db_warnings(captions, image_items: dict, export_dir: str) -> list[str]:
  """A warning when a caption database (`captions.image_ids`, `--caption_db`) has images the export lacks: their
  results show text only (the database was built from another split than the export's)."""
  db_ids = getattr(captions, "image_ids", None)
  if db_ids is None:
    return []
  db_ids = [int(i) for i in db_ids]
  missing = [i for i in db_ids if i not in image_items]
  if not missing:
    return []
  source = getattr(captions, "directory", None) or "the caption database"
  return [f"{source} has {len(db_ids)} images, {len(missing)} of which are not in the export {export_dir} (e.g. "
          f"image ids {missing[:3]}): their results show text only, without the picture. Build the database from "
          "the export's split (`xmodal caption --workdir=RUN --all --split=SPLIT`) or export the database's split "
          "(`xmodal export --split=SPLIT`)."]


def example_queries(captions, text_items: dict | None, image_items: dict, n: int = 6) -> list[str]:
  """Up to `n` distinct captions spread over the caption database (when it has `.example_captions`), else the
  export's texts, else its images' captions: queries the page offers to try."""
  if captions is not None and hasattr(captions, "example_captions"):
    pool = list(captions.example_captions())
  elif text_items:
    pool = [str(item.get("text", "")) for item in text_items.values()]
  else:
    pool = [str(c) for item in image_items.values() for c in item.get("captions", [])[:1]]
  pool = [text for text in pool if text.strip()]
  step = max(1, len(pool) // n)
  out = []
  for text in pool[::step] + pool:
    if text not in out:
      out.append(text)
    if len(out) == n:
      break
  return out


def _image_url(item: dict) -> str:
  return "/images/" + urllib.parse.quote(os.path.basename(str(item["file"])))


def _content_type(request: Request) -> str:
  return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _check_k(k: int | None, limits: ServiceLimits) -> int:
  k = limits.default_k if k is None else k
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
    raise ApiError(400, f"k={k!r} is out of range: ask for 1 to {limits.max_k} results.",
                   {"k": k, "max_k": limits.max_k})
  return k


def _check_query(query: str, limits: ServiceLimits) -> str:
  if len(query) > limits.max_query_chars:
    raise ApiError(400, f"the query is {len(query)} characters long; the limit is {limits.max_query_chars}.",
                   {"length": len(query), "max_query_chars": limits.max_query_chars})
  if not query.strip():
    raise ApiError(400, "the query is empty.")
  return query


_MAX_INT_DIGITS = 30  # a JSON integer longer than this is refused before it is converted (or echoed)
_LONE = "a lone UTF-16 surrogate, which is not valid Unicode"
_IN_JSON = "in JSON a character beyond U+FFFF is escaped as a pair, e.g. \\ud83d\\ude00"


class _BadNumber:
  """What the JSON parser puts in place of a number the API cannot take: NaN, Infinity, an overflowing float, an
  integer of too many digits (Python's json accepts them all; `_check_json` refuses them naming the field)."""

  def __init__(self, text: str, problem: str):
    self.text, self.problem = text, problem


def _parse_float(text: str):
  value = float(text)
  return value if math.isfinite(value) else _BadNumber(text, "overflows to infinity")


def _parse_int(text: str):
  digits = len(text.lstrip("-"))
  if digits > _MAX_INT_DIGITS:
    return _BadNumber(f"{text[:12]}... ({digits} digits)", f"is an integer of {digits} digits")
  return int(text)


def _parse_constant(name: str):
  return _BadNumber(name, "is not a number in JSON (NaN and Infinity are JavaScript literals)")


def _surrogate_at(text: str) -> int:
  """The position of the first lone surrogate in `text` (json.loads joins escaped pairs), else -1."""
  try:
    text.encode("utf-8")
    return -1
  except UnicodeEncodeError as e:
    return e.start


def _field_hints(limits: ServiceLimits) -> dict[str, str]:
  return {"k": f"an integer from 1 to {limits.max_k}",
          "query": f"a non-empty string of at most {limits.max_query_chars} characters",
          "attribute": "a string of one word"}


def _check_json(value: Any, limits: ServiceLimits) -> None:
  """ApiError 400 naming the field for a NaN / Infinity / overflowing / over-long number or a lone surrogate (in
  a value or a field name) anywhere in a parsed JSON body; walked without recursion."""
  hints = _field_hints(limits)
  stack = [(value, "", "")]  # (value, its path for messages, its top-level field)
  while stack:
    item, path, top = stack.pop()
    field = path or "body"
    fix = (f"send {top} as {hints[top]}" if top in hints else "leave the field out" if top
           else 'send a JSON object like {"query": "a red circle", "k": 5}')
    if isinstance(item, _BadNumber):
      raise ApiError(400, f"{field}: {item.text} {item.problem}; {fix}.",
                     {"field": field, "value": item.text, "problem": "invalid number"})
    if isinstance(item, str):
      at = _surrogate_at(item)
      if at >= 0:
        raise ApiError(400, f"{field}: the text has a lone UTF-16 surrogate ({ascii(item[at])[1:-1]}) at character {at}, "
                       f"which is not valid Unicode ({_IN_JSON}); {fix}.", {"field": field, "position": at, "problem": "lone surrogate"})
    elif isinstance(item, dict):
      for key, sub in item.items():
        if _surrogate_at(key) >= 0:
          raise ApiError(400, f"{field}: the field name {ascii(key)} has {_LONE} ({_IN_JSON}); the fields are "
                         f"{sorted(hints)}.", {"field": field, "problem": "lone surrogate in a field name"})
        stack.append((sub, f"{path}.{key}" if path else key, top or key))
    elif isinstance(item, list):
      stack.extend((sub, f"{field}[{i}]", top) for i, sub in enumerate(item))


def _parse_json(body: bytes, limits: ServiceLimits) -> Any:
  """A request body -> its JSON value, or ApiError 400 for malformed JSON or anything `_check_json` refuses."""
  try:
    value = json.loads(body, parse_float=_parse_float, parse_int=_parse_int, parse_constant=_parse_constant)
  except (ValueError, UnicodeDecodeError) as e:
    raise ApiError(400, f"malformed JSON body ({e}).") from None
  except RecursionError:
    raise ApiError(400, "malformed JSON body: nested too deeply; send a flat object like "
                   '{"query": "a red circle", "k": 5}.') from None
  _check_json(value, limits)
  return value


def _check_form(form) -> None:
  """ApiError 400 for a lone surrogate in a multipart field name, file name or text value (a `charset=utf-7` or
  `unicode_escape` part decodes to one)."""
  for name, value in form.multi_items():
    if _surrogate_at(name) >= 0:
      raise ApiError(400, f"a multipart field name ({ascii(name)}) has {_LONE}; put the file in the field 'image' "
                     "(curl -F image=@photo.jpg), with no charset= other than utf-8.",
                     {"field": ascii(name), "problem": "lone surrogate in a field name"})
    text, what = (value.filename or "", "file name") if isinstance(value, UploadFile) else (value, "value")
    if _surrogate_at(text) >= 0:
      fix = "rename the file, or send its name as UTF-8" if what == "file name" else "send it as UTF-8"
      raise ApiError(400, f"the {what} of the multipart field {name!r} ({ascii(text)}) has {_LONE}; {fix} (no "
                     "charset= other than utf-8).", {"field": name, "problem": f"lone surrogate in the {what}"})


async def _json_body(request: Request, limits: ServiceLimits, model: type[pydantic.BaseModel], shape: str):
  """A JSON body -> the `model` it holds, or the ApiError for a wrong content type (415), bad JSON or fields (400,
  naming the expected `shape`)."""
  kind = _content_type(request)
  if kind != "application/json" and not kind.endswith("+json"):
    raise ApiError(415, f"send the query as JSON (Content-Type: application/json), not {kind or 'no type'!r}.")
  value = _parse_json(await request.body(), limits)
  try:
    return model.model_validate(value)
  except pydantic.ValidationError as e:
    raise ApiError(400, f"the body must be {shape}: " + "; ".join(
        f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()),
                   e.errors(include_url=False, include_context=False)) from None


async def _text_query(request: Request, limits: ServiceLimits, model: type[TextQuery] = TextQuery):
  """A JSON body -> (query, k) (and the parsed body with `model` other than TextQuery), or the ApiError for a wrong
  content type (415), bad JSON or fields (400)."""
  shape = '{"query": str, "k": int, "attribute": str}' if model is CaptionQuery else '{"query": str, "k": int}'
  parsed = await _json_body(request, limits, model, shape)
  query, k = _check_query(parsed.query, limits), _check_k(parsed.k, limits)
  return (query, k) if model is TextQuery else (query, k, parsed)


class _Guard:
  """Pure ASGI middleware: body size limits (Content-Length before reading, then counted while the app reads)
  and headers on every answer (nosniff; the page's content security policy)."""

  def __init__(self, app, *, limit_for: Callable[[str], int]):
    self.app, self.limit_for = app, limit_for

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      await self.app(scope, receive, send)
      return
    limit = self.limit_for(scope["path"])

    async def send_with_headers(message):
      if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((b"x-content-type-options", b"nosniff"))
        headers.append((b"content-security-policy", _PAGE_POLICY.encode()))
        headers.append((b"referrer-policy", b"no-referrer"))
        message = {**message, "headers": headers}
      await send(message)

    declared = dict(scope.get("headers", [])).get(b"content-length")
    if declared is not None:
      try:
        too_big = int(declared) > limit
      except ValueError:
        await _error_response(400, f"bad Content-Length header {declared!r}.")(scope, receive, send_with_headers)
        return
      if too_big:
        await _error_response(413, f"the request body is {int(declared)} bytes; the limit here is {limit}.",
                              {"bytes": int(declared), "limit": limit})(scope, receive, send_with_headers)
        return
    seen = 0

    async def counted_receive():
      nonlocal seen
      message = await receive()
      if message["type"] == "http.request":
        seen += len(message.get("body", b""))
        if seen > limit:
          raise ApiError(413, f"the request body is over the limit of {limit} bytes here.", {"limit": limit})
      return message

    await self.app(scope, counted_receive, send_with_headers)


def create_app(index, encoders, *, limits: ServiceLimits = ServiceLimits(), captions=None, rerank: int | None = None,
               warm_up: bool = False, warnings: Sequence[str] = (), read_pair_sets: Callable | None = None) -> FastAPI:
  """The service's FastAPI app over a loaded index and encoders (module docstring: endpoints and errors).

  Args:
    index: a SearchIndex (`serving/ann_index.py`): `.search(kind, queries float32 [n, D], k) -> (scores [n, k],
      ids int64 [n, k])` for kind in `.kinds`, `.export_dir`, `.manifest`.
    encoders: `.encode_texts(list[str])`, `.encode_images(uint8 [n, S, S, 3])` -> unit vectors float32 [n, D],
      `.image_size` (S), `.max_len`, `.max_batch` (`serving/exported_encoder.py`).
    limits: request limits and queue sizes.
    captions: an optional caption database, `.search(query, k) -> [{"image_id", "score", ...}]`; with
      `.image_ids` (a `--caption_db`), images it has that the export lacks are a warning (`caption_db_warnings`).
    rerank: K: re-rank the ANN shortlist of max(K, k) items with the encoders' `score_pairs` (`serving/rerank.py`;
      the encoders must have `.has_pairs`, else errors.ConfigError); None: rank by the embedding alone.
    warm_up: compile the encoders (and the pair scorer) at start-up, before the first request is answered.
    warnings: more start-up warnings for /api/health's "warnings" (the caption database's are added here).
    read_pair_sets: `(export_dir, kind, rows) -> pair sets` (default `embedding_export.read_pair_sets`).

  Raises:
    errors.MissingError / DataError: the export lacks images.jsonl (or texts.jsonl for an index with texts), or
      its item counts differ from the manifest's.
  """
  export_dir = str(index.export_dir)
  manifest = dict(index.manifest)
  kinds = tuple(index.kinds)
  images_dir = os.path.realpath(os.path.join(export_dir, "images"))
  image_items = {int(item["id"]): item for item in embedding_export.read_items(export_dir, "images")}
  text_items = ({int(item["id"]): item for item in embedding_export.read_items(export_dir, "texts")}
                if "texts" in kinds else {})
  counts = {"images": len(image_items), "texts": len(text_items)}
  for kind in kinds:
    expected = manifest.get("kinds", {}).get(kind, {}).get("count")
    if expected is not None and int(expected) != counts[kind]:
      raise errors.DataError(f"{export_dir}/{kind}.jsonl has {counts[kind]} items but the manifest says "
                             f"{expected}: the export is inconsistent; rerun `xmodal export`.")
  encoder_lock = threading.Lock()
  image_size = int(encoders.image_size)
  tokenizer = getattr(encoders, "tokenizer", None)
  warnings = [*warnings, *caption_db_warnings(captions, image_items, export_dir)]
  examples = example_queries(captions, text_items or None, image_items)
  reranker = None
  if rerank is not None:
    from xmodal_jax.serving import rerank as rerank_lib  # pylint: disable=import-outside-toplevel  (imports jax)
    rows = {"images": {i: row for row, i in enumerate(image_items)},
            "texts": {i: row for row, i in enumerate(text_items)}}
    reranker = rerank_lib.Reranker(encoders, export_dir, rerank, rows, read_sets=read_pair_sets)

  def encode_texts(texts: list[str]) -> list[np.ndarray | ApiError]:
    """One encoder call for the batch; a text the tokenizer refuses (errors.DataError, e.g. no words at all) gets
    its own 400 and the batch is encoded again without it, so one bad query never fails its neighbours."""
    try:
      with encoder_lock:
        vectors = np.asarray(encoders.encode_texts(texts), np.float32)
    except errors.DataError as e:
      if len(texts) == 1:
        return [ApiError(400, f"the query cannot be encoded: {e}")]
      return [out for text in texts for out in encode_texts([text])]
    if vectors.ndim != 2 or len(vectors) != len(texts):
      raise RuntimeError(f"encode_texts returned shape {vectors.shape} for {len(texts)} texts.")
    return list(vectors)

  def encode_image(image: np.ndarray) -> np.ndarray:
    with encoder_lock:
      return np.asarray(encoders.encode_images(image[None]), np.float32)[0]

  batcher = MicroBatcher(encode_texts, max_batch=int(encoders.max_batch), max_wait_s=limits.batch_wait_ms / 1000,
                         max_pending=limits.max_pending)
  rerank_batcher = None
  if reranker is not None:
    def score_jobs(jobs):
      with encoder_lock:
        return reranker.score_jobs(jobs)
    rerank_batcher = MicroBatcher(score_jobs, max_batch=max(1, int(encoders.max_batch) // 4),
                                  max_wait_s=limits.batch_wait_ms / 1000, max_pending=limits.max_pending)
  uploads_in_progress = 0
  warmup_ms = None

  def warm() -> float:
    """One call of each encoder (and of the pair scorer with K pairs per direction) -> milliseconds taken."""
    start = time.perf_counter()
    with encoder_lock:
      encoders.encode_texts([examples[0] if examples else "a photo"])
      encoders.encode_images(np.zeros([1, image_size, image_size, 3], np.uint8))
      if reranker is not None:
        jobs = [rerank_lib.RerankJob("text", examples[0] if examples else "a photo", "images",
                                     list(image_items)[:reranker.k])]
        if "texts" in kinds:
          jobs.append(rerank_lib.RerankJob("image", np.zeros([image_size, image_size, 3], np.uint8), "texts",
                                           list(text_items)[:reranker.k]))
        for job in jobs:  # one job per call: the shape of a lone query, the common case
          reranker.score_jobs([job])
    return 1000 * (time.perf_counter() - start)

  def limit_for(path: str) -> int:
    return limits.max_upload_bytes + _MULTIPART_SLACK if path == "/api/search/image" else limits.max_json_bytes

  async def lifespan(_):
    nonlocal warmup_ms
    if warm_up:
      warmup_ms = round(await run_in_threadpool(warm), 1)
    yield
    await batcher.close()
    if rerank_batcher is not None:
      await rerank_batcher.close()

  app = FastAPI(title="xmodal search", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                openapi_url="/api/openapi.json")  # no docs pages: they load scripts from a CDN
  app.add_middleware(_Guard, limit_for=limit_for)
  app.state.batcher, app.state.limits, app.state.captions = batcher, limits, captions
  app.state.reranker, app.state.rerank_batcher, app.state.warnings = reranker, rerank_batcher, warnings

  @app.exception_handler(ApiError)
  async def _api_error(_, exc: ApiError):
    return _error_response(exc.status, exc.message, exc.detail)

  @app.exception_handler(RequestValidationError)
  async def _invalid(_, exc: RequestValidationError):
    problems = exc.errors()
    message = "; ".join(f"{'.'.join(map(str, p.get('loc', ()))) or 'request'}: {p.get('msg')}" for p in problems)
    return _error_response(400, f"invalid request: {message}",
                           [{k: p[k] for k in ("loc", "msg", "type") if k in p} for p in problems])

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(_, exc: StarletteHTTPException):
    return _error_response(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

  @app.exception_handler(Exception)
  async def _bug(_, exc: Exception):
    return _error_response(500, f"internal error ({type(exc).__name__}); see the server's log.")

  def need_kind(kind: str) -> None:
    if kind not in kinds:
      raise ApiError(404, f"this index has no {kind} vectors (it has {list(kinds)}); build it with {kind}.")

  def image_result(image_id: int, score: float, score_kind: str = "cosine") -> dict[str, Any]:
    item = image_items.get(int(image_id))
    return {"image_id": int(image_id), "score": float(score), "score_kind": score_kind,
            "image_url": _image_url(item) if item else None,
            "captions": list(item.get("captions", [])) if item else []}

  def caption_result(text_id: int, score: float, score_kind: str = "cosine") -> dict[str, Any]:
    item = text_items.get(int(text_id), {})
    image = image_items.get(int(item["image_id"])) if "image_id" in item else None
    return {"text_id": int(text_id), "text": item.get("text"), "image_id": item.get("image_id"),
            "score": float(score), "score_kind": score_kind, "image_url": _image_url(image) if image else None}

  def shortlist_size(k: int) -> int:
    return max(k, reranker.k) if reranker is not None else k

  async def ranked(query_kind: str, query: Any, kind: str, hits: list[tuple[int, float]], k: int) -> dict[str, Any]:
    """The answer's results (and "score_kind", "rerank") for the ANN `hits` of `kind`: re-ranked by the pair
    scorer when the service re-ranks and `kind` can be (a text or image query against the other modality)."""
    result = image_result if kind == "images" else caption_result
    if reranker is None or query_kind == "image" and kind == "images" or not hits:
      return _answer([result(i, s) for i, s in hits[:k]], "cosine", None)
    start = time.perf_counter()
    job = rerank_lib.RerankJob(query_kind, query, kind, [i for i, _ in hits])
    scores = await rerank_batcher.submit(job)
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    results = []
    for position in order:
      (item_id, ann_score), score = hits[int(position)], scores[int(position)]
      results.append({**result(item_id, score, "reranked"), "ann_score": float(ann_score),
                      "ann_rank": int(position) + 1})
    return _answer(results, "reranked", {"k": len(hits), "took_ms": round(1000 * (time.perf_counter() - start), 3)})

  async def nearest(kind: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
    k = min(k, counts[kind])
    if k == 0:
      return []
    scores, ids = await run_in_threadpool(index.search, kind, np.asarray(vector, np.float32)[None], k)
    return [(int(i), float(s)) for i, s in zip(np.asarray(ids)[0], np.asarray(scores)[0]) if i >= 0]

  @app.get("/", include_in_schema=False)
  async def page():
    return FileResponse(os.path.join(WEB_DIR, "index.html"), media_type="text/html; charset=utf-8")

  @app.get("/static/{name}", include_in_schema=False)
  async def static(name: str):
    if name not in _STATIC:
      raise ApiError(404, f"no static file {name!r}.")
    return FileResponse(os.path.join(WEB_DIR, name), media_type=_STATIC[name])

  @app.get("/api/health")
  async def health():
    return {"status": "ok", "ready": True, "model_step": manifest.get("step", getattr(encoders, "step", None)),
            "dim": manifest.get("dim", getattr(encoders, "dim", None)), "kinds": list(kinds), "counts": counts,
            "image_size": image_size, "max_len": int(encoders.max_len), "max_batch": batcher.max_batch,
            "caption_search": captions is not None, "pending_queries": batcher.pending,
            "text_batches": batcher.batches, "text_queries": batcher.items,
            "limits": dataclasses.asdict(limits), "warnings": list(warnings), "example_queries": examples,
            "rerank": None if reranker is None else {"k": reranker.k, "batches": reranker.calls,
                                                     "pairs": reranker.pairs},
            "warmup_ms": warmup_ms}

  body_schema = {"requestBody": {"required": True,
                                 "content": {"application/json": {"schema": TextQuery.model_json_schema()}}}}

  @app.post("/api/search/text", openapi_extra=body_schema)
  async def search_text(request: Request):
    """Text -> the nearest images."""
    start = time.perf_counter()
    query, k = await _text_query(request, limits)
    need_kind("images")
    vector = await batcher.submit(query)
    if isinstance(vector, ApiError):
      raise vector
    out = await ranked("text", query, "images", await nearest("images", vector, shortlist_size(k)), k)
    unknown = query_words.unknown_words(tokenizer, query)
    return {"query": query, **out, "unknown_words": unknown, "warning": query_words.warning(unknown),
            "took_ms": round(1000 * (time.perf_counter() - start), 3)}

  caption_schema = {"requestBody": {"required": True,
                                    "content": {"application/json": {"schema": CaptionQuery.model_json_schema()}}}}

  @app.post("/api/search/captions", openapi_extra=caption_schema)
  async def search_captions(request: Request, scoring: str | None = None):
    """Text -> images by word match on their captions (TF-IDF), when the service has a caption database;
    ?scoring=sum|cosine and the body's "attribute" with a database of generated captions (`--caption_db`)."""
    start = time.perf_counter()
    query, k, body = await _text_query(request, limits, CaptionQuery)
    if captions is None:
      raise ApiError(501, _NO_CAPTIONS)
    offered = tuple(getattr(captions, "scorings", ()))
    options = {name: value for name, value in (("attribute", body.attribute), ("scoring", scoring))
               if value is not None}
    if options and not offered:
      raise ApiError(400, f"{' and '.join(options)} need a caption database of generated captions (xmodal serve "
                     "--caption_db=DIR); this service searches the export's captions.", {"options": list(options)})
    if scoring is not None and scoring not in offered:
      raise ApiError(400, f"scoring={scoring!r} is not a caption scoring; use one of {list(offered)}.",
                     {"scoring": scoring, "scorings": list(offered)})
    try:
      hits = await run_in_threadpool(captions.search, query, k, **options)
    except errors.UserError as e:  # e.g. an attribute that is not one word
      raise ApiError(400, str(e)) from None
    results = []
    for hit in hits[:k]:
      result = image_result(hit["image_id"], hit["score"], "tfidf")
      result.update({key: hit[key] for key in ("text", "text_id", "generated_captions") if key in hit})
      results.append(result)
    out = {"query": query, **_answer(results, "tfidf", None),
           "took_ms": round(1000 * (time.perf_counter() - start), 3)}
    if offered:
      out.update(scoring=scoring or offered[0], attribute=body.attribute)
    return out

  @app.post("/api/search/image")
  async def search_image(request: Request, k: int | None = None, target: Literal["images", "captions"] = "images"):
    """An uploaded image (multipart field `image`) -> similar images, or the captions nearest to it."""
    nonlocal uploads_in_progress
    start = time.perf_counter()
    k = _check_k(k, limits)
    need_kind("images" if target == "images" else "texts")
    if _content_type(request) != "multipart/form-data":
      raise ApiError(415, "upload the image as multipart/form-data with the file in the field 'image' "
                     f"(curl -F image=@photo.jpg), not {_content_type(request) or 'no type'!r}.")
    if uploads_in_progress >= limits.max_pending_uploads:
      raise ApiError(503, f"{uploads_in_progress} image searches are in progress; retry shortly.")
    uploads_in_progress += 1
    try:
      async with request.form(max_files=1, max_fields=4) as form:
        _check_form(form)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
          raise ApiError(400, "the multipart body has no file in the field 'image' (curl -F image=@photo.jpg).",
                         {"fields": list(form.keys())})
        data = await upload.read(limits.max_upload_bytes + 1)
      if len(data) > limits.max_upload_bytes:
        raise ApiError(413, f"the image file is over the limit of {limits.max_upload_bytes} bytes.",
                       {"limit": limits.max_upload_bytes})
      if not data:
        raise ApiError(400, "the uploaded image file is empty.")
      image = await run_in_threadpool(decode_upload, data, image_size, limits.max_image_pixels)
      vector = await run_in_threadpool(encode_image, image)
    finally:
      uploads_in_progress -= 1
    kind = "images" if target == "images" else "texts"
    out = await ranked("image", image, kind, await nearest(kind, vector, shortlist_size(k)), k)
    return {"target": target, **out, "took_ms": round(1000 * (time.perf_counter() - start), 3)}

  async def similar(image_id: Any, k: Any, target: Any) -> dict[str, Any]:
    start = time.perf_counter()
    if isinstance(image_id, bool) or not isinstance(image_id, int):
      raise ApiError(400, f"image_id={image_id!r}: give the id of an indexed image, an integer (a result's "
                     "\"image_id\").", {"image_id": image_id})
    k = _check_k(k, limits)
    if target not in ("images", "captions"):
      raise ApiError(400, f"target={target!r}: use \"images\" (similar images) or \"captions\".", {"target": target})
    kind = "images" if target == "images" else "texts"
    need_kind("images")
    need_kind(kind)
    if image_id not in image_items:
      raise ApiError(404, f"no indexed image has image_id={image_id}.", {"image_id": image_id})
    vector = (await run_in_threadpool(index.vectors, "images", [image_id]))[0]
    if kind == "images":  # the image itself is not "more like this": ask for one more and leave it out
      hits = [(i, s) for i, s in await nearest("images", vector, k + 1) if i != image_id][:k]
    else:
      hits = await nearest("texts", vector, shortlist_size(k))
    out = await ranked("image_id", image_id, kind, hits, k)
    return {"target": target, "image_id": image_id, **out, "took_ms": round(1000 * (time.perf_counter() - start), 3)}

  @app.get("/api/search/similar")
  async def search_similar_get(image_id: int, k: int | None = None,
                               target: Literal["images", "captions"] = "images"):
    """More like this: an indexed image (its id) -> similar images (itself left out), or its nearest captions."""
    return await similar(image_id, k, target)

  @app.post("/api/search/similar", openapi_extra={"requestBody": {"required": True, "content": {
      "application/json": {"schema": SimilarQuery.model_json_schema()}}}})
  async def search_similar_post(request: Request):
    """As GET, with the JSON body {"image_id": int, "k": int, "target": "images" | "captions"}."""
    body = await _json_body(request, limits, SimilarQuery,
                            '{"image_id": int, "k": int, "target": "images" | "captions"}')
    return await similar(body.image_id, body.k, body.target)

  @app.get("/images/{name:path}")
  async def image_file(name: str):
    """An exported image: a plain name (no folders, no dot files) of an image file that resolves inside
    EXPORT/images/ (a symlink pointing elsewhere is refused)."""
    not_found = ApiError(404, f"no image {name!r}.")
    if (not name or "/" in name or "\\" in name or "\0" in name or name.startswith(".")
        or os.path.splitext(name)[1].lower() not in IMAGE_TYPES):
      raise not_found
    path = os.path.realpath(os.path.join(images_dir, name))
    if os.path.dirname(path) != images_dir or not os.path.isfile(path):
      raise not_found
    return FileResponse(path, media_type=IMAGE_TYPES[os.path.splitext(name)[1].lower()],
                        headers={"cache-control": "public, max-age=3600"})

  return app


# ------------------------------------------------------------------------------------------------- serving


def check_host(host: str, allow_remote: bool = False) -> None:
  """Refuses (errors.ConfigError) to bind anything but a loopback address unless allow_remote."""
  if allow_remote or host == "localhost":
    return
  try:
    loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    loopback = False
  if not loopback:
    raise errors.ConfigError(
        f"refusing to serve on {host!r}: it is not a loopback address, so anyone who can reach this machine could "
        "query the index and read its images. Serve on 127.0.0.1 (the default) and reach it through an SSH "
        "tunnel or a reverse proxy, or pass allow_remote=True (`--allow_remote`) to bind it anyway.")


def open_socket(host: str = "127.0.0.1", port: int = 8000, *, allow_remote: bool = False) -> socket.socket:
  """A bound TCP socket for uvicorn (port 0: a free one); refuses non-loopback hosts unless allow_remote."""
  check_host(host, allow_remote)
  family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
  sock = socket.socket(family, kind, proto)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind(address)
  except OSError as e:
    sock.close()
    raise errors.ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port.") from None
  sock.set_inheritable(True)
  return sock


def socket_url(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def uvicorn_server(app: FastAPI, *, log_level: str = "info", access_log: bool = True):
  """A uvicorn.Server for `app`: run it with `.run(sockets=[open_socket(...)])`, stop it with `.should_exit`."""
  import uvicorn  # pylint: disable=import-outside-toplevel
  return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                       timeout_graceful_shutdown=5, server_header=False))


def wait_until_serving(url: str, process=None, timeout_s: float = 180.0) -> bool:
  """Polls `url`/api/health until it answers 200 (True), `process` (a Popen running `xmodal serve`) exits, or
  `timeout_s` passes (False). For scripts and tests that start the service as its own process."""
  import urllib.error  # pylint: disable=import-outside-toplevel
  import urllib.request  # pylint: disable=import-outside-toplevel
  deadline = time.time() + timeout_s
  while time.time() < deadline and (process is None or process.poll() is None):
    try:
      with urllib.request.urlopen(f"{url.rstrip('/')}/api/health", timeout=5) as answer:
        if answer.status == 200:
          return True
    except (urllib.error.URLError, OSError):
      pass
    time.sleep(0.5)
  return False


def _caption_mode(captions, caption_db: str | None) -> str:
  if captions is None:
    return "off"
  if caption_db:
    return f"on: {captions.db.num_images} images' generated captions from {caption_db}"
  return "on"


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8000, *, allow_remote: bool = False,
          limits: ServiceLimits = ServiceLimits(), max_batch: int | None = None, log_level: str = "info",
          caption_db: str | None = None, rerank: int | None = None, warm_up: bool = True) -> None:
  """Serves the index in `index_dir` until interrupted (Ctrl-C); prints the URL first, and warnings on stderr.

  Args:
    index_dir: a directory written by the index builder (`serving/ann_index.py`); its export's encoders are
      loaded from `index.export_dir`.
    host, port: where to listen; a host that is not loopback is refused unless `allow_remote`.
    max_batch: the text encoder's largest batch (default: the encoders' own).
    caption_db: a caption database directory (`xmodal caption --all`) for /api/search/captions, instead of the
      export's texts.
    rerank: K (`--rerank=K`): re-rank each ANN shortlist of K items with the export's pair scorer (S2, S4
      exports); an export without pair sets is refused (errors.ConfigError).
    warm_up: compile the encoders before answering (the first query then takes milliseconds, not seconds).
  """
  check_host(host, allow_remote)  # before loading anything
  if rerank is not None:
    from xmodal_jax.serving import rerank as rerank_lib  # pylint: disable=import-outside-toplevel
    rerank_lib.check_k(rerank)
  from xmodal_jax.serving import ann_index, exported_encoder  # pylint: disable=import-outside-toplevel
  db_search = load_caption_db_search(caption_db) if caption_db else None  # a bad directory fails before the rest
  index = ann_index.load_search_index(index_dir)
  encoders = exported_encoder.load_encoders(index.export_dir, **({"max_batch": max_batch} if max_batch else {}))
  captions = db_search if db_search is not None else load_caption_search(index.export_dir)
  if rerank is not None and not getattr(encoders, "has_pairs", False):
    raise errors.ConfigError(rerank_lib.no_pairs_message(index.export_dir, rerank))
  app = create_app(index, encoders, limits=limits, captions=captions, rerank=rerank, warm_up=warm_up)
  for warning in app.state.warnings:
    print(f"xmodal serve: warning: {warning}", file=sys.stderr, flush=True)
  sock = open_socket(host, port, allow_remote=allow_remote)
  counts = ", ".join(f"{n} {kind}" for kind, n in
                     ((kind, index.manifest.get("kinds", {}).get(kind, {}).get("count", "?")) for kind in index.kinds))
  ranking = f"re-ranking the top {rerank} by the pair scorer" if rerank is not None else "ranking by cosine"
  print(f"xmodal serve: {socket_url(sock)} ({counts}, model step {index.manifest.get('step')}; {ranking}; caption "
        f"search {_caption_mode(captions, caption_db)}){'; compiling the encoders first' if warm_up else ''}. "
        "Ctrl-C stops.", flush=True)
  uvicorn_server(app, log_level=log_level).run(sockets=[sock])
