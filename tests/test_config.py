"""Config files: parsing, command-line overrides, unknown keys, variants (configs/variants.py), the configs package
on sys.path (main.config_package_root), evaluator types registered whatever was imported."""
import os
import subprocess
import sys
import textwrap

import pytest

from configs.variants import parse_arg
from tests.helpers import REPO, load_config
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
                "configs/captioning/captioner_flickr8k.py:scst_attribute",
                "configs/captioning/judge_flickr8k.py", "configs/captioning/judge_flickr8k.py:tiny",
                "configs/captioning/reward_flickr8k_pretrained.py:grammar",
                "configs/captioning/reward_flickr8k_pretrained.py:grammar_attribute",
                "configs/captioning/reward_flickr8k_pretrained.py:attribute",
                "configs/captioning/reward_flickr8k_pretrained.py:tiny",
                "configs/captioning/captioner_flickr8k_pretrained.py",
                "configs/captioning/captioner_flickr8k_pretrained.py:scst_clip",
                "configs/captioning/captioner_flickr8k_pretrained.py:scst_cider",
                "configs/captioning/captioner_flickr8k_pretrained.py:scst_mixed",
                "configs/captioning/captioner_flickr8k_pretrained.py:scst_grammar",
                "configs/captioning/captioner_flickr8k_pretrained.py:scst_attribute",
                "configs/captioning/captioner_flickr8k_pretrained.py:tiny",
                "configs/captioning/captioner_flickr8k_pretrained.py:tiny_scst")


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_parses_and_names_known_tasks_and_evaluators(path):
  import glob
  import os

  from tests.helpers import REPO
  from xmodal_jax.evaluation import evaluator
  from xmodal_jax.train import stages as stages_lib
  listed = {p.partition(":")[0] for p in CONFIG_FILES}
  on_disk = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*", "*.py"))
             if not p.endswith(("common.py", "__init__.py"))}
  assert on_disk == listed, "a config file is missing from CONFIG_FILES"
  config = load_config(path)
  runs = ([stages_lib.stage_config(config, n) for n in config.pipeline if "task" in config.stages[n]]
          if stages_lib.is_pipeline(config) else [config])
  for run in runs:
    assert run.task in systems.available_tasks()
    assert evaluator.create_all(run.evals), f"{path}: no evaluator"


def test_parse_arg_reads_typed_options_and_names_unknown_ones():
  assert parse_arg(None, tiny=False, res=224).to_dict() == {"tiny": False, "res": 224}
  assert parse_arg("", tiny=False).to_dict() == {"tiny": False}
  arg = parse_arg("tiny,res=128,lr=0.5,name=x", tiny=False, paper=False, res=224, lr=1.0, name="")
  assert arg.to_dict() == {"tiny": True, "paper": False, "res": 128, "lr": 0.5, "name": "x"}
  assert parse_arg("tiny=false", tiny=True).tiny is False
  assert parse_arg("full", resnet101=False, aliases={"full": "resnet101"}).resnet101 is True
  assert parse_arg("tiny_judge", tiny=False, judge=False, aliases={"tiny_judge": "tiny,judge"}).to_dict() == {
      "tiny": True, "judge": True}
  with pytest.raises(ValueError, match=r"unknown variant 'huge'; this config's variants: tiny, res=<int>"):
    parse_arg("huge", tiny=False, res=224)
  with pytest.raises(ValueError, match="unknown variant 'tiny'; this config has no variants"):
    parse_arg("tiny")
  with pytest.raises(ValueError, match=r"res='big': not a int"):
    parse_arg("res=big", res=224)
  with pytest.raises(ValueError, match=r"tiny='maybe': not a bool"):
    parse_arg("tiny=maybe", tiny=False)
  with pytest.raises(ValueError, match="takes a value"):
    parse_arg("res", res=224)


def test_configs_load_twice_and_side_by_side_in_one_process():
  first = load_config("configs/retrieval/mfsr_shapes.py:tiny").to_json_best_effort(sort_keys=True)
  other = load_config("configs/captioning/reward_shapes.py:tiny")  # imports configs.clip and configs.captioning
  again = load_config("configs/retrieval/mfsr_shapes.py:tiny").to_json_best_effort(sort_keys=True)
  assert first == again and other.task == "s5_reward_model"
  assert load_config("configs/clip/siglip_flickr8k.py:tiny").loss.kind == "sigmoid"


def test_evaluator_types_register_whatever_config_was_imported():
  # A fresh process: each config names a system's own evaluator type, and nothing imported that system before.
  code = textwrap.dedent("""
      import sys
      from tests.helpers import load_config
      for spec, name, kind in [("configs/retrieval/region_word_shapes.py:tiny", "tags", "multilabel"),
                               ("configs/vlp/single_stream_shapes.py:tiny", "test_masked", "masked_prediction"),
                               ("configs/captioning/reward_shapes.py:tiny", "reward_val", "s5_reward_model"),
                               ("configs/retrieval/mfsr_shapes.py:tiny", "test_reconstruction", "image_reconstruction"),
                               ("configs/s1/shapes.py:tiny", None, "query_association")]:
        config = load_config(spec)
        if name:
          assert config.evals[name].type == kind, spec
      from xmodal_jax.evaluation import evaluator
      print(sorted(set(evaluator._REGISTRY) - {"retrieval", "classification", "zero_shot", "captioning"}))
      """)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split("\n")[-2] == str(sorted(systems._EVALUATORS)), out.stdout  # pylint: disable=protected-access


def _parse_in_a_fresh_process(cwd, config: str) -> subprocess.CompletedProcess:
  """`xmodal train --config=CONFIG` parsed as the console script does it: sys.path without the current directory
  (python -P), so `configs` is importable only through main.config_package_root."""
  code = ("import sys; from xmodal_jax import main; main.parse_flags(['xmodal', 'train', sys.argv[1]]); "
          "print(main.FLAGS.config.task)")
  return subprocess.run([sys.executable, "-P", "-c", code, f"--config={config}"], cwd=cwd, capture_output=True,
                        text=True, check=False, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_a_config_imports_the_configs_package_from_any_directory(tmp_path):
  out = _parse_in_a_fresh_process(tmp_path, os.path.join(REPO, "configs", "retrieval", "mfsr_shapes.py:tiny"))
  assert out.returncode == 0 and out.stdout.strip() == "mfsr", out.stderr[-2000:]
  # A config of one's own outside the repository, run from the repository root.
  mine = tmp_path / "my_vsepp.py"
  mine.write_text(textwrap.dedent("""
      from configs.retrieval import vsepp_shapes


      def get_config(arg=None):
        config = vsepp_shapes.get_config(arg)
        config.train.num_steps = 3
        return config
      """))
  out = _parse_in_a_fresh_process(REPO, f"{mine}:tiny")
  assert out.returncode == 0 and out.stdout.strip() == "vsepp", out.stderr[-2000:]
  elsewhere = _parse_in_a_fresh_process(tmp_path, f"{mine}:tiny")  # neither beside configs/ nor run from the repo
  assert elsewhere.returncode == 2 and "run it from the directory that holds configs/" in elsewhere.stderr
