"""Config files: parsing, command-line overrides, unknown keys, variants."""
import pytest

from tests.helpers import load_config
from xmodal_jax import tasks


def test_default_and_tiny_variants_parse():
  default = load_config("configs/vsepp_shapes.py")
  tiny = load_config("configs/vsepp_shapes.py:tiny")
  assert default.task == "vsepp" and default.data.num_test == 1000
  assert tiny.train.num_steps < default.train.num_steps
  assert default.task in tasks.available_tasks()


def test_overrides_of_nested_fields_and_tuples():
  config = load_config("configs/vsepp_shapes.py:tiny", "--config.train.batch_size=16",
                       "--config.mesh.shape=(2,4)", "--config.loss.max_violation=False",
                       "--config.optimizer.learning_rate=0.5")
  assert config.train.batch_size == 16
  assert tuple(config.mesh.shape) == (2, 4)
  assert config.loss.max_violation is False
  assert config.optimizer.learning_rate == 0.5


def test_unknown_key_is_an_error():
  with pytest.raises(Exception, match="nonexistent_field"):
    load_config("configs/vsepp_shapes.py:tiny", "--config.train.nonexistent_field=3")


def test_wrong_type_is_an_error():
  with pytest.raises(Exception):
    load_config("configs/vsepp_shapes.py:tiny", "--config.train.batch_size=many")


def test_unknown_variant_is_an_error():
  with pytest.raises(Exception, match="unknown variant"):
    load_config("configs/vsepp_shapes.py:huge")


def test_unknown_task_names_the_choices():
  with pytest.raises(ValueError, match="available tasks"):
    tasks.get_task_class("no_such_task")
