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
"""

from typing import Sequence

import numpy as np

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
  chunk_size = _check_positive_int('chunk_size', chunk_size)
  image_emb, text_emb, text_to_image = _validate_inputs(
      image_emb, text_emb, text_to_image)
  return _metrics(image_emb, text_emb, text_to_image, ks, chunk_size)


def _metrics(image_emb: np.ndarray, text_emb: np.ndarray,
             text_to_image: np.ndarray, ks: tuple[int, ...],
             chunk_size: int) -> dict[str, float]:
  metrics = {}
  metrics.update(_rank_summary(
      'i2t', _i2t_ranks(image_emb, text_emb, text_to_image, chunk_size), ks))
  metrics.update(_rank_summary(
      't2i', _t2i_ranks(image_emb, text_emb, text_to_image, chunk_size), ks))
  metrics['rsum'] = float(sum(metrics[f'{d}_r{k}'] for d, _ in _DIRECTIONS
                              for k in ks))
  return metrics


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
  """Formats retrieval metrics as an aligned markdown table.

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
  rows = []
  for prefix, label in _DIRECTIONS:
    keys = [f'{prefix}_r{k}' for k in ks] + [f'{prefix}_medr',
                                             f'{prefix}_meanr']
    cells = [f'{metrics[k]:.2f}' if k in metrics else '-' for k in keys]
    rows.append([label] + cells)
  widths = [max(len(r[c]) for r in [header] + rows)
            for c in range(len(header))]

  def fmt(row):
    cells = [row[0].ljust(widths[0])]
    cells += [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
    return '| ' + ' | '.join(cells) + ' |'

  # Each cell spans width + 2 characters between pipes; ':' sets alignment.
  sep = '|' + '|'.join([':' + '-' * (widths[0] + 1)] +
                       ['-' * (w + 1) + ':' for w in widths[1:]]) + '|'
  lines = []
  if title:
    lines += [f'**{title}**', '']
  lines += [fmt(header), sep] + [fmt(r) for r in rows]
  if 'rsum' in metrics:
    lines += ['', f'rsum: {metrics["rsum"]:.2f}']
  return '\n'.join(lines)
