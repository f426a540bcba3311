"""Tests of the S5 caption negatives: corruptions for the grammar head and attribute stripping for the reward model."""
import collections

import numpy as np
import pytest

from xmodal_jax.data import shapes_world as sw
from xmodal_jax.systems.captioning import caption_corruption as cc

_CAPTION = "a large red circle is in the top left , a small blue square at the bottom".split()
_SEEDS = range(200)


def _rngs():
  return (np.random.default_rng(seed) for seed in _SEEDS)


def _is_contiguous_repeat(words: list[str], out: list[str]) -> int:
  """n when `out` is `words` with an n-gram repeated right after itself, else 0."""
  n = len(out) - len(words)
  return n if any(out == words[:i + n] + words[i:i + n] + words[i + n:] for i in range(len(words) - n + 1)) else 0


def test_repeat_repeats_an_ngram_contiguously():
  lengths = collections.Counter()
  for rng in _rngs():
    out = cc.repeat_ngram(_CAPTION, rng)
    assert out != _CAPTION and 1 <= _is_contiguous_repeat(_CAPTION, out) <= 3
    lengths[len(out) - len(_CAPTION)] += 1
  assert set(lengths) == {1, 2, 3}
  rng = np.random.default_rng(0)
  assert cc.repeat_ngram(["dog"], rng) == ["dog", "dog"]
  assert _is_contiguous_repeat(_CAPTION, cc.repeat_ngram(_CAPTION, rng, max_n=1)) == 1
  assert cc.repeat_ngram([], rng) is None


def test_remove_drops_a_contiguous_ngram():
  for rng in _rngs():
    out = cc.remove_ngram(_CAPTION, rng)
    n = len(_CAPTION) - len(out)
    assert 1 <= n <= 3 and any(out == _CAPTION[:i] + _CAPTION[i + n:] for i in range(len(_CAPTION) - n + 1))
  rng = np.random.default_rng(0)
  assert cc.remove_ngram(["a", "dog"], rng) in (["a"], ["dog"])  # Never empties the caption.
  assert cc.remove_ngram(["dog"], rng) is None


def test_insert_adds_one_vocabulary_word():
  vocabulary = ("the", "of", "zebra")
  for rng in _rngs():
    out = cc.insert_word(_CAPTION, rng, vocabulary)
    assert len(out) == len(_CAPTION) + 1
    assert any(out[:i] + out[i + 1:] == _CAPTION and out[i] in vocabulary for i in range(len(out)))
  assert cc.insert_word(_CAPTION, np.random.default_rng(0), ()) is None


@pytest.mark.parametrize("adjacent", [True, False, None])
def test_swap_exchanges_two_different_words(adjacent):
  distances = set()
  for rng in _rngs():
    out = cc.swap_words(_CAPTION, rng, adjacent)
    changed = [i for i, (a, b) in enumerate(zip(_CAPTION, out)) if a != b]
    assert len(out) == len(_CAPTION) and len(changed) == 2
    i, j = changed
    assert out[i] == _CAPTION[j] and out[j] == _CAPTION[i]
    distances.add(j - i)
  assert (distances == {1}) if adjacent else (max(distances) > 1)
  rng = np.random.default_rng(0)
  assert cc.swap_words(["dog"], rng) is None and cc.swap_words(["a", "a", "a"], rng) is None
  assert cc.swap_words(["a", "a", "dog"], rng, adjacent=True) == ["a", "dog", "a"]


@pytest.mark.parametrize("whole", [True, False])
def test_shuffle_keeps_the_words_and_changes_the_order(whole):
  spans = set()
  for rng in _rngs():
    out = cc.shuffle_words(_CAPTION, rng, whole)
    assert out != _CAPTION and collections.Counter(out) == collections.Counter(_CAPTION)
    changed = [i for i, (a, b) in enumerate(zip(_CAPTION, out)) if a != b]
    spans.add(changed[-1] - changed[0] + 1)
  assert max(spans) > cc.MAX_SHUFFLE_SPAN if whole else max(spans) <= cc.MAX_SHUFFLE_SPAN
  rng = np.random.default_rng(0)
  assert cc.shuffle_words(["b", "a"], rng, whole) == ["a", "b"]
  assert cc.shuffle_words(["a"], rng) is None and cc.shuffle_words(["x", "x"], rng) is None


def test_corrupt_draws_applicable_kinds():
  caption = " ".join(_CAPTION)
  kinds = collections.Counter()
  for rng in _rngs():
    text, kind = cc.corrupt(caption, rng)
    assert text != caption and kind in cc.ALL_KINDS
    kinds[kind] += 1
  assert set(kinds) == set(cc.ALL_KINDS) and min(kinds.values()) > 20
  rng = np.random.default_rng(0)
  assert cc.corrupt("dog", rng, kinds=("swap", "shuffle")) is None
  for _ in range(20):  # Remove, swap and shuffle do not apply to a one-word caption.
    assert cc.corrupt("dog", rng)[1] in ("repeat", "insert")
  with pytest.raises(ValueError, match="kinds"):
    cc.corrupt(caption, rng, kinds=("scramble",))
  with pytest.raises(ValueError, match="single"):
    cc.corrupt(caption, rng, vocabulary=("two words",))
  with pytest.raises(ValueError, match="no words"):
    cc.corrupt("  ", rng)


def test_forbidden_corruptions_are_drawn_again():
  forbidden = {"b a c", "a c b"}  # Only "c b a" is left of the swaps of "a b c"; a draw gives it with p = 1/6.
  outputs = {cc.corrupt("a b c", np.random.default_rng(seed), kinds=("swap",), forbidden=forbidden, max_tries=200)
             for seed in range(50)}
  assert outputs == {("c b a", "swap")}
  texts, _ = cc.corrupt_batch(["a b c"] * 50, seed=0, kinds=("swap",), forbidden=forbidden, max_tries=200)
  assert texts == ["c b a"] * 50
  assert cc.corrupt("a b", np.random.default_rng(0), kinds=("swap",), forbidden={"b a"}) is None


def test_corrupt_batch_is_deterministic_per_seed():
  captions = ["a red circle", "two dogs play in the snow", "dog", "a man rides a bike down a dirt road"] * 5
  texts, kinds = cc.corrupt_batch(captions, seed=7)
  assert (texts, kinds) == cc.corrupt_batch(captions, seed=7)
  assert cc.corrupt_batch(captions[:3], seed=7) == (texts[:3], kinds[:3])  # Caption i depends on (seed, i) only.
  assert texts != cc.corrupt_batch(captions, seed=8)[0]
  assert all(t != c for t, c in zip(texts, captions)) and all(k in cc.ALL_KINDS for k in kinds)
  assert cc.corrupt_batch(["dog", "a b"], seed=0, kinds=("swap",)) == ([None, "b a"], [None, "swap"])
  with pytest.raises(ValueError, match="seed"):
    cc.corrupt_batch(captions, seed=-1)


def test_corrupt_batch_on_shapes_world():
  captions = [c for caps in sw.generate_split("train", 300).captions for c in caps]
  known = set(captions)
  texts, kinds = cc.corrupt_batch(captions, seed=0, forbidden=known)
  assert all(t is not None and t != c and t not in known for t, c in zip(texts, captions))
  assert set(kinds) == set(cc.ALL_KINDS)


@pytest.mark.parametrize("caption, stripped", [
    ("a red circle", "a circle"),
    ("an orange circle", "a circle"),
    ("a red apple", "an apple"),
    ("a large blue square against a dark background", "a large square"),
    ("just one small orange circle at the top on a dark background", "just one small circle at the top"),
    ("three shapes : a small green cross , a large red circle and a small blue triangle",
     "three shapes : a small cross , a large circle and a small triangle"),
    ("a black and white dog runs on the beach", "a dog runs"),
    ("a girl in a red , white and blue shirt", "a girl in a shirt"),
    ("a dog is in the water", "a dog"),
    ("a man poses in front of a blue background", "a man poses"),
    ("a man on the street holding a sign", "a man holding a sign"),
    ("a dog plays with a beach ball", "a dog plays with a ball"),
    ("the dog is black", "the dog"),
    ("two dogs play with a ball", None),
    ("red", None),
])
def test_strip_attributes(caption, stripped):
  assert cc.strip_attributes(caption) == stripped


def test_strip_attributes_word_subsets():
  assert cc.strip_attributes("a red circle on a dark background", cc.COLOUR_WORDS) == "a circle on a dark background"
  assert cc.strip_attributes("a red circle on a dark background", cc.BACKGROUND_WORDS) == "a red circle"
  assert cc.strip_attributes("a dog on the grass", cc.COLOUR_WORDS) is None
  assert set(sw.COLORS) <= cc.COLOUR_WORDS


def _without_attributes(caption: str) -> list[str]:
  """What stripping a shapes world caption must leave, articles as "a"."""
  for suffix in (" on a dark background", " against a dark background"):
    caption = caption.removesuffix(suffix)
  return ["a" if w == "an" else w for w in caption.split() if w not in sw.COLORS]


def test_attribute_pairs_on_shapes_world():
  captions = [c for caps in sw.generate_split("train", 100).captions for c in caps] + ["two shapes : a circle"]
  pairs = cc.attribute_pairs(captions)
  assert [i for i, _ in pairs] == list(range(len(captions) - 1))  # Every shapes world caption names colours.
  for i, stripped in pairs:
    words = stripped.split()
    assert ["a" if w == "an" else w for w in words] == _without_attributes(captions[i])
    assert all(_fits(article, word) for article, word in zip(words, words[1:]) if article in ("a", "an"))


def _fits(article: str, word: str) -> bool:
  return article == ("an" if word[0] in "aeiou" else "a")
