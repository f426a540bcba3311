"""Tests of the caption metrics: COCO metrics (pycocoevalcap, needs Java), text statistics, CLIP-S / RefCLIP-S, and
the shapes world caption grammar. METEOR starts Java and loads its paraphrase table (about 10 s), so only one test
computes it; the other COCO tests ask for the metrics without it."""
import os
import random
import shutil

import numpy as np
import pytest

from xmodal_jax.data import shapes_caption_grammar as grammar
from xmodal_jax.data import shapes_world as sw
from xmodal_jax.errors import DataError, MissingError
from xmodal_jax.evaluation import caption_metrics as cm

needs_java = pytest.mark.skipif(shutil.which("java") is None,
                                reason="no `java` for pycocoevalcap (bash launch/install_java.sh installs one)")
_NO_METEOR = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d")
_REFERENCES = [["a large red circle in the top left", "there is a large red circle at the top left"],
               ["a small blue square is on the right", "a small blue square on the right side"],
               ["two shapes : a small green cross and a large yellow diamond"],
               ["a purple triangle is above an orange circle", "there is a purple triangle above an orange circle"]]


@pytest.fixture(scope="module")
def world_500():
  return sw.generate_split("train", 500)


def _java_children() -> list[str]:
  """Command lines of this process's child processes that run Java (Linux /proc)."""
  out = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      with open(f"/proc/{pid}/cmdline") as f:
        cmdline = f.read().replace("\0", " ")
    except (OSError, IndexError, ValueError):
      continue
    if ppid == os.getpid() and "java" in cmdline:
      out.append(cmdline)
  return out


# ------------------------------------------------------------------------------------------------ coco metrics


@needs_java
def test_coco_metrics_identical_captions_score_100_and_meteor_exits():
  predictions = [refs[0] for refs in _REFERENCES]
  scores = cm.coco_metrics(predictions, _REFERENCES)
  assert list(scores) == list(cm.COCO_METRICS)
  for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"):
    assert scores[name] == pytest.approx(100.0, abs=1e-6), name
  assert scores["cider_d"] > 100.0  # x100 and x10 inside CIDEr-D: a perfect caption scores several hundred.
  if os.path.isdir("/proc"):
    assert _java_children() == []  # The METEOR and tokeniser processes are gone.


@needs_java
def test_coco_metrics_disjoint_captions_score_about_0():
  predictions = ["dogs run over grass", "cloudy sky today", "people eat lunch", "cars drive by fast"]  # No shared word.
  scores = cm.coco_metrics(predictions, _REFERENCES, metrics=_NO_METEOR)
  assert list(scores) == list(_NO_METEOR)
  for name, value in scores.items():
    assert value == pytest.approx(0.0, abs=1e-3), name


@needs_java
def test_cider_d_orders_a_better_caption_above_a_worse_one():
  rest = [refs[0] for refs in _REFERENCES[1:]]
  better = cm.coco_metrics(["a large red circle at the top left"] + rest, _REFERENCES, metrics=("cider_d",))
  worse = cm.coco_metrics(["a small blue circle at the bottom"] + rest, _REFERENCES, metrics=("cider_d",))
  assert list(better) == ["cider_d"] and better["cider_d"] > worse["cider_d"] > 0


@needs_java
def test_per_image_cider_d_is_in_image_order_and_averages_to_the_metric():
  """coco_metrics_and_items: per-image CIDEr-D [N] (the bootstrap's items) whose mean is the metric; only the
  changed image's score moves when one prediction changes."""
  rest = [refs[0] for refs in _REFERENCES[1:]]
  scores, items = cm.coco_metrics_and_items(["a large red circle at the top left"] + rest, _REFERENCES,
                                            metrics=("bleu_4", "cider_d"))
  assert list(items) == ["cider_d"] and items["cider_d"].shape == (len(_REFERENCES),)
  assert np.mean(items["cider_d"]) == pytest.approx(scores["cider_d"])
  _, worse = cm.coco_metrics_and_items(["a small blue circle at the bottom"] + rest, _REFERENCES,
                                       metrics=("cider_d",))
  assert worse["cider_d"][0] < items["cider_d"][0]
  np.testing.assert_allclose(worse["cider_d"][1:], items["cider_d"][1:])


@needs_java
def test_coco_metrics_scores_empty_predictions_without_crashing():
  scores = cm.coco_metrics(["", " , ", "", "."], _REFERENCES, metrics=("bleu_4", "rouge_l", "cider_d"))
  assert scores == {"bleu_4": pytest.approx(0.0, abs=1e-6), "rouge_l": 0.0, "cider_d": 0.0}


def test_coco_metrics_user_errors(monkeypatch):
  with pytest.raises(DataError, match="2 predictions but 1 reference"):
    cm.coco_metrics(["a", "b"], [["a"]])
  with pytest.raises(DataError, match=r"references\[0\] must be a non-empty list"):
    cm.coco_metrics(["a red circle"], ["a red circle"])  # A string, not a list of strings.
  with pytest.raises(DataError, match=r"references\[0\]"):
    cm.coco_metrics(["a red circle"], [[]])
  with pytest.raises(ValueError, match="SPICE is not offered"):
    cm.coco_metrics(["a"], [["a"]], metrics=("spice",))
  monkeypatch.setattr(cm.shutil, "which", lambda name: None)
  with pytest.raises(MissingError, match=r"`java`.*apt-get install -y default-jre-headless"):
    cm.coco_metrics(["a red circle"], [["a red circle"]])


# --------------------------------------------------------------------------------------------- text statistics


def test_text_statistics_hand_cases():
  stats = cm.text_statistics(["a red circle , a red circle", "Red red square.", "", "a blue cross"])
  # Words: 6, 3, 0, 3; the first repeats "a red circle" back to back, the second "red"; bigram shares 2/5, 0, 0, 0.
  # Only the first repeats a bigram (and a trigram) anywhere: "red red" occurs once.
  assert stats == {"mean_length": 3.0, "vocabulary": 6, "repetition_rate": 0.5,
                   "repeated_ngram_share": pytest.approx(0.1), "repeat_2": 0.25, "repeat_3": 0.25}
  reused = cm.text_statistics(["a red circle and a red square"])  # "a red" twice, but not back to back.
  assert reused["repetition_rate"] == 0.0 and reused["repeated_ngram_share"] == pytest.approx(1 / 6)
  assert reused["repeat_2"] == 1.0 and reused["repeat_3"] == 0.0
  loop = cm.text_statistics(["a large red circle a large red circle"])  # Period 4: still caught.
  assert loop["repetition_rate"] == 1.0 and loop["repeated_ngram_share"] == pytest.approx(3 / 7)
  assert loop["repeat_2"] == 1.0 and loop["repeat_3"] == 1.0
  stutter = cm.text_statistics(["red red red square", "a dog in a field"])  # overlapping "red red"; "a" twice only
  assert stutter["repeat_2"] == 0.5 and stutter["repeat_3"] == 0.0
  assert cm.caption_words("A Red circle, at: the top.") == ["a", "red", "circle", "at", "the", "top"]
  with pytest.raises(DataError, match="no predictions"):
    cm.text_statistics([])


# ------------------------------------------------------------------------------------------- CLIP-S, RefCLIP-S


def test_clip_score_normalises_clips_at_0_and_scales_by_w():
  image = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
  caption = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 1.0]])  # cos = 1, -1, 1/sqrt(2).
  np.testing.assert_allclose(cm.clip_score(image, caption), [2.5, 0.0, 2.5 / np.sqrt(2)])
  np.testing.assert_allclose(cm.clip_score(image, caption, w=1.0), [1.0, 0.0, 1 / np.sqrt(2)])
  with pytest.raises(DataError, match="same shape"):
    cm.clip_score(image, caption[:2])
  with pytest.raises(DataError, match="zero or non-finite"):
    cm.clip_score(image, np.zeros_like(caption))


def test_ref_clip_score_hand_computed():
  image = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
  caption = np.array([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cos with the image: 1, 0, -1.
  refs = np.array([[1.0, 1.0], [0.0, -3.0], [0.0, 5.0], [1.0, 0.0]])
  owner = np.array([0, 0, 1, 2])
  # Image 0: CLIP-S = 2.5, best reference cos = max(1/sqrt 2, 0) -> 2 * 2.5 * r / (2.5 + r); image 1: CLIP-S = 0 ->
  # 0 (its reference term is 1); image 2: both terms 0 (reference cos -1 clipped) -> 0, not NaN.
  r = 1 / np.sqrt(2)
  np.testing.assert_allclose(cm.ref_clip_score(image, caption, refs, owner), [2 * 2.5 * r / (2.5 + r), 0.0, 0.0])
  np.testing.assert_allclose(cm.ref_clip_score(image, caption, refs, owner, w=1.0)[0], 2 * r / (1 + r))
  with pytest.raises(DataError, match=r"image\(s\) have no reference"):
    cm.ref_clip_score(image, caption, refs[:3], owner[:3])
  with pytest.raises(DataError, match="reference_owner must be int"):
    cm.ref_clip_score(image, caption, refs, owner.astype(float))


# ------------------------------------------------------------------------------------ shapes caption grammar


def test_every_generated_caption_parses_and_names_its_pairs(world_500):
  captions = [c for caps in world_500.captions for c in caps]
  assert grammar.parse_rate(captions) == 1.0, [c for c in captions if not grammar.parses(c)][:5]
  true_pairs = grammar.true_pairs_of(world_500)
  assert true_pairs == [{tuple(label.split()[1:]) for label in labels} for labels in world_500.box_labels]
  for caps, pairs in zip(world_500.captions, true_pairs):
    assert all(grammar.mentioned_pairs(c) == pairs for c in caps), caps
  first = [caps[0] for caps in world_500.captions]
  assert grammar.attribute_scores(first, true_pairs) == {"attribute_recall": 1.0, "attribute_precision": 1.0}


def test_corrupted_generated_captions_mostly_do_not_parse(world_500):
  rng = random.Random(0)
  captions = [c for caps in world_500.captions for c in caps]

  def corrupt(caption: str, kind: str) -> str:
    words = caption.split()
    i = rng.randrange(len(words) - 1)
    if kind == "repeat":
      words.insert(i, words[i])
    elif kind == "remove":
      del words[i]
    else:
      words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)

  for kind, most in (("repeat", 0.01), ("swap", 0.01), ("remove", 0.1)):  # Some removals leave a sentence.
    corrupted = [x for x, c in zip((corrupt(c, kind) for c in captions), captions) if x.split() != c.split()]
    assert len(corrupted) > 0.9 * len(captions)
    assert grammar.parse_rate(corrupted) <= most, kind


@pytest.mark.parametrize("caption", [
    "there is a large orange circle at the center on a dark background",
    "At the top there is a small red circle",
    "just one small purple cross in the bottom right corner against a dark background",
    "a red circle is above a blue square , which is to the left of an orange diamond",
    "three shapes , namely a small green cross , a large red circle and a small blue triangle",
    "here a large red circle is on the left side and a small yellow square is near the bottom",
    "an image with a red circle at the top and an orange square in the middle",
    "four objects : a large red circle , a large red circle , a small blue square and a small purple cross",
])
def test_hand_written_sentences_parse(caption):
  assert grammar.parses(caption)


@pytest.mark.parametrize("caption", [
    "a red red circle in the top left",  # Word repeated.
    "a large red circle in the left",  # "in the top left" with "top" removed: not a position phrase.
    "red a circle is above a blue square",  # Words swapped.
    "an red circle is above a blue square",  # Article disagrees.
    "two shapes : a large red circle",  # Count word and number of objects disagree.
    "a large red circle at the top left and a small blue square",  # Position for one object only.
    "a red circle at the top on a dark background and a blue square at the bottom",  # Suffix inside.
    "a red circle and a blue square on a dark background",  # Suffix with two objects.
    "a large red circle in the top left .",  # Final full stop.
    "five shapes : a large red circle , a small red circle , a large blue cross , a small blue cross and a "
    "large green square",  # More than MAX_OBJECTS.
])
def test_broken_sentences_do_not_parse(caption):
  assert not grammar.parses(caption)


def test_article_strictness_is_optional():
  assert not grammar.parses("a orange circle is above a blue square")
  assert grammar.parses("a orange circle is above a blue square", strict_articles=False)


def test_mentioned_pairs_and_attribute_scores_hand_cases():
  assert grammar.mentioned_pairs("a large red circle and a blue square , an Orange cross") == {
      ("red", "circle"), ("blue", "square"), ("orange", "cross")}
  assert grammar.mentioned_pairs("a red large circle") == {("red", "circle")}  # A size in between is tolerated.
  assert grammar.mentioned_pairs("red and blue circles") == set()
  assert grammar.mentioned_pairs("a circle that is red") == set()
  captions = ["a red circle and a blue square", "a green cross", "a yellow circle"]
  true_pairs = [{("red", "circle"), ("green", "square")}, {("green", "cross")}, set()]
  # Hits 1 + 1 + 0 of 2 + 1 + 0 true pairs and 2 + 1 + 1 named pairs.
  assert grammar.attribute_scores(captions, true_pairs) == {"attribute_recall": pytest.approx(2 / 3),
                                                            "attribute_precision": 0.5}
  assert grammar.attribute_scores(["nothing here"], [{("red", "circle")}]) == {"attribute_recall": 0.0,
                                                                              "attribute_precision": 0.0}
  with pytest.raises(DataError, match="2 captions but 1 sets"):
    grammar.attribute_scores(["a", "b"], [set()])
  with pytest.raises(DataError, match="no captions"):
    grammar.parse_rate([])


def test_attribute_word_agreement_counts_words_the_references_share():
  """Precision over the colours captions name (some reference of the image uses it), recall over the colours
  >= 2 references agree on; hand-counted."""
  colours = frozenset({"red", "black", "white", "blue"})
  references = [["a black dog on grass", "A black dog runs", "a dog in a red collar"],
                ["a white cat", "the white cat sleeps", "a cat"]]
  out = cm.attribute_word_agreement(["a black and blue dog", "a cat"], references, colours)
  # Caption 1 names black (matched) and blue (not in a reference); caption 2 names none. Agreed: black, white.
  assert out == {"precision": pytest.approx(50.0), "recall": pytest.approx(50.0), "mentions": pytest.approx(1.0)}
  perfect = cm.attribute_word_agreement(["a black dog", "a white cat"], references, colours)
  assert perfect["precision"] == perfect["recall"] == pytest.approx(100.0)
  assert cm.attribute_word_agreement(["a dog", "a cat"], references, colours)["precision"] == 0.0
  with pytest.raises(DataError):
    cm.attribute_word_agreement(["a dog"], references, colours)
