"""Search images by the words of their generated captions (system S5, FIG. 2-3): the caption database and its
TF-IDF index, an attribute filter, embedding search beside it, and caption-based retrieval R@K.

A captioner writes a few captions per image into a `CaptionDatabase`; a user then searches the images by words.
`TfidfCaptionIndex` ranks images by their captions with scikit-learn's `TfidfVectorizer`, fitted on the indexed
captions (each caption one document), in one of two scorings:

  "sum"     the seed's: score(caption) = sum over the query's distinct words w that occur in the caption of the
            caption's TF-IDF weight of w, weight = tf' * idf(w), with
              tf' = 1 + ln(count of w in the caption)            (sublinear_tf=True)
              idf(w) = ln((1 + n) / (1 + df(w))) + 1             (smooth_idf=True; n captions, df(w) with w)
            and no normalisation of the caption vector (norm=None); words only (unigrams).
  "cosine"  the cosine of the query's and the caption's TF-IDF vectors (unigrams and bigrams, sublinear tf,
            L2-normalised rows): the search service's scoring (`search_service.TfidfCaptionSearch`).

Why norm=None for "sum": the seed scores a caption by the TF-IDF weights of the query's words, and L2-normalising
the caption vector would divide those weights by the caption's length, so a short caption matching one query word
("a car") would outrank a longer one matching all of them ("a red car parked by a tall building") for "red car";
generated captions differ in length by the decoder, not by relevance. Unnormalised, a caption scores by how many
of the query's words it has and how rare they are. Sublinear tf damps a decoder's repetitions ("a dog and a dog"
counts dog 1 + ln 2 times, not twice); smooth idf keeps every weight >= 1, so each matched word adds to the score.
"cosine" is the option for length-normalised ranking.

Words are what the vectorizer's default analyzer keeps: lower-cased runs of 2+ letters/digits (token pattern
`(?u)\\b\\w\\w+\\b`: "a" and "I" are no words, "red-haired" is "red" and "haired"); no stop words are dropped.

An image scores as its best caption (the first of its captions with that score); images are ranked by score, ties
by image order. Each hit is

  {"image_id": int, "image": str, "score": float, "caption": the best-matching caption,
   "captions": the image's other captions (in order, the best one left out), "caption_row": the best caption's row}

Only images with a positive score are hits: a query none of whose words is in the vocabulary gets [] (as does an
attribute no image has); `index.unknown_words(query)` tells which words the index does not know.

On disk (`CaptionDatabase.save` / `.load`), a directory:

  captions.jsonl          one line per image: {"image_id": int, "image": str, "captions": [str, ...],
                          "references": [str, ...]}  ("references": human captions, only when the database has any)
  image_embeddings.npy    float32 [N, D], row i the image of line i              (only when the database has them)
  caption_embeddings.npy  float32 [total captions, D], image order then caption order    (only when it has them)
  meta.json               {"format": "xmodal-caption-db", "version": 1, "num_images", "num_captions",
                           "image_embeddings": [N, D] | null, "caption_embeddings": [M, D] | null, "meta": {...}}

Every file is written to a temporary name and renamed (fileio.write_atomic); meta.json is removed first and written
last, so a directory without it is an unfinished save. `.npy` files are written and read with allow_pickle=False.

  db = CaptionDatabase(image_ids, images, captions, image_embeddings=emb)
  db.save(directory); db = CaptionDatabase.load(directory)
  db.search("red car", k=10, attribute="parked")             # TF-IDF "sum" over the generated captions
  db.search_by_embedding(text_vector, k=10, attribute="red")  # cosine to the image embeddings
  recall_at_k(db, queries, query_image, ks=(1, 5, 10))        # {"t2i_r1": %, ..., "t2i_medr", "t2i_meanr", ...}
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Sequence

import numpy as np

from xmodal_jax import errors, fileio
from xmodal_jax.evaluation import retrieval

SCORINGS = ("sum", "cosine")
FORMAT = "xmodal-caption-db"
VERSION = 1
CAPTIONS_FILE = "captions.jsonl"
IMAGE_EMBEDDINGS_FILE = "image_embeddings.npy"
CAPTION_EMBEDDINGS_FILE = "caption_embeddings.npy"
META_FILE = "meta.json"
REBUILD_HINT = "rerun `xmodal caption --workdir {workdir} --all` to write it again"
_META_KEYS = ("num_images", "num_captions", "image_embeddings", "caption_embeddings", "meta")
_QUERY_CHUNK = 256  # queries scored at once by recall_at_k: a dense [captions, chunk] block


def _check_scoring(scoring: str) -> str:
  if scoring not in SCORINGS:
    raise errors.ConfigError(f"scoring={scoring!r} is not a caption scoring; choose one of {SCORINGS}.")
  return scoring


def _check_k(k: int) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise errors.ConfigError(f"k={k!r} must be a positive integer (the number of images to return).")
  return int(k)


def _distinct(words: Sequence[str]) -> list[str]:
  return list(dict.fromkeys(words))


# ------------------------------------------------------------------------------------------------ TF-IDF index


class TfidfCaptionIndex:
  """Images ranked by TF-IDF word match on their captions (scikit-learn's TfidfVectorizer; module docstring).

  Args:
    captions: [M] the indexed captions (each one document of the TF-IDF fit).
    owner: int [M] the row of each caption's image, in [0, N); every image needs at least one caption.
    scoring: "sum" (the seed's summed TF-IDF weights of the query's words) or "cosine".
    image_ids: int64 [N] the images' ids (default 0..N-1 with N = max(owner) + 1).
    images: [N] the images' paths or names ('' where none; default all '').
  """

  def __init__(self, captions: Sequence[str], owner, scoring: str = "sum", *, image_ids=None,
               images: Sequence[str] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=import-outside-toplevel
    self.scoring = _check_scoring(scoring)
    self.captions = [str(c) for c in captions]
    self._owner = np.asarray(owner)
    num_images = self._check_owner(image_ids)
    self.image_ids = (np.arange(num_images, dtype=np.int64) if image_ids is None
                      else np.asarray(image_ids, np.int64).reshape(-1))
    self.images = [""] * num_images if images is None else [str(x) for x in images]
    if len(self.images) != num_images:
      raise errors.DataError(f"TfidfCaptionIndex: {len(self.images)} image names for {num_images} images.")
    counts = np.bincount(self._owner, minlength=num_images)
    if np.any(counts == 0):
      empty = np.flatnonzero(counts == 0)
      raise errors.DataError(f"TfidfCaptionIndex: image(s) {self.image_ids[empty[:5]].tolist()} have no caption; "
                             "give each image at least one caption or leave it out.")
    self._perm = np.argsort(self._owner, kind="stable")  # [M] captions in image order, caption order within
    self._counts = counts                                # [N]
    self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [N] each image's first row in _perm
    if scoring == "sum":
      self._vectorizer = TfidfVectorizer(norm=None, sublinear_tf=True, smooth_idf=True, dtype=np.float32)
    else:
      self._vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    try:
      self._matrix = self._vectorizer.fit_transform(self.captions).tocsr()  # [M, terms]
    except ValueError as e:  # "empty vocabulary": no caption has a word
      raise errors.DataError(f"TfidfCaptionIndex: no caption has a word of 2+ letters or digits ({e}); "
                             "check that the captions were generated.") from None
    self._words = self._vectorizer.build_tokenizer()
    self._preprocess = self._vectorizer.build_preprocessor()

  def _check_owner(self, image_ids) -> int:
    if self._owner.shape != (len(self.captions),) or not len(self.captions):
      raise errors.DataError(f"TfidfCaptionIndex: {len(self.captions)} captions and owner of shape "
                             f"{self._owner.shape}; give one image row per caption (and at least one caption).")
    if not np.issubdtype(self._owner.dtype, np.integer):
      raise errors.DataError(f"TfidfCaptionIndex: owner must hold integer image rows, got {self._owner.dtype}.")
    self._owner = self._owner.astype(np.int64)
    num_images = int(self._owner.max()) + 1 if image_ids is None else len(np.asarray(image_ids).reshape(-1))
    if self._owner.min() < 0 or self._owner.max() >= num_images:
      raise errors.DataError(f"TfidfCaptionIndex: owner holds rows outside [0, {num_images}) "
                             f"(min {self._owner.min()}, max {self._owner.max()}).")
    return num_images

  @property
  def num_images(self) -> int:
    return len(self.image_ids)

  def words(self, text: str) -> list[str]:
    """The distinct words of `text` as the index sees them (lower-cased, 2+ letters/digits), in order."""
    return _distinct(self._words(self._preprocess(text)))

  def unknown_words(self, query: str) -> list[str]:
    """The query's words that no indexed caption has: all of them when `search` returns [] for this reason."""
    return [w for w in self.words(query) if w not in self._vectorizer.vocabulary_]

  def _query_matrix(self, queries: Sequence[str]):
    """Queries -> sparse [Q, terms]: "sum" the indicator of each query's distinct known words; "cosine" their
    TF-IDF vectors (L2-normalised)."""
    if self.scoring == "cosine":
      return self._vectorizer.transform(list(queries))
    import scipy.sparse  # pylint: disable=import-outside-toplevel  (scikit-learn's dependency)
    vocabulary = self._vectorizer.vocabulary_
    rows, cols = [], []
    for i, query in enumerate(queries):
      known = [vocabulary[w] for w in self.words(query) if w in vocabulary]
      rows += [i] * len(known)
      cols += known
    return scipy.sparse.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)),
                                   shape=(len(queries), len(vocabulary)))

  def caption_scores(self, queries: Sequence[str]) -> np.ndarray:
    """Every caption's score for each query: float32 [M, Q] (0 where no query word occurs)."""
    return (self._matrix @ self._query_matrix(queries).T).toarray()

  def _image_scores(self, caption_scores: np.ndarray) -> np.ndarray:
    """Caption scores [M, Q] -> each image's best caption score [N, Q]."""
    return np.maximum.reduceat(caption_scores[self._perm], self._starts, axis=0)

  def images_with(self, attribute: str) -> np.ndarray:
    """bool [N]: the images with a caption that has the word `attribute` (whole word, as `words` splits)."""
    words = self._words(self._preprocess(attribute))
    if len(words) != 1:
      raise errors.DataError(f"attribute={attribute!r} must be one word of 2+ letters or digits (e.g. 'red'); "
                             "search the other words as the query.")
    column = self._vectorizer.vocabulary_.get(words[0])
    allowed = np.zeros(self.num_images, bool)
    if column is not None:
      allowed[self._owner[self._matrix[:, [column]].nonzero()[0]]] = True
    return allowed

  def _best_captions(self, caption_scores: np.ndarray, image_scores: np.ndarray) -> np.ndarray:
    """Scores [M] and [N] -> int64 [N] the row of each image's best caption (the first with its image's score)."""
    in_order = caption_scores[self._perm]
    is_best = in_order == np.repeat(image_scores, self._counts)
    segment = np.repeat(np.arange(self.num_images), self._counts)
    candidates = np.flatnonzero(is_best)
    _, first = np.unique(segment[candidates], return_index=True)  # every image reaches its own maximum
    return self._perm[candidates[first]]

  def hit(self, row: int, score: float, caption_row: int) -> dict[str, Any]:
    """The hit dict of image `row` (module docstring), its best caption `caption_row`."""
    start = self._starts[row]
    others = [self.captions[r] for r in self._perm[start:start + self._counts[row]] if r != caption_row]
    return {"image_id": int(self.image_ids[row]), "image": self.images[row], "score": float(score),
            "caption": self.captions[caption_row], "captions": others, "caption_row": int(caption_row)}

  def search(self, query: str, k: int, attribute: str | None = None) -> list[dict[str, Any]]:
    """The k best images for `query`, best first, each a hit dict (module docstring).

    Args:
      query: words; those not in the vocabulary are ignored ([] when none is known: see `unknown_words`).
      k: the most images to return.
      attribute: keep only images with a caption that has this word (`images_with`).

    Returns:
      Up to k hits with score > 0, ranked by score, ties by image order.
    """
    k = _check_k(k)
    caption_scores = self.caption_scores([query])[:, 0]  # [M]
    image_scores = self._image_scores(caption_scores[:, None])[:, 0]  # [N]
    keep = image_scores > 0
    if attribute is not None:
      keep &= self.images_with(attribute)
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(-image_scores[rows], kind="stable")][:k]
    if not len(rows):
      return []
    best = self._best_captions(caption_scores, image_scores)
    return [self.hit(r, image_scores[r], best[r]) for r in rows]


# ------------------------------------------------------------------------------------------ embedding search


def embedding_search(query_embedding, image_embeddings, k: int, *, allowed=None) -> tuple[np.ndarray, np.ndarray]:
  """The k images nearest to a query by cosine similarity (both sides L2-normalised; a zero row scores 0).

  Args:
    query_embedding: float [D].
    image_embeddings: float [N, D].
    k: the most images to return.
    allowed: optional bool [N]; only these images are candidates.

  Returns:
    (indices int64 [k'], scores float32 [k']), best first, ties by row order; k' = min(k, candidates).
  """
  k = _check_k(k)
  query = np.asarray(query_embedding, np.float32)
  images = np.asarray(image_embeddings, np.float32)
  if images.ndim != 2 or query.shape != (images.shape[1],):
    raise errors.DataError(f"embedding_search: query of shape {query.shape} and image embeddings of shape "
                           f"{images.shape}; give a [D] query and [N, D] images of the same D.")
  if not np.isfinite(query).all() or not np.any(query):
    raise errors.DataError("embedding_search: the query embedding is all zeros or not finite; encode the query "
                           "again (an empty text?).")
  norms = np.linalg.norm(images, axis=1)
  scores = (images @ (query / np.linalg.norm(query))) / np.maximum(norms, 1e-12)  # [N]
  rows = np.arange(len(images))
  if allowed is not None:
    rows = rows[np.asarray(allowed, bool)]
  rows = rows[np.argsort(-scores[rows], kind="stable")][:k]
  return rows.astype(np.int64), scores[rows].astype(np.float32)


# ----------------------------------------------------------------------------------------- caption database


@dataclasses.dataclass
class CaptionDatabase:
  """The generated captions of a collection of images, and optionally their embeddings.

  Attributes:
    image_ids: int64 [N] unique image ids.
    images: [N] image paths or names ('' where none).
    captions: [N] lists of the generated captions of each image (>= 1 each).
    references: optional [N] lists of human captions (for evaluation only; never searched).
    image_embeddings: optional float32 [N, D].
    caption_embeddings: optional float32 [total captions, D], rows in image order then caption order.
    meta: what made the database (captioner, step, workdir, ...); JSON-serialisable.

  The TF-IDF index of each scoring is built on first use and kept: make a new database after changing captions.
  """
  image_ids: np.ndarray
  images: list[str]
  captions: list[list[str]]
  references: list[list[str]] | None = None
  image_embeddings: np.ndarray | None = None
  caption_embeddings: np.ndarray | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  _indexes: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

  def __post_init__(self):
    self.image_ids = np.asarray(self.image_ids, np.int64).reshape(-1)
    n = len(self.image_ids)
    self.images = [str(x) for x in self.images]
    self.captions = [[str(c) for c in cs] for cs in self.captions]
    if self.references is not None:
      self.references = [[str(c) for c in cs] for cs in self.references]
    for name in ("images", "captions", "references"):
      value = getattr(self, name)
      if value is not None and len(value) != n:
        raise errors.DataError(f"CaptionDatabase: {len(value)} {name} for {n} image ids; give one per image.")
    ids, counts = np.unique(self.image_ids, return_counts=True)
    if np.any(counts > 1):
      raise errors.DataError(f"CaptionDatabase: image ids {ids[counts > 1][:5].tolist()} appear more than once.")
    empty = [int(self.image_ids[i]) for i, cs in enumerate(self.captions) if not cs]
    if empty:
      raise errors.DataError(f"CaptionDatabase: image(s) {empty[:5]} have no caption; every image needs >= 1.")
    self.image_embeddings = self._check_embeddings("image_embeddings", self.image_embeddings, n)
    self.caption_embeddings = self._check_embeddings("caption_embeddings", self.caption_embeddings,
                                                     self.num_captions)

  @staticmethod
  def _check_embeddings(name: str, value, rows: int) -> np.ndarray | None:
    if value is None:
      return None
    value = np.asarray(value, np.float32)
    if value.ndim != 2 or len(value) != rows:
      raise errors.DataError(f"CaptionDatabase: {name} has shape {value.shape}, expected [{rows}, D].")
    return value

  @property
  def num_images(self) -> int:
    return len(self.image_ids)

  @property
  def num_captions(self) -> int:
    return sum(len(cs) for cs in self.captions)

  @property
  def caption_owner(self) -> np.ndarray:
    """int64 [total captions]: the image row of each caption, in image order then caption order."""
    return np.repeat(np.arange(self.num_images), [len(cs) for cs in self.captions]).astype(np.int64)

  @property
  def flat_captions(self) -> list[str]:
    """[total captions] every caption, in image order then caption order (the rows of caption_embeddings)."""
    return [c for cs in self.captions for c in cs]

  def index(self, scoring: str = "sum") -> TfidfCaptionIndex:
    """The TF-IDF index of the generated captions (built once per scoring)."""
    if _check_scoring(scoring) not in self._indexes:
      self._indexes[scoring] = TfidfCaptionIndex(self.flat_captions, self.caption_owner, scoring,
                                                 image_ids=self.image_ids, images=self.images)
    return self._indexes[scoring]

  def search(self, query: str, k: int, attribute: str | None = None, scoring: str = "sum") -> list[dict[str, Any]]:
    """`TfidfCaptionIndex.search` over the generated captions: up to k hit dicts, best first."""
    return self.index(scoring).search(query, k, attribute)

  def search_by_embedding(self, query_vector, k: int, attribute: str | None = None) -> list[dict[str, Any]]:
    """The k images whose embeddings are nearest (cosine) to `query_vector` float [D], as hit dicts.

    The hit's "caption" is the image's caption nearest to the query when the database has caption embeddings,
    else its first caption. attribute: keep only images with a caption that has this word.
    """
    if self.image_embeddings is None:
      raise errors.MissingError(f"this caption database has no image embeddings ({IMAGE_EMBEDDINGS_FILE}); "
                                "build it with image embeddings to search by embedding.")
    index = self.index()
    allowed = index.images_with(attribute) if attribute is not None else None
    rows, scores = embedding_search(query_vector, self.image_embeddings, k, allowed=allowed)
    starts = np.concatenate([[0], np.cumsum([len(cs) for cs in self.captions])])  # [N + 1] first caption rows
    return [index.hit(r, s, self._nearest_caption(starts[r], starts[r + 1], query_vector))
            for r, s in zip(rows, scores)]

  def _nearest_caption(self, start: int, stop: int, query_vector) -> int:
    """The row in [start, stop) of the caption embedding nearest to the query; `start` without embeddings."""
    if self.caption_embeddings is None:
      return int(start)
    best, _ = embedding_search(query_vector, self.caption_embeddings[start:stop], 1)
    return int(start + best[0])

  # ------------------------------------------------------------------------------------------------ files

  def save(self, directory: str) -> None:
    """Writes the database to `directory` (module docstring), each file atomically, meta.json last."""
    meta = {"format": FORMAT, "version": VERSION, "num_images": self.num_images, "num_captions": self.num_captions,
            "image_embeddings": _shape(self.image_embeddings), "caption_embeddings": _shape(self.caption_embeddings),
            "meta": self.meta}
    try:
      meta_text = json.dumps(meta, indent=1, sort_keys=True) + "\n"
    except TypeError as e:
      raise errors.DataError(f"CaptionDatabase.meta is not JSON-serialisable ({e}); keep to str, numbers, "
                             "lists and dicts.") from None
    fileio.makedirs(directory)
    meta_path = os.path.join(directory, META_FILE)
    if fileio.exists(meta_path):
      fileio.remove(meta_path)  # the directory is an unfinished save until the new meta.json is written
    fileio.write_atomic(os.path.join(directory, CAPTIONS_FILE), self._write_lines)
    for name, value in ((IMAGE_EMBEDDINGS_FILE, self.image_embeddings),
                        (CAPTION_EMBEDDINGS_FILE, self.caption_embeddings)):
      _save_npy(os.path.join(directory, name), value)
    fileio.write_atomic(meta_path, lambda f: f.write(meta_text))

  def _write_lines(self, f) -> None:
    for i in range(self.num_images):
      line = {"image_id": int(self.image_ids[i]), "image": self.images[i], "captions": self.captions[i]}
      if self.references is not None:
        line["references"] = self.references[i]
      f.write(json.dumps(line) + "\n")

  @classmethod
  def load(cls, directory: str) -> CaptionDatabase:
    """Reads a database written by `save`; checks that every file is there and that the row counts agree.

    Raises:
      MissingError: a file is missing (meta.json: the save did not finish).
      DataError: a file is corrupt or disagrees with meta.json; the message names it.
    """
    meta = _read_meta(directory)
    hint = REBUILD_HINT.format(workdir=meta["meta"].get("workdir", "W"))
    lines = _read_lines(os.path.join(directory, CAPTIONS_FILE), hint)
    num_captions = sum(len(line["captions"]) for line in lines)
    for what, found in (("num_images", len(lines)), ("num_captions", num_captions)):
      if found != meta[what]:
        raise errors.DataError(f"{os.path.join(directory, CAPTIONS_FILE)} has {found} {what[4:]} but "
                               f"{META_FILE} says {meta[what]}: the directory mixes two saves; {hint}.")
    arrays = {name: _load_npy(os.path.join(directory, name), meta[key], rows, hint)
              for name, key, rows in ((IMAGE_EMBEDDINGS_FILE, "image_embeddings", len(lines)),
                                      (CAPTION_EMBEDDINGS_FILE, "caption_embeddings", num_captions))}
    has_references = any("references" in line for line in lines)
    return cls(image_ids=[line["image_id"] for line in lines], images=[line["image"] for line in lines],
               captions=[line["captions"] for line in lines],
               references=[line.get("references", []) for line in lines] if has_references else None,
               image_embeddings=arrays[IMAGE_EMBEDDINGS_FILE], caption_embeddings=arrays[CAPTION_EMBEDDINGS_FILE],
               meta=meta["meta"])


def _shape(value: np.ndarray | None) -> list[int] | None:
  return None if value is None else [int(d) for d in value.shape]


def _save_npy(path: str, value: np.ndarray | None) -> None:
  """np.save (allow_pickle=False) atomically; None removes a stale file of an earlier save."""
  if value is None:
    if fileio.exists(path):
      fileio.remove(path)
    return
  fileio.write_atomic(path, lambda f: np.save(f, np.asarray(value, np.float32), allow_pickle=False), mode="wb")


def _read_meta(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, META_FILE)
  if not fileio.exists(path):
    raise errors.MissingError(f"{path} not found: {directory} is not a caption database, or its save did not "
                              f"finish; {REBUILD_HINT.format(workdir='W')}.")
  try:
    with fileio.open(path, "r", encoding="utf-8") as f:
      meta = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.DataError(f"{path} is not valid JSON ({e}); {REBUILD_HINT.format(workdir='W')}.") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise errors.DataError(f"{path} is not a caption database's meta.json (format {FORMAT!r} expected).")
  if meta.get("version") != VERSION:
    raise errors.DataError(f"{path} has format version {meta.get('version')!r}; this code reads {VERSION}: "
                           "write the database again with this version.")
  missing = [key for key in _META_KEYS if key not in meta]
  if missing or not isinstance(meta["meta"], dict):
    raise errors.DataError(f"{path} lacks {missing or ['a dict under meta']}; {REBUILD_HINT.format(workdir='W')}.")
  return meta


def _read_lines(path: str, hint: str) -> list[dict[str, Any]]:
  """captions.jsonl -> one checked dict per image."""
  if not fileio.exists(path):
    raise errors.MissingError(f"{path} not found: the caption database is incomplete; {hint}.")
  lines = []
  with fileio.open(path, "r", encoding="utf-8") as f:
    for number, text in enumerate(f, 1):
      if not text.strip():
        continue
      try:
        line = json.loads(text)
        ok = (isinstance(line, dict) and isinstance(line.get("image_id"), int) and isinstance(line.get("image"), str)
              and _strings(line.get("captions")) and line["captions"]
              and ("references" not in line or _strings(line["references"])))
      except ValueError:
        ok = False
      if not ok:
        raise errors.DataError(f"{path}:{number} is not a caption line {{\"image_id\": int, \"image\": str, "
                               f"\"captions\": [str, ...] (>= 1)}}; {hint}.")
      lines.append(line)
  return lines


def _strings(value) -> bool:
  return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _load_npy(path: str, shape: list[int] | None, rows: int, hint: str) -> np.ndarray | None:
  """An embeddings file meta.json lists -> float32 [rows, D], checked against the recorded shape and `rows`."""
  if shape is None:
    return None
  if not fileio.exists(path):
    raise errors.MissingError(f"{path} not found but {META_FILE} lists it; {hint}.")
  try:
    value = np.load(path if fileio.is_local(path) else io.BytesIO(fileio.read_bytes(path)), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise errors.DataError(f"{path} is corrupt or not a .npy file ({e}); {hint}.") from None
  if value.ndim != 2 or len(value) != rows or list(value.shape) != list(shape):
    raise errors.DataError(f"{path} has shape {list(value.shape)} but the database has {rows} rows "
                           f"({META_FILE} says {shape}): the files come from different runs; {hint}.")
  if not np.issubdtype(value.dtype, np.floating):
    raise errors.DataError(f"{path} holds {value.dtype}, not floats; {hint}.")
  return value.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------- evaluation


def recall_at_k(index_or_db, queries: Sequence[str], query_image, ks: Sequence[int] = (1, 5, 10),
                scoring: str | None = None) -> dict[str, float]:
  """Caption-based text -> image retrieval: R@K of ranking the images by their captions for each query.

  Used to compare two captioners' captions: one human caption per image as the query, its image the answer.
  Ties count against the query, as in evaluation/retrieval.py: rank = 1 + #{other images scoring >= the true
  image}; a query whose true image scores 0 (no query word in its captions) ranks last among the images.

  Args:
    index_or_db: a TfidfCaptionIndex, or a CaptionDatabase (its generated captions are indexed).
    queries: [Q] query texts.
    query_image: int [Q] the row of each query's true image.
    ks: the K of R@K.
    scoring: "sum" or "cosine"; None: the index's own, or "sum" for a database. An index with another scoring
      is refused.

  Returns:
    {"t2i_r{K}": percent of queries with rank <= K, "t2i_medr", "t2i_meanr": median and mean rank,
     "num_queries": Q, "no_match": queries whose true image scored 0}.
  """
  index = _index_of(index_or_db, scoring)
  ks = retrieval._validate_ks(ks)  # pylint: disable=protected-access  (the retrieval metrics' rules)
  truth = np.asarray(query_image)
  if truth.shape != (len(queries),) or not len(queries) or not np.issubdtype(truth.dtype, np.integer):
    raise errors.DataError(f"recall_at_k: {len(queries)} queries and query_image of shape {truth.shape} "
                           f"({truth.dtype}); give one integer image row per query (and at least one query).")
  if truth.min() < 0 or truth.max() >= index.num_images:
    raise errors.DataError(f"recall_at_k: query_image holds rows outside [0, {index.num_images}).")
  ranks, no_match = [], 0
  for start in range(0, len(queries), _QUERY_CHUNK):
    rows = truth[start:start + _QUERY_CHUNK]
    scores = index._image_scores(index.caption_scores(queries[start:start + _QUERY_CHUNK]))  # [N, chunk]
    true_scores = scores[rows, np.arange(len(rows))]  # [chunk]
    ranks.append((scores >= true_scores[None, :]).sum(axis=0))  # the true image counts itself: 1 + others
    no_match += int(np.sum(true_scores <= 0))
  out = retrieval._rank_summary("t2i", np.concatenate(ranks), ks)  # pylint: disable=protected-access
  out.update({"num_queries": len(queries), "no_match": no_match})
  return out


def _index_of(index_or_db, scoring: str | None) -> TfidfCaptionIndex:
  if isinstance(index_or_db, CaptionDatabase):
    return index_or_db.index(scoring or "sum")
  if not isinstance(index_or_db, TfidfCaptionIndex):
    raise errors.ConfigError(f"recall_at_k takes a TfidfCaptionIndex or a CaptionDatabase, got "
                             f"{type(index_or_db).__name__}.")
  if scoring is not None and _check_scoring(scoring) != index_or_db.scoring:
    raise errors.ConfigError(f"recall_at_k: scoring={scoring!r} but the index scores {index_or_db.scoring!r}; "
                             "pass scoring=None or build the index with that scoring.")
  return index_or_db
