"""Loading a project's shared config module (configs/<project>/common.py) from a config file beside it.

Config files are loaded by path (ml_collections `config_flags`), not as a package, so `import common` would
not find their neighbour; `load_beside(__file__, "common.py")` does, under a module name unique to its path.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

from xmodal_jax import errors
from types import ModuleType


def load_beside(config_file: str, name: str) -> ModuleType:
  """The module `name` (a .py file) in the directory of `config_file` (loaded once per path)."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  if not os.path.exists(path):
    raise errors.MissingError(f"{config_file} needs {path}, which does not exist.")
  module_name = "xmodal_config_" + hashlib.sha1(path.encode()).hexdigest()[:12]
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module
