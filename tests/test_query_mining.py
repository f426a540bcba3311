"""Search queries mined from captions and caption-derived class labels (rules on hand-made captions + real Flickr8k)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from tests.helpers import REPO
from xmodal_jax.data import taxonomy as tx
from xmodal_jax.evaluation import tables
from xmodal_jax.systems.classifier import query_mining as qm


def test_stopwords_are_function_words():
  for word in ["a", "the", "in", "into", "of", "is", "are", "while", "its", "his", "and", "with", "'s"]:
    assert word in qm.STOPWORDS
  for word in ["dog", "water", "man", "runs", "black", "wearing", "shirt"]:
    assert word not in qm.STOPWORDS


def test_caption_ngrams_edges_and_case():
  assert qm.caption_ngrams("A black dog runs into the water.") == {
      "black", "dog", "runs", "water", "black dog", "black dog runs", "dog runs"}
  # Function words may sit inside a query, never at its ends.
  assert {"wearing a hat", "man wearing"} <= qm.caption_ngrams("A man wearing a hat")
  assert "wearing a" not in qm.caption_ngrams("A man wearing a hat")


def test_caption_ngrams_digits_and_single_characters():
  grams = qm.caption_ngrams("2 dogs play in the 3rd round")
  assert grams == {"dogs", "play", "dogs play", "round"}
  grams = qm.caption_ngrams("A boy in a white T-shirt")   # -> "a boy in a white t shirt"
  assert "white t shirt" in grams and "t shirt" not in grams and "t" not in grams and "white t" not in grams
  assert qm.caption_ngrams("man with number 5 shirt") == {"man", "number", "shirt", "man with number"}


def test_caption_ngrams_max_n():
  assert qm.caption_ngrams("black dog runs", max_n=1) == {"black", "dog", "runs"}
  assert "black dog runs" not in qm.caption_ngrams("black dog runs", max_n=2)
  with pytest.raises(ValueError, match="max_n"):
    qm.caption_ngrams("dog", max_n=0)


def _images():
  # Images per query: dog 4, runs 3, "dog runs" 3, cat 2, grass 2, "red ball" 1 (in 3 of its captions), bird 1.
  return [
      ["A dog runs.", "The dog runs on grass.", "A dog."],
      ["dog runs", "a dog", "dog on grass"],
      ["a dog", "a cat", "a red ball", "red ball", "the red ball"],
      ["a dog runs", "a cat"],
      ["a bird", "a bird"],
  ]


def test_build_query_vocab_counts_images_and_sorts():
  vocab = qm.build_query_vocab(_images(), min_images=2, max_image_fraction=1.0)
  # Most images first, ties alphabetically; a query repeated in one image's captions counts that image once.
  assert vocab == ["dog", "dog runs", "runs", "cat", "grass"]
  assert qm.build_query_vocab(_images(), min_images=2, max_image_fraction=1.0, max_queries=3) == [
      "dog", "dog runs", "runs"]
  assert qm.build_query_vocab(_images(), min_images=3, max_image_fraction=1.0) == ["dog", "dog runs", "runs"]
  assert "red ball" in qm.build_query_vocab(_images(), min_images=1, max_image_fraction=1.0)


def test_build_query_vocab_max_fraction():
  # 5 images: fraction 0.6 allows <= 3 images, so "dog" (4) goes and "runs" (3) stays; 0.5 allows <= 2.5.
  assert qm.build_query_vocab(_images(), min_images=2, max_image_fraction=0.6) == ["dog runs", "runs", "cat", "grass"]
  assert qm.build_query_vocab(_images(), min_images=2, max_image_fraction=0.5) == ["cat", "grass"]
  with pytest.raises(ValueError, match="max_image_fraction"):
    qm.build_query_vocab(_images(), max_image_fraction=0.0)
  with pytest.raises(ValueError, match="at least one"):
    qm.build_query_vocab([])


def test_image_queries_weights_count_captions():
  vocab = ["dog", "red ball", "cat", "runs"]
  out = qm.image_queries(_images(), vocab)
  assert len(out) == 5
  ids, weights = out[0]                        # dog in 3 captions, runs in 2
  assert ids.dtype == np.int32 and weights.dtype == np.float32
  np.testing.assert_array_equal(ids, [0, 3])
  np.testing.assert_allclose(weights, [3 / 5, 2 / 5], rtol=1e-6)
  ids, weights = out[2]                        # dog 1, red ball 3, cat 1 -> ids ascending
  np.testing.assert_array_equal(ids, [0, 1, 2])
  np.testing.assert_allclose(weights, [1 / 5, 3 / 5, 1 / 5], rtol=1e-6)
  for ids, weights in out[:4]:
    assert np.all(np.diff(ids) > 0) and abs(weights.sum() - 1) < 1e-6
  ids, weights = out[4]                        # only "bird": not in the vocabulary
  assert ids.shape == (0,) and weights.shape == (0,) and ids.dtype == np.int32 and weights.dtype == np.float32
  with pytest.raises(ValueError, match="unique"):
    qm.image_queries(_images(), ["dog", "dog"])


CONCEPTS = (("dog", ("dog", "dogs")), ("snow", ("snow", "skier")), ("man", ("man", "men")))


def test_caption_labels_priority_and_votes():
  images = [
      ["a dog runs through the snow"] * 5,                                  # both reach 5 votes: dog is first
      ["a skier", "snow", "the snow", "a man", "a man"],                    # snow 3 votes, man 2
      ["a man", "men", "a dog", "a dog", "snowman"],                        # dog 2, man 2: none reaches 3 (-1)
      ["a man", "two men", "the man", "dogged", "a man, a dog"],            # "dogged" is not "dog": man 4, dog 1
      ["a bird", "a bird", "a bird", "a bird", "a bird"],                   # nothing
  ]
  labels = tx.caption_labels(images, CONCEPTS)
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, [0, 1, -1, 2, -1])
  np.testing.assert_array_equal(tx.caption_labels(images, CONCEPTS, min_votes=2), [0, 1, 0, 2, -1])
  np.testing.assert_array_equal(tx.caption_labels(images, CONCEPTS, min_votes=5), [0, -1, -1, -1, -1])
  with pytest.raises(ValueError, match="min_votes"):
    tx.caption_labels(images, CONCEPTS, min_votes=0)
  with pytest.raises(ValueError, match="one normalised word"):
    tx.caption_labels(images, (("dog", ("Dog",)),))
  with pytest.raises(ValueError, match="unique"):
    tx.caption_labels(images, (("dog", ("dog",)), ("dog", ("dogs",))))


def test_class_distribution_and_table():
  names = tx.class_names(CONCEPTS)
  assert names == ("dog", "snow", "man")
  dist = tx.class_distribution(np.array([0, 1, -1, 2, -1, 0, 0], np.int32), names)
  assert dist == {"dog": 3, "snow": 1, "man": 1, "(dropped)": 2}
  assert list(dist) == ["dog", "snow", "man", "(dropped)"]
  table = tables.format_distribution(dist)
  rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()]
  assert ["dog", "3", "42.9"] in rows and ["(dropped)", "2", "28.6"] in rows and ["total", "7", "100.0"] in rows
  with pytest.raises(ValueError, match="Labels"):
    tx.class_distribution(np.array([3]), names)


def test_flickr8k_concepts_are_well_formed():
  names = tx.class_names()
  assert names[0] == "dog" and len(names) == len(set(names)) >= 8
  labels = tx.caption_labels([["A dog runs through the snow."] * 5, ["A man holds a baby ."] * 5])
  assert [names[i] for i in labels] == ["dog", "child"]


def _real_flickr8k() -> str | None:
  path = os.path.join(REPO, "..", "shared", "data", "flickr8k")
  return path if os.path.isfile(os.path.join(path, "captions.jsonl")) else None


@pytest.mark.skipif(_real_flickr8k() is None,
                    reason="real Flickr8k folder (../shared/data/flickr8k/captions.jsonl) is not on this machine")
def test_real_flickr8k_queries_and_labels():
  start = time.perf_counter()
  with open(os.path.join(_real_flickr8k(), "captions.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r["captions"] for r in records if r["split"] == "train"]
  val = [r["captions"] for r in records if r["split"] == "val"]
  vocab = qm.build_query_vocab(train)
  assert len(vocab) > 200 and "dog" in vocab[:20]
  assert all(len(q.split()) <= 3 for q in vocab) and len(set(vocab)) == len(vocab)
  names = tx.class_names()
  for captions in (train, val):
    dist = tx.class_distribution(tx.caption_labels(captions), names)
    assert all(dist[name] >= 20 for name in names), dist
    assert dist["(dropped)"] < 0.6 * len(captions), dist
  assert time.perf_counter() - start < 5  # Takes ~1.3 s; loose so a busy machine does not flake.
