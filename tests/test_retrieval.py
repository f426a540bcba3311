"""Tests for cross-modal retrieval metrics."""

import numpy as np
import pytest

from xmodal_jax.evaluation import retrieval as rt

KEYS = ['i2t_r1', 'i2t_r5', 'i2t_r10', 'i2t_medr', 'i2t_meanr',
        't2i_r1', 't2i_r5', 't2i_r10', 't2i_medr', 't2i_meanr', 'rsum']


def _from_scores(s):
  """Embeddings whose image/text score matrix is exactly `s` [N, M]."""
  s = np.asarray(s, np.float32)
  return np.eye(s.shape[0], dtype=np.float32), np.ascontiguousarray(s.T)


def _brute_force(image, text, t2i, ks=(1, 5, 10)):
  """Full score matrix + sort; ties put irrelevant candidates first."""
  scores = image.astype(np.float32) @ text.astype(np.float32).T  # [N, M]
  n, m = scores.shape

  def rank(row, relevant):
    # lexsort: primary key (last) = descending score, then irrelevant first.
    order = np.lexsort((relevant.astype(int), -row))
    return 1 + int(np.flatnonzero(relevant[order])[0])

  i2t = np.array([rank(scores[i], t2i == i) for i in range(n)])
  t2i_ranks = np.array([rank(scores[:, j], np.arange(n) == t2i[j])
                        for j in range(m)])
  out = {}
  for name, ranks in (('i2t', i2t), ('t2i', t2i_ranks)):
    for k in ks:
      out[f'{name}_r{k}'] = 100.0 * np.mean(ranks <= k)
    out[f'{name}_medr'] = np.median(ranks)
    out[f'{name}_meanr'] = np.mean(ranks)
  out['rsum'] = sum(out[f'{d}_r{k}'] for d in ('i2t', 't2i') for k in ks)
  return out


def _assert_metrics(got, want):
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)


def test_identity_embeddings_give_perfect_recall():
  n = 7
  t2i = np.repeat(np.arange(n), 5)
  image = np.eye(n, dtype=np.float32)
  m = rt.retrieval_metrics(image, image[t2i], t2i)
  assert sorted(m) == sorted(KEYS)
  for d in ('i2t', 't2i'):
    for k in (1, 5, 10):
      assert m[f'{d}_r{k}'] == 100.0
    assert m[f'{d}_medr'] == 1.0 and m[f'{d}_meanr'] == 1.0
  assert m['rsum'] == 600.0
  assert all(isinstance(v, float) for v in m.values())


def test_known_ranks():
  n = 12
  s = np.eye(n)
  s[1:7, 0] = 2.0  # Images 1..6 all score text 0 above their own text.
  image, text = _from_scores(s)
  m = rt.retrieval_metrics(image, text, np.arange(n))
  # i2t: images 1..6 rank their own text 2nd, the rest 1st.
  # t2i: text 0 has 6 images ahead of its own -> rank 7; the rest rank 1.
  _assert_metrics(m, {
      'i2t_r1': 50.0, 'i2t_r5': 100.0, 'i2t_r10': 100.0,
      'i2t_medr': 1.5, 'i2t_meanr': 1.5,
      't2i_r1': 100 * 11 / 12, 't2i_r5': 100 * 11 / 12, 't2i_r10': 100.0,
      't2i_medr': 1.0, 't2i_meanr': (11 + 7) / 12,
      'rsum': 50 + 100 + 100 + 100 * 11 / 12 * 2 + 100})


def test_single_tie_counts_against_query():
  s = np.eye(3)
  s[1, 0] = 1.0  # Image 1 scores text 0 exactly as high as text 1.
  image, text = _from_scores(s)
  m = rt.retrieval_metrics(image, text, np.arange(3), ks=(1, 2))
  # Image 1 (i2t) and text 0 (t2i) both get rank 2, not 1.
  _assert_metrics(m, {
      'i2t_r1': 100 * 2 / 3, 'i2t_r2': 100.0, 'i2t_medr': 1.0,
      'i2t_meanr': 4 / 3,
      't2i_r1': 100 * 2 / 3, 't2i_r2': 100.0, 't2i_medr': 1.0,
      't2i_meanr': 4 / 3, 'rsum': 2 * (100 * 2 / 3 + 100)})


def test_collapsed_embeddings_get_zero_recall():
  n, per = 10, 5
  t2i = np.repeat(np.arange(n), per)
  image = np.ones((n, 4), np.float32)
  text = np.ones((n * per, 4), np.float32)
  m = rt.retrieval_metrics(image, text, t2i)
  # i2t: 45 irrelevant texts tie with the best relevant -> rank 46.
  # t2i: 9 irrelevant images tie with the relevant one -> rank 10.
  _assert_metrics(m, {
      'i2t_r1': 0.0, 'i2t_r5': 0.0, 'i2t_r10': 0.0,
      'i2t_medr': 46.0, 'i2t_meanr': 46.0,
      't2i_r1': 0.0, 't2i_r5': 0.0, 't2i_r10': 100.0,
      't2i_medr': 10.0, 't2i_meanr': 10.0, 'rsum': 100.0})


def test_any_of_five_captions_counts():
  # 3 images x 5 captions; texts 5i..5i+4 belong to image i.
  t2i = np.repeat(np.arange(3), 5)
  s = np.full((3, 15), 0.5)
  # Image 0: four bad captions (0.1) and one good (0.9) -> rank 1.
  s[0, 0:4] = 0.1
  s[0, 4] = 0.9
  # Image 1: all its captions score 0.4, below 10 irrelevant texts at 0.5
  # -> rank 11 (its best caption is 11th).
  s[1, 5:10] = 0.4
  # Image 2: best caption 0.7 behind exactly two irrelevant texts -> rank 3.
  s[2, 10:15] = [0.2, 0.7, 0.2, 0.2, 0.2]
  s[2, :10] = 0.0
  s[2, 0] = s[2, 7] = 0.8
  image, text = _from_scores(s)
  m = rt.retrieval_metrics(image, text, t2i, ks=(1, 3, 10))
  assert m['i2t_r1'] == pytest.approx(100 / 3)
  assert m['i2t_r3'] == pytest.approx(200 / 3)
  assert m['i2t_r10'] == pytest.approx(200 / 3)
  assert m['i2t_medr'] == 3.0
  assert m['i2t_meanr'] == pytest.approx((1 + 11 + 3) / 3)
  np.testing.assert_allclose(
      [m[k] for k in ('t2i_r1', 't2i_medr', 't2i_meanr')],
      [v for k, v in _brute_force(image, text, t2i, ks=(1, 3, 10)).items()
       if k in ('t2i_r1', 't2i_medr', 't2i_meanr')])


@pytest.mark.parametrize('quantised', [False, True])
def test_random_matches_brute_force_and_chunking(quantised):
  rng = np.random.default_rng(7 + quantised)
  n, d = 37, 6
  t2i = rng.permutation(np.concatenate(
      [np.arange(n), rng.integers(0, n, size=4 * n)]))
  if quantised:  # Small integers: exact scores with many exact ties.
    image = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    text = (image[t2i] + rng.integers(-1, 2, size=(t2i.size, d))).astype(
        np.float32)
  else:
    image = rng.normal(size=(n, d)).astype(np.float32)
    text = (image[t2i] + rng.normal(size=(t2i.size, d))).astype(np.float32)
  want = _brute_force(image, text, t2i)
  results = [rt.retrieval_metrics(image, text, t2i, chunk_size=c)
             for c in (1, 3, 10_000)]
  for got in results:
    _assert_metrics(got, want)
    assert got == results[0]
  assert 0 < want['i2t_r1'] < 100 and 0 < want['t2i_r10'] < 100


def test_fold_average_equals_manual_average():
  rng = np.random.default_rng(9)
  fold, d = 10, 5
  n = 2 * fold
  t2i = rng.permutation(np.repeat(np.arange(n), 5))  # Shuffled text order.
  image = rng.normal(size=(n, d)).astype(np.float32)
  text = (image[t2i] + 1.5 * rng.normal(size=(t2i.size, d))).astype(np.float32)
  got = rt.fold_retrieval_metrics(image, text, t2i, fold_size=fold,
                                  chunk_size=4)
  manual = []
  for f in range(2):
    sel = (t2i >= f * fold) & (t2i < (f + 1) * fold)
    manual.append(rt.retrieval_metrics(image[f * fold:(f + 1) * fold],
                                       text[sel], t2i[sel] - f * fold))
  assert manual[0] != manual[1]
  _assert_metrics(got, {k: (manual[0][k] + manual[1][k]) / 2 for k in KEYS})
  # One fold covering everything is the plain metric.
  _assert_metrics(rt.fold_retrieval_metrics(image, text, t2i, fold_size=n),
                  rt.retrieval_metrics(image, text, t2i))


def _ok():
  t2i = np.repeat(np.arange(4), 2)
  image = np.eye(4, dtype=np.float32)
  return image, image[t2i], t2i


@pytest.mark.parametrize('mutate, match', [
    (lambda i, t, m: (i, t[:, :3], m), 'dim mismatch'),
    (lambda i, t, m: (i[:0], t, m), 'image_emb is empty'),
    (lambda i, t, m: (i, t[:0], m[:0]), 'text_emb is empty'),
    (lambda i, t, m: (i[0], t, m), 'must be 2-D'),
    (lambda i, t, m: (i, t, m[:-1]), 'one image index per text'),
    (lambda i, t, m: (i, t, m.astype(np.float32)), 'integer'),
    (lambda i, t, m: (i, t, np.where(m == 3, 4, m)), 'out of range'),
    (lambda i, t, m: (i, t, np.where(m == 0, -1, m)), 'out of range'),
    (lambda i, t, m: (i, t, np.where(m == 3, 2, m)), 'have no text'),
    (lambda i, t, m: (np.where(i == 1, np.nan, i), t, m), 'non-finite'),
    (lambda i, t, m: (i, np.where(t == 1, np.inf, t), m), 'non-finite'),
])
def test_value_errors(mutate, match):
  image, text, t2i = mutate(*_ok())
  with pytest.raises(ValueError, match=match):
    rt.retrieval_metrics(image, text, t2i)
  with pytest.raises(ValueError, match=match):
    rt.fold_retrieval_metrics(image, text, t2i, fold_size=1)


def test_argument_errors():
  image, text, t2i = _ok()
  with pytest.raises(ValueError, match='not a multiple of fold_size'):
    rt.fold_retrieval_metrics(image, text, t2i, fold_size=3)
  with pytest.raises(ValueError, match='fold_size'):
    rt.fold_retrieval_metrics(image, text, t2i, fold_size=0)
  with pytest.raises(ValueError, match='chunk_size'):
    rt.retrieval_metrics(image, text, t2i, chunk_size=0)
  with pytest.raises(ValueError, match='ks'):
    rt.retrieval_metrics(image, text, t2i, ks=())
  with pytest.raises(ValueError, match='positive'):
    rt.retrieval_metrics(image, text, t2i, ks=(0, 1))


def test_format_table():
  image, text, t2i = _ok()
  m = rt.retrieval_metrics(image, text, t2i)
  table = rt.format_retrieval_table(m, title='toy')
  assert table.startswith('**toy**')
  rows = [line for line in table.splitlines() if line.startswith('|')]
  assert len(rows) == 4
  assert len({len(r) for r in rows}) == 1  # Aligned columns.
  for token in ('R@1', 'R@5', 'R@10', 'MedR', 'MeanR', '100.00',
                'rsum: 600.00'):
    assert token in table
  assert '|' in rt.format_retrieval_table({'t2i_r1': 5.0})
