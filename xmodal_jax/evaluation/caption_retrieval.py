"""Retrieval with generated captions (system S5): how well a captioner's captions single out their images.

  * `generated_caption_ranks`: each image's generated caption as a text query over the split's N images, in a
    scorer model's joint space (text -> image). The fine-grained measure of Cho et al. (2022), "Fine-grained Image
    Captioning with CLIP Reward" (their "text-to-image retrieval with generated captions"): a caption that fits
    every image of its kind ("a dog runs on the grass") ranks its own image no better than the others.
  * `caption_search_ranks`: the seed's caption search, where a user finds images by words and the index is each
    image's generated caption. Each human reference caption of the split is a query over the generated captions
    of all N images, scored with TF-IDF as serving/caption_search.py's "sum" scoring does (the sum of the caption's
    TF-IDF weights of the query's distinct words; scikit-learn's TfidfVectorizer with norm=None, sublinear_tf,
    smooth_idf, unigrams of 2+ letters or digits). Written here with scikit-learn directly, not through
    `serving.caption_search`, because serving imports evaluation (a two-way tie is not allowed); the settings are
    the same and tests/test_caption_retrieval.py checks that both give the same ranks.

Ranks are those of evaluation/retrieval.py (`retrieval_ranks`: 1-based, ties count against the query), summarised
by `rank_metrics` into R@K in percent and the median rank.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xmodal_jax.errors import DataError
from xmodal_jax.evaluation import retrieval

KS = (1, 5, 10)


def generated_caption_ranks(image_emb: np.ndarray, caption_emb: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
  """Text -> image rank of each image's generated caption among the N images, by cosine similarity.

  Args:
    image_emb: [N, D] image embeddings of a scorer model (any norm: rows are L2-normalised here).
    caption_emb: [N, D] the same model's embeddings of the generated captions, row i the caption of image i (any
      norm; an empty caption's row may be zero).
    nonempty: bool [N], False where the caption is empty: such a caption finds nothing and ranks last (N).

  Returns:
    int64 [N], 1-based ranks in [1, N].
  """
  image_emb, caption_emb = np.asarray(image_emb, np.float32), np.asarray(caption_emb, np.float32)
  nonempty = np.asarray(nonempty, bool)
  if image_emb.shape != caption_emb.shape or nonempty.shape != image_emb.shape[:1]:
    raise DataError(f"generated_caption_ranks: image_emb {image_emb.shape}, caption_emb {caption_emb.shape} and "
                    f"nonempty {nonempty.shape} must be [N, D], [N, D] and [N]: one generated caption per image.")
  num = len(image_emb)
  _, ranks = retrieval.retrieval_ranks(_unit(image_emb), _unit(caption_emb) * nonempty[:, None], np.arange(num))
  return np.where(nonempty, ranks, num).astype(np.int64)


def caption_search_ranks(generated: Sequence[str], queries: Sequence[str], query_image) -> np.ndarray:
  """Rank of each query's image when the N images are searched by their generated captions (TF-IDF "sum").

  score(query, image) = sum over the query's distinct words w of the TF-IDF weight of w in the image's caption,
  weight = (1 + ln tf) * (ln((1 + N) / (1 + df)) + 1), fitted on the N generated captions (module docstring).
  An image whose caption has none of the query's words scores 0 and ties with every other such image; a query with
  no indexed word, or a split whose captions are all empty, ranks its image last (N).

  Args:
    generated: [N] one generated caption per image (empty strings allowed).
    queries: [Q] query texts, e.g. the human captions of the split.
    query_image: int [Q], the row in [0, N) of each query's image; every image needs at least one query.

  Returns:
    int64 [Q], 1-based ranks in [1, N].
  """
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=import-outside-toplevel
  num, query_image = len(generated), np.asarray(query_image)
  if query_image.shape != (len(queries),) or not len(queries):
    raise DataError(f"caption_search_ranks: {len(queries)} queries and query_image of shape {query_image.shape}; "
                    "give one image row per query (and at least one query).")
  vectorizer = TfidfVectorizer(norm=None, sublinear_tf=True, smooth_idf=True, dtype=np.float32)
  try:
    captions = vectorizer.fit_transform(list(generated))  # [N, terms]
  except ValueError:  # "empty vocabulary": no generated caption has a word
    return np.full(len(queries), num, np.int64)
  words = vectorizer.transform(list(queries))  # [Q, terms]
  words.data[:] = 1.0  # the indicator of each query's distinct indexed words
  used = np.unique(words.indices)  # only terms some query has add to a score: dense [Q, used] and [N, used]
  _, ranks = retrieval.retrieval_ranks(captions[:, used].toarray(), words[:, used].toarray(), query_image)
  return ranks


def rank_metrics(prefix: str, ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
  """{prefix_r{K}: percent of ranks <= K, prefix_medr: median rank} (evaluation/retrieval.py's summary)."""
  # pylint: disable-next=protected-access  (the retrieval metrics' own summary and K rules, as caption_search uses)
  out = retrieval._rank_summary(prefix, np.asarray(ranks), retrieval._validate_ks(ks))
  del out[f"{prefix}_meanr"]
  return out


def _unit(emb: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm; zero rows stay zero."""
  norm = np.linalg.norm(emb, axis=1, keepdims=True)
  return emb / np.where(norm > 0, norm, 1.0)
