"""Config files: parsing, command-line overrides, unknown keys, variants."""
import pytest

from tests.helpers import load_config
from xmodal_jax import systems


def test_default_and_tiny_variants_parse():
  default = load_config("configs/retrieval/vsepp_shapes.py")
  tiny = load_config("configs/retrieval/vsepp_shapes.py:tiny")
  assert default.task == "vsepp" and default.data.num_test == 1000
  assert tiny.train.num_steps < default.train.num_steps
  assert default.task in systems.available_tasks()


def test_overrides_of_nested_fields_and_tuples():
  config = load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.train.batch_size=16",
                       "--config.mesh.shape=(2,4)", "--config.loss.max_violation=False",
                       "--config.optimizer.learning_rate=0.5")
  assert config.train.batch_size == 16
  assert tuple(config.mesh.shape) == (2, 4)
  assert config.loss.max_violation is False
  assert config.optimizer.learning_rate == 0.5


def test_unknown_key_is_an_error():
  with pytest.raises(Exception, match="nonexistent_field"):
    load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.train.nonexistent_field=3")


def test_wrong_type_is_an_error():
  with pytest.raises(Exception):
    load_config("configs/retrieval/vsepp_shapes.py:tiny", "--config.train.batch_size=many")


def test_unknown_variant_is_an_error():
  with pytest.raises(Exception, match="unknown variant"):
    load_config("configs/retrieval/vsepp_shapes.py:huge")


def test_unknown_task_names_the_choices():
  with pytest.raises(ValueError, match="available tasks"):
    systems.get_task_class("no_such_task")


CONFIG_FILES = ("configs/retrieval/vsepp_shapes.py", "configs/retrieval/vsepp_shapes.py:tiny",
                "configs/retrieval/vsepp_flickr8k.py", "configs/retrieval/vsepp_coco.py",
                "configs/retrieval/vsepp_flickr8k_pretrained.py", "configs/retrieval/vsepp_flickr8k_pretrained.py:tiny",
                "configs/retrieval/mfsr_shapes.py", "configs/retrieval/mfsr_shapes.py:tiny",
                "configs/retrieval/mfsr_shapes.py:paper", "configs/retrieval/mfsr_flickr8k.py",
                "configs/retrieval/mfsr_flickr8k.py:tiny", "configs/retrieval/mfsr_flickr8k.py:paper",
                "configs/retrieval/region_word_shapes.py", "configs/retrieval/region_word_shapes.py:tiny",
                "configs/retrieval/region_word_shapes.py:paper", "configs/retrieval/region_word_flickr8k.py",
                "configs/retrieval/region_word_flickr8k.py:paper",
                "configs/vlp/single_stream_shapes.py", "configs/vlp/single_stream_shapes.py:tiny",
                "configs/vlp/single_stream_shapes.py:caption_finetune",
                "configs/vlp/single_stream_shapes.py:tiny,caption_finetune", "configs/vlp/single_stream_flickr8k.py",
                "configs/s1/shapes.py", "configs/s1/shapes.py:tiny", "configs/s1/shapes.py:resnet101",
                "configs/s1/shapes.py:seed_regime",
                "configs/s1/flickr8k.py",
                "configs/clip/clip_shapes.py", "configs/clip/clip_shapes.py:tiny", "configs/clip/clip_flickr8k.py",
                "configs/clip/clip_flickr8k.py:tiny", "configs/clip/siglip_flickr8k.py", "configs/clip/clip_vitb16.py",
                "configs/clip/clip_vitb16.py:tiny",
                "configs/captioning/clip_shapes.py:reward", "configs/captioning/clip_shapes.py:judge",
                "configs/captioning/clip_shapes.py:tiny", "configs/captioning/clip_flickr8k.py:reward",
                "configs/captioning/clip_flickr8k.py:judge", "configs/captioning/reward_shapes.py:grammar",
                "configs/captioning/reward_shapes.py:grammar_attribute", "configs/captioning/reward_shapes.py:tiny",
                "configs/captioning/reward_flickr8k.py:grammar", "configs/captioning/reward_flickr8k.py:grammar_attribute",
                "configs/captioning/captioner_shapes.py", "configs/captioning/captioner_shapes.py:scst",
                "configs/captioning/captioner_shapes.py:scst_grammar", "configs/captioning/captioner_shapes.py:scst_attribute",
                "configs/captioning/captioner_shapes.py:tiny", "configs/captioning/captioner_shapes.py:tiny_scst",
                "configs/captioning/captioner_flickr8k.py", "configs/captioning/captioner_flickr8k.py:scst",
                "configs/captioning/captioner_flickr8k.py:scst_grammar",
                "configs/captioning/captioner_flickr8k.py:scst_attribute")


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_parses_and_names_known_tasks_and_evaluators(path):
  import glob
  import os

  from tests.helpers import REPO
  from xmodal_jax.evaluation import evaluator
  from xmodal_jax.train import stages as stages_lib
  listed = {p.partition(":")[0] for p in CONFIG_FILES}
  on_disk = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*", "*.py"))
             if not p.endswith("common.py")}
  assert on_disk == listed, "a config file is missing from CONFIG_FILES"
  config = load_config(path)
  runs = ([stages_lib.stage_config(config, n) for n in config.pipeline if "task" in config.stages[n]]
          if stages_lib.is_pipeline(config) else [config])
  for run in runs:
    assert run.task in systems.available_tasks()
    assert evaluator.create_all(run.evals), f"{path}: no evaluator"
