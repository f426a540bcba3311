"""S5 on the spine at tiny size (tests/conftest.py: s5_tiny_runs): MLE, the reward model's grammar head and attribute
negatives, SCST under it with K samples and a leave-one-out baseline; the captioning evaluator's metrics; config
errors.

The end-to-end tests (marked slow: `bash launch/test.sh -m slow`) share one session fixture; the unit tests of the
objective and the decoding are in tests/test_scst.py and tests/test_captioning_decode.py (default run)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

from tests.helpers import load_config
from xmodal_jax import errors, systems

_TINY = "configs/captioning/captioner_shapes.py:tiny"


@pytest.mark.slow  # trains the tiny S5 runs (minutes on 2 cores)
def test_mle_captioner_trains_and_reports_caption_metrics(s5_tiny_runs):
  config, _, results = s5_tiny_runs["mle"]
  metrics = results["metrics"]
  assert results["step"] == config.train.num_steps
  for key in ("bleu_4", "meteor", "rouge_l", "cider_d", "mean_length", "vocabulary", "repetition_rate",
              "judge/clip_s", "judge/refclip_s", "clip/clip_s", "attribute_recall", "attribute_precision",
              "parse_rate"):
    assert np.isfinite(metrics[f"val/{key}"]), key
  assert 0 <= metrics["val/judge/clip_s"] <= 2.5 and 0 <= metrics["val/parse_rate"] <= 100


@pytest.mark.slow  # trains the tiny S5 runs (minutes on 2 cores)
def test_reward_model_keeps_the_image_side_and_adds_a_grammar_head(s5_tiny_runs, clip_tiny_run):
  _, reward_dir, results = s5_tiny_runs["reward"]
  loaded = systems.load_run(reward_dir, mesh_shape=(8, 1))
  base = systems.load_run(clip_tiny_run[1], mesh_shape=(8, 1))
  params = loaded.variables["params"]
  assert "grammar_head" in params and "image_tower" not in params  # the image side is frozen (not trained)
  frozen = traverse_util.flatten_dict(jax.device_get(loaded.variables["frozen"]["params"]["image_tower"]))
  original = traverse_util.flatten_dict(jax.device_get(base.variables["params"]["image_tower"]))
  assert all(np.array_equal(frozen[k], original[k]) for k in original)
  tokens, mask = loaded.task.tokenizer.encode_batch(["a red circle", "circle circle a red"], 16)
  g = loaded.predict("grammar_score", {"tokens": tokens, "mask": mask})
  assert g.shape == (2,) and np.all((g >= 0) & (g <= 1))
  assert "rsum" in "".join(results["metrics"])


@pytest.mark.slow  # trains the tiny S5 runs (minutes on 2 cores)
def test_scst_updates_the_mle_params_and_logs_rewards(s5_tiny_runs):
  _, mle_dir, _ = s5_tiny_runs["mle"]
  config, scst_dir, results = s5_tiny_runs["scst"]
  before = traverse_util.flatten_dict(jax.device_get(systems.load_run(mle_dir, mesh_shape=(8, 1)).variables["params"]))
  after = traverse_util.flatten_dict(jax.device_get(systems.load_run(scst_dir, mesh_shape=(8, 1)).variables["params"]))
  assert before.keys() == after.keys()
  assert any(not np.array_equal(before[k], after[k]) for k in before)
  assert config.scst.baseline == "leave_one_out" and "val/grammar/grammar" in results["metrics"]


def test_scst_needs_a_reward_model_and_a_warm_start(tmp_path):
  config = load_config(f"{_TINY}_scst")
  with pytest.raises(errors.ConfigError, match="reward.workdir"):
    systems.create(config, str(tmp_path))
  config = load_config(f"{_TINY}_scst", "--config.reward.workdir=/nowhere")
  with pytest.raises(errors.ConfigError, match="init_from"):
    systems.create(config, str(tmp_path))


@pytest.mark.parametrize("override, message", [
    ("--config.model.decoder.kind=lstm", "decoder.kind"),
    ("--config.model.encoder.kind=resnet", "encoder.kind"),
    ("--config.decode.method=topk", "decode.method"),
    ("--config.scst.baseline=mean", "scst.baseline"),
])
def test_bad_choices_name_the_field(tmp_path, override, message):
  with pytest.raises(errors.ConfigError, match=message):
    systems.create(load_config(_TINY, override), str(tmp_path))


def test_leave_one_out_needs_two_samples(tmp_path):
  config = load_config(f"{_TINY}_scst", "--config.reward.workdir=/r", "--config.init_from=/m",
                       "--config.scst.baseline=leave_one_out")
  with pytest.raises(errors.ConfigError, match="samples >= 2"):
    systems.create(config, str(tmp_path))


def test_a_missing_reward_workdir_is_named(tmp_path):
  config = load_config(_TINY, f"--config.reward.workdir={tmp_path / 'none'}")
  task = systems.create(config, str(tmp_path / "run"))
  with pytest.raises(errors.MissingError, match="config.reward.workdir"):
    task.setup(training=True)
