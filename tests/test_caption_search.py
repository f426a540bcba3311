"""Caption search (serving/caption_search.py): TF-IDF "sum" scores computed by hand with scikit-learn's formula,
the cosine option, the attribute filter, linked captions, unknown words, the caption database's files and their
errors, caption-based R@K and embedding search."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.serving import caption_search

pytest.importorskip("sklearn", reason="scikit-learn is not installed: TF-IDF caption search is off")

# Image 0 has two captions, images 1 and 2 one each. Words (2+ letters): red car | blue car on the road |
# dog and dog | red dog: n = 4 captions; df(red) = df(car) = df(dog) = 2, every other word 1.
CAPTIONS = ["a red car", "a blue car on the road", "a dog and a dog", "a red dog"]
OWNER = [0, 0, 1, 2]
IMAGE_IDS = [70, 71, 72]


def idf(df: int, n: int = 4) -> float:
  """scikit-learn's smooth idf: ln((1 + n) / (1 + df)) + 1."""
  return math.log((1 + n) / (1 + df)) + 1


def tf(count: int) -> float:
  """sublinear tf: 1 + ln(count)."""
  return 1 + math.log(count)


def index(scoring="sum"):
  return caption_search.TfidfCaptionIndex(CAPTIONS, OWNER, scoring, image_ids=IMAGE_IDS,
                                          images=["a.jpg", "b.jpg", ""])


def test_sum_scores_by_hand():
  hits = index().search("red red dog", 10)  # distinct words: red, dog
  expected = {72: tf(1) * idf(2) + tf(1) * idf(2),   # "a red dog": red + dog
              71: tf(2) * idf(2),                    # "a dog and a dog": dog twice, no red
              70: tf(1) * idf(2)}                    # "a red car": red
  assert [h["image_id"] for h in hits] == [72, 71, 70]
  for hit in hits:
    assert hit["score"] == pytest.approx(expected[hit["image_id"]], rel=1e-6)
  assert hits[0] == {"image_id": 72, "image": "", "score": hits[0]["score"], "caption": "a red dog", "captions": [],
                     "caption_row": 3}
  blue = index().search("blue road", 10)
  assert len(blue) == 1 and blue[0]["score"] == pytest.approx(2 * tf(1) * idf(1), rel=1e-6)


def test_other_linked_captions_and_ties():
  hits = index().search("car", 10)  # both captions of image 0 have car once: the first is its best
  assert len(hits) == 1
  assert hits[0]["image_id"] == 70 and hits[0]["image"] == "a.jpg" and hits[0]["score"] == pytest.approx(idf(2))
  assert hits[0]["caption"] == "a red car" and hits[0]["captions"] == ["a blue car on the road"]
  hit = index().search("blue", 10)[0]
  assert hit["caption"] == "a blue car on the road" and hit["captions"] == ["a red car"]
  tied = index().search("red", 10)  # images 0 and 2 score idf(red) each: image order decides
  assert [h["image_id"] for h in tied] == [70, 72] and tied[0]["score"] == tied[1]["score"]
  assert [h["image_id"] for h in index().search("red dog", 2)] == [72, 71]  # k


def test_cosine_ranks_differently_from_sum():
  captions = ["a red car parked near a tall grey building", "a car", "a red bus"]
  sums = caption_search.TfidfCaptionIndex(captions, [0, 1, 2], "sum")
  cosines = caption_search.TfidfCaptionIndex(captions, [0, 1, 2], "cosine")
  # sum: the caption with both words first; "a car" and "a red bus" tie at idf(df=2 of n=3) = ln(4/3) + 1.
  hits = sums.search("red car", 3)
  assert [h["image_id"] for h in hits] == [0, 1, 2]
  assert [h["score"] for h in hits] == pytest.approx([2 * idf(2, 3), idf(2, 3), idf(2, 3)], rel=1e-6)
  # cosine: length-normalised, the short "a car" wins; the caption itself scores 1.
  hits = cosines.search("red car", 3)
  assert [h["image_id"] for h in hits] == [1, 0, 2] and 1 > hits[0]["score"] > hits[1]["score"] > hits[2]["score"]
  assert cosines.search("a car", 1)[0]["score"] == pytest.approx(1.0, abs=1e-6)
  assert cosines.search("zebra", 3) == []


def test_attribute_filter():
  assert [h["image_id"] for h in index().search("car", 10, attribute="red")] == [70]
  assert [h["image_id"] for h in index().search("dog", 10, attribute="red")] == [72]  # image 1 has no red
  assert [h["image_id"] for h in index().search("dog", 10, attribute="RED")] == [72]
  assert index().search("dog", 10, attribute="re") == []  # whole words: "re" is not "red"
  assert index().search("dog", 10, attribute="zebra") == []
  assert index().images_with("car").tolist() == [True, False, False]
  with pytest.raises(errors.DataError, match="one word"):
    index().search("dog", 10, attribute="red dog")
  with pytest.raises(errors.DataError, match="one word"):
    index().search("dog", 10, attribute="a")


def test_unknown_words():
  ix = index()
  assert ix.search("zebra giraffe", 5) == [] and ix.unknown_words("zebra giraffe") == ["zebra", "giraffe"]
  assert ix.search("", 5) == [] and ix.unknown_words("") == []
  assert ix.unknown_words("Red zebra") == ["zebra"] and len(ix.search("Red zebra", 5)) == 2


def test_bad_arguments():
  with pytest.raises(errors.ConfigError, match="scoring"):
    caption_search.TfidfCaptionIndex(CAPTIONS, OWNER, "bm25")
  with pytest.raises(errors.ConfigError, match="k=0"):
    index().search("red", 0)
  with pytest.raises(errors.DataError, match="owner"):
    caption_search.TfidfCaptionIndex(CAPTIONS, [0, 1], "sum")
  with pytest.raises(errors.DataError, match=r"\[71\] have no caption"):
    caption_search.TfidfCaptionIndex(CAPTIONS, [0, 0, 2, 2], "sum", image_ids=IMAGE_IDS)
  with pytest.raises(errors.DataError, match="no caption has a word"):
    caption_search.TfidfCaptionIndex(["a", "?"], [0, 1], "sum")


# --------------------------------------------------------------------------------------------- the database


def database(embeddings=True) -> caption_search.CaptionDatabase:
  image_embeddings = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) if embeddings else None
  caption_embeddings = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32) if embeddings else None
  return caption_search.CaptionDatabase(
      image_ids=IMAGE_IDS, images=["a.jpg", "b.jpg", ""], captions=[CAPTIONS[:2], [CAPTIONS[2]], [CAPTIONS[3]]],
      references=[["a red car by a blue car"], ["two dogs"], []], image_embeddings=image_embeddings,
      caption_embeddings=caption_embeddings, meta={"captioner": "test", "workdir": "/runs/cap"})


def test_database_search_matches_the_index():
  db = database()
  assert db.num_images == 3 and db.num_captions == 4 and db.caption_owner.tolist() == OWNER
  assert db.search("red dog", 10) == index().search("red dog", 10)
  assert db.search("car", 10, scoring="cosine")[0]["image_id"] == 70


def test_search_by_embedding():
  db = database()
  hits = db.search_by_embedding(np.array([0.9, 0.5, 0.0]), 2)
  assert [h["image_id"] for h in hits] == [70, 71]
  assert hits[0]["score"] == pytest.approx(0.9 / math.hypot(0.9, 0.5), rel=1e-6)
  assert hits[0]["caption"] == "a blue car on the road" and hits[0]["captions"] == ["a red car"]  # nearer caption
  assert [h["image_id"] for h in db.search_by_embedding(np.array([0.9, 0.5, 0.1]), 3, attribute="red")] == [70, 72]
  plain = database(embeddings=False)
  with pytest.raises(errors.MissingError, match="image_embeddings.npy"):
    plain.search_by_embedding(np.ones(3), 2)
  plain.image_embeddings = db.image_embeddings
  assert plain.search_by_embedding(np.array([1.0, 0, 0]), 1)[0]["caption"] == "a red car"  # first caption


def test_embedding_search_by_hand():
  images = np.array([[1, 0], [0, 2], [1, 1], [0, 0], [-3, 0]], np.float32)
  rows, scores = caption_search.embedding_search(np.array([2.0, 0.0]), images, 4)
  assert rows.tolist() == [0, 2, 1, 3] and rows.dtype == np.int64 and scores.dtype == np.float32
  assert scores.tolist() == pytest.approx([1.0, math.sqrt(0.5), 0.0, 0.0], abs=1e-6)
  rows, scores = caption_search.embedding_search([0, 1], images, 10, allowed=[False, False, True, True, True])
  assert rows.tolist() == [2, 3, 4] and scores.tolist() == pytest.approx([math.sqrt(0.5), 0, 0], abs=1e-6)
  with pytest.raises(errors.DataError, match="all zeros"):
    caption_search.embedding_search([0, 0], images, 1)
  with pytest.raises(errors.DataError, match="same D"):
    caption_search.embedding_search([1, 0, 0], images, 1)


def test_save_load_round_trip(tmp_path):
  db = database()
  directory = str(tmp_path / "db")
  db.save(directory)
  assert sorted(os.listdir(directory)) == ["caption_embeddings.npy", "captions.jsonl", "image_embeddings.npy",
                                           "meta.json"]
  with open(os.path.join(directory, "captions.jsonl")) as f:
    first = json.loads(f.readline())
  assert first == {"image_id": 70, "image": "a.jpg", "captions": CAPTIONS[:2],
                   "references": ["a red car by a blue car"]}
  loaded = caption_search.CaptionDatabase.load(directory)
  assert loaded.image_ids.tolist() == IMAGE_IDS and loaded.image_ids.dtype == np.int64
  assert loaded.images == db.images and loaded.captions == db.captions and loaded.references == db.references
  assert loaded.meta == db.meta
  np.testing.assert_array_equal(loaded.image_embeddings, db.image_embeddings)
  np.testing.assert_array_equal(loaded.caption_embeddings, db.caption_embeddings)
  assert loaded.caption_embeddings.dtype == np.float32
  assert loaded.search("red dog", 3) == db.search("red dog", 3)
  plain = database(embeddings=False)
  plain.references = None
  plain.save(directory)  # over the first: the stale embeddings go
  assert sorted(os.listdir(directory)) == ["captions.jsonl", "meta.json"]
  again = caption_search.CaptionDatabase.load(directory)
  assert again.references is None and again.image_embeddings is None and again.caption_embeddings is None


def test_damaged_files_are_named(tmp_path):
  directory = str(tmp_path / "db")
  database().save(directory)
  path = lambda name: os.path.join(directory, name)
  with open(path("image_embeddings.npy"), "r+b") as f:
    f.truncate(20)
  with pytest.raises(errors.DataError, match=r"image_embeddings\.npy is corrupt.*xmodal caption --workdir /runs/cap"):
    caption_search.CaptionDatabase.load(directory)
  np.save(path("image_embeddings.npy"), np.zeros((2, 3), np.float32))  # a row short
  with pytest.raises(errors.DataError, match=r"image_embeddings\.npy has shape \[2, 3\] but the database has 3"):
    caption_search.CaptionDatabase.load(directory)
  os.remove(path("image_embeddings.npy"))
  with pytest.raises(errors.MissingError, match=r"image_embeddings\.npy not found"):
    caption_search.CaptionDatabase.load(directory)
  database().save(directory)
  with open(path("captions.jsonl"), "a") as f:
    f.write('{"image_id": 73, "image": "", "captions": []}\n')
  with pytest.raises(errors.DataError, match=r"captions\.jsonl:4 is not a caption line"):
    caption_search.CaptionDatabase.load(directory)
  database().save(directory)
  with open(path("captions.jsonl"), "a") as f:
    f.write('{"image_id": 73, "image": "", "captions": ["a cat"]}\n')
  with pytest.raises(errors.DataError, match=r"captions\.jsonl has 4 images but meta\.json says 3"):
    caption_search.CaptionDatabase.load(directory)
  os.remove(path("meta.json"))
  with pytest.raises(errors.MissingError, match=r"meta\.json not found.*did not finish"):
    caption_search.CaptionDatabase.load(directory)


def test_database_is_checked():
  with pytest.raises(errors.DataError, match="no caption"):
    caption_search.CaptionDatabase([1, 2], ["", ""], [["a cat"], []])
  with pytest.raises(errors.DataError, match="more than once"):
    caption_search.CaptionDatabase([1, 1], ["", ""], [["a cat"], ["a dog"]])
  with pytest.raises(errors.DataError, match="caption_embeddings has shape"):
    caption_search.CaptionDatabase([1], [""], [["a cat"]], caption_embeddings=np.zeros((2, 4)))


# ------------------------------------------------------------------------------------------------- recall


def test_recall_at_k_by_hand():
  queries = ["a red dog", "the blue road", "a dog", "zebra", "red"]
  truth = [2, 0, 2, 1, 2]
  # Ranks (ties against the query): 1; 1 (only image 0 has blue/road); 2 (image 1 has dog twice);
  # 3 (nothing matches: last of 3); 2 (images 0 and 2 tie on red).
  metrics = caption_search.recall_at_k(database(), queries, truth, ks=(1, 2, 3))
  assert metrics == pytest.approx({"t2i_r1": 40.0, "t2i_r2": 80.0, "t2i_r3": 100.0, "t2i_medr": 2.0,
                                   "t2i_meanr": 1.8, "num_queries": 5, "no_match": 1})
  assert caption_search.recall_at_k(index(), queries, np.array(truth), ks=(1, 2, 3)) == metrics
  cosine = caption_search.recall_at_k(index("cosine"), ["red dog"], [2], ks=(1,), scoring="cosine")
  assert cosine["t2i_r1"] == 100.0
  with pytest.raises(errors.ConfigError, match="scores 'sum'"):
    caption_search.recall_at_k(index(), queries, truth, scoring="cosine")
  with pytest.raises(errors.DataError, match="one integer image row per query"):
    caption_search.recall_at_k(index(), queries, truth[:2])
  with pytest.raises(errors.DataError, match="outside"):
    caption_search.recall_at_k(index(), ["red"], [3])
