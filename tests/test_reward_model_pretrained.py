"""S5's reward model over the pretrained dual encoder (systems/captioning/reward_model_dual.py, task
s5_reward_model_dual_encoder): its WordPiece training columns and held-out pairs, its config errors (default run),
and end to end at tiny size (slow: a tiny vsepp_flickr8k_pretrained.py:tiny run, then the reward fine-tune from it):
the evaluator reports grammar accuracy, the image side is the base run's, the text side trained and reads
WordPiece tokens."""
from __future__ import annotations

import numpy as np
import pytest
from flax import traverse_util

from tests.helpers import load_config
# autouse: skips without the pretrained weights packages; a feature cache per test
from tests.test_dual_encoder import _weights  # noqa: F401  pylint: disable=unused-import
from xmodal_jax import errors, systems
from xmodal_jax.data import tokenizers
from xmodal_jax.systems.captioning import caption_corruption
from xmodal_jax.train import trainer

REWARD = "configs/captioning/reward_flickr8k_pretrained.py:tiny"


def _text_only_task(workdir, *overrides):
  """The reward task with the base run's tokenizer (MiniLM's WordPiece) but no base run loaded: the text columns
  and evaluation pairs are functions of the tokenizer and the data alone."""
  task = systems.create(load_config(REWARD, "--config.init_from=/unused", *overrides), str(workdir))
  task.tokenizer = tokenizers.build_tokenizer("wordpiece", ())
  return task


def _columns(task):
  indices = np.arange(16)
  return indices, task.reward_text_loader()(indices, np.arange(16, dtype=np.uint32) * 7919)


def test_training_columns_are_wordpiece_captions_corruptions_and_stripped_copies(tmp_path):
  task = _text_only_task(tmp_path, "--config.data.max_len=48")  # no shapes-world caption is cut
  tok = task.tokenizer
  indices, batch = _columns(task)
  for prefix in ("", "negative_", "stripped_"):
    tokens, mask = batch[f"{prefix}tokens"], batch[f"{prefix}mask"]
    assert tokens.shape == (16, 48) and np.all(tokens[:, 0] == tok.bos_id)
    assert np.all(np.sum(tokens == tok.eos_id, axis=1) == 1) and np.all(tokens[~mask] == 0)
  captions = [tok.decode(t) for t in batch["tokens"]]
  assert batch["negative_valid"].mean() > 0.5 and batch["stripped_valid"].mean() > 0.5
  for i in np.flatnonzero(batch["negative_valid"]):
    assert tok.decode(batch["negative_tokens"][i]) != captions[i]
  for i in np.flatnonzero(batch["stripped_valid"]):  # the caption names an attribute; its copy names none
    stripped = tok.decode(batch["stripped_tokens"][i]).split()
    assert set(captions[i].split()) & caption_corruption.ATTRIBUTE_WORDS
    assert not set(stripped) & caption_corruption.ATTRIBUTE_WORDS and len(stripped) < len(captions[i].split())
  np.testing.assert_array_equal(batch["image_ids"], task.split("train").image_ids[indices])


def test_a_negative_changed_only_past_max_len_is_not_used(tmp_path):
  task = _text_only_task(tmp_path)  # max_len 16: most shapes-world captions are cut
  _, batch = _columns(task)
  cut = 0
  for prefix in ("negative_", "stripped_"):
    same = np.all(batch[f"{prefix}tokens"] == batch["tokens"], axis=1)
    assert not (batch[f"{prefix}valid"] & same).any()
    cut += same.sum()
  assert cut  # some were changed past max_len only (the case under test happens)


def test_eval_data_holds_held_out_grammar_and_attribute_pairs_in_wordpiece(tmp_path):
  task = _text_only_task(tmp_path)
  extras = task.make_eval_data("val").extras
  labels, tokens = extras["grammar_labels"], extras["grammar_inputs"]["tokens"]
  humans = sum(len(c) for c in task.split("val").captions)
  assert np.sum(labels == 1) == humans and 0 < np.sum(labels == 0) <= humans
  assert np.all(tokens[:, 0] == task.tokenizer.bos_id)
  assert len(extras["attribute_pos"]["tokens"]) == len(extras["attribute_neg"]["tokens"]) == len(
      extras["attribute_image"]) > 0


@pytest.mark.parametrize("override,match", [("--config.init_from=", "config.init_from"),
                                            ("--config.model.image.train_bn=True", "train_bn"),
                                            ("--config.reward_training.grammar=False", "reward_training")])
def test_bad_configs_name_the_field(tmp_path, override, match):
  overrides = [override] + (["--config.reward_training.attribute=False"] if "grammar=False" in override else [])
  with pytest.raises(errors.ConfigError, match=match):
    systems.create(load_config(REWARD, "--config.init_from=/r", *overrides), str(tmp_path))


def test_a_missing_base_run_is_named(tmp_path):
  task = systems.create(load_config(REWARD, f"--config.init_from={tmp_path / 'none'}"), str(tmp_path / "reward"))
  with pytest.raises(errors.MissingError, match="config.init_from"):
    task.setup(training=True)


@pytest.fixture(scope="module")
def tiny_runs(dual_encoder_tiny_run, tmp_path_factory):
  """The session's tiny dual-encoder run (tests/conftest.py) and the tiny reward fine-tune from it:
  (base dir, reward dir, results)."""
  root = tmp_path_factory.mktemp("reward_pretrained")
  reward_config = load_config(REWARD, f"--config.init_from={dual_encoder_tiny_run}")
  results = trainer.train_and_evaluate(systems.create(reward_config, str(root / "reward")))
  return dual_encoder_tiny_run, str(root / "reward"), results


@pytest.mark.slow  # two tiny training runs over the pretrained towers (minutes on 2 cores)
def test_reward_fine_tune_trains_and_reports_grammar_and_attribute_accuracy(tiny_runs):
  _, _, results = tiny_runs
  metrics = results["metrics"]
  assert results["step"] == 2
  assert 0 <= metrics["reward_val/grammar_accuracy"] <= 100 and metrics["reward_val/grammar_pairs"] > 0
  assert 0 <= metrics["reward_val/attribute_accuracy"] <= 100 and metrics["reward_val/attribute_pairs"] > 0
  assert np.isfinite(metrics["val/rsum"])


@pytest.mark.slow  # two tiny training runs over the pretrained towers (minutes on 2 cores)
def test_image_side_is_the_base_runs_and_the_text_side_reads_wordpiece(tiny_runs):
  base_dir, reward_dir, _ = tiny_runs
  reward, base = systems.load_run(reward_dir, mesh_shape=(8, 1)), systems.load_run(base_dir, mesh_shape=(8, 1))
  params = traverse_util.flatten_dict(reward.variables["params"], sep="/")
  assert {k.split("/")[0] for k in params} == {"text_tower", "text_proj", "logit_scale", "grammar_head"}
  assert {k.split("/")[1] for k in params if k.startswith("text_tower/")} == {"layer_5"}  # above the text cut
  images = reward.task.eval_images("val")[:8]
  np.testing.assert_allclose(reward.predict("embed_image", {"images": images}),
                             base.predict("embed_image", {"images": images}), rtol=1e-6, atol=1e-6)
  train = reward.task.split("train")  # the frozen embeddings the fine-tune trained against
  np.testing.assert_allclose(reward.task.train_image_embeddings()[:8],
                             base.predict("embed_image", {"images": train.load_images(np.arange(8), 64)}),
                             rtol=1e-5, atol=1e-5)
  tokens, mask = reward.task.tokenizer.encode_batch(["a red circle on a dark background", "circle circle a red"], 16)
  assert np.all(tokens[:, 0] == reward.task.tokenizer.bos_id)
  text, before = (m.predict("embed_text", {"tokens": tokens, "mask": mask}) for m in (reward, base))
  np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
  assert not np.allclose(text, before, atol=1e-6)  # the text side trained
  g = reward.predict("grammar_score", {"tokens": tokens, "mask": mask})
  assert g.shape == (2,) and np.all((g >= 0) & (g <= 1))
