"""Tests of retrieval with generated captions (evaluation/caption_retrieval.py) and of the captioning evaluator's
metrics built on it: generated-caption R@K under a scorer, TF-IDF caption search R@K, repetition, items, table.
Hand-built embeddings and captions only: no model, no Java (coco=False)."""
import ml_collections
import numpy as np
import pytest

from xmodal_jax.evaluation import caption_retrieval as cr
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.serving import caption_search

# Image rows 0 and 2 have the same generated caption; image 3's is empty.
_GENERATED = ["a dog runs on grass", "a red car parked", "a dog runs on grass", "", "two children play football"]
_QUERIES = ["a red car on the street", "a dog on the grass", "children playing football", "a cat sleeping",
            "dog runs on grass"]
_QUERY_IMAGE = np.array([1, 0, 4, 3, 2])
# car: its own words outweigh "on" of the dog captions; dog: ties with its twin (ties count against the query);
# football: rank 1 ("playing" is unknown); the cat query's image has no caption and no other matches: last (5).
_SEARCH_RANKS = [1, 2, 1, 5, 2]


def _brute_force_ranks(image_emb, caption_emb, nonempty):
  image = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
  ranks = []
  for i, c in enumerate(caption_emb):
    if not nonempty[i]:
      ranks.append(len(image))
      continue
    scores = image @ (c / np.linalg.norm(c))
    ranks.append(1 + sum(scores[j] >= scores[i] for j in range(len(image)) if j != i))
  return np.array(ranks)


def _embeddings(num=40, dim=8, seed=0):
  """Images, captions near their images (noisy), image 5 duplicated as image 6, caption 3 empty (zero row)."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(num, dim))
  image[6] = image[5]
  caption = 3.0 * image + rng.normal(size=(num, dim)) * 2.0
  nonempty = np.ones(num, bool)
  nonempty[3] = False
  caption[3] = 0.0
  return image, caption, nonempty


def test_generated_caption_ranks_match_brute_force():
  image, caption, nonempty = _embeddings()
  ranks = cr.generated_caption_ranks(image, caption, nonempty)
  expected = _brute_force_ranks(image, caption, nonempty)
  np.testing.assert_array_equal(ranks, expected)
  assert ranks[3] == len(image) and ranks[5] >= 2 and ranks[6] >= 2  # empty last; the twin images tie
  assert 0 < np.mean(expected == 1) < 1  # a case where R@1 is neither trivial 0 nor 100
  metrics = cr.rank_metrics("gen", ranks)
  assert set(metrics) == {"gen_r1", "gen_r5", "gen_r10", "gen_medr"}
  for k in (1, 5, 10):
    assert metrics[f"gen_r{k}"] == pytest.approx(100.0 * np.mean(expected <= k))
  assert metrics["gen_medr"] == np.median(expected)


def test_caption_search_ranks_hand_made_and_as_serving_ranks():
  ranks = cr.caption_search_ranks(_GENERATED, _QUERIES, _QUERY_IMAGE)
  np.testing.assert_array_equal(ranks, _SEARCH_RANKS)
  assert cr.rank_metrics("search", ranks) == {"search_r1": 40.0, "search_r5": 100.0, "search_r10": 100.0,
                                              "search_medr": 2.0}
  # The same ranks as the serving caption search's own R@K ("sum" scoring), here and on random word soup.
  served = caption_search.recall_at_k(caption_search.TfidfCaptionIndex(_GENERATED, np.arange(5)), _QUERIES,
                                      _QUERY_IMAGE)
  assert {k: served[f"t2i_{k}"] for k in ("r1", "r5", "r10", "medr")} == {"r1": 40.0, "r5": 100.0, "r10": 100.0,
                                                                          "medr": 2.0}
  rng = np.random.default_rng(1)
  words = "dog cat man woman red blue runs sits grass water ball child".split()
  generated = [" ".join(rng.choice(words, rng.integers(2, 7))) for _ in range(30)]
  queries = [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(90)]
  truth = np.repeat(np.arange(30), 3)
  ours = cr.rank_metrics("t2i", cr.caption_search_ranks(generated, queries, truth))
  served = caption_search.recall_at_k(caption_search.TfidfCaptionIndex(generated, np.arange(30)), queries, truth)
  assert ours == {k: served[k] for k in ours}
  assert 0 < ours["t2i_r1"] < 100
  np.testing.assert_array_equal(cr.caption_search_ranks(["", " "], ["a dog", "red"], np.array([0, 1])), [2, 2])
  np.testing.assert_array_equal(cr.caption_search_ranks(["red dog", "cat"], ["zebra", "cat"], np.array([0, 1])), [2, 1])


class _Runtime:
  def map_batches(self, fn, variables, arrays, batch_size):
    del batch_size
    return fn(variables, **arrays)


class _Scorer:
  """A scorer of hand-built embeddings; the captions come in image order, an empty one gets a zero row."""
  name = "judge"

  def __init__(self, image_emb, caption_emb):
    self._image, self._caption = image_emb, caption_emb

  def image_embeddings(self):
    return self._image

  def caption_embeddings(self, captions):
    return np.where(np.array([bool(c) for c in captions])[:, None], self._caption, 0.0)

  def reference_embeddings(self):
    return self._image[[0, 1, 2, 3, 4]] + 0.1, np.arange(5)

  def grammar(self, captions):
    return None


def test_captioning_evaluator_reports_generated_caption_and_search_recall():
  image = np.eye(5, 4, dtype=np.float32) + 0.01
  captions = _GENERATED
  caption_emb = image[[1, 0, 2, 3, 4]]  # captions 0 and 1 describe each other's image; caption 3 is empty
  references = [[q] for q in np.array(_QUERIES)[np.argsort(_QUERY_IMAGE)]]
  scorer = _Scorer(image, caption_emb)
  spec = ml_collections.ConfigDict(evaluator_lib.evaluator_config("captioning", coco=False, examples=0))
  evaluator = evaluator_lib.create("val", spec)
  data = evaluator_lib.EvalData(image_inputs={"images": np.arange(5)},
                                extras={"references": references, "scorers": [scorer],
                                        "decode_text": lambda rows: [captions[int(r)] for r in rows]})
  metrics = evaluator.evaluate({"caption": lambda variables, images: images}, None, data, _Runtime())
  expected = _brute_force_ranks(image, caption_emb, np.array([bool(c) for c in captions]))
  np.testing.assert_array_equal(evaluator.items["judge/gen_rank"], expected)
  assert metrics["judge/gen_r1"] == pytest.approx(100.0 * np.mean(expected == 1)) and metrics["judge/gen_r1"] < 100
  assert metrics["judge/clip_s"] > 0 and evaluator.items["judge/clip_s"][3] == 0.0  # the empty caption scores 0
  assert {k: metrics[k] for k in ("search_r1", "search_r5", "search_medr")} == {"search_r1": 40.0,
                                                                                "search_r5": 100.0, "search_medr": 2.0}
  np.testing.assert_array_equal(evaluator.items["search_image"], np.arange(5))
  assert metrics["empty_captions"] == 20.0 and metrics["repeat_2"] == 0.0 and metrics["vocabulary"] == 12
  table = evaluator.format(metrics, "val")
  assert "| judge" in table and "gen_r1" in table and "search_r10" in table
