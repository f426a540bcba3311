"""Compositional foils of shapes world captions (colour and relation swaps, the choice items) and the pair_choice
evaluator that scores them, on the 8 fake CPU devices (a 4x2 mesh)."""
import collections

import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax import errors
from xmodal_jax.data import shapes_world
from xmodal_jax.evaluation import evaluator as evaluator_lib
from xmodal_jax.evaluation.evaluator import EvalData, evaluator_config
from xmodal_jax.systems.region_word import compositional_foils as foils
from xmodal_jax.systems.region_word import pair_choice_evaluator  # noqa: F401  (registers "pair_choice")
from xmodal_jax.train import sharding
from xmodal_jax.train.runtime import Runtime


def _rng(seed=0):
  return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------ colour swap


def test_colour_swap_exchanges_two_phrases_differing_in_colour_and_shape():
  assert foils.colour_swap("a red circle is left of a blue square", _rng()) == "a blue circle is left of a red square"
  # Sizes between article and colour stay where they are.
  assert (foils.colour_swap("a large red circle and a small blue square", _rng())
          == "a large blue circle and a small red square")
  # The article follows the new colour.
  assert (foils.colour_swap("there is an orange circle in the top left and a red square at the bottom", _rng())
          == "there is a red circle in the top left and an orange square at the bottom")
  # Extra spaces are normalised to single ones.
  assert foils.colour_swap("  a red circle ,  a blue square ", _rng()) == "a blue circle , a red square"


@pytest.mark.parametrize("caption", [
    "a red circle is left of a blue circle",         # same shape: the swap describes the same image
    "a red circle is left of a red square",          # same colour: the swap is the caption itself
    "three shapes : a small red circle , a large blue circle and a small green circle",
    "just one small red circle at the top",
    "two shapes : a circle and a square",            # no colours
    "",
])
def test_colour_swap_is_none_without_a_pair_differing_in_both(caption):
  rng = _rng()
  state = rng.bit_generator.state
  assert foils.colour_swap(caption, rng) is None
  assert rng.bit_generator.state == state  # no draw


def test_colour_swap_only_pairs_that_differ_in_both():
  # red circle / blue circle share a shape; only (red circle, green square) and (blue circle, green square) qualify.
  caption = "three shapes : a red circle , a blue circle and a green square"
  seen = {foils.colour_swap(caption, _rng(seed)) for seed in range(40)}
  assert seen == {"three shapes : a green circle , a blue circle and a red square",
                  "three shapes : a red circle , a green circle and a blue square"}


# ---------------------------------------------------------------------------------------------- relation swap


@pytest.mark.parametrize("caption, expected", [
    ("a red circle is left of a blue square", "a red circle is right of a blue square"),
    ("a red circle is to the left of a blue square", "a red circle is to the right of a blue square"),
    ("there is a red circle to the right of a blue square", "there is a red circle to the left of a blue square"),
    ("a large red circle above a small blue square", "a large red circle below a small blue square"),
    ("a red circle is below a blue square", "a red circle is above a blue square"),
])
def test_relation_swap_replaces_the_relation_by_its_opposite(caption, expected):
  assert foils.relation_swap(caption, _rng()) == expected


def test_relation_swap_knows_every_shapes_world_relation_phrase():
  opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}
  for key, phrases in shapes_world._RELATION_PHRASES.items():
    for phrase, expected in zip(phrases, shapes_world._RELATION_PHRASES[opposite[key]]):
      assert (foils.relation_swap(f"a red circle is {phrase} a blue square", _rng())
              == f"a red circle is {expected} a blue square")


def test_relation_swap_changes_one_relation_of_a_chain():
  caption = "a red circle is left of a blue square , which is above a green cross"
  seen = {foils.relation_swap(caption, _rng(seed)) for seed in range(40)}
  assert seen == {"a red circle is right of a blue square , which is above a green cross",
                  "a red circle is left of a blue square , which is below a green cross"}


@pytest.mark.parametrize("caption", [
    "there is a large red circle in the top left and a small blue square at the bottom",  # positions only
    "a red circle is on the left side and a blue square is in the bottom right corner",
    "a red circle left , a blue square",
    "a large red circle is left of a large red circle",  # two identical objects: true either way round
    "",
])
def test_relation_swap_is_none_without_a_relation(caption):
  rng = _rng()
  state = rng.bit_generator.state
  assert foils.relation_swap(caption, rng) is None
  assert rng.bit_generator.state == state


# ---------------------------------------------------------------------------------------------- build_choices


_OPPOSITES = {("left", "right"), ("right", "left"), ("above", "below"), ("below", "above")}
_HAND = [["a red circle is left of a blue square", "two shapes : a large red circle and a small blue square"],
         ["just one small green cross at the top"],
         ["a yellow diamond above a purple diamond", "a yellow diamond and a purple diamond"]]


def test_build_choices_items_and_determinism():
  choices = foils.build_choices(_HAND, seed=3)
  assert choices["image_rows"].dtype == np.int64
  assert choices["image_rows"].tolist() == [0, 0, 2]  # image 1: no foil; image 2: a relation foil only
  assert choices["kinds"] == ["colour", "relation", "relation"]
  assert choices["true_captions"][1:] == ["a red circle is left of a blue square",
                                          "a yellow diamond above a purple diamond"]
  assert choices["foil_captions"][1:] == ["a red circle is right of a blue square",
                                          "a yellow diamond below a purple diamond"]
  assert choices["true_captions"][0] in _HAND[0]
  _assert_same(choices, foils.build_choices(_HAND, seed=3))
  only = foils.build_choices(_HAND, seed=3, kinds=("relation",))
  assert only["kinds"] == ["relation", "relation"] and only["image_rows"].tolist() == [0, 2]


def _assert_same(a, b):
  assert set(a) == set(b) == {"image_rows", "true_captions", "foil_captions", "kinds"}
  np.testing.assert_array_equal(a["image_rows"], b["image_rows"])
  assert all(a[k] == b[k] for k in ("true_captions", "foil_captions", "kinds"))


def test_build_choices_errors_name_the_kinds():
  with pytest.raises(errors.DataError, match=r"\['colour', 'relation'\]"):
    foils.build_choices([["a circle and a square"], ["one shape : a small square"]])
  with pytest.raises(errors.DataError, match=r"\['relation'\]"):
    foils.build_choices([["a red circle and a blue square"]], kinds=("relation",))
  with pytest.raises(ValueError, match="use one or more of"):
    foils.build_choices(_HAND, kinds=("size",))


def test_build_choices_over_a_shapes_world_split():
  world = shapes_world.generate_split("val", 50)
  choices = foils.build_choices(world.captions, seed=1)
  _assert_same(choices, foils.build_choices(world.captions, seed=1))
  assert foils.build_choices(world.captions, seed=2)["foil_captions"] != choices["foil_captions"]
  counts = collections.Counter(choices["kinds"])
  assert counts["colour"] >= 10 and counts["relation"] >= 10
  items = collections.Counter(zip(choices["image_rows"].tolist(), choices["kinds"]))
  assert max(items.values()) == 1  # at most one item per image and kind
  colours = {name: c for c, name in enumerate(shapes_world.COLORS)}
  for row, kind, true, foil in zip(choices["image_rows"], choices["kinds"], choices["true_captions"],
                                   choices["foil_captions"]):
    assert true in world.captions[row] and foil != true
    assert foil not in world.captions[row]
    changed = [(t, f) for t, f in zip(true.split(), foil.split(), strict=True) if t != f]
    if kind == "relation":  # one word, replaced by its opposite
      assert len(changed) == 1 and changed[0] in _OPPOSITES, (true, foil)
    if kind == "colour":  # two colour words (and their articles) changed; the (colour, shape) multiset is wrong
      assert sum(t in shapes_world.COLORS for t, _ in changed) == 2
      assert all(t in shapes_world.COLORS or t in ("a", "an") for t, _ in changed), (true, foil)
      words = foil.split()
      named = collections.Counter((colours[words[i]], shapes_world.SHAPES.index(words[i + 1]))
                                  for i in range(len(words) - 1)
                                  if words[i] in colours and words[i + 1] in shapes_world.SHAPES)
      n = world.num_objects[row]
      objects = collections.Counter(zip(world.object_color[row, :n].tolist(), world.object_shape[row, :n].tolist()))
      assert named != objects, (true, foil)
      assert " an red " not in f" {foil} " and " a orange " not in f" {foil} "


# ------------------------------------------------------------------------------------------ pair_choice evaluator


def _runtime():
  mesh = sharding.create_mesh((4, 2))
  return Runtime(mesh=mesh, variable_shardings={"params": {}})


def _score_pairs(variables, image, text):
  """[P] scores: image weight x text score, so the image row matters."""
  return image["x"][:, 0] * text["s"][:, 0]


def _choice_data():
  images = np.asarray([[1.0], [2.0], [-1.0]], np.float32)
  true = np.asarray([[1.0], [0.5], [1.0], [-2.0], [3.0]], np.float32)
  foil = np.asarray([[0.5], [0.5], [2.0], [-3.0], [-1.0]], np.float32)
  # Scores true vs foil: 1 > .5 right; 1 = 1 tie (wrong); -1 > -2 right; 2 < 3 wrong; 3 > -1 right.
  choice = {"image_rows": np.asarray([0, 1, 2, 2, 0]), "true_text_inputs": {"s": true},
            "foil_text_inputs": {"s": foil}, "kinds": ["colour", "colour", "relation", "relation", "colour"]}
  return EvalData(image_inputs={"x": images}, extras={"choice": choice})


def test_pair_choice_accuracy_by_hand():
  spec = evaluator_config("pair_choice", split="val", batch_size=8, pair_batch_size=8)
  evaluator = evaluator_lib.create("val", spec)
  metrics = evaluator.evaluate({"score_pairs": _score_pairs}, {"params": {}}, _choice_data(), _runtime())
  assert metrics == pytest.approx({"accuracy": 60.0, "items": 5.0, "accuracy_colour": 200 / 3, "items_colour": 3.0,
                                   "accuracy_relation": 50.0, "items_relation": 2.0})
  table = evaluator.format(metrics, "val foils")
  assert "val foils" in table and "relation" in table and "60.00" in table and "66.67" in table


def test_pair_choice_with_per_item_encoders():
  # pair_text negates every text: the true/foil comparison flips except for the tie, which stays wrong.
  spec = evaluator_config("pair_choice", split="val", batch_size=8, pair_batch_size=8, pair_text="negate",
                          pair_image="keep")
  predict = {"score_pairs": _score_pairs, "negate": lambda v, s: {"s": -s}, "keep": lambda v, x: {"x": x}}
  metrics = evaluator_lib.create("val", spec).evaluate(predict, {"params": {}}, _choice_data(), _runtime())
  assert metrics["accuracy"] == pytest.approx(20.0)  # only item 3 (2 > 3 negated: -2 > -3)


def test_pair_choice_errors_name_the_fix():
  spec = evaluator_config("pair_choice", split="val", batch_size=8)
  evaluator = evaluator_lib.create("val", spec)
  predict = {"score_pairs": _score_pairs}
  with pytest.raises(errors.ConfigError, match="extras\\['choice'\\]"):
    evaluator.evaluate(predict, {"params": {}}, EvalData(image_inputs={"x": np.zeros((3, 1))}), _runtime())
  data = _choice_data()
  data.extras["choice"]["image_rows"] = np.asarray([0, 1, 2, 3, 0])
  with pytest.raises(errors.DataError, match="3 images"):
    evaluator.evaluate(predict, {"params": {}}, data, _runtime())
  data = _choice_data()
  data.extras["choice"]["kinds"] = ["colour"]
  with pytest.raises(errors.DataError, match="K rows"):
    evaluator.evaluate(predict, {"params": {}}, data, _runtime())
  with pytest.raises(errors.ConfigError, match="no predict function"):
    evaluator.evaluate({"other": _score_pairs}, {"params": {}}, _choice_data(), _runtime())
