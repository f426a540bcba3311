"""CIDEr-D of sampled captions against their image's training references: the n-gram reward of SCST.

Rennie et al. 2017 (self-critical sequence training) reward a sampled caption c of image i with CIDEr-D(c, S_i),
S_i the training references of i, with document frequencies fixed over the training references. CIDEr-D is
pycocoevalcap's (cider/cider_scorer.py; Vedantam et al. 2015):

  g_k(s)[w] = tf_s(w) * (log |I| - log max(1, df(w)))       tf-idf weights of the k-grams w of s, k = 1..n
  CIDEr-D(c, S) = 10 / |S| * sum_{s in S} exp(-(l(c) - l(s))^2 / (2 sigma^2))
                             * 1/n sum_k <min(g_k(c), g_k(s)), g_k(s)> / (|g_k(c)| |g_k(s)|)

df(w) = the number of images whose references contain w (one document per image), |I| the number of images, and
l(s) pycocoevalcap's length: the number of bigrams of s (its words - 1, as that library counts n-gram index 1).

Tokenisation, for candidates and references alike: `normalize_caption` (xmodal_jax/data/text.py), then split on
whitespace. A candidate that is empty after normalisation scores 0.

Hand-written (not pycocoevalcap's CiderScorer) because that recomputes df from the references of each call, while
SCST needs df fixed over the training corpus and per-caption scores for thousands of captions a second: the
reference vectors are built once here, and `score` vectorises over the candidates in numpy.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax import errors
from xmodal_jax.data.text import normalize_caption


def _words(text: str) -> list[str]:
  """normalize_caption(text).split(); [] where nothing is left after normalisation."""
  try:
    return normalize_caption(text).split()
  except ValueError:
    if isinstance(text, str):
      return []
    raise


class _Captions:
  """Captions as flat word ids: words int64 [total], caption int64 [total] (whose word it is), lengths int64 [m].

  Words of `vocab` get its ids; others get ids >= len(vocab), one per distinct word of this call.
  """

  def __init__(self, word_lists: Sequence[Sequence[str]], vocab: dict[str, int]):
    unknown: dict[str, int] = {}
    flat = [w for words in word_lists for w in words]
    self.words = np.fromiter((vocab[w] if w in vocab else len(vocab) + unknown.setdefault(w, len(unknown))
                              for w in flat), np.int64, len(flat))
    self.lengths = np.fromiter((len(words) for words in word_lists), np.int64, len(word_lists))
    self.caption = np.repeat(np.arange(len(word_lists)), self.lengths)
    self.end = np.cumsum(self.lengths)[self.caption]          # one past the last word of each word's caption
    self.num_words = len(vocab) + len(unknown)


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Positions of `keys` in `sorted_keys` -> (slot int64 [m], found bool [m]); slot is meaningless where not found."""
  if not len(sorted_keys):
    return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
  order = np.argsort(keys)          # sorted needles: binary searches walk the table in order (about 3x faster)
  slot = np.empty(len(keys), np.int64)
  slot[order] = np.minimum(np.searchsorted(sorted_keys, keys[order]), len(sorted_keys) - 1)
  return slot, sorted_keys[slot] == keys


def _gram_ids(caps: _Captions, vocab_size: int, n: int, tables: list[np.ndarray]) -> list[np.ndarray]:
  """Ids of the n-grams starting at each word: out[k] int64 [total] for the (k+1)-grams (-1 where none starts).

  Unigram ids are word ids. A (k+1)-gram is the pair (id of its first k words, last word), keyed as
  prefix * vocab_size + word and looked up in tables[k - 1], the sorted keys of the reference (k+1)-grams (built
  here when `tables` is empty). Reference n-grams get their dense id (< the table's size); others get ids from the
  table's size on, one per distinct n-gram of the call.
  """
  building = not tables
  ids = caps.words
  out = [ids]
  for k in range(1, n):
    pos = np.nonzero(np.arange(len(caps.words)) + k < caps.end)[0]
    prefix, last = ids[pos], caps.words[pos + k]
    key = prefix * vocab_size + last
    if building:
      tables.append(np.unique(key))
    table, known_prefix = tables[k - 1], (vocab_size if k == 1 else len(tables[k - 2]))
    slot, found = _lookup(table, key)
    hit = (prefix < known_prefix) & (last < vocab_size) & found
    _, unseen = np.unique(prefix[~hit] * caps.num_words + last[~hit], return_inverse=True)
    ids = np.full(len(caps.words), -1, np.int64)
    ids[pos[hit]] = slot[hit]
    ids[pos[~hit]] = len(table) + unseen
    out.append(ids)
  return out


def _term_counts(caps: _Captions, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """k-gram ids at each word -> (caption [e], gram id [e], term frequency [e]) over distinct (caption, gram)."""
  pos = np.nonzero(ids >= 0)[0]
  span = int(ids.max(initial=0)) + 1
  pairs, tf = np.unique(caps.caption[pos] * span + ids[pos], return_counts=True)
  return pairs // span, pairs % span, tf.astype(np.float64)


class CiderDReward:
  """CIDEr-D (x10, as pycocoevalcap) of candidates against their image's references, df over all `references`.

  references: per image (row), its reference captions (the train split). df counts one document per image and
  |I| = len(references), as pycocoevalcap over the same images. The reference tf-idf vectors are built here once.
  """

  def __init__(self, references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0):
    if not references:
      raise errors.DataError("CiderDReward needs the reference captions of at least one image; got none.")
    for row, refs in enumerate(references):
      if isinstance(refs, str) or not len(refs):
        raise errors.DataError(f"CiderDReward: image row {row} must have a non-empty list of reference captions, "
                               f"got {refs!r}; pass one list of strings per image.")
    if n < 1 or sigma <= 0:
      raise errors.ConfigError(f"CiderDReward: n must be >= 1 and sigma > 0 (pycocoevalcap: n=4, sigma=6.0); got "
                               f"n={n}, sigma={sigma}.")
    self.n, self.sigma = int(n), float(sigma)
    self.num_images = len(references)
    self.ref_len = np.log(float(self.num_images))
    word_lists = [_words(r) for refs in references for r in refs]
    for words, text in zip(word_lists, (r for refs in references for r in refs)):
      if not words:
        normalize_caption(text)   # raises, naming the caption that is empty
    self._vocab = {w: i for i, w in enumerate(sorted({w for words in word_lists for w in words}))}
    counts = np.array([len(refs) for refs in references])
    self._ref_count = counts.astype(np.float64)                              # [I]
    ref_image = np.repeat(np.arange(self.num_images), counts)               # [R]
    ref_slot = np.arange(len(ref_image)) - np.repeat(np.cumsum(counts) - counts, counts)
    max_refs = int(counts.max())
    caps = _Captions(word_lists, self._vocab)
    self._tables: list[np.ndarray] = []
    gram_ids = _gram_ids(caps, len(self._vocab), self.n, self._tables)
    self._idf, self._entry_keys, self._entry_values = [], [], []
    self._ref_norm = np.zeros((self.num_images, max_refs, self.n))          # |g_k(s)| [I, max_refs, n]
    for k in range(self.n):
      ref, gram, tf = _term_counts(caps, gram_ids[k])
      size = len(self._vocab) if k == 0 else len(self._tables[k - 1])
      doc = np.unique(ref_image[ref] * size + gram)                         # distinct (image, gram)
      df = np.bincount(doc % size, minlength=size)
      # idf per reference n-gram, then one more entry for n-grams no reference has (df 0 -> log |I|).
      self._idf.append(np.append(self.ref_len - np.log(np.maximum(1.0, df)), self.ref_len))
      weight = tf * self._idf[k][gram]
      self._ref_norm[ref_image, ref_slot, k] = np.sqrt(np.bincount(ref, weight**2, minlength=len(ref_image)))
      # Matching table: for each distinct (image, gram), the gram's weight in each reference of that image.
      entry = np.searchsorted(doc, ref_image[ref] * size + gram)
      values = np.zeros((len(doc), max_refs))
      values[entry, ref_slot[ref]] = weight
      self._entry_keys.append(doc)
      self._entry_values.append(values)
    self._ref_length = np.zeros((self.num_images, max_refs))                # l(s): bigram count
    self._ref_length[ref_image, ref_slot] = np.maximum(caps.lengths - 1, 0)
    self._ref_valid = np.arange(max_refs)[None, :] < counts[:, None]        # [I, max_refs]

  def score(self, candidates: Sequence[str], image_rows: Sequence[int]) -> np.ndarray:
    """CIDEr-D of candidates[i] against references[image_rows[i]] -> float32 [len(candidates)]."""
    rows = np.asarray(image_rows, np.int64).reshape(-1)
    if len(rows) != len(candidates):
      raise ValueError(f"CiderDReward.score: {len(candidates)} candidates but {len(rows)} image rows.")
    if len(rows) and (rows.min() < 0 or rows.max() >= self.num_images):
      raise ValueError(f"CiderDReward.score: image rows must lie in [0, {self.num_images}) (the reference images), "
                       f"got {rows.min()}..{rows.max()}.")
    m = len(rows)
    caps = _Captions([_words(c) for c in candidates], self._vocab)
    gram_ids = _gram_ids(caps, len(self._vocab), self.n, self._tables)
    max_refs = self._ref_valid.shape[1]
    sim = np.zeros((m, max_refs))
    for k in range(self.n):
      cand, gram, tf = _term_counts(caps, gram_ids[k])
      size = len(self._idf[k]) - 1
      known = gram < size
      weight = tf * self._idf[k][np.minimum(gram, size)]
      norm = np.sqrt(np.bincount(cand, weight**2, minlength=m))                  # |g_k(c)| [m]
      entry, found = _lookup(self._entry_keys[k], rows[cand] * size + gram)
      hit = known & found
      ref_weight = self._entry_values[k][entry[hit]]                             # [hits, max_refs]
      clipped = np.minimum(weight[hit, None], ref_weight) * ref_weight
      flat = (cand[hit, None] * max_refs + np.arange(max_refs)).reshape(-1)
      dot = np.bincount(flat, clipped.reshape(-1), minlength=m * max_refs).reshape(m, max_refs)
      denom = norm[:, None] * self._ref_norm[rows, :, k]
      sim += np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), dot)
    delta = np.maximum(caps.lengths - 1, 0)[:, None] - self._ref_length[rows]
    penalty = np.exp(-delta**2 / (2 * self.sigma**2)) * self._ref_valid[rows]
    return (10.0 * (sim / self.n * penalty).sum(1) / self._ref_count[rows]).astype(np.float32)


def jax_cider_reward(reward: CiderDReward, decode_text: Callable[[np.ndarray], list[str]]
                     ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A jittable f(tokens int32 [n, T], image_rows int32 [n]) -> CIDEr-D float32 [n], computed on host.

  decode_text maps token rows int [n, T] to n caption strings. Built on jax.pure_callback; under vmap the batch
  dimensions are folded into n for one host call.
  """

  def host(tokens, image_rows):
    tokens, rows = np.asarray(tokens), np.asarray(image_rows)
    texts = list(decode_text(tokens.reshape(-1, tokens.shape[-1])))
    return reward.score(texts, rows.reshape(-1)).reshape(rows.shape)

  def cider(tokens: jax.Array, image_rows: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or image_rows.shape != tokens.shape[:1]:
      raise ValueError(f"CIDEr-D reward: tokens must be [n, T] and image_rows [n]; got {tokens.shape} and "
                       f"{image_rows.shape}.")
    return jax.pure_callback(host, jax.ShapeDtypeStruct(image_rows.shape, jnp.float32), tokens, image_rows,
                             vmap_method="broadcast_all")

  return cider
