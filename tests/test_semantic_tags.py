"""S2's semantic tags: mining from captions, multi-hot targets, the tag file, and the "multilabel" evaluator (on the
8 fake CPU devices, an 8x1 mesh, with fixed logits)."""
import json

import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation.evaluator import EvalData, evaluator_config
from xmodal_jax.systems.region_word import multilabel_evaluator  # noqa: F401  (registers "multilabel")
from xmodal_jax.systems.region_word import semantic_tags
from xmodal_jax.train import sharding
from xmodal_jax.train.runtime import Runtime

# Document frequency: dog 3, grass 2 (4 times, in 2 captions), red 2, sleeps 2, sofa 2; the rest 1.
CORPUS = (
    "A dog runs on the grass. The dog is happy!",
    "The dog sleeps on a red sofa",
    "A cat sleeps on the red sofa, x 2 times",
    "Grass, grass and more grass",
    "A small dog.",
)


def test_caption_words_are_the_normalised_alphabetic_words():
  assert semantic_tags.caption_words("A Dog's T-shirt, 2 cats!") == ["a", "t", "shirt", "cats"]
  assert "the" in semantic_tags.STOPWORDS and "dog" not in semantic_tags.STOPWORDS


def test_mine_tags_counts_each_word_once_per_caption_and_orders_by_count():
  tags = semantic_tags.mine_tags(CORPUS, min_count=2)
  assert tags == ("dog", "grass", "red", "sleeps", "sofa")  # dog 3 first; ties alphabetical
  assert not set(tags) & {"a", "the", "on", "is", "and", "more"}  # stopwords removed
  # grass occurs 4 times but in 2 captions only: counting occurrences would keep it at min_count=3.
  assert semantic_tags.mine_tags(CORPUS, min_count=3) == ("dog",)
  assert semantic_tags.mine_tags(CORPUS, min_count=2, max_tags=2) == ("dog", "grass")
  assert semantic_tags.mine_tags(CORPUS, min_count=2, extra_stopwords=("Red",)) == ("dog", "grass", "sleeps", "sofa")
  everything = semantic_tags.mine_tags(iter(CORPUS), min_count=1)  # any iterable, read once
  assert everything[:5] == ("dog", "grass", "red", "sleeps", "sofa")
  assert set(everything[5:]) == {"cat", "happy", "runs", "small", "times"} and "x" not in everything
  assert "x" in semantic_tags.mine_tags(CORPUS, min_count=1, min_length=1)


def test_mine_tags_errors():
  with pytest.raises(errors.DataError, match="min_count=4.*lower min_count"):
    semantic_tags.mine_tags(CORPUS, min_count=4)
  with pytest.raises(errors.DataError, match="lower min_count"):
    semantic_tags.mine_tags(["the and a", "on the"], min_count=1)
  with pytest.raises(errors.ConfigError, match="min_count=0"):
    semantic_tags.mine_tags(CORPUS, min_count=0)
  with pytest.raises(ValueError, match="max_tags=-1"):
    semantic_tags.mine_tags(CORPUS, min_count=1, max_tags=-1)


def test_tag_targets_are_the_union_over_an_items_captions():
  tags = ("dog", "cat", "sofa")
  got = semantic_tags.tag_targets([["A dog on a sofa.", "The dog sleeps"], ["a cat"], ["Dogs!"], []], tags)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [[1, 0, 1], [0, 1, 0], [0, 0, 0], [0, 0, 0]])  # no stemming: dogs != dog
  one_each = semantic_tags.tag_targets([[c] for c in ("a cat on a sofa", "dog")], tags)
  np.testing.assert_array_equal(one_each, [[0, 1, 1], [1, 0, 0]])
  with pytest.raises(errors.DataError, match="list of captions"):
    semantic_tags.tag_targets(["a dog"], tags)
  with pytest.raises(errors.DataError, match="more than once"):
    semantic_tags.tag_targets([["a dog"]], ("dog", "dog"))


def test_save_and_load_tags(tmp_path):
  path = str(tmp_path / "run" / "tags.json")
  semantic_tags.save_tags(path, ("dog", "grass"), {"min_count": 2, "max_tags": 0})
  assert semantic_tags.load_tags(path) == ("dog", "grass")
  assert json.loads((tmp_path / "run" / "tags.json").read_text())["settings"] == {"min_count": 2, "max_tags": 0}
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(errors.DataError, match="bad.json.*unreadable"):
    semantic_tags.load_tags(str(bad))
  bad.write_text(json.dumps({"settings": {}}))
  with pytest.raises(errors.DataError, match='bad.json has no list of string "tags"'):
    semantic_tags.load_tags(str(bad))
  with pytest.raises(errors.MissingError, match="missing.json"):
    semantic_tags.load_tags(str(tmp_path / "missing.json"))


# predictions (logit > 0): [[1,0,1],[0,1,0],[1,1,0],[0,0,0]] against TARGETS: TP 3, FP 2, FN 2.
LOGITS = np.asarray([[2, -1, 0.5], [-2, 3, -1], [1, 1, -3], [-1, -1, -1]], np.float32)
TARGETS = np.asarray([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1]], np.float32)


def _runtime():
  return Runtime(mesh=sharding.create_mesh((8, 1)), variable_shardings={"params": {}})


def test_multilabel_evaluator_by_hand():
  assert "multilabel" in evaluator_lib.available()
  runtime = _runtime()
  data = EvalData(image_inputs={"x": LOGITS}, extras={"tag_targets_image": TARGETS, "tag_names": ("a", "b", "c")})
  evaluator = evaluator_lib.create("val", evaluator_config("multilabel", batch_size=8))
  m = evaluator.evaluate({"tag_logits": lambda v, x: x}, {"params": {}}, data, runtime)
  assert m["micro_precision"] == pytest.approx(60.0) and m["micro_recall"] == pytest.approx(60.0)
  assert m["micro_f1"] == pytest.approx(60.0)
  assert m["macro_f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)  # per tag: a 1, b 2/3 (one FP), c 0
  assert m["tags"] == 3 and m["items"] == 4
  table = evaluator.format(m, "val")
  assert "4 items, 3 tags" in table and "Lowest F1 tags: c (0.0, 2 true), b (66.7, 1 true), a (100.0" in table
  # A higher threshold on the text side: predictions [[1,0,0],[0,1,0],[0,0,0],[0,0,0]]: TP 2, FP 0, FN 3.
  text = EvalData(text_inputs={"x": LOGITS}, extras={"tag_targets_text": TARGETS})
  spec = evaluator_config("multilabel", predict="text_tags", side="text", threshold=1.5, batch_size=8)
  m = evaluator_lib.create("val", spec).evaluate({"text_tags": lambda v, x: x}, {"params": {}}, text, runtime)
  assert m["micro_precision"] == pytest.approx(100.0) and m["micro_recall"] == pytest.approx(40.0)
  assert m["micro_f1"] == pytest.approx(100 * 2 * 0.4 / 1.4)


def test_multilabel_evaluator_errors():
  runtime = _runtime()
  fns = {"tag_logits": lambda v, x: x}
  with pytest.raises(errors.ConfigError, match="side='audio'"):
    evaluator_lib.create("val", evaluator_config("multilabel", side="audio"))
  evaluator = evaluator_lib.create("val", evaluator_config("multilabel", batch_size=8))
  with pytest.raises(errors.ConfigError, match="tag_targets_image"):
    evaluator.evaluate(fns, {"params": {}}, EvalData(image_inputs={"x": LOGITS}), runtime)
  with pytest.raises(errors.DataError, match=r"\(4, 3\).*\(4, 2\)"):
    evaluator.evaluate(fns, {"params": {}}, EvalData(image_inputs={"x": LOGITS},
                                                     extras={"tag_targets_image": TARGETS[:, :2]}), runtime)
  with pytest.raises(errors.DataError, match="2 names for 3 tags"):
    evaluator.evaluate(fns, {"params": {}}, EvalData(image_inputs={"x": LOGITS}, extras={
        "tag_targets_image": TARGETS, "tag_names": ("a", "b")}), runtime)
