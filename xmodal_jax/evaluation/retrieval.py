"""Cross-modal retrieval metrics (R@K, median / mean rank) on host.

Protocol of Karpathy & Fei-Fei (2015) / VSE++ (Faghri et al., 2018) on
Flickr30K and MS-COCO: every image has several captions (typically 5).

  * Image -> text: each image is a query over all M texts. Its relevant set is
    every text whose `text_to_image` is that image; the query's rank is the
    rank of its best-ranked relevant text.
  * Text -> image: each text is a query over all N images, with exactly one
    relevant image.

R@K is the percentage of queries with rank <= K; ranks are 1-based.

Ties count against the query (conservative ranking):

  rank = 1 + #{irrelevant candidates c : score(c) >= score(relevant)}

(for image -> text, `score(relevant)` is the best relevant text's score).
Breaking ties in favour of the relevant item, or by index as `argsort` does,
rewards degenerate models: a collapsed encoder mapping every input to the same
vector gives all candidates equal scores and would score 100% R@1 (or an
arbitrary, index-order dependent value). With conservative ties it gets
rank = number of irrelevant candidates + 1, i.e. ~0% R@1, as it should.

Scores are float32 dot products computed with NumPy, in chunks of query rows:
peak memory is O(chunk_size * max(N, M)), never the full N x M matrix.

Cross-encoders (a score per image-text pair, no joint embedding) go through
`pairwise_ranks`: the same ranks, from a scorer of aligned pairs called on
blocks of image x caption pairs (memory O(block)), and `reranked_ranks`: a
dual encoder's top-k shortlist of each query re-scored by the pairwise scorer.
"""

from typing import Callable, Sequence

import numpy as np

from xmodal_jax.evaluation import tables

_DIRECTIONS = (('i2t', 'Image->Text'), ('t2i', 'Text->Image'))


def _check_positive_int(name: str, value: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
      or value < 1):
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')
  return int(value)


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
  ks = tuple(ks)
  if not ks:
    raise ValueError('ks is empty; pass at least one K, e.g. ks=(1, 5, 10).')
  out = []
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(
          f'ks must hold positive integers, got {k!r} in {ks!r}.')
    if int(k) not in out:
      out.append(int(k))
  return tuple(sorted(out))


def _validate_inputs(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Checks shapes/values; returns float32 embeddings and int64 mapping."""
  image_emb = np.asarray(image_emb)
  text_emb = np.asarray(text_emb)
  text_to_image = np.asarray(text_to_image)
  for name, emb in (('image_emb', image_emb), ('text_emb', text_emb)):
    if emb.ndim != 2:
      raise ValueError(
          f'{name} must be 2-D [num, dim], got shape {emb.shape}; reshape or '
          'stack the embeddings first.')
    if emb.shape[0] == 0:
      raise ValueError(
          f'{name} is empty (shape {emb.shape}); retrieval needs at least one '
          'image and one text. Check that evaluation data was gathered.')
    if not np.issubdtype(emb.dtype, np.number) or np.iscomplexobj(emb):
      raise ValueError(
          f'{name} must be a real numeric array, got dtype {emb.dtype}.')
  num_images, dim = image_emb.shape
  num_texts = text_emb.shape[0]
  if text_emb.shape[1] != dim:
    raise ValueError(
        f'Embedding dim mismatch: image_emb has dim {dim}, text_emb has dim '
        f'{text_emb.shape[1]}. Both must live in the same joint space.')
  if text_to_image.shape != (num_texts,):
    raise ValueError(
        f'text_to_image must have shape [num_texts] = ({num_texts},), got '
        f'{text_to_image.shape}; give one image index per text row.')
  if not np.issubdtype(text_to_image.dtype, np.integer):
    raise ValueError(
        f'text_to_image must be integer image indices, got dtype '
        f'{text_to_image.dtype}; cast with .astype(np.int64).')
  text_to_image = text_to_image.astype(np.int64)
  bad = (text_to_image < 0) | (text_to_image >= num_images)
  if np.any(bad):
    first = int(np.argmax(bad))
    raise ValueError(
        f'text_to_image out of range: text {first} maps to image '
        f'{int(text_to_image[first])} but there are {num_images} images '
        f'(valid indices 0..{num_images - 1}); {int(bad.sum())} texts are '
        'affected. Make sure image and text arrays come from the same split.')
  counts = np.bincount(text_to_image, minlength=num_images)
  if np.any(counts == 0):
    missing = np.flatnonzero(counts == 0)
    raise ValueError(
        f'{missing.size} image(s) have no text, e.g. image(s) '
        f'{missing[:5].tolist()}; image->text retrieval is undefined for '
        'them. Drop those images (and remap text_to_image) or add captions.')
  image_emb = image_emb.astype(np.float32, copy=False)
  text_emb = text_emb.astype(np.float32, copy=False)
  for name, emb in (('image_emb', image_emb), ('text_emb', text_emb)):
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
      rows = np.flatnonzero(~finite)
      raise ValueError(
          f'{name} has non-finite (NaN/inf) values in {rows.size} row(s), '
          f'e.g. rows {rows[:5].tolist()}; check the model for divergence or '
          'the normalisation for division by zero (add an epsilon).')
  return image_emb, text_emb, text_to_image


def _rank_summary(prefix: str, ranks: np.ndarray,
                  ks: tuple[int, ...]) -> dict[str, float]:
  out = {f'{prefix}_r{k}': float(100.0 * np.mean(ranks <= k)) for k in ks}
  out[f'{prefix}_medr'] = float(np.median(ranks))
  out[f'{prefix}_meanr'] = float(np.mean(ranks))
  return out


def _i2t_ranks(image_emb: np.ndarray, text_emb: np.ndarray,
               text_to_image: np.ndarray, chunk_size: int) -> np.ndarray:
  """`[N]` conservative rank of each image's best relevant text."""
  num_images = image_emb.shape[0]
  ranks = np.empty(num_images, dtype=np.int64)
  for start in range(0, num_images, chunk_size):
    stop = min(start + chunk_size, num_images)
    scores = image_emb[start:stop] @ text_emb.T  # [c, M]
    relevant = text_to_image[None, :] == np.arange(start, stop)[:, None]
    best = np.max(np.where(relevant, scores, -np.inf), axis=1)  # [c]
    ahead = (scores >= best[:, None]) & ~relevant
    ranks[start:stop] = 1 + ahead.sum(axis=1)
  return ranks


def _t2i_ranks(image_emb: np.ndarray, text_emb: np.ndarray,
               text_to_image: np.ndarray, chunk_size: int) -> np.ndarray:
  """`[M]` conservative rank of each text's image."""
  num_images = image_emb.shape[0]
  num_texts = text_emb.shape[0]
  ranks = np.empty(num_texts, dtype=np.int64)
  for start in range(0, num_texts, chunk_size):
    stop = min(start + chunk_size, num_texts)
    scores = text_emb[start:stop] @ image_emb.T  # [c, N]
    target = text_to_image[start:stop]
    relevant = np.arange(num_images)[None, :] == target[:, None]
    pos = scores[np.arange(stop - start), target]  # [c]
    ahead = (scores >= pos[:, None]) & ~relevant
    ranks[start:stop] = 1 + ahead.sum(axis=1)
  return ranks


def retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
  """Image<->text R@K, median and mean rank over the whole set.

  Args:
    image_emb: `[N, D]` image embeddings (scores are dot products, so
      L2-normalise beforehand for cosine similarity).
    text_emb: `[M, D]` text embeddings.
    text_to_image: `[M]` int, index in `[0, N)` of each text's image; every
      image needs at least one text.
    ks: the K of R@K.
    chunk_size: query rows scored at once; memory is O(chunk_size * max(N, M)).

  Returns:
    Dict with `i2t_r{k}` / `t2i_r{k}` (percent), `i2t_medr`, `i2t_meanr`,
    `t2i_medr`, `t2i_meanr` (1-based ranks, ties counted against the query)
    and `rsum` (sum of all R@K of both directions).
  """
  ks = _validate_ks(ks)
  return metrics_from_ranks(*retrieval_ranks(
      image_emb, text_emb, text_to_image, chunk_size=chunk_size), ks)


def retrieval_ranks(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    *,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
  """The per-query ranks `retrieval_metrics` summarises.

  Args: as `retrieval_metrics`.

  Returns:
    `(i2t_ranks [N], t2i_ranks [M])`: the 1-based conservative rank of each
    image's best relevant text and of each text's image (R@K of one query is
    `rank <= K`).
  """
  chunk_size = _check_positive_int('chunk_size', chunk_size)
  image_emb, text_emb, text_to_image = _validate_inputs(
      image_emb, text_emb, text_to_image)
  return (_i2t_ranks(image_emb, text_emb, text_to_image, chunk_size),
          _t2i_ranks(image_emb, text_emb, text_to_image, chunk_size))


def _metrics(image_emb: np.ndarray, text_emb: np.ndarray,
             text_to_image: np.ndarray, ks: tuple[int, ...],
             chunk_size: int) -> dict[str, float]:
  return metrics_from_ranks(
      _i2t_ranks(image_emb, text_emb, text_to_image, chunk_size),
      _t2i_ranks(image_emb, text_emb, text_to_image, chunk_size), ks)


def metrics_from_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray,
                       ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """R@K (percent), median and mean rank of both directions, and `rsum`.

  Args:
    i2t_ranks: `[N]` 1-based rank of each image's best relevant text.
    t2i_ranks: `[M]` 1-based rank of each text's image.
    ks: the K of R@K.

  Returns:
    The keys of `retrieval_metrics`.
  """
  ks = _validate_ks(ks)
  metrics = {}
  metrics.update(_rank_summary('i2t', np.asarray(i2t_ranks), ks))
  metrics.update(_rank_summary('t2i', np.asarray(t2i_ranks), ks))
  metrics['rsum'] = float(sum(metrics[f'{d}_r{k}'] for d, _ in _DIRECTIONS
                              for k in ks))
  return metrics


PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_mapping(text_to_image: np.ndarray, num_images: int) -> np.ndarray:
  text_to_image = np.asarray(text_to_image, np.int64)
  if text_to_image.ndim != 1 or len(text_to_image) == 0:
    raise ValueError('text_to_image must be a non-empty [num_texts] array.')
  if text_to_image.min() < 0 or text_to_image.max() >= num_images:
    raise ValueError(f'text_to_image holds indices outside [0, {num_images}); '
                     'image and text arrays must come from the same split.')
  if np.any(np.bincount(text_to_image, minlength=num_images) == 0):
    raise ValueError('Some images have no text; image->text retrieval is '
                     'undefined for them.')
  return text_to_image


def _finite(scores: np.ndarray, what: str) -> np.ndarray:
  scores = np.asarray(scores, np.float32)
  if not np.all(np.isfinite(scores)):
    raise ValueError(f'The pairwise scorer returned non-finite scores ({what}); '
                     'check the model for divergence.')
  return scores


def pairwise_ranks(score: PairScorer, text_to_image: np.ndarray,
                   num_images: int, *, max_pairs: int = 65536
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Conservative ranks of both directions from a scorer of image-text pairs.

  Same rank definition and tie rule as `retrieval_metrics` (ties count
  against the query). The scorer is called on the M aligned positive pairs,
  then on blocks of (images x all texts) of at most `max_pairs` pairs, so
  memory is O(max_pairs + N + M), never the N x M matrix.

  Args:
    score: fn(image_rows int64 [P], text_rows int64 [P]) -> scores [P]; must
      give a pair the same score whatever else is in the call.
    text_to_image: `[M]` int, image of each text; every image needs a text.
    num_images: N.
    max_pairs: pairs per scorer call.

  Returns:
    (i2t ranks `[N]`, t2i ranks `[M]`), 1-based.
  """
  text_to_image = _check_mapping(text_to_image, num_images)
  num_texts = len(text_to_image)
  texts = np.arange(num_texts)
  positive = _finite(score(text_to_image, texts), 'positive pairs')  # [M]
  best = np.full(num_images, -np.inf, np.float32)
  np.maximum.at(best, text_to_image, positive)  # best relevant text per image
  i2t_ahead = np.zeros(num_images, np.int64)
  t2i_ahead = np.zeros(num_texts, np.int64)
  block = max(1, max_pairs // num_texts)
  for start in range(0, num_images, block):
    images = np.arange(start, min(start + block, num_images))
    scores = _finite(score(np.repeat(images, num_texts),
                           np.tile(texts, len(images))), 'image x text block')
    scores = scores.reshape(len(images), num_texts)  # [c, M]
    relevant = text_to_image[None, :] == images[:, None]
    i2t_ahead[images] = ((scores >= best[images, None]) & ~relevant).sum(axis=1)
    t2i_ahead += ((scores >= positive[None, :]) & ~relevant).sum(axis=0)
  return 1 + i2t_ahead, 1 + t2i_ahead


def _shortlist(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices [c, k] of the k best columns of each row (all columns when k >= width)."""
  width = scores.shape[1]
  if k >= width:
    return np.broadcast_to(np.arange(width), (len(scores), width))
  return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _reranked_direction(query_emb: np.ndarray, cand_emb: np.ndarray,
                        relevant_of: Callable[[np.ndarray], np.ndarray],
                        score: Callable[[np.ndarray, np.ndarray], np.ndarray],
                        k: int, chunk_size: int) -> np.ndarray:
  """Ranks of queries over candidates: the pairwise rank inside the top-k
  shortlist if a relevant candidate made it, else max(k + 1, dual-encoder
  rank). relevant_of(query rows [c]) -> bool [c, num_candidates]."""
  num = len(query_emb)
  ranks = np.empty(num, np.int64)
  for start in range(0, num, chunk_size):
    rows = np.arange(start, min(start + chunk_size, num))
    emb_scores = query_emb[rows] @ cand_emb.T  # [c, C]
    relevant = relevant_of(rows)
    best_emb = np.max(np.where(relevant, emb_scores, -np.inf), axis=1)
    emb_rank = 1 + ((emb_scores >= best_emb[:, None]) & ~relevant).sum(axis=1)
    shortlist = _shortlist(emb_scores, k)  # [c, k']
    pair = _finite(score(np.repeat(rows, shortlist.shape[1]), shortlist.reshape(-1)),
                   'shortlist').reshape(shortlist.shape)
    rel = np.take_along_axis(relevant, shortlist, axis=1)
    best = np.max(np.where(rel, pair, -np.inf), axis=1)
    inside = 1 + ((pair >= best[:, None]) & ~rel).sum(axis=1)
    ranks[rows] = np.where(rel.any(axis=1), inside, np.maximum(k + 1, emb_rank))
  return ranks


def reranked_ranks(image_emb: np.ndarray, text_emb: np.ndarray,
                   text_to_image: np.ndarray, score: PairScorer, k: int, *,
                   chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Dual-encoder shortlist + pairwise re-ranking, both directions.

  Each query's k best candidates by embedding dot product are re-scored by
  `score` and ranked among themselves (ties against the query). A query whose
  relevant item missed the shortlist keeps max(k + 1, its embedding rank).
  With k >= the number of candidates this equals `pairwise_ranks`.

  Args:
    image_emb: `[N, D]` dual-encoder image embeddings.
    text_emb: `[M, D]` dual-encoder text embeddings.
    text_to_image: `[M]` int image of each text.
    score: fn(image_rows [P], text_rows [P]) -> [P], as for `pairwise_ranks`.
    k: shortlist size.
    chunk_size: queries per block.

  Returns:
    (i2t ranks `[N]`, t2i ranks `[M]`), 1-based.
  """
  k = _check_positive_int('k', k)
  image_emb, text_emb, text_to_image = _validate_inputs(image_emb, text_emb,
                                                        text_to_image)
  num_images = len(image_emb)
  i2t = _reranked_direction(
      image_emb, text_emb, lambda rows: text_to_image[None, :] == rows[:, None],
      score, k, chunk_size)
  t2i = _reranked_direction(
      text_emb, image_emb,
      lambda rows: np.arange(num_images)[None, :] == text_to_image[rows][:, None],
      lambda texts, images: score(images, texts), k, chunk_size)
  return i2t, t2i


def fold_retrieval_metrics(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    text_to_image: np.ndarray,
    *,
    fold_size: int = 1000,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
  """Retrieval metrics averaged over consecutive image folds ("COCO 1K").

  Images are split by index into N / fold_size consecutive folds; each fold
  keeps the texts of its images (indices remapped to the fold) and is scored
  with `retrieval_metrics`. Every key, `rsum` included, is the mean over folds.

  Args:
    image_emb: `[N, D]` image embeddings, N a multiple of `fold_size`.
    text_emb: `[M, D]` text embeddings.
    text_to_image: `[M]` int image index of each text.
    fold_size: images per fold (1000 for the COCO 1K test protocol).
    ks: the K of R@K.
    chunk_size: query rows scored at once.

  Returns:
    Dict with the same keys as `retrieval_metrics`.
  """
  ks = _validate_ks(ks)
  fold_size = _check_positive_int('fold_size', fold_size)
  chunk_size = _check_positive_int('chunk_size', chunk_size)
  image_emb, text_emb, text_to_image = _validate_inputs(
      image_emb, text_emb, text_to_image)
  num_images = image_emb.shape[0]
  if num_images % fold_size:
    raise ValueError(
        f'Number of images ({num_images}) is not a multiple of fold_size '
        f'({fold_size}); the {num_images // fold_size} full fold(s) would '
        f'leave {num_images % fold_size} image(s) out. Use a fold_size that '
        'divides N (e.g. 1000 for the 5000-image COCO test split), or '
        'retrieval_metrics for the full set.')
  per_fold = []
  for start in range(0, num_images, fold_size):
    in_fold = (text_to_image >= start) & (text_to_image < start + fold_size)
    per_fold.append(_metrics(
        image_emb[start:start + fold_size], text_emb[in_fold],
        text_to_image[in_fold] - start, ks, chunk_size))
  return {key: float(np.mean([m[key] for m in per_fold]))
          for key in per_fold[0]}


def format_retrieval_table(metrics: dict[str, float], title: str = '') -> str:
  """Formats retrieval metrics as a markdown table (`evaluation/tables.py`).

  Args:
    metrics: output of `retrieval_metrics` / `fold_retrieval_metrics`; R@K
      columns are taken from the `i2t_r{k}` / `t2i_r{k}` keys present.
    title: optional heading line.

  Returns:
    A multi-line string: optional title, the table, and an `rsum` line.
  """
  ks = set()
  for key in metrics:
    for prefix, _ in _DIRECTIONS:
      suffix = key[len(prefix) + 2:]
      if key.startswith(prefix + '_r') and suffix.isdigit():
        ks.add(int(suffix))
  ks = sorted(ks)
  header = ['Direction'] + [f'R@{k}' for k in ks] + ['MedR', 'MeanR']
  rows = [[label] + [metrics.get(f'{prefix}_{m}') for m in
                     [f'r{k}' for k in ks] + ['medr', 'meanr']]
          for prefix, label in _DIRECTIONS]
  footer = f'rsum: {metrics["rsum"]:.2f}' if 'rsum' in metrics else ''
  return tables.markdown_table(header, rows, title=title, footer=footer)
