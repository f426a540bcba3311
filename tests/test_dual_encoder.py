"""The dual encoder over pretrained towers: cached lower parts compose to the raw towers, training from the
feature cache touches only the upper parts, the cache is keyed (reused, rebuilt on a new key, refused when a
named directory holds another config's cache), and the WordPiece tokenizer equals MiniLM's reference one."""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.helpers import load_config, make_task, skip_without_pretrained_weights
from xmodal_jax import errors
from xmodal_jax.data import tokenizers
from xmodal_jax.models import efficientnet_lite, minilm
from xmodal_jax.systems.vse.pretrained_dual_encoder import PretrainedDualEncoder
from xmodal_jax.train import trainer
from xmodal_jax.train.task import with_frozen

CONFIG = "configs/retrieval/vsepp_flickr8k_pretrained.py:tiny"


@pytest.fixture(autouse=True)
def _weights(tmp_path, monkeypatch):
  """Converted weights and feature caches go to a per-test cache root; skip if a weights package is absent."""
  monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
  skip_without_pretrained_weights()


def _task(workdir, *overrides):
  task = make_task(load_config(CONFIG, *overrides), workdir)
  task.setup(training=True)
  return task


def _full_variables(task):
  params = task.init_variables(jax.random.PRNGKey(0))["params"]
  flat = traverse_util.flatten_dict(params, sep="/")
  flat.update(traverse_util.flatten_dict(task.pretrained_params(), sep="/"))
  return with_frozen(traverse_util.unflatten_dict(flat, sep="/"), task.frozen_params())


@pytest.mark.parametrize("image_cut,text_cut", [pytest.param("stage6", "layer_5", marks=pytest.mark.slow),
                                                pytest.param("pooled", "pooled", marks=pytest.mark.slow), ("head", "layer_1")])
def test_cached_activations_compose_to_the_raw_towers(tmp_path, image_cut, text_cut):
  task = _task(tmp_path, f"--config.model.image.cut={image_cut}", f"--config.model.text.cut={text_cut}")
  model, variables = task.model, _full_variables(task)
  rng = np.random.default_rng(0)
  images = efficientnet_lite.normalize_images(rng.integers(0, 256, (3, 64, 64, 3)))
  tokens, mask = task.tokenizer.encode_batch(["a red circle", "two blue squares left of a triangle", "x"], 16)
  lower = model.apply(variables, images, method=PretrainedDualEncoder.lower_image)
  np.testing.assert_allclose(model.apply(variables, lower, from_cut=True, method=model.encode_image),
                             model.apply(variables, images, method=model.encode_image), rtol=1e-5, atol=1e-5)
  lower_text = model.apply(variables, tokens, mask, method=PretrainedDualEncoder.lower_text)
  np.testing.assert_allclose(model.apply(variables, lower_text, mask, from_cut=True, method=model.encode_text),
                             model.apply(variables, tokens, mask, method=model.encode_text), rtol=1e-5, atol=1e-5)


def test_frozen_and_trained_parts_split_at_the_cuts(tmp_path):
  task = _task(tmp_path)  # image cut stage6, text cut layer_5
  trained = traverse_util.flatten_dict(task.pretrained_params(), sep="/")
  frozen = traverse_util.flatten_dict(task.frozen_params()["params"], sep="/")
  assert not set(trained) & set(frozen)
  first_trained = efficientnet_lite.stage_starts(efficientnet_lite.variant("efficientnet-lite0"))["stage6"]
  assert task.model.image_cut == first_trained
  assert all(int(k.split("/")[1][6:]) >= first_trained for k in trained if k.split("/")[1].startswith("block_"))
  assert any(k.startswith("image_tower/head_") for k in trained)
  assert {k.split("/")[1] for k in trained if k.startswith("text_tower/")} == {"layer_5"}
  assert any(k.startswith("text_tower/embeddings") for k in frozen) and any("stem_" in k for k in frozen)


@pytest.mark.slow  # `bash launch/test.sh -m slow` (docs/development.md)
def test_training_from_the_cache_reuses_and_rekeys_it(tmp_path):
  cache_root = os.environ["XMODAL_CACHE"]
  task = make_task(load_config(CONFIG), tmp_path / "run")
  out = trainer.train_and_evaluate(task)
  assert out["step"] == 4
  results = json.load(open(tmp_path / "run" / "results.json"))
  assert "test/i2t_r1" in results["metrics"] and 0 <= results["metrics"]["val/rsum"] <= 600
  caches = sorted(os.listdir(os.path.join(cache_root, "features")))
  assert [c.split("-")[0] for c in caches] == ["image", "text"], caches
  meta = json.load(open(os.path.join(cache_root, "features", caches[0], "cache.json")))
  assert meta["key"]["cut"] == task.model.image_cut and meta["splits"]["train"] == dict(
      meta["splits"]["train"], count=48, views=2)
  # Only the upper parts trained: the checkpointed params hold no frozen block, and layer_5 moved.
  params = traverse_util.flatten_dict(jax.tree.map(np.asarray, out["state"].params), sep="/")
  assert not any(k.startswith("text_tower/layer_4") or k.startswith("image_tower/stem_") for k in params)
  start = traverse_util.flatten_dict(task.pretrained_params(), sep="/")
  moved = [k for k in start if k.startswith("text_tower/layer_5") and not np.allclose(start[k], params[k])]
  assert moved, "the trained text layer did not change"
  # Same config elsewhere: the caches are reused (not rebuilt); another cut makes a new text cache.
  stamps = {c: os.path.getmtime(os.path.join(cache_root, "features", c, "cache.json")) for c in caches}
  trainer.train_and_evaluate(make_task(load_config(CONFIG, "--config.train.num_steps=2"), tmp_path / "again"))
  assert {c: os.path.getmtime(os.path.join(cache_root, "features", c, "cache.json")) for c in caches} == stamps
  trainer.train_and_evaluate(make_task(load_config(CONFIG, "--config.train.num_steps=2",
                                                   "--config.model.text.cut=layer_4"), tmp_path / "other"))
  assert len(os.listdir(os.path.join(cache_root, "features"))) == 3


def test_a_named_cache_dir_holds_both_towers_and_refuses_another_config(tmp_path):
  named = str(tmp_path / "my_cache")
  task = _task(tmp_path / "a", f"--config.cache.dir={named}")
  image, text = task.feature_cache("image"), task.feature_cache("text")  # one root, a directory per side
  assert (image.directory, text.directory) == (os.path.join(named, "image"), os.path.join(named, "text"))
  again = _task(tmp_path / "a2", f"--config.cache.dir={named}")  # a new process would reuse both
  assert again.feature_cache("image").meta == image.meta and again.feature_cache("text").meta == text.meta
  before = open(os.path.join(named, "text", "cache.json")).read()
  other = _task(tmp_path / "b", f"--config.cache.dir={named}", "--config.model.text.cut=layer_4")
  with pytest.raises(errors.ConfigError, match=r"my_cache/text/cache.json is a feature cache built for another "
                                               r"config \(differs in \['cut'\]\).*config.cache.dir"):
    other.feature_cache("text")
  assert open(os.path.join(named, "text", "cache.json")).read() == before  # nothing overwritten


@pytest.mark.parametrize("bad,match", [
    ("--config.model.image.variant=efficientnet-lite9", "Unknown EfficientNet-Lite variant"),
    ("--config.model.image.cut=stage9", r"config.model.image.cut='stage9'"),
    ("--config.model.text.cut=layer_7", r"config.model.text.cut='layer_7'"),
    ("--config.data.tokenizer=word", "wordpiece"),
])
def test_bad_config_values_name_the_field(tmp_path, bad, match):
  with pytest.raises(errors.ConfigError, match=match):
    _task(tmp_path, bad)


def test_wordpiece_tokenizer_equals_the_reference_and_round_trips(tmp_path):
  transformers = pytest.importorskip("transformers", reason="the reference tokenizer; launch/test.sh installs it")
  ours = tokenizers.build_tokenizer("wordpiece", [])
  ref = transformers.AutoTokenizer.from_pretrained(str(minilm.model_dir()))
  texts = ["A dog runs through the GRASS.", "  Two children, playing; in a fountain!  ", "naïve café x-ray 3D"]
  tokens, mask = ours.encode_batch(texts, 12)
  expected = ref(texts, padding="max_length", truncation=True, max_length=12, return_tensors="np")
  np.testing.assert_array_equal(tokens, expected["input_ids"])
  np.testing.assert_array_equal(mask.astype(bool), expected["attention_mask"].astype(bool))
  assert tokens[0, 0] == ref.cls_token_id and ref.sep_token_id in tokens[1]  # truncated: [SEP] kept last
  ours.save(str(tmp_path / "tok.json"))
  again = tokenizers.load_tokenizer(str(tmp_path / "tok.json"))
  np.testing.assert_array_equal(again.encode_batch(texts, 12)[0], tokens)
  assert ours.decode(tokens[0][mask[0].astype(bool)]) == "a dog runs through the grass."  # specials dropped
